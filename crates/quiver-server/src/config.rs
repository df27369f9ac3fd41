//! Server configuration: flags, `QUIVER_*` environment variables and a TOML file.
//!
//! Every setting is a flag (`--pool-max-size`), an environment variable
//! (`QUIVER_POOL_MAX_SIZE`) and a key of the config file (`pool_max_size`). A flag wins
//! over the environment, which wins over the file, which wins over the default.
//! [`ServeArgs::resolve`] merges them and validates the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quiver_query::{EngineConfig, ExecutorConfig, StatementLimits};
use quiver_storage::sqlite::SqliteOptions;
use quiver_storage::{PoolOptions, StoreOptions};
use serde::Deserialize;

use crate::auth::AuthMode;
use crate::auth::layer::ClientLimitConfig;
use crate::error::{Error, Result};
use crate::listen::TlsSettings;

/// The default database: a SQLite file in `./quiver-data`.
pub const DEFAULT_DB: &str = "sqlite://./quiver-data/quiver.db";
/// The default gRPC (Flight SQL) address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// The default HTTP address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

macro_rules! serve_args {
    ($( $(#[doc = $doc:literal])* $(#[arg($($extra:tt)*)])? $name:ident : $ty:ty, env = $env:literal; )*) => {
        /// Settings of `quiver serve`; unset values fall back to the config file, then
        /// to the defaults.
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs {
            /// TOML file with any of these settings (keys are the flag names with `_`).
            #[arg(long, env = "QUIVER_CONFIG", value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $($extra)*)?)]
                pub $name: Option<$ty>,
            )*
        }

        impl ServeArgs {
            /// Takes each unset value from `fallback`.
            fn or(self, fallback: ServeArgs) -> ServeArgs {
                ServeArgs {
                    config: self.config.or(fallback.config),
                    $( $name: self.$name.or(fallback.$name), )*
                }
            }
        }
    };
}

serve_args! {
    /// Database URL: `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// [default: sqlite://./quiver-data/quiver.db].
    db: String, env = "QUIVER_DB";
    /// Address of the gRPC port (Flight SQL) [default: 127.0.0.1:50051].
    grpc_addr: SocketAddr, env = "QUIVER_GRPC_ADDR";
    /// Address of the HTTP port (health, readiness, metrics, JSON queries)
    /// [default: 127.0.0.1:8080].
    http_addr: SocketAddr, env = "QUIVER_HTTP_ADDR";
    /// Load the demo data set at start when its tables do not exist [default: false].
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    demo: bool, env = "QUIVER_DEMO";
    /// Tasks in the demo data set loaded by --demo [default: 10000].
    demo_tasks: u64, env = "QUIVER_DEMO_TASKS";
    /// Rows per Arrow batch read from the store [default: 8192].
    batch_size: usize, env = "QUIVER_BATCH_SIZE";
    /// Most pooled connections (readers, on SQLite) [default: 16].
    pool_max_size: u32, env = "QUIVER_POOL_MAX_SIZE";
    /// Connections opened at start and kept idle [default: 2].
    pool_min_idle: u32, env = "QUIVER_POOL_MIN_IDLE";
    /// Milliseconds a query waits for a pooled connection before failing [default: 5000].
    pool_acquire_timeout_ms: u64, env = "QUIVER_POOL_ACQUIRE_TIMEOUT_MS";
    /// Seconds an idle connection above the minimum is kept [default: 600].
    pool_idle_timeout_s: u64, env = "QUIVER_POOL_IDLE_TIMEOUT_S";
    /// Seconds after which a connection is replaced [default: 1800].
    pool_max_lifetime_s: u64, env = "QUIVER_POOL_MAX_LIFETIME_S";
    /// Seconds a connection may be held before it is logged as a possible leak
    /// [default: 60].
    pool_leak_threshold_s: u64, env = "QUIVER_POOL_LEAK_THRESHOLD_S";
    /// Longest pause between reconnect attempts while the database is down, ms
    /// [default: 2000].
    pool_max_backoff_ms: u64, env = "QUIVER_POOL_MAX_BACKOFF_MS";
    /// SQLite page cache per connection, KiB [default: 65536].
    sqlite_cache_size_kib: u32, env = "QUIVER_SQLITE_CACHE_SIZE_KIB";
    /// Milliseconds SQLite waits on a locked database [default: 5000].
    sqlite_busy_timeout_ms: u64, env = "QUIVER_SQLITE_BUSY_TIMEOUT_MS";
    /// Memory query operators may hold, MiB; 0 for no limit [default: 1024].
    memory_limit_mb: usize, env = "QUIVER_MEMORY_LIMIT_MB";
    /// Parallelism of query operators [default: number of CPUs].
    target_partitions: usize, env = "QUIVER_TARGET_PARTITIONS";
    /// Largest gRPC message accepted, MiB [default: 64].
    max_message_size_mb: usize, env = "QUIVER_MAX_MESSAGE_SIZE_MB";
    /// Most rows one mutation request may write [default: 100000].
    max_mutation_rows: usize, env = "QUIVER_MAX_MUTATION_ROWS";
    /// Largest mutation request, MiB (larger ones get RESOURCE_EXHAUSTED) [default: 32].
    max_mutation_size_mb: usize, env = "QUIVER_MAX_MUTATION_SIZE_MB";
    /// Hours the change log keeps commits [default: 168].
    change_log_retention_h: u64, env = "QUIVER_CHANGE_LOG_RETENTION_H";
    /// Hours an idempotency key is remembered [default: 24].
    idempotency_window_h: u64, env = "QUIVER_IDEMPOTENCY_WINDOW_H";
    /// Seconds a Flight SQL transaction may sit idle before it is rolled back (on SQLite
    /// an open transaction holds the single writer) [default: 30].
    transaction_idle_timeout_s: u64, env = "QUIVER_TRANSACTION_IDLE_TIMEOUT_S";
    /// Largest result one table read inside a Flight SQL transaction may hold, MiB
    /// (queries in a transaction read on its own connection, one table at a time)
    /// [default: 256].
    transaction_read_limit_mb: usize, env = "QUIVER_TRANSACTION_READ_LIMIT_MB";
    /// Most concurrent subscriptions (gRPC and Flight) [default: 10000].
    max_subscribers: usize, env = "QUIVER_MAX_SUBSCRIBERS";
    /// Milliseconds between progress messages on each subscription [default: 1000].
    subscription_progress_interval_ms: u64, env = "QUIVER_SUBSCRIPTION_PROGRESS_INTERVAL_MS";
    /// Messages queued per subscription before a slow one is served from the change
    /// log instead [default: 1024].
    subscription_buffer: usize, env = "QUIVER_SUBSCRIPTION_BUFFER";
    /// Most tables one subscription follows [default: 64].
    max_subscription_tables: usize, env = "QUIVER_MAX_SUBSCRIPTION_TABLES";
    /// Largest SQL text a client may send — statements, Mutations predicates,
    /// Subscriptions filters — KiB [default: 1024].
    max_statement_kb: usize, env = "QUIVER_MAX_STATEMENT_KB";
    /// Deepest expression nesting a client's SQL may have, each operator of a chain
    /// (`a OR b OR …`) counting one level [default: 1000].
    max_expression_depth: usize, env = "QUIVER_MAX_EXPRESSION_DEPTH";
    /// Most parameter rows bound to a prepared query (each row runs the query once)
    /// [default: 1024].
    max_query_parameter_rows: usize, env = "QUIVER_MAX_QUERY_PARAMETER_ROWS";
    /// Most operations of one Mutations Apply [default: 1000].
    max_mutation_operations: usize, env = "QUIVER_MAX_MUTATION_OPERATIONS";
    /// Seconds a query may compute, and may wait for its client to take a batch;
    /// 0 for no limit [default: 600].
    query_timeout_s: u64, env = "QUIVER_QUERY_TIMEOUT_S";
    /// Queries running at once; more wait in line [default: 4 × CPUs].
    max_concurrent_queries: usize, env = "QUIVER_MAX_CONCURRENT_QUERIES";
    /// Milliseconds a query waits in line before RESOURCE_EXHAUSTED [default: 30000].
    query_queue_timeout_ms: u64, env = "QUIVER_QUERY_QUEUE_TIMEOUT_MS";
    /// Authentication: `on`, or `none` (anyone may do anything; logged as a warning)
    /// [default: on when --auth-file is given; none when both ports listen on loopback;
    /// otherwise the server refuses to start].
    auth: AuthMode, env = "QUIVER_AUTH";
    /// TOML file of users, API tokens, JWT keys and client-certificate names
    /// (docs/security.md); reloaded on SIGHUP.
    auth_file: PathBuf, env = "QUIVER_AUTH_FILE";
    /// PEM certificate chain: both ports serve TLS only (with --tls-key).
    tls_cert: PathBuf, env = "QUIVER_TLS_CERT";
    /// PEM private key of --tls-cert.
    tls_key: PathBuf, env = "QUIVER_TLS_KEY";
    /// PEM roots client certificates are verified against (mutual TLS).
    tls_client_ca: PathBuf, env = "QUIVER_TLS_CLIENT_CA";
    /// With --tls-client-ca: whether clients must present a certificate
    /// [default: optional].
    tls_client_auth: ClientAuth, env = "QUIVER_TLS_CLIENT_AUTH";
    /// Requests per second one principal may make (gRPC calls and HTTP requests);
    /// 0 for no limit [default: 0].
    client_rate_limit_rps: u32, env = "QUIVER_CLIENT_RATE_LIMIT_RPS";
    /// Requests one principal may make at once above its rate [default: the rate].
    client_rate_limit_burst: u32, env = "QUIVER_CLIENT_RATE_LIMIT_BURST";
    /// Queries one principal may run at once; more wait for its own to end
    /// [default: half of max_concurrent_queries].
    client_max_concurrent_queries: usize, env = "QUIVER_CLIENT_MAX_CONCURRENT_QUERIES";
    /// Subscriptions one principal may hold open [default: 1000].
    client_max_subscriptions: usize, env = "QUIVER_CLIENT_MAX_SUBSCRIPTIONS";
    /// Log filter, `QUIVER_LOG` syntax (`info`, `quiver_server=debug,warn`); changed
    /// live on SIGHUP [default: QUIVER_LOG, else info].
    log: String, env = "QUIVER_LOG_FILTER";
    /// A query taking at least this long is logged and kept in system.slow_queries;
    /// changed live [default: 1000].
    slow_query_ms: u64, env = "QUIVER_SLOW_QUERY_MS";
    /// Queries kept in system.queries; changed live [default: 1000].
    query_history: usize, env = "QUIVER_QUERY_HISTORY";
    /// Slow queries kept in system.slow_queries; changed live [default: 1000].
    slow_query_history: usize, env = "QUIVER_SLOW_QUERY_HISTORY";
    /// Directory the admin backup call writes SQLite backups into (the call names a
    /// file in it); unset, backups are refused.
    backup_dir: PathBuf, env = "QUIVER_BACKUP_DIR";
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A certificate, if presented, must verify; clients without one authenticate
    /// otherwise.
    Optional,
    /// No connection without a verified certificate.
    Required,
}

/// Authentication, TLS and per-principal limits.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// `--auth`, when given.
    pub auth: Option<AuthMode>,
    /// The auth file.
    pub auth_file: Option<PathBuf>,
    /// TLS on both ports, when configured.
    pub tls: Option<TlsSettings>,
    /// Per-principal limits.
    pub client_limits: ClientLimitConfig,
}

