//! Authentication and per-principal limits in front of every service.
//!
//! [`GateLayer`] wraps the gRPC server: it authenticates each call (health is exempt,
//! the Flight SQL handshake authenticates itself), checks the least role the service
//! needs (Mutations: `write`; Admin: `admin`; everything else: `read`; handlers check more where a
//! statement needs it), applies the principal's rate and concurrency limits, puts the
//! [`Principal`] in the request's extensions and names it in the call's span
//! ([`crate::telemetry::observe`]). [`http_gate`] does the same for the HTTP routes it is put on.
//!
//! Limits, per principal (per client address when authentication is off):
//! - requests per second, a token bucket (`client_rate_limit_rps`, burst
//!   `client_rate_limit_burst`); over it, `RESOURCE_EXHAUSTED` (HTTP 429) with a
//!   `retry-after-ms` trailer (`Retry-After` header) saying when a request fits again;
//! - queries streaming at once (Flight `DoGet`, HTTP `/v1/query`): a query over the
//!   limit waits for one of the principal's own to end, up to the query queue timeout,
//!   so one principal cannot take every slot of the server's query admission;
//! - subscriptions open at once: refused over the limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Auth, Principal, Role};
use crate::connection::ConnectInfo;
use crate::error::{Error, Result};
use crate::listen::Peer;

/// Per-principal limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimitConfig {
    /// Requests per second; 0 for no limit.
    pub rate_per_second: f64,
    /// Requests allowed at once above the rate.
    pub burst: f64,
    /// Queries streaming at once.
    pub max_queries: usize,
    /// Subscriptions open at once.
    pub max_subscriptions: usize,
    /// How long a query waits for one of the principal's own to end.
    pub queue_timeout: Duration,
}

/// Most principals whose buckets and slots are kept; idle ones are dropped beyond it.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The state of every principal's limits.
#[derive(Debug)]
pub struct ClientLimits {
    config: ClientLimitConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    queries: Mutex<HashMap<String, Arc<Semaphore>>>,
    subscriptions: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ClientLimits {
    /// Limits as `config` says.
    pub fn new(config: ClientLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket.
    fn admit(&self, key: &str) -> Result<()> {
        let rate = self.config.rate_per_second;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = self.config.burst.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("never poisoned");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            // Full buckets carry no state worth keeping.
            buckets.retain(|_, b| b.tokens + b.at.elapsed().as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_TRACKED {
                // Keep the most recently used half: a flood of new keys cannot reset
                // the bucket of a client being throttled now.
                let mut used: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                used.sort_unstable();
                let cut = used[used.len() / 2];
                buckets.retain(|_, b| b.at >= cut);
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
        Err(Error::ResourceExhausted(format!(
            "rate limit of {rate} requests/s for {key} exceeded; retry after {wait} ms"
        )))
    }

    fn semaphore(
        map: &Mutex<HashMap<String, Arc<Semaphore>>>,
        key: &str,
        permits: usize,
    ) -> Arc<Semaphore> {
        let mut map = map.lock().expect("never poisoned");
        if map.len() >= MAX_TRACKED && !map.contains_key(key) {
            // Only slots no one holds or waits on: a clone held elsewhere would let
            // its principal run past the limit with a new semaphore.
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < permits);
        }
        Arc::clone(
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(permits))),
        )
    }

    /// A slot for one of `key`'s queries, waiting for one of its own to end.
    async fn query(&self, key: &str) -> Result<OwnedSemaphorePermit> {
        let max = self.config.max_queries.max(1);
        let slots = Self::semaphore(&self.queries, key, max);
        match tokio::time::timeout(self.config.queue_timeout, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::ResourceExhausted(format!(
                "{key} has {max} queries running (client_max_concurrent_queries); retry after \
                 1000 ms"
            ))),
        }
    }

