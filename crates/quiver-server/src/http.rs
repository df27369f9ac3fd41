//! The HTTP surface: health, readiness, metrics and `POST /v1/query` (SQL → JSON).
//!
//! `POST /v1/query` with `{"sql": "..."}` answers a JSON array with one object per row
//! (`[{"id": 1, "status": "todo"}, …]`, NULLs as `null`, timestamps as ISO-8601 text).
//! With `Accept: application/x-ndjson` (or `"format": "ndjson"`) it answers one object
//! per line instead. Rows are encoded batch by batch as the query produces them, so
//! memory stays bounded; when the client goes away the query stops. Every error —
//! a bad body, an unknown route, a query that fails before its first row — answers
//! the JSON error `{"error": {"code", "message"}}` with a status matching the gRPC
//! code; a failure mid-stream aborts the response.

use std::sync::Arc;

use arrow_json::writer::{JsonArray, LineDelimited, WriterBuilder};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use quiver_query::QueryEngine;
use quiver_storage::PoolStatus;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::Instrument;

use crate::auth::layer::{Gate, http_gate};
use crate::error::{Error, code_name, code_of};

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The query engine.
    pub engine: Arc<QueryEngine>,
    /// The subscription service, for its metrics.
    pub subscriptions: Arc<crate::subscriptions::Hub>,
    /// The write path, for its metrics.
    pub writer: Arc<crate::writes::Writer>,
    /// The query history queries are recorded in.
    pub history: Arc<crate::history::QueryLog>,
    /// The supervised background tasks, for readiness.
    pub tasks: Arc<crate::supervise::Tasks>,
}

/// Room for the JSON around the largest statement a query body may carry.
const BODY_OVERHEAD: usize = 64 << 10;

/// How long readiness waits for the store before answering from the pool's state.
const READY_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(25);

/// The HTTP routes: `/healthz` and `/readyz` answer anyone; the others go through
/// `gate` (authentication, `read`, the principal's limits).
pub fn router(state: HttpState, gate: Gate) -> Router {
    let body_limit = state.engine.limits().max_bytes + BODY_OVERHEAD;
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/query", post(query))
        .route_layer(axum::middleware::from_fn_with_state(gate, http_gate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(
            crate::telemetry::observe::observe_http,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "no such route".to_owned(),
    )
}

async fn method_not_allowed() -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "this route does not take that method".to_owned(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long a scrape waits for the store's oldest change-log version.
const SCRAPE_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The metrics registry: OpenMetrics (with exemplars) to a scraper that asks for it,
/// the classic Prometheus text format otherwise.
async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let registry = crate::metrics::metrics();
    let store = state.engine.store();
    registry.set_pool(&store.pool_status());
    state.subscriptions.refresh_metrics();
    registry
        .transactions_open
        .set(state.writer.open_transactions() as i64);
    if let Ok(Ok(oldest)) = tokio::time::timeout(SCRAPE_STORE_TIMEOUT, store.oldest_version()).await
    {
        registry.change_log_oldest.set(oldest.unwrap_or(0) as i64);
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS
    } else {
        crate::metrics::PROMETHEUS_TEXT
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        crate::metrics::render(openmetrics),
    )
        .into_response()
}

/// The gRPC code an HTTP error status stands for (for the error counter).
pub(crate) fn code_for_status(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::FailedPrecondition,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let store = state.engine.store();
    // Queries may hold every pooled connection: a ping that waits is answered from
    // what the pool last saw of the store, so readiness never waits behind them.
    let ping = match tokio::time::timeout(READY_PING_TIMEOUT, store.ping()).await {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => {
            let pool = store.pool_status();
            if pool.reachable {
                Ok(())
            } else {
                Err(pool
                    .last_error
                    .unwrap_or_else(|| "the store does not answer".to_owned()))
            }
        }
    };
    let reason = match ping {
        Err(err) => Some(err),
        Ok(()) if !state.engine.is_loaded() => Some("the catalog is not loaded yet".to_owned()),
        Ok(()) => state
            .tasks
            .failure()
            .map(|failure| format!("a background task is down: {failure}")),
    };
    let pool = pool_json(&store.pool_status());
    match reason {
        None => (
            StatusCode::OK,
            Json(json!({"status": "ready", "store": store.describe(), "pool": pool})),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason, "store": store.describe(), "pool": pool})),
        )
            .into_response(),
    }
}