/// Settings of the subscription service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// Most concurrent subscriptions per server.
    pub max_subscribers: usize,
    /// How often each subscription is sent a progress message.
    pub progress_interval: Duration,
    /// Messages queued per subscription before it is served from the log instead.
    pub buffer: usize,
    /// Most tables one subscription follows.
    pub max_tables: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            max_subscribers: 10_000,
            progress_interval: Duration::from_secs(1),
            buffer: 1024,
            max_tables: 64,
        }
    }
}

/// The resolved, validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database URL.
    pub db: String,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Load the demo data when missing.
    pub demo: bool,
    /// Size of the demo data.
    pub demo_tasks: u64,
    /// Storage settings.
    pub store: StoreOptions,
    /// Query engine settings.
    pub engine: EngineConfig,
    /// Largest gRPC message accepted, bytes.
    pub max_message_size: usize,
    /// Largest Arrow payload per Flight message sent, bytes (batches are split).
    pub max_flight_data_size: usize,
    /// Limits and retention of the write path.
    pub writes: WriteConfig,
    /// Limits of the subscription service.
    pub subscriptions: SubscriptionConfig,
    /// Most parameter rows bound to a prepared query.
    pub max_query_parameter_rows: usize,
    /// Authentication, TLS and per-principal limits.
    pub security: SecurityConfig,
    /// Query history and the slow-query log (changed live).
    pub history: crate::history::HistoryConfig,
    /// The log filter to apply (changed live); `None` keeps the one of the start.
    pub log: Option<String>,
    /// Where admin backups go.
    pub backup_dir: Option<PathBuf>,
    /// The settings as given on the command line and in the environment, before the
    /// file: what a reload merges the re-read file under.
    pub args: ServeArgs,
}