    /// A slot for one of `key`'s subscriptions.
    fn subscription(&self, key: &str) -> Result<OwnedSemaphorePermit> {
        let max = self.config.max_subscriptions.max(1);
        Self::semaphore(&self.subscriptions, key, max)
            .try_acquire_owned()
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "{key} has {max} subscriptions open (client_max_subscriptions); retry after \
                     5000 ms"
                ))
            })
    }
}

/// Authentication and limits, shared by the gRPC layer and the HTTP middleware.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The authenticator.
    pub auth: Arc<Auth>,
    /// The per-principal limits.
    pub limits: Arc<ClientLimits>,
}

/// What a call is, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Health: answered for anyone.
    Exempt,
    /// The Flight SQL handshake authenticates itself; it is rate limited by address.
    Handshake,
    /// Needs the role; takes no slot here (a handler may, through [`Slots`]).
    Plain(Role),
    /// A change stream: takes a subscription slot.
    Subscription,
}

/// The principal's slots, for handlers that know what a call is only once they read
/// it (a Flight `DoGet` ticket is a query or a change stream): a slot taken here is
/// held until the response stream ends.
#[derive(Debug, Clone)]
pub struct Slots {
    limits: Arc<ClientLimits>,
    key: String,
    held: Arc<Mutex<Vec<OwnedSemaphorePermit>>>,
}

impl Slots {
    /// Takes one of the principal's query slots (waiting for one of its own queries
    /// to end, up to the queue timeout).
    pub async fn query(&self) -> Result<()> {
        let permit = self.limits.query(&self.key).await?;
        self.held.lock().expect("never poisoned").push(permit);
        Ok(())
    }

    /// Takes one of the principal's subscription slots.
    pub fn subscription(&self) -> Result<()> {
        let permit = self.limits.subscription(&self.key)?;
        self.held.lock().expect("never poisoned").push(permit);
        Ok(())
    }
}

/// Takes a query slot for `request`'s principal (none when the request did not come
/// through the gate).
pub async fn hold_query<T>(request: &tonic::Request<T>) -> Result<()> {
    match request.extensions().get::<Slots>() {
        Some(slots) => slots.query().await,
        None => Ok(()),
    }
}

/// Takes a subscription slot for `request`'s principal.
pub fn hold_subscription<T>(request: &tonic::Request<T>) -> Result<()> {
    match request.extensions().get::<Slots>() {
        Some(slots) => slots.subscription(),
        None => Ok(()),
    }
}

fn classify(path: &str) -> Call {
    const FLIGHT: &str = "/arrow.flight.protocol.FlightService/";
    if path.starts_with("/grpc.health.v1.Health/") {
        return Call::Exempt;
    }
    if let Some(method) = path.strip_prefix(FLIGHT) {
        return match method {
            "Handshake" => Call::Handshake,
            // A query or a change stream: the handler, which reads the ticket, takes
            // the slot (`Slots`).
            "DoGet" => Call::Plain(Role::Read),
            "DoExchange" => Call::Subscription,
            _ => Call::Plain(Role::Read),
        };
    }
    if path.starts_with("/quiver.v1.Mutations/") {
        return Call::Plain(Role::Write);
    }
    if path.starts_with("/quiver.v1.Subscriptions/") {
        return Call::Subscription;
    }
    if path.starts_with("/quiver.v1.Admin/") {
        return Call::Plain(Role::Admin);
    }
    Call::Plain(Role::Read)
}

/// What limits are keyed by: the principal, or the client's address when
/// authentication is off.
fn limit_key(principal: &Principal, remote: Option<std::net::SocketAddr>) -> String {
    if principal.is_anonymous() {
        match remote {
            Some(addr) => format!("address {}", super::client_key(addr.ip())),
            None => "anonymous".to_owned(),
        }
    } else {
        principal.to_string()
    }
}