/// The pool's state as `/readyz` shows it.
fn pool_json(pool: &PoolStatus) -> serde_json::Value {
    let wait = &pool.acquire_wait;
    json!({
        "max_size": pool.max_size,
        "connections": pool.connections,
        "idle": pool.idle,
        "in_use": pool.in_use,
        "waiting": pool.waiting,
        "acquired": pool.acquired,
        "acquire_timeouts": pool.acquire_timeouts,
        "acquire_unavailable": pool.acquire_unavailable,
        "acquire_wait_us": {
            "count": wait.count,
            "p50": wait.quantile_micros(0.5),
            "p99": wait.quantile_micros(0.99),
            "max": wait.max_micros,
            "mean": wait.sum_micros.checked_div(wait.count).unwrap_or(0),
        },
        "connections_created": pool.connections_created,
        "connections_broken": pool.connections_broken,
        "connections_retired": pool.connections_retired,
        "connect_errors": pool.connect_errors,
        "leaks_detected": pool.leaks_detected,
        "reuse_rate": pool.reuse_rate,
        "reachable": pool.reachable,
        "last_error": pool.last_error,
    })
}

#[derive(Debug, Deserialize)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Array,
    Lines,
}

fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

pub(crate) fn error_response(err: Error) -> Response {
    let code = code_of(&err);
    if code == Code::Internal {
        tracing::error!(error = %err, "internal error");
    }
    error_body(http_status(code), code, err.to_string())
}

/// The documented JSON error body.
fn error_body(status: StatusCode, code: Code, message: String) -> Response {
    let body =
        json!({"error": {"code": code_name(code), "message": crate::error::bounded(message)}});
    (status, Json(body)).into_response()
}

/// A body that could not be read (too large, cut off), as the documented JSON error.
fn rejection_response(rejection: BytesRejection) -> Response {
    let status = rejection.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        _ => Code::InvalidArgument,
    };
    error_body(status, code, rejection.body_text())
}

