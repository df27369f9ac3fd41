//! One server span and one latency sample per call: [`ObserveLayer`] in front of the
//! gRPC services, [`observe_http`] in front of the HTTP routes.
//!
//! The span continues the client's W3C `traceparent` (gRPC metadata and HTTP headers
//! are both HTTP/2 headers), covers the call to the end of its response stream, and
//! records the outcome (`rpc.grpc.status_code`, `http.response.status_code`). The
//! latency histograms take the same outcome as a label and the trace as an exemplar;
//! failures are counted by code. Health checks are left out (probes, every few
//! seconds, would drown the rest).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{HttpLabels, RpcLabels, metrics};

tokio::task_local! {
    /// The `traceparent` the client sent with the request being served.
    static CLIENT_TRACEPARENT: Option<String>;
}

/// Longest `traceparent` kept from a client (the W3C form is 55 characters).
const MAX_TRACEPARENT: usize = 256;

/// The `traceparent` the client sent with the request this task serves.
pub fn client_traceparent() -> Option<String> {
    CLIENT_TRACEPARENT.try_with(Clone::clone).ok().flatten()
}

/// Reads propagation fields from HTTP (and so gRPC) headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the trace the client's headers name (when tracing is on).
fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !super::tracing_enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    let _ = span.set_parent(parent);
}

fn traceparent_header(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .filter(|v| v.len() <= MAX_TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The trace id of `span`, for an exemplar.
fn trace_label(span: &tracing::Span) -> Option<crate::metrics::TraceLabel> {
    super::span_context(span).map(|c| crate::metrics::TraceLabel::new(c.trace_id().to_string()))
}

/// `/package.Service/Method` split into service and method.
fn service_and_method(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.rsplit_once('/').unwrap_or(("unknown", path))
}

/// The methods this server serves, by service: the only names metric labels take (a
/// client may call any path; an unknown one is labelled `unknown`, so label values
/// stay bounded).
const KNOWN_METHODS: &[(&str, &[&str])] = &[
    (
        "arrow.flight.protocol.FlightService",
        &[
            "Handshake",
            "ListFlights",
            "GetFlightInfo",
            "PollFlightInfo",
            "GetSchema",
            "DoGet",
            "DoPut",
            "DoExchange",
            "DoAction",
            "ListActions",
        ],
    ),
    (
        "quiver.v1.Mutations",
        &["Insert", "Update", "Delete", "Upsert", "Apply"],
    ),
    ("quiver.v1.Subscriptions", &["Subscribe"]),
    (
        "quiver.v1.Admin",
        &[
            "Analyze",
            "Vacuum",
            "Reindex",
            "Checkpoint",
            "Backup",
            "PruneChangeLog",
            "GetConfig",
            "ReloadConfig",
            "SetLogFilter",
            "SetSlowQueryThreshold",
        ],
    ),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

/// `service` and `method` when this server serves them, else `unknown` for both.
fn known(service: &str, method: &str) -> (&'static str, &'static str) {
    KNOWN_METHODS
        .iter()
        .filter(|(s, _)| *s == service)
        .find_map(|(s, methods)| methods.iter().find(|m| **m == method).map(|m| (*s, *m)))
        .unwrap_or(("unknown", "unknown"))
}

/// Whether a gRPC code counts as the server's error in a span's status (the
/// OpenTelemetry rule for server spans: not the client's mistakes).
fn server_error(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    )
}

/// The tower layer observing every gRPC call.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService { inner }
    }
}

/// A gRPC service observed.
#[derive(Debug, Clone)]
pub struct ObserveService<S> {
    inner: S,
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl<S> tower::Service<GrpcRequest> for ObserveService<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GrpcResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return Box::pin(inner.call(request));
        }
        let (service, method) = service_and_method(path);
        let (service, method) = known(service, method);
        let client = crate::connection::client_address(request.extensions());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            client.address = %client,
            principal = tracing::field::Empty,
        );
        continue_trace(&span, request.headers());
        let traceparent = traceparent_header(request.headers());
        let started = Instant::now();
        Box::pin(async move {
            let response = CLIENT_TRACEPARENT
                .scope(traceparent, inner.call(request).instrument(span.clone()))
                .await?;
            let code = response
                .headers()
                .get("grpc-status")
                .map(|v| tonic::Code::from_bytes(v.as_bytes()));
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed {
                    inner: body,
                    span: span.clone(),
                    code,
                    end: Some(Box::new(
                        move |code: Option<tonic::Code>, finished: bool| {
                            // No status at the end is a broken response; a stream dropped
                            // before its end was cancelled by the client.
                            let code = code.unwrap_or(if finished {
                                tonic::Code::Unknown
                            } else {
                                tonic::Code::Cancelled
                            });
                            span.record("rpc.grpc.status_code", code as i32);
                            if server_error(code) {
                                span.record("otel.status_code", "error");
                            }
                            let labels = RpcLabels {
                                rpc_system: "grpc",
                                rpc_service: service,
                                rpc_method: method,
                                rpc_grpc_status_code: code as i32,
                            };
                            metrics().rpc_duration.get_or_create(&labels).observe(
                                started.elapsed().as_secs_f64(),
                                trace_label(&span),
                                None,
                            );
                            if code != tonic::Code::Ok {
                                metrics().error("grpc", code);
                            }
                        },
                    )),
                })
            }))
        })
    }
}

