//! The Quiver server: Arrow Flight SQL and HTTP over the query engine, and the `quiver`
//! command line.
//!
//! # Layout
//! - [`run`]: serves already-bound listeners until a shutdown token fires.
//! - [`Server`]: opens the store, loads demo data on request, builds the engine.
//! - [`flight`]: the Flight SQL service, stateless statement handles, catalog metadata,
//!   session options; DML, DDL, ingest and transactions through [`writes`].
//! - [`mutations`]: the `quiver.v1.Mutations` gRPC service.
//! - [`writes`]: the write path both share — transactions, ingest, the change log's
//!   upkeep.
//! - [`subscriptions`]: change streams over gRPC (`quiver.v1.Subscriptions`) and Flight,
//!   fed by one shared tail of the change log.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `POST /v1/query`.
//! - [`config`]: flags, `QUIVER_*` variables and the TOML file, merged and validated.
//! - [`cli`]: the `quiver` subcommands (`serve`, `demo load`, `query`, `auth`).
//! - [`auth`]: authentication, roles and per-principal limits in front of every
//!   service.
//! - [`listen`]: accepting connections, TLS (rustls) with certificate reload.
//! - [`error`]: [`Error`] and the one mapping of errors to gRPC statuses.
//! - [`connection`]: which client connection a request came on; closed connections.
//! - [`ipc`]: Arrow IPC streams from clients, checked before they are read.
//! - `test_utils` (feature `test-utils`): a `TestServer` on ephemeral ports.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connection;
pub mod error;
pub mod flight;
pub mod history;
pub mod http;
pub mod ipc;
pub mod listen;
pub mod metrics;
pub mod mutations;
pub mod subscriptions;
pub mod supervise;
pub mod system;
pub mod telemetry;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod writes;

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use quiver_proto::v1::admin_server::AdminServer;
use quiver_proto::v1::mutations_server::MutationsServer;
use quiver_proto::v1::subscriptions_server::SubscriptionsServer;
use quiver_query::QueryEngine;
use quiver_storage::{Store, changelog, demo};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

use crate::auth::layer::{ClientLimits, Gate, GateLayer};
use crate::auth::{Auth, AuthMode};
use crate::connection::{Connections, TrackedStream};
use crate::listen::Tls;

use crate::flight::QuiverFlightSqlService;
use crate::mutations::MutationService;
use crate::subscriptions::{Hub, SubscriptionService};
use crate::writes::Writer;

/// The sockets a server answers on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: Flight SQL and health.
    pub grpc: TcpListener,
    /// HTTP: health, readiness, JSON queries.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|err| Error::Config(format!("cannot listen on {addr}: {err}")))
        };
        Ok(Self {
            grpc: bind(config.grpc_addr).await?,
            http: bind(config.http_addr).await?,
        })
    }
}

/// Everything a running server needs, built from a [`Config`].
#[derive(Debug, Clone)]
pub struct Server {
    /// The query engine over the store.
    pub engine: Arc<QueryEngine>,
    /// The write path over the same store.
    pub writer: Arc<Writer>,
    /// The configuration it was built from.
    pub config: Config,
    /// Who may call, and what they may do.
    pub auth: Arc<Auth>,
    /// TLS on both ports, when configured.
    pub tls: Option<Arc<Tls>>,
}

impl Server {
    /// Opens the store, loads the demo data if asked and missing, and builds the engine.
    ///
    /// A store that cannot be reached yet (PostgreSQL down) does not stop the server:
    /// it serves as not ready (`/readyz` says why), and a background task finishes the
    /// start — demo data, catalog — as soon as the store answers.
    pub async fn open(config: Config, progress: demo::ProgressFn) -> Result<Self> {
        // Settings that stop the start are checked before the store is touched.
        let auth = Arc::new(authenticator(&config)?);
        let tls = config.security.tls.clone().map(Tls::load).transpose()?;
        let store = Store::open(&config.db, &config.store).await?;
        tracing::info!(store = %store.describe(), "store opened");
        let engine = Arc::new(QueryEngine::unloaded(store, config.engine.clone())?);
        match prepare(&engine, &config, &progress).await {
            Ok(()) => {}
            Err(err) if error::code_of(&err) == tonic::Code::Unavailable => {
                tracing::warn!(error = %err, "store unreachable; serving as not ready until it answers");
                tokio::spawn(prepare_when_reachable(
                    Arc::clone(&engine),
                    config.clone(),
                    progress,
                ));
            }
            Err(err) => return Err(err),
        }
        let writer = Arc::new(Writer::new(Arc::clone(&engine), config.writes.clone()));
        Ok(Self {
            engine,
            writer,
            config,
            auth,
            tls,
        })
    }
}