impl Gate {
    /// Authenticates and admits one gRPC call; the principal and the slot it holds.
    async fn admit_grpc(
        &self,
        call: Call,
        authorization: Option<&[u8]>,
        info: Option<&ConnectInfo>,
    ) -> Result<(
        Option<Principal>,
        Option<OwnedSemaphorePermit>,
        Option<String>,
    )> {
        if call == Call::Handshake {
            let key = match info.and_then(|i| i.remote) {
                Some(addr) => format!("address {}", super::client_key(addr.ip())),
                None => "handshake".to_owned(),
            };
            self.limits.admit(&key)?;
            return Ok((None, None, None));
        }
        let certificate = info.and_then(|i| i.certificate.as_deref());
        let principal = self
            .auth
            .authenticate(
                authorization,
                certificate,
                info.and_then(|i| i.remote).map(|a| a.ip()),
            )
            .await?;
        let key = limit_key(&principal, info.and_then(|i| i.remote));
        self.limits.admit(&key)?;
        let permit = match call {
            Call::Exempt | Call::Handshake => None,
            Call::Plain(role) => {
                principal.require(role, "call this service")?;
                None
            }
            Call::Subscription => {
                principal.require(Role::Read, "subscribe")?;
                Some(self.limits.subscription(&key)?)
            }
        };
        Ok((Some(principal), permit, Some(key)))
    }
}

/// The gRPC layer of [`Gate`].
#[derive(Debug, Clone)]
pub struct GateLayer {
    gate: Gate,
}

impl GateLayer {
    /// A layer applying `gate`.
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            gate: self.gate.clone(),
            inner,
        }
    }
}

/// A gRPC service behind the gate.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl<S> tower::Service<GrpcRequest> for GateService<S>
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

    fn call(&mut self, mut request: GrpcRequest) -> Self::Future {
        // The clone is ready only once polled; the one polled ready is used.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let call = classify(&path);
            if call == Call::Exempt {
                return inner.call(request).await;
            }
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            let info = request.extensions().get::<ConnectInfo>().cloned();
            let (principal, permit, key) = match gate
                .admit_grpc(call, authorization.as_deref(), info.as_ref())
                .await
            {
                Ok(admitted) => admitted,
                Err(err) => {
                    let code = crate::error::code_of(&err);
                    if code == tonic::Code::Unauthenticated || code == tonic::Code::PermissionDenied
                    {
                        tracing::info!(rpc.method = %path, client = ?info.as_ref().and_then(|i| i.remote), error = %err, "refused");
                    }
                    return Ok(refusal(err).into_http());
                }
            };
            if let Some(principal) = principal {
                tracing::Span::current().record("principal", tracing::field::display(&principal));
                request.extensions_mut().insert(principal);
            }
            let held = Arc::new(Mutex::new(Vec::from_iter(permit)));
            if let Some(key) = key {
                request.extensions_mut().insert(Slots {
                    limits: Arc::clone(&gate.limits),
                    key,
                    held: Arc::clone(&held),
                });
            }
            let response = inner.call(request).await?;
            let holds_any = !held.lock().expect("never poisoned").is_empty();
            Ok(if holds_any {
                response.map(|body| {
                    tonic::body::Body::new(Held {
                        inner: body,
                        _held: held,
                    })
                })
            } else {
                response
            })
        })
    }
}