#[tracing::instrument(name = "http.query", skip_all, fields(db.query.text = tracing::field::Empty))]
async fn query(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The body is JSON whatever its `Content-Type` says (`curl -d` sends a form type).
    let request: QueryRequest = match body.map(|bytes| serde_json::from_slice(&bytes)) {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => {
            // Not JSON at all: 400; JSON of the wrong shape: 422.
            let status = match err.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            return error_body(
                status,
                Code::InvalidArgument,
                format!("the body is not a query request ({{\"sql\": \"…\"}}): {err}"),
            );
        }
        Err(rejection) => return rejection_response(rejection),
    };
    tracing::Span::current().record("db.query.text", crate::telemetry::shown_sql(&request.sql));
    let wants_lines = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let format = match request.format.as_deref() {
        Some("ndjson") => Format::Lines,
        Some("json") => Format::Array,
        Some(other) => {
            return error_response(Error::InvalidRequest(format!(
                "unknown format '{other}' (expected 'json' or 'ndjson')"
            )));
        }
        None if wants_lines => Format::Lines,
        None => Format::Array,
    };
    if let Err(err) = state
        .engine
        .limits()
        .check("statement", &request.sql)
        .map_err(Error::from)
        .and_then(|()| crate::writes::guard::check_query(&request.sql))
    {
        return error_response(err);
    }
    let principal = extensions
        .get::<crate::auth::Principal>()
        .cloned()
        .unwrap_or_else(crate::auth::Principal::anonymous);
    let client = extensions
        .get::<axum::extract::ConnectInfo<crate::listen::Peer>>()
        .and_then(|peer| peer.0.remote)
        .map(|addr| addr.ip().to_string())
        .unwrap_or_default();
    let mut tracker = state
        .history
        .start("http", &request.sql, principal.to_string(), client);
    let failed = |tracker: crate::history::Tracker, err: Error| {
        tracker.finish(code_of(&err), Some(err.to_string()));
        error_response(err)
    };
    let query = match state.engine.prepare(&request.sql).await {
        Ok(query) => query,
        Err(err) => return failed(tracker, err.into()),
    };
    tracker.planned();
    let control = quiver_query::QueryControl {
        viewer: Some(Arc::new(quiver_query::system::Viewer {
            principal: principal.to_string(),
            sees_all: principal.role >= crate::auth::Role::Admin,
        })),
        store_sql: tracker.store_sql(),
        ..Default::default()
    };
    let mut batches = match state.engine.execute_with(&query, Vec::new(), control).await {
        Ok(batches) => batches,
        Err(err) => return failed(tracker, err.into()),
    };
    // The status is sent with the first batch: an error before it (a failed or timed
    // out aggregate) is still a JSON error with its own status.
    let schema = batches.schema();
    let first = match batches.next().await {
        Some(Err(err)) => return failed(tracker, Error::Query(err.into())),
        first => first,
    };
    let batches: SendableRecordBatchStream = Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(first).chain(batches),
        ),
    );
    let content_type = match format {
        Format::Array => "application/json",
        Format::Lines => "application/x-ndjson",
    };
    let mut response = Response::new(Body::from_stream(encode_json(batches, format, tracker)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Encodes batches to JSON on blocking threads, a couple of chunks ahead of the client.
fn encode_json(
    mut batches: SendableRecordBatchStream,
    format: Format,
    mut tracker: crate::history::Tracker,
) -> ReceiverStream<Result<Bytes, std::io::Error>> {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let span = tracing::debug_span!("http.query.stream");
    tokio::spawn(
        async move {
            enum Writer {
                Array(arrow_json::Writer<Vec<u8>, JsonArray>),
                Lines(arrow_json::Writer<Vec<u8>, LineDelimited>),
            }
            let builder = WriterBuilder::new().with_explicit_nulls(true);
            let mut writer = match format {
                Format::Array => Writer::Array(builder.build(Vec::new())),
                Format::Lines => Writer::Lines(builder.build(Vec::new())),
            };
            let io_error = |message: String| std::io::Error::other(message);
            loop {
                // A client that went away stops the query, even before its first batch.
                let next = tokio::select! {
                    biased;
                    () = sender.closed() => return,
                    next = batches.next() => next,
                };
                let finished = next.is_none();
                let rows = match &next {
                    Some(Ok(batch)) => batch.num_rows() as u64,
                    _ => 0,
                };
                let encoded = tokio::task::spawn_blocking(move || {
                    let result = match (&mut writer, next) {
                        (Writer::Array(w), Some(Ok(batch))) => w.write(&batch),
                        (Writer::Lines(w), Some(Ok(batch))) => w.write(&batch),
                        (Writer::Array(w), None) => w.finish(),
                        (Writer::Lines(w), None) => w.finish(),
                        (_, Some(Err(err))) => {
                            Err(arrow::error::ArrowError::ExternalError(Box::new(err)))
                        }
                    };
                    let chunk = match &mut writer {
                        Writer::Array(w) => std::mem::take(w.get_mut()),
                        Writer::Lines(w) => std::mem::take(w.get_mut()),
                    };
                    (writer, result.map(|()| chunk))
                })
                .await;
                let (returned, result) = match encoded {
                    Ok(pair) => pair,
                    Err(err) => {
                        let _ = sender
                            .send(Err(io_error(format!("encoding task failed: {err}"))))
                            .await;
                        return;
                    }
                };
                writer = returned;
                let chunk = match result {
                    Ok(chunk) => chunk,
                    Err(err) => {
                        tracing::warn!(error = %err, "query failed while streaming JSON");
                        tracker.finish(Code::Internal, Some(err.to_string()));
                        let _ = sender.send(Err(io_error(err.to_string()))).await;
                        return;
                    }
                };
                tracker.sent(rows, chunk.len() as u64);
                if !chunk.is_empty() && sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
                if finished {
                    tracker.finish(Code::Ok, None);
                    return;
                }
            }
        }
        .instrument(span),
    );
    ReceiverStream::new(receiver)
}