/// Limits and retention of the write path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteConfig {
    /// Most rows one mutation request may write.
    pub max_rows: usize,
    /// Largest mutation request, bytes.
    pub max_request_bytes: usize,
    /// How long the change log keeps commits.
    pub change_log_retention: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// How long a Flight SQL transaction may sit idle before it is rolled back.
    pub transaction_idle_timeout: Duration,
    /// Largest result of one table read inside a Flight SQL transaction, bytes.
    pub transaction_read_limit: usize,
    /// Most operations of one Mutations Apply.
    pub max_operations: usize,
    /// How large and deep client SQL (statements, predicates) may be.
    pub limits: StatementLimits,
}

impl Default for Config {
    fn default() -> Self {
        ServeArgs::default()
            .resolve()
            .expect("the defaults are a valid configuration")
    }
}

impl ServeArgs {
    /// Reads the config file named by `--config`, if any, and merges it under `self`.
    pub fn with_file(self) -> Result<ServeArgs> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|err| {
            Error::Config(format!("cannot read config file {}: {err}", path.display()))
        })?;
        let file: ServeArgs = toml::from_str(&text)
            .map_err(|err| Error::Config(format!("config file {}: {err}", path.display())))?;
        Ok(self.or(file))
    }

    /// Applies the defaults and validates.
    pub fn resolve(self) -> Result<Config> {
        let args = self.clone();
        let pool_defaults = PoolOptions::default();
        let sqlite_defaults = SqliteOptions::default();
        let engine_defaults = EngineConfig::default();
        let batch_size = self.batch_size.unwrap_or(8192);
        let max_message_size_mb = self.max_message_size_mb.unwrap_or(64);
        let limits = StatementLimits {
            max_bytes: self.max_statement_kb.unwrap_or(1024).saturating_mul(1024),
            max_depth: self.max_expression_depth.unwrap_or(1000),
        };
        let executor_defaults = ExecutorConfig::default();
        let config = Config {
            db: self.db.unwrap_or_else(|| DEFAULT_DB.to_owned()),
            grpc_addr: self
                .grpc_addr
                .unwrap_or_else(|| DEFAULT_GRPC_ADDR.parse().expect("valid default address")),
            http_addr: self
                .http_addr
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.parse().expect("valid default address")),
            demo: self.demo.unwrap_or(false),
            demo_tasks: self.demo_tasks.unwrap_or(10_000),
            store: StoreOptions {
                pool: PoolOptions {
                    max_size: self.pool_max_size.unwrap_or(pool_defaults.max_size),
                    min_idle: self.pool_min_idle.unwrap_or(pool_defaults.min_idle),
                    acquire_timeout: self
                        .pool_acquire_timeout_ms
                        .map_or(pool_defaults.acquire_timeout, Duration::from_millis),
                    idle_timeout: self
                        .pool_idle_timeout_s
                        .map_or(pool_defaults.idle_timeout, |s| {
                            (s > 0).then(|| Duration::from_secs(s))
                        }),
                    max_lifetime: self
                        .pool_max_lifetime_s
                        .map_or(pool_defaults.max_lifetime, |s| {
                            (s > 0).then(|| Duration::from_secs(s))
                        }),
                    leak_threshold: self
                        .pool_leak_threshold_s
                        .map_or(pool_defaults.leak_threshold, Duration::from_secs),
                    max_backoff: self
                        .pool_max_backoff_ms
                        .map_or(pool_defaults.max_backoff, Duration::from_millis),
                },
                sqlite: SqliteOptions {
                    cache_size_kib: self
                        .sqlite_cache_size_kib
                        .unwrap_or(sqlite_defaults.cache_size_kib),
                    busy_timeout: self
                        .sqlite_busy_timeout_ms
                        .map_or(sqlite_defaults.busy_timeout, Duration::from_millis),
                    mmap_size: sqlite_defaults.mmap_size,
                },
                batch_size,
            },
            engine: EngineConfig {
                batch_size,
                target_partitions: self
                    .target_partitions
                    .unwrap_or(engine_defaults.target_partitions),
                memory_limit: match self.memory_limit_mb {
                    Some(0) => None,
                    Some(mb) => Some(mb << 20),
                    None => engine_defaults.memory_limit,
                },
                limits,
                executor: ExecutorConfig {
                    threads: executor_defaults.threads,
                    max_concurrent: self
                        .max_concurrent_queries
                        .unwrap_or(executor_defaults.max_concurrent),
                    queue_timeout: self
                        .query_queue_timeout_ms
                        .map_or(executor_defaults.queue_timeout, Duration::from_millis),
                    timeout: match self.query_timeout_s {
                        Some(0) => None,
                        Some(s) => Some(Duration::from_secs(s)),
                        None => executor_defaults.timeout,
                    },
                },
            },
            max_message_size: max_message_size_mb << 20,
            max_flight_data_size: 2 << 20,
            writes: WriteConfig {
                max_rows: self.max_mutation_rows.unwrap_or(100_000),
                max_request_bytes: self.max_mutation_size_mb.unwrap_or(32) << 20,
                change_log_retention: Duration::from_secs(
                    self.change_log_retention_h.unwrap_or(168) * 3600,
                ),
                idempotency_window: Duration::from_secs(
                    self.idempotency_window_h.unwrap_or(24) * 3600,
                ),
                transaction_idle_timeout: Duration::from_secs(
                    self.transaction_idle_timeout_s.unwrap_or(30),
                ),
                transaction_read_limit: self.transaction_read_limit_mb.unwrap_or(256) << 20,
                max_operations: self.max_mutation_operations.unwrap_or(1_000),
                limits,
            },
            subscriptions: SubscriptionConfig {
                max_subscribers: self.max_subscribers.unwrap_or(10_000),
                progress_interval: Duration::from_millis(
                    self.subscription_progress_interval_ms.unwrap_or(1000),
                ),
                buffer: self.subscription_buffer.unwrap_or(1024),
                max_tables: self.max_subscription_tables.unwrap_or(64),
            },
            max_query_parameter_rows: self.max_query_parameter_rows.unwrap_or(1024),
            security: SecurityConfig {
                auth: self.auth,
                auth_file: self.auth_file,
                tls: match (self.tls_cert, self.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsSettings {
                        cert,
                        key,
                        client_ca: self.tls_client_ca,
                        client_auth_required: self.tls_client_auth == Some(ClientAuth::Required),
                    }),
                    (None, None) if self.tls_client_ca.is_none() => None,
                    _ => {
                        return Err(Error::Config(
                            "TLS needs both tls_cert and tls_key (and tls_client_ca only with them)"
                                .to_owned(),
                        ));
                    }
                },
                client_limits: ClientLimitConfig {
                    rate_per_second: f64::from(self.client_rate_limit_rps.unwrap_or(0)),
                    burst: f64::from(
                        self.client_rate_limit_burst
                            .or(self.client_rate_limit_rps)
                            .unwrap_or(0),
                    ),
                    max_queries: self.client_max_concurrent_queries.unwrap_or_else(|| {
                        (self
                            .max_concurrent_queries
                            .unwrap_or(executor_defaults.max_concurrent)
                            / 2)
                        .max(1)
                    }),
                    max_subscriptions: self.client_max_subscriptions.unwrap_or(1000),
                    queue_timeout: self
                        .query_queue_timeout_ms
                        .map_or(executor_defaults.queue_timeout, Duration::from_millis),
                },
            },
            history: crate::history::HistoryConfig {
                capacity: self.query_history.unwrap_or(1000),
                slow_capacity: self.slow_query_history.unwrap_or(1000),
                slow_threshold: Duration::from_millis(self.slow_query_ms.unwrap_or(1000)),
            },
            log: self.log,
            backup_dir: self.backup_dir,
            args,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// The configuration `args` (flags and environment) give with the file they name
    /// under them, resolved and validated.
    pub fn load(args: ServeArgs) -> Result<Config> {
        let given = args.clone();
        let mut config = args.with_file()?.resolve()?;
        config.args = given;
        Ok(config)
    }

    /// The configuration read again: the file re-read under the same flags and
    /// environment (SIGHUP).
    pub fn reload(&self) -> Result<Config> {
        Config::load(self.args.clone())
    }

    /// The effective settings by config key, with whether each changes on reload.
    pub fn settings(&self) -> Vec<(String, String, bool)> {
        let ms = |d: Duration| d.as_millis().to_string();
        let optional = |v: Option<String>| v.unwrap_or_default();
        let pool = &self.store.pool;
        let executor = &self.engine.executor;
        let limits = &self.security.client_limits;
        let rows: Vec<(&str, String, bool)> = vec![
            ("db", redact_url(&self.db), false),
            ("grpc_addr", self.grpc_addr.to_string(), false),
            ("http_addr", self.http_addr.to_string(), false),
            ("demo", self.demo.to_string(), false),
            ("batch_size", self.store.batch_size.to_string(), false),
            ("pool_max_size", pool.max_size.to_string(), false),
            ("pool_min_idle", pool.min_idle.to_string(), false),
            ("pool_acquire_timeout_ms", ms(pool.acquire_timeout), false),
            (
                "memory_limit_mb",
                optional(self.engine.memory_limit.map(|b| (b >> 20).to_string())),
                false,
            ),
            (
                "target_partitions",
                self.engine.target_partitions.to_string(),
                false,
            ),
            (
                "max_concurrent_queries",
                executor.max_concurrent.to_string(),
                false,
            ),
            ("query_queue_timeout_ms", ms(executor.queue_timeout), false),
            (
                "query_timeout_s",
                optional(executor.timeout.map(|t| t.as_secs().to_string())),
                false,
            ),
            (
                "max_statement_kb",
                (self.engine.limits.max_bytes / 1024).to_string(),
                false,
            ),
            (
                "max_message_size_mb",
                (self.max_message_size >> 20).to_string(),
                false,
            ),
            ("max_mutation_rows", self.writes.max_rows.to_string(), false),
            (
                "max_mutation_size_mb",
                (self.writes.max_request_bytes >> 20).to_string(),
                false,
            ),
            (
                "change_log_retention_h",
                (self.writes.change_log_retention.as_secs() / 3600).to_string(),
                false,
            ),
            (
                "transaction_idle_timeout_s",
                self.writes.transaction_idle_timeout.as_secs().to_string(),
                false,
            ),
            (
                "max_subscribers",
                self.subscriptions.max_subscribers.to_string(),
                false,
            ),
            (
                "auth",
                match self.security.auth {
                    Some(crate::auth::AuthMode::None) => "none".to_owned(),
                    Some(crate::auth::AuthMode::On) => "on".to_owned(),
                    None => String::new(),
                },
                false,
            ),
            (
                "auth_file",
                optional(
                    self.security
                        .auth_file
                        .as_ref()
                        .map(|p| p.display().to_string()),
                ),
                // The file's contents reload; which file, at restart.
                false,
            ),
            ("tls", self.security.tls.is_some().to_string(), false),
            (
                "client_rate_limit_rps",
                limits.rate_per_second.to_string(),
                false,
            ),
            (
                "client_max_concurrent_queries",
                limits.max_queries.to_string(),
                false,
            ),
            (
                "client_max_subscriptions",
                limits.max_subscriptions.to_string(),
                false,
            ),
            (
                "log",
                self.log
                    .clone()
                    .unwrap_or_else(crate::telemetry::log_filter),
                true,
            ),
            ("slow_query_ms", ms(self.history.slow_threshold), true),
            ("query_history", self.history.capacity.to_string(), true),
            (
                "slow_query_history",
                self.history.slow_capacity.to_string(),
                true,
            ),
            (
                "backup_dir",
                optional(self.backup_dir.as_ref().map(|p| p.display().to_string())),
                false,
            ),
        ];
        rows.into_iter()
            .map(|(name, value, live)| (name.to_owned(), value, live))
            .collect()
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if let Some(filter) = &self.log
            && let Err(err) = tracing_subscriber::EnvFilter::try_new(filter)
        {
            return fail(format!("log filter {filter:?} does not parse: {err}"));
        }
        if let Some(dir) = &self.backup_dir
            && !dir.is_dir()
        {
            return fail(format!("backup_dir {} is not a directory", dir.display()));
        }
        if self.history.capacity > 1_000_000 || self.history.slow_capacity > 1_000_000 {
            return fail("query_history and slow_query_history must be at most 1000000".to_owned());
        }
        quiver_storage::StoreLocation::parse(&self.db)
            .map_err(|err| Error::Config(err.to_string()))?;
        if self.store.pool.max_size == 0 {
            return fail("pool_max_size must be at least 1".to_owned());
        }
        if self.store.pool.min_idle > self.store.pool.max_size {
            return fail(format!(
                "pool_min_idle ({}) exceeds pool_max_size ({})",
                self.store.pool.min_idle, self.store.pool.max_size
            ));
        }
        if self.store.pool.acquire_timeout.is_zero() {
            return fail("pool_acquire_timeout_ms must be positive".to_owned());
        }
        if !(1..=1_000_000).contains(&self.store.batch_size) {
            return fail(format!(
                "batch_size must be between 1 and 1000000, not {}",
                self.store.batch_size
            ));
        }
        if self.writes.max_rows == 0 {
            return fail("max_mutation_rows must be at least 1".to_owned());
        }
        if self.writes.max_request_bytes == 0
            || self.writes.max_request_bytes > self.max_message_size
        {
            return fail(format!(
                "max_mutation_size_mb must be between 1 and max_message_size_mb ({})",
                self.max_message_size >> 20
            ));
        }
        if self.writes.transaction_idle_timeout.is_zero() {
            return fail("transaction_idle_timeout_s must be at least 1".to_owned());
        }
        if self.writes.transaction_read_limit == 0 {
            return fail("transaction_read_limit_mb must be at least 1".to_owned());
        }
        if self.subscriptions.progress_interval < Duration::from_millis(10) {
            return fail("subscription_progress_interval_ms must be at least 10".to_owned());
        }
        if self.subscriptions.buffer == 0 {
            return fail("subscription_buffer must be at least 1".to_owned());
        }
        if self.engine.target_partitions == 0 {
            return fail("target_partitions must be at least 1".to_owned());
        }
        if self.max_message_size < (4 << 20) {
            return fail("max_message_size_mb must be at least 4".to_owned());
        }
        if self.engine.limits.max_bytes < 1024 {
            return fail("max_statement_kb must be at least 1".to_owned());
        }
        if !(10..=100_000).contains(&self.engine.limits.max_depth) {
            return fail(format!(
                "max_expression_depth must be between 10 and 100000, not {}",
                self.engine.limits.max_depth
            ));
        }
        if self.engine.executor.max_concurrent == 0 {
            return fail("max_concurrent_queries must be at least 1".to_owned());
        }
        if self.max_query_parameter_rows == 0
            || self.writes.max_operations == 0
            || self.subscriptions.max_tables == 0
        {
            return fail(
                "max_query_parameter_rows, max_mutation_operations and max_subscription_tables \
                 must be at least 1"
                    .to_owned(),
            );
        }
        if self.security.client_limits.max_queries == 0
            || self.security.client_limits.max_subscriptions == 0
        {
            return fail(
                "client_max_concurrent_queries and client_max_subscriptions must be at least 1"
                    .to_owned(),
            );
        }
        if self
            .security
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_none() && t.client_auth_required)
        {
            return fail("tls_client_auth = required needs tls_client_ca".to_owned());
        }
        if self.demo && self.demo_tasks == 0 {
            return fail("demo_tasks must be at least 1".to_owned());
        }
        if self.grpc_addr == self.http_addr && self.grpc_addr.port() != 0 {
            return fail(format!(
                "grpc_addr and http_addr are both {}",
                self.grpc_addr
            ));
        }
        Ok(())
    }
}

