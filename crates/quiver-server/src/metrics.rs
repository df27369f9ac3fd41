//! The Prometheus metrics: one registry for the process, served on `/metrics`.
//!
//! `prometheus-client` (the Prometheus project's own Rust client) encodes OpenMetrics,
//! the only text format that carries exemplars: latency buckets name the trace of a
//! request that fell in them when tracing is on. Scrapers that ask for the classic
//! text format (`promtool`, older agents) get it without exemplars ([`render`]).
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`rpc.server.call.duration` → `rpc_server_call_duration_seconds`,
//! `db.client.connection.max`, …; `db.client.connection.count` is
//! `db_client_connections_usage`, its earlier name, as a `_count` suffix is a
//! histogram's in Prometheus); the rest are `quiver_*`. Gauges that describe
//! state (pools, transactions, the change log) are read when scraped.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use quiver_storage::PoolStatus;
use quiver_storage::pool::{WAIT_BUCKETS_MICROS, WaitHistogram};

/// An exemplar's labels: the trace a sample came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    trace_id: String,
}

impl TraceLabel {
    /// The exemplar label of trace `trace_id` (32 hex digits).
    pub fn new(trace_id: String) -> Self {
        Self { trace_id }
    }
}

/// A gRPC call, by the OpenTelemetry `rpc.*` attributes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_system: &'static str,
    pub rpc_service: &'static str,
    pub rpc_method: &'static str,
    pub rpc_grpc_status_code: i32,
}

/// An HTTP request, by the OpenTelemetry `http.*` attributes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub http_request_method: String,
    pub http_route: String,
    pub http_response_status_code: String,
}

/// A phase of a query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub surface: &'static str,
    pub phase: &'static str,
}

/// The surface a query came through.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabels {
    pub surface: &'static str,
}

/// A query's outcome on a surface.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub surface: &'static str,
    pub status: &'static str,
}

/// An error by surface and gRPC code name (`INVALID_ARGUMENT`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub surface: &'static str,
    pub code: &'static str,
}

/// A connection pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub db_client_connection_pool_name: &'static str,
}

/// A connection pool's connections in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub db_client_connection_pool_name: &'static str,
    pub db_client_connection_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Latency = Family<
    RpcLabels,
    HistogramWithExemplars<TraceLabel>,
    fn() -> HistogramWithExemplars<TraceLabel>,
>;
type HttpLatency = Family<
    HttpLabels,
    HistogramWithExemplars<TraceLabel>,
    fn() -> HistogramWithExemplars<TraceLabel>,
>;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// gRPC calls: duration to the end of the response stream, by method and code.
    pub rpc_duration: Latency,
    /// HTTP requests, likewise.
    pub http_duration: HttpLatency,
    /// Query phases: plan, execute (to the first batch), stream (to the last).
    pub query_phase: Family<
        PhaseLabels,
        HistogramWithExemplars<TraceLabel>,
        fn() -> HistogramWithExemplars<TraceLabel>,
    >,
    /// Queries ended, by outcome.
    pub queries: Family<QueryLabels, Counter>,
    /// Queries over the slow-query threshold.
    pub slow_queries: Counter,
    /// Queries streaming now.
    pub queries_running: Gauge,
    /// Rows and Arrow IPC bytes streamed to clients.
    pub rows_streamed: Family<SurfaceLabels, Counter>,
    pub bytes_streamed: Family<SurfaceLabels, Counter>,
    /// Failed calls by gRPC code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Commits written through this server.
    pub commits: Counter,
    /// Connection pools: connections by state, the most allowed, and waits for one.
    pub pool_connections: Family<PoolStateLabels, Gauge>,
    pub pool_max: Family<PoolLabels, Gauge>,
    /// The pool's acquire-wait histogram as last read ([`Metrics::set_pool`]).
    pool_wait: Arc<Mutex<Option<WaitHistogram>>>,
    /// Flight SQL transactions open.
    pub transactions_open: Gauge,
    /// The change log: newest version read by the tail, oldest still kept.
    pub change_log_latest: Gauge,
    pub change_log_oldest: Gauge,
    /// Subscriptions: open, most versions behind, events handed over, log reads by
    /// subscribers catching up, ended behind retention, commit-to-delivery latency.
    pub subscriptions_active: Gauge,
    pub subscription_lag_max: Gauge,
    pub subscription_events: Counter,
    pub subscription_catch_up_reads: Counter,
    pub subscriptions_behind_retention: Counter,
    pub delivery_latency: Histogram,
}

/// Latency buckets, seconds: 100 µs to ~105 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 21)
}

fn latency_histogram() -> HistogramWithExemplars<TraceLabel> {
    HistogramWithExemplars::new(latency_buckets())
}