/// What to do when a response ends: with the gRPC code seen, and whether the stream
/// ran to its end (or was dropped first).
type OnEnd = Box<dyn FnOnce(Option<tonic::Code>, bool) + Send + Sync>;

/// A response body that reports its end once.
struct Observed<B> {
    inner: B,
    span: tracing::Span,
    code: Option<tonic::Code>,
    end: Option<OnEnd>,
}

impl<B> Observed<B> {
    fn end(&mut self, finished: bool) {
        if let Some(end) = self.end.take() {
            end(self.code, finished);
        }
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl<B: HttpBody + Unpin> HttpBody for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = {
            let _entered = this.span.enter();
            Pin::new(&mut this.inner).poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                {
                    this.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.code.get_or_insert(tonic::Code::Internal);
                this.end(true);
            }
            Poll::Ready(None) => this.end(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The routes the HTTP histogram names (anything else is `other`, so a client cannot
/// make up label values).
fn http_route(path: &str) -> &'static str {
    match path {
        "/v1/query" => "/v1/query",
        "/metrics" => "/metrics",
        "/readyz" => "/readyz",
        "/healthz" => "/healthz",
        _ => "other",
    }
}

/// The request method as labels and span names take it: the standard ones, else
/// `_OTHER` (any token is a method to HTTP; a client must not make up label values).
fn http_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The axum middleware observing every HTTP request but the probes.
pub async fn observe_http(request: Request, next: Next) -> Response {
    let route = http_route(request.uri().path());
    if route == "/healthz" || route == "/readyz" {
        return next.run(request).await;
    }
    let method = http_method(request.method()).to_owned();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    continue_trace(&span, request.headers());
    let traceparent = traceparent_header(request.headers());
    let started = Instant::now();
    let response = CLIENT_TRACEPARENT
        .scope(traceparent, next.run(request).instrument(span.clone()))
        .await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let labels = HttpLabels {
        http_request_method: method,
        http_route: route.to_owned(),
        http_response_status_code: status.as_u16().to_string(),
    };
    if !status.is_success() {
        metrics().error("http", crate::http::code_for_status(status));
    }
    response.map(|body| {
        axum::body::Body::new(Observed {
            inner: body,
            span: span.clone(),
            code: None,
            end: Some(Box::new(move |_, _| {
                metrics().http_duration.get_or_create(&labels).observe(
                    started.elapsed().as_secs_f64(),
                    trace_label(&span),
                    None,
                );
            })),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_quiver_protos_is_known() {
        for (service, proto) in [
            (
                "quiver.v1.Mutations",
                include_str!("../../../../proto/quiver/v1/mutations.proto"),
            ),
            (
                "quiver.v1.Subscriptions",
                include_str!("../../../../proto/quiver/v1/subscriptions.proto"),
            ),
            (
                "quiver.v1.Admin",
                include_str!("../../../../proto/quiver/v1/admin.proto"),
            ),
        ] {
            let rpcs: Vec<&str> = proto
                .lines()
                .filter_map(|line| line.trim().strip_prefix("rpc "))
                .filter_map(|rest| rest.split('(').next())
                .collect();
            assert!(!rpcs.is_empty(), "{service} declares rpcs");
            for rpc in rpcs {
                assert_eq!(
                    known(service, rpc),
                    (service, rpc),
                    "{service}/{rpc} is labelled"
                );
            }
        }
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/arrow.flight.protocol.FlightService/DoGet"),
            ("arrow.flight.protocol.FlightService", "DoGet")
        );
        assert_eq!(service_and_method("/odd"), ("unknown", "odd"));
        assert_eq!(
            known("quiver.v1.Mutations", "Insert"),
            ("quiver.v1.Mutations", "Insert")
        );
        assert_eq!(known("quiver.v1.Mutations", "Nope"), ("unknown", "unknown"));
        assert_eq!(known("made.Up", "X1"), ("unknown", "unknown"));
        assert_eq!(http_route("/v1/query"), "/v1/query");
        assert_eq!(http_route("/v1/query/../x"), "other");
        assert_eq!(http_method(&http::Method::POST), "POST");
        let made_up = http::Method::from_bytes(b"FOO123").expect("a token");
        assert_eq!(http_method(&made_up), "_OTHER");
    }
}