/// A database URL with its password hidden.
fn redact_url(url: &str) -> String {
    // Every parameter whose name speaks of a password (also percent-encoded, as
    // `pass%77ord`) loses its value.
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("pass") => format!("{name}=***"),
            _ => parameter.to_owned(),
        })
        .collect();
    format!("{base}?{}", parameters.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.db, DEFAULT_DB);
        assert_eq!(config.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(!config.demo);
    }

    #[test]
    fn the_reference_file_lists_the_defaults() {
        let file: ServeArgs = toml::from_str(include_str!("../../../deploy/quiver.toml")).unwrap();
        let mut from_file = file.resolve().unwrap();
        // The settings as given differ (the file's, none); what they resolve to may not.
        from_file.args = ServeArgs::default();
        assert_eq!(format!("{from_file:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn the_production_file_is_valid() {
        let file: ServeArgs =
            toml::from_str(include_str!("../../../deploy/quiver-production.toml")).unwrap();
        let config = file.resolve().unwrap();
        assert_eq!(config.security.auth, Some(AuthMode::On));
        assert!(config.security.tls.is_some());
        assert_eq!(config.security.client_limits.max_queries, 8);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quiver.toml");
        std::fs::write(
            &path,
            "db = \"sqlite://file.db\"\npool_max_size = 3\nbatch_size = 100\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            batch_size: Some(200),
            ..ServeArgs::default()
        };
        let config = args.with_file().unwrap().resolve().unwrap();
        assert_eq!(config.db, "sqlite://file.db");
        assert_eq!(config.store.pool.max_size, 3);
        assert_eq!(config.store.batch_size, 200);
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quiver.toml");
        std::fs::write(&path, "pool_max_sise = 3\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .with_file()
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `pool_max_sise`"),
            "{err}"
        );

        let err = ServeArgs {
            pool_max_size: Some(2),
            pool_min_idle: Some(5),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: pool_min_idle (5) exceeds pool_max_size (2)"
        );

        let err = ServeArgs {
            db: Some("mysql://x".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().contains("unsupported database URL"),
            "{err}"
        );
    }

    #[test]
    fn settings_hide_the_database_password() {
        assert_eq!(
            redact_url("postgres://app:secret@db:5432/quiver"),
            "postgres://app:***@db:5432/quiver"
        );
        assert_eq!(
            redact_url("postgres://app@db/quiver"),
            "postgres://app@db/quiver"
        );
        assert_eq!(redact_url("sqlite://./q.db"), "sqlite://./q.db");
        assert_eq!(
            redact_url("postgres://app@db/q?sslmode=require&password=x1&user=a"),
            "postgres://app@db/q?sslmode=require&password=***&user=a"
        );
        assert_eq!(
            redact_url("postgres://a:p@w@db/q?sslpassword=k&password=s&pass%77ord=t&password=u"),
            "postgres://a:***@db/q?sslpassword=***&password=***&pass%77ord=***&password=***"
        );
    }
}