fn plain_latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let rpc_duration: Latency = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "rpc_server_call_duration",
            "gRPC calls served, to the end of the response stream (rpc.server.call.duration)",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let http_duration: HttpLatency = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "HTTP requests served, to the end of the body (http.server.request.duration)",
            Unit::Seconds,
            http_duration.clone(),
        );
        let query_phase = Family::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "quiver_query_phase_duration",
            "Query phases: plan, execute (to the first batch) and stream (to the last)",
            Unit::Seconds,
            query_phase.clone(),
        );
        let queries = Family::default();
        registry.register(
            "quiver_queries",
            "Queries ended, by outcome",
            queries.clone(),
        );
        let slow_queries = Counter::default();
        registry.register(
            "quiver_slow_queries",
            "Queries that took longer than the slow-query threshold",
            slow_queries.clone(),
        );
        let queries_running = Gauge::default();
        registry.register(
            "quiver_queries_running",
            "Queries streaming now",
            queries_running.clone(),
        );
        let rows_streamed = Family::default();
        registry.register(
            "quiver_query_rows",
            "Rows streamed to clients",
            rows_streamed.clone(),
        );
        let bytes_streamed = Family::default();
        registry.register(
            "quiver_query_bytes",
            "Bytes of results streamed to clients (Arrow IPC or JSON)",
            bytes_streamed.clone(),
        );
        let errors = Family::default();
        registry.register("quiver_errors", "Failed calls by gRPC code", errors.clone());
        let commits = Counter::default();
        registry.register(
            "quiver_commits",
            "Commits written through this server",
            commits.clone(),
        );
        let pool_connections = Family::default();
        registry.register(
            "db_client_connections_usage",
            "Store connections by state (db.client.connection.count; Prometheus keeps the _count suffix for histograms)",
            pool_connections.clone(),
        );
        let pool_max = Family::default();
        registry.register(
            "db_client_connection_max",
            "Most store connections a pool opens (db.client.connection.max)",
            pool_max.clone(),
        );
        let pool_wait = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(PoolWait(Arc::clone(&pool_wait))));
        let transactions_open = Gauge::default();
        registry.register(
            "quiver_transactions_open",
            "Flight SQL transactions open",
            transactions_open.clone(),
        );
        let change_log_latest = Gauge::default();
        registry.register(
            "quiver_change_log_latest_version",
            "Newest change-log version the subscription tail has read",
            change_log_latest.clone(),
        );
        let change_log_oldest = Gauge::default();
        registry.register(
            "quiver_change_log_oldest_version",
            "Oldest version the change log still holds (0: none)",
            change_log_oldest.clone(),
        );
        let subscriptions_active = Gauge::default();
        registry.register(
            "quiver_subscriptions_active",
            "Open subscriptions (gRPC and Flight)",
            subscriptions_active.clone(),
        );
        let subscription_lag_max = Gauge::default();
        registry.register(
            "quiver_subscription_lag_versions_max",
            "Versions the furthest-behind subscription has yet to receive",
            subscription_lag_max.clone(),
        );
        let subscription_events = Counter::default();
        registry.register(
            "quiver_subscription_events_delivered",
            "Change events handed to subscribers",
            subscription_events.clone(),
        );
        let subscription_catch_up_reads = Counter::default();
        registry.register(
            "quiver_subscription_catchup_reads",
            "Reads of the change log by subscribers catching up (start, or fell behind)",
            subscription_catch_up_reads.clone(),
        );
        let subscriptions_behind_retention = Counter::default();
        registry.register(
            "quiver_subscriptions_behind_retention",
            "Subscriptions refused or ended because their changes were pruned",
            subscriptions_behind_retention.clone(),
        );
        let delivery_latency = plain_latency_histogram();
        registry.register_with_unit(
            "quiver_subscription_delivery_latency",
            "From a commit to its events handed to a subscriber's stream",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("quiver_build_info", "The running version (always 1)", build);
        Self {
            registry,
            rpc_duration,
            http_duration,
            query_phase,
            queries,
            slow_queries,
            queries_running,
            rows_streamed,
            bytes_streamed,
            errors,
            commits,
            pool_connections,
            pool_max,
            pool_wait,
            transactions_open,
            change_log_latest,
            change_log_oldest,
            subscriptions_active,
            subscription_lag_max,
            subscription_events,
            subscription_catch_up_reads,
            subscriptions_behind_retention,
            delivery_latency,
        }
    }

    /// Reads the store pool's state into the pool metrics (when scraped).
    pub fn set_pool(&self, pool: &PoolStatus) {
        let state = |state| PoolStateLabels {
            db_client_connection_pool_name: POOL_NAME,
            db_client_connection_state: state,
        };
        self.pool_connections
            .get_or_create(&state("idle"))
            .set(i64::from(pool.idle));
        self.pool_connections
            .get_or_create(&state("used"))
            .set(i64::from(pool.in_use));
        self.pool_max
            .get_or_create(&PoolLabels {
                db_client_connection_pool_name: POOL_NAME,
            })
            .set(i64::from(pool.max_size));
        *self.pool_wait.lock().expect("never poisoned") = Some(pool.acquire_wait.clone());
    }

    /// Records a query phase's duration.
    pub fn phase(&self, surface: &'static str, phase: &'static str, elapsed: Duration) {
        self.query_phase
            .get_or_create(&PhaseLabels { surface, phase })
            .observe(elapsed.as_secs_f64(), exemplar(), None);
    }

    /// Counts a failed call.
    pub fn error(&self, surface: &'static str, code: tonic::Code) {
        self.errors
            .get_or_create(&ErrorLabels {
                surface,
                code: crate::error::code_name(code),
            })
            .inc();
    }
}