/// The authenticator `config` asks for. Authentication off must be explicit, except
/// when both ports listen on loopback only (the local demo).
fn authenticator(config: &Config) -> Result<Auth> {
    let security = &config.security;
    let loopback = config.grpc_addr.ip().is_loopback() && config.http_addr.ip().is_loopback();
    match (security.auth, &security.auth_file) {
        (Some(AuthMode::None), _) => {
            tracing::warn!(
                "authentication is off (--auth none): every client may read, write and change                  the schema"
            );
            Ok(Auth::disabled())
        }
        (Some(AuthMode::On), file) | (None, file @ Some(_)) => Auth::load(file.clone()),
        (None, None) if loopback => {
            tracing::warn!(
                "authentication is off: no --auth-file, and both ports listen on loopback only;                  configure --auth-file (or pass --auth none) to listen elsewhere"
            );
            Ok(Auth::disabled())
        }
        (None, None) => Err(Error::Config(format!(
            "the server would listen on {} and {} without authentication: configure              --auth-file with users or tokens, or pass --auth none to allow it explicitly",
            config.grpc_addr, config.http_addr
        ))),
    }
}

/// Loads the demo data when asked and missing, then reads the catalog.
async fn prepare(engine: &QueryEngine, config: &Config, progress: &demo::ProgressFn) -> Result<()> {
    if config.demo {
        // Checks for the tables itself, under the store's lock.
        let loaded =
            demo::load_if_missing(engine.store(), config.demo_tasks, Arc::clone(progress)).await?;
        if let Some(summary) = loaded {
            tracing::info!(?summary, "demo data loaded");
        }
    }
    changelog::install(engine.store()).await?;
    engine.refresh_catalog().await?;
    changelog::capture_tables(engine.store()).await?;
    Ok(())
}

/// Retries [`prepare`] with backoff until the store answers.
async fn prepare_when_reachable(
    engine: Arc<QueryEngine>,
    config: Config,
    progress: demo::ProgressFn,
) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        match prepare(&engine, &config, &progress).await {
            Ok(()) => {
                tracing::info!("store reachable; catalog loaded");
                return;
            }
            Err(err) if error::code_of(&err) == tonic::Code::Unavailable => {
                tracing::debug!(error = %err, "store still unreachable");
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot finish starting on the store; not ready");
                return;
            }
        }
    }
}

/// Accepted gRPC connections (TLS when configured), each tracked by `connections`.
fn accepted(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    connections: Connections,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<TrackedStream>> {
    use futures::StreamExt;
    ReceiverStream::new(listen::accept(listener, tls, shutdown))
        .map(move |(io, peer)| Ok(connections.track(io, peer)))
}

/// Reloads the configuration's live settings, the auth file and the TLS certificate
/// on SIGHUP, until `shutdown`.
async fn reload_on_hangup(admin: Arc<admin::Admin>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {}
            }
            match admin.reload() {
                Ok(outcome) => tracing::info!(%outcome, "SIGHUP: configuration reloaded"),
                Err(err) => {
                    tracing::error!(error = %err, "SIGHUP: the configuration does not load; keeping the previous one")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = admin;
        shutdown.cancelled().await;
    }
}

/// The codes clients are promised for requests the gRPC and Flight SQL layers refuse
/// themselves: a message over the size limit is `RESOURCE_EXHAUSTED` (tonic says
/// `OUT_OF_RANGE`), one that is not valid protobuf — or a Flight SQL command that does
/// not decode, or is missing — `INVALID_ARGUMENT` (they say `INTERNAL` and
/// `UNIMPLEMENTED`).
fn client_codes<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let code = match headers.get("grpc-status").and_then(|s| s.to_str().ok()) {
        Some("11") if message.contains("message length too large") => "8",
        Some("13")
            if message.starts_with("failed to decode Protobuf message")
                || message.contains("Unable to decode Any value")
                || message.contains("Unable to unpack") =>
        {
            "3"
        }
        Some("12") if message.starts_with("Unhandled Error") && message.contains("is missing") => {
            "3"
        }
        _ => return response,
    };
    headers.insert("grpc-status", axum::http::HeaderValue::from_static(code));
    response
}