/// A status for `err`, with a retry hint (trailer `retry-after-ms`) when it is a limit.
pub(crate) fn refusal(err: Error) -> tonic::Status {
    let retry = retry_after_ms(&err);
    let mut status = tonic::Status::from(err);
    if let Some(ms) = retry
        && let Ok(value) = ms.to_string().parse()
    {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    status
}

/// The `retry after N ms` a limit's message names.
fn retry_after_ms(err: &Error) -> Option<u64> {
    let Error::ResourceExhausted(message) = err else {
        return None;
    };
    let rest = message.split("retry after ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// A response body holding `G` (slots) until the stream ends.
struct Held<B, G> {
    inner: B,
    _held: G,
}

impl<B: HttpBody + Unpin, G: Unpin> HttpBody for Held<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP middleware of [`Gate`]: authenticates (Bearer, or Basic for users),
/// checks `read`, applies the limits (a query slot for `/v1/query`).
pub async fn http_gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let certificate = peer.as_ref().and_then(|p| p.certificate.clone());
    let route = request.uri().path().to_owned();
    let admitted = async {
        let principal = gate
            .auth
            .authenticate(
                authorization.as_deref(),
                certificate.as_deref(),
                peer.as_ref().and_then(|p| p.remote).map(|a| a.ip()),
            )
            .await?;
        let key = limit_key(&principal, peer.as_ref().and_then(|p| p.remote));
        gate.limits.admit(&key)?;
        principal.require(Role::Read, "read")?;
        let permit = if route == "/v1/query" {
            Some(gate.limits.query(&key).await?)
        } else {
            None
        };
        Ok::<_, Error>((principal, permit))
    }
    .await;
    let (principal, permit) = match admitted {
        Ok(admitted) => admitted,
        Err(err) => return http_refusal(err),
    };
    tracing::Span::current().record("principal", tracing::field::display(&principal));
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    match permit {
        Some(permit) => response.map(|body| {
            axum::body::Body::new(Held {
                inner: body,
                _held: permit,
            })
        }),
        None => response,
    }
}

fn http_refusal(err: Error) -> Response {
    let code = crate::error::code_of(&err);
    let retry = retry_after_ms(&err);
    let mut response = crate::http::error_response(err);
    let headers = response.headers_mut();
    if code == tonic::Code::Unauthenticated {
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"quiver\", Basic realm=\"quiver\""),
        );
    }
    if let Some(ms) = retry
        && let Ok(value) = ms.div_ceil(1000).to_string().parse()
    {
        headers.insert(http::header::RETRY_AFTER, value);
    }
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: f64) -> ClientLimits {
        ClientLimits::new(ClientLimitConfig {
            rate_per_second: rate,
            burst,
            max_queries: 2,
            max_subscriptions: 1,
            queue_timeout: Duration::from_millis(50),
        })
    }

    #[test]
    fn calls_are_classified_by_path() {
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Call::Exempt);
        assert_eq!(
            classify("/arrow.flight.protocol.FlightService/Handshake"),
            Call::Handshake
        );
        assert_eq!(
            classify("/arrow.flight.protocol.FlightService/DoGet"),
            Call::Plain(Role::Read)
        );
        assert_eq!(
            classify("/arrow.flight.protocol.FlightService/DoPut"),
            Call::Plain(Role::Read)
        );
        assert_eq!(
            classify("/quiver.v1.Mutations/Apply"),
            Call::Plain(Role::Write)
        );
        assert_eq!(
            classify("/quiver.v1.Subscriptions/Subscribe"),
            Call::Subscription
        );
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Call::Plain(Role::Read)
        );
    }

    #[test]
    fn the_bucket_refuses_beyond_the_burst_with_a_hint() {
        let limits = limits(1.0, 3.0);
        for _ in 0..3 {
            limits.admit("user:a").unwrap();
        }
        let err = limits.admit("user:a").unwrap_err();
        assert_eq!(crate::error::code_of(&err), tonic::Code::ResourceExhausted);
        let wait = retry_after_ms(&err).expect("a hint");
        assert!((1..=1000).contains(&wait), "{wait}");
        // Another principal has its own bucket.
        limits.admit("user:b").unwrap();
        // No rate: never refused.
        let open = self::limits(0.0, 0.0);
        for _ in 0..1000 {
            open.admit("user:a").unwrap();
        }
    }

    #[tokio::test]
    async fn slots_are_per_principal() {
        let limits = limits(0.0, 0.0);
        let a1 = limits.query("user:a").await.unwrap();
        let _a2 = limits.query("user:a").await.unwrap();
        assert!(limits.query("user:a").await.is_err());
        let _b = limits.query("user:b").await.unwrap();
        drop(a1);
        let _again = limits.query("user:a").await.unwrap();
        let _s = limits.subscription("user:a").unwrap();
        assert!(limits.subscription("user:a").is_err());
    }
}