/// The name the store's connection pool goes by in the metrics.
const POOL_NAME: &str = "store";

/// Encodes the pool's acquire-wait histogram as it was last read: the pool keeps its
/// own buckets, which `/readyz` also shows.
#[derive(Debug)]
struct PoolWait(Arc<Mutex<Option<WaitHistogram>>>);

impl Collector for PoolWait {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(wait) = self.0.lock().expect("never poisoned").clone() else {
            return Ok(());
        };
        let mut buckets: Vec<(f64, u64)> = WAIT_BUCKETS_MICROS
            .iter()
            .zip(&wait.counts)
            .map(|(bound, count)| (*bound as f64 / 1e6, *count))
            .collect();
        buckets.push((
            f64::INFINITY,
            wait.counts
                .get(WAIT_BUCKETS_MICROS.len())
                .copied()
                .unwrap_or(0),
        ));
        let mut metric = encoder.encode_descriptor(
            "db_client_connection_wait_time",
            "Time to obtain a store connection (db.client.connection.wait_time)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let labels = PoolLabels {
            db_client_connection_pool_name: POOL_NAME,
        };
        metric
            .encode_family(&labels)?
            .encode_histogram::<TraceLabel>(
                wait.sum_micros as f64 / 1e6,
                // The buckets' own total: the pool counts them and the total apart.
                buckets.iter().map(|(_, count)| count).sum(),
                &buckets,
                None,
            )
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The exemplar for a sample taken now: the current trace, when tracing is on.
pub fn exemplar() -> Option<TraceLabel> {
    crate::telemetry::current_trace_id().map(|trace_id| TraceLabel { trace_id })
}

/// The OpenMetrics content type (with exemplars).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry encoded: OpenMetrics when `openmetrics`, else the classic text format
/// (counters' families named with their `_total`, no exemplars, units or `# EOF`).
pub fn render(openmetrics: bool) -> String {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &metrics().registry) {
        tracing::error!(error = %err, "metrics do not encode");
    }
    if openmetrics {
        return text;
    }
    classic_text(&text)
}

/// OpenMetrics text rewritten in the classic Prometheus text format.
fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = &line[..7];
            let name = if counters.contains(name) {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            let tail = if tail == "info" || tail == "unknown" {
                "untyped"
            } else {
                tail
            };
            let _ = writeln!(out, "{kind}{name} {tail}");
            continue;
        }
        // A sample: drop the exemplar (` # {labels} value [timestamp]`).
        let sample = match line.find(" # {") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_with_total_and_drops_exemplars() {
        metrics().commits.inc();
        metrics()
            .rpc_duration
            .get_or_create(&RpcLabels {
                rpc_system: "grpc",
                rpc_service: "quiver.v1.Mutations",
                rpc_method: "Insert",
                rpc_grpc_status_code: 0,
            })
            .observe(
                0.003,
                Some(TraceLabel {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                }),
                None,
            );
        let open = render(true);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE quiver_commits counter"), "{open}");
        assert!(
            open.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\""),
            "the exemplar: {open}"
        );
        let classic = render(false);
        assert!(
            !classic.contains("# EOF")
                && !classic.contains("# UNIT")
                && !classic.contains("trace_id")
        );
        assert!(
            classic.contains("# TYPE quiver_commits_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP quiver_commits_total "),
            "{classic}"
        );
        assert!(classic.contains("\nquiver_commits_total "), "{classic}");
        assert!(
            classic.contains("# TYPE rpc_server_call_duration_seconds histogram\n"),
            "{classic}"
        );
        assert!(
            classic.contains("quiver_build_info{version=\""),
            "{classic}"
        );
    }
}