/// Serves gRPC and HTTP on `listeners` until `shutdown` is cancelled, then drains
/// in-flight requests and returns.
pub async fn run(listeners: Listeners, server: Server, shutdown: CancellationToken) -> Result<()> {
    let config = &server.config;
    // Ends every subscription stream at shutdown, so the gRPC server can drain.
    let hub = Arc::new(Hub::new(
        Arc::clone(&server.engine),
        config.subscriptions.clone(),
        shutdown.child_token(),
    ));
    let history = Arc::new(history::QueryLog::new(config.history));
    let settings: system::Settings = Arc::new(std::sync::RwLock::new(config.settings()));
    system::register(&server.engine, &server.writer, &hub, &history, &settings)?;
    if let Some(filter) = &config.log
        && let Err(err) = telemetry::set_log_filter(filter)
    {
        tracing::warn!(error = %err, "the configured log filter is not applied");
    }
    let admin = Arc::new(admin::Admin::new(
        Arc::clone(&server.writer),
        Arc::clone(&server.auth),
        server.tls.clone(),
        Arc::clone(&history),
        Arc::clone(&settings),
        config.clone(),
    ));
    let flight = QuiverFlightSqlService::new(
        Arc::clone(&server.writer),
        Arc::clone(&hub),
        Arc::clone(&server.auth),
        Arc::clone(&history),
        Arc::clone(&admin),
        config.max_flight_data_size,
        config.max_query_parameter_rows,
    );
    let flight = FlightServiceServer::new(flight)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let mutations = MutationsServer::new(MutationService::new(Arc::clone(&server.writer)))
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let subscriptions = SubscriptionsServer::new(SubscriptionService::new(Arc::clone(&hub)))
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let admin_service = AdminServer::new(admin::AdminService::new(Arc::clone(&admin)));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<FlightServiceServer<QuiverFlightSqlService>>()
        .await;
    health_reporter
        .set_serving::<MutationsServer<MutationService>>()
        .await;
    health_reporter
        .set_serving::<SubscriptionsServer<SubscriptionService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<admin::AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| Error::Internal(format!("cannot build the reflection service: {err}")))?;
    let tasks = Arc::new(supervise::Tasks::default());
    {
        let writer = Arc::clone(&server.writer);
        let stop = shutdown.clone();
        tasks.supervise("write upkeep", shutdown.clone(), move || {
            Arc::clone(&writer).maintain(stop.clone())
        });
        let hub = Arc::clone(&hub);
        tasks.supervise("change-log tail", shutdown.clone(), move || {
            Arc::clone(&hub).follow()
        });
    }

    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let gate = Gate {
        auth: Arc::clone(&server.auth),
        limits: Arc::new(ClientLimits::new(config.security.client_limits.clone())),
    };
    tokio::spawn(reload_on_hangup(Arc::clone(&admin), shutdown.clone()));
    if let Some(tls) = &server.tls {
        tokio::spawn(Arc::clone(tls).watch(shutdown.clone()));
    }
    tracing::info!(
        %grpc_addr,
        %http_addr,
        tls = server.tls.is_some(),
        auth = server.auth.enabled(),
        "serving"
    );

    // A closed connection's Flight SQL transactions are rolled back.
    let (connections, mut closed) = Connections::new();
    let writer = Arc::clone(&server.writer);
    tokio::spawn(async move {
        while let Some(connection) = closed.recv().await {
            writer.end_connection(connection).await;
        }
    });

    let grpc_shutdown = shutdown.clone();
    let grpc = tonic::transport::Server::builder()
        .layer(telemetry::observe::ObserveLayer)
        .layer(tower::util::MapResponseLayer::new(client_codes))
        .layer(GateLayer::new(gate.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(flight)
        .add_service(mutations)
        .add_service(subscriptions)
        .add_service(admin_service)
        .serve_with_incoming_shutdown(
            accepted(
                listeners.grpc,
                server.tls.clone(),
                connections,
                shutdown.clone(),
            ),
            async move {
                grpc_shutdown.cancelled().await;
            },
        );
    let http_shutdown = shutdown.clone();
    let router = http::router(
        http::HttpState {
            engine: Arc::clone(&server.engine),
            subscriptions: Arc::clone(&hub),
            writer: Arc::clone(&server.writer),
            history: Arc::clone(&history),
            tasks: Arc::clone(&tasks),
        },
        gate,
    );
    let http_listener = listen::HttpListener::new(
        listen::accept(listeners.http, server.tls.clone(), shutdown.clone()),
        http_addr,
    );
    let http = axum::serve(
        http_listener,
        router.into_make_service_with_connect_info::<listen::Peer>(),
    )
    .with_graceful_shutdown(async move {
        http_shutdown.cancelled().await;
    });
    let (grpc, http) = tokio::join!(grpc, http);
    grpc.map_err(|err| Error::Internal(format!("gRPC server failed: {err}")))?;
    http?;
    tracing::info!("server stopped");
    Ok(())
}
