//! The connection pool both backends share: bb8 behind a fair gate, with metrics,
//! leak detection and a keeper that reconnects with backoff. One cohesive thing (the
//! pool and the state its parts share), hence one file past 600 lines.
//!
//! - **Fairness.** bb8 hands a returned connection to whichever waiter its notify wakes,
//!   which lets unlucky waiters starve under contention. A FIFO semaphore with one
//!   permit per connection sits in front of it: callers queue in arrival order and only
//!   a caller holding a permit asks bb8, which then always has a connection for it.
//! - **Metrics.** Acquires, waits (a histogram), timeouts, waiters, connections
//!   created, closed and broken, connect failures and leaks, as [`PoolStatus`].
//! - **Leaks.** Every lease is registered with the span that took it; a watchdog logs a
//!   lease held longer than the threshold once, inside that span.
//! - **Availability.** Connect failures mark the pool down; while down, acquires fail
//!   at once with the last connect error, and the keeper retries with exponential
//!   backoff and jitter until the store answers again. The pool never needs a restart.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Connection pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: u32,
    /// Connections kept open when idle, opened at start (warm-up).
    pub min_idle: u32,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_idle` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long.
    pub max_lifetime: Option<Duration>,
    /// A connection held longer than this is logged as a possible leak.
    pub leak_threshold: Duration,
    /// Longest pause between two reconnect attempts while the store is down.
    pub max_backoff: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            min_idle: 2,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            leak_threshold: Duration::from_secs(60),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// How often a slow acquire checks whether the store went down meanwhile.
const DOWN_CHECK: Duration = Duration::from_millis(50);

/// Upper bounds of the acquire-wait histogram buckets, in microseconds.
pub const WAIT_BUCKETS_MICROS: [u64; 18] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 5_000_000,
];

/// A snapshot of the acquire-wait histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    /// Count per bucket of [`WAIT_BUCKETS_MICROS`], plus one overflow bucket (not
    /// cumulative).
    pub counts: Vec<u64>,
    /// Acquires measured.
    pub count: u64,
    /// Sum of all waits, microseconds.
    pub sum_micros: u64,
    /// The longest wait, microseconds.
    pub max_micros: u64,
}

impl WaitHistogram {
    /// The upper bound of the bucket holding quantile `q` (0..=1), microseconds; the
    /// maximum for the overflow bucket; 0 when empty.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return WAIT_BUCKETS_MICROS
                    .get(index)
                    .map_or(self.max_micros, |bound| (*bound).min(self.max_micros));
            }
        }
        self.max_micros
    }
}

/// A snapshot of a connection pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStatus {
    /// Configured maximum size.
    pub max_size: u32,
    /// Connections open now.
    pub connections: u32,
    /// Of those, idle.
    pub idle: u32,
    /// Of those, lent out.
    pub in_use: u32,
    /// Callers waiting for a connection now.
    pub waiting: u64,
    /// Connections handed out since start.
    pub acquired: u64,
    /// Acquire attempts that timed out since start.
    pub acquire_timeouts: u64,
    /// Acquire attempts refused because the store was unreachable.
    pub acquire_unavailable: u64,
    /// Connections opened since start.
    pub connections_created: u64,
    /// Connections closed because they broke or failed validation.
    pub connections_broken: u64,
    /// Connections closed for age or idleness.
    pub connections_retired: u64,
    /// Failed attempts to open a connection.
    pub connect_errors: u64,
    /// Leases held longer than the leak threshold.
    pub leaks_detected: u64,
    /// Share of acquires served by an existing connection (0..=1).
    pub reuse_rate: f64,
    /// Whether the store answered the last connect attempt.
    pub reachable: bool,
    /// The last connect error while unreachable.
    pub last_error: Option<String>,
    /// How long acquires waited.
    pub acquire_wait: WaitHistogram,
}

#[derive(Debug, Default)]
struct Metrics {
    acquired: AtomicU64,
    timeouts: AtomicU64,
    unavailable: AtomicU64,
    waiting: AtomicU64,
    connect_errors: AtomicU64,
    leaks: AtomicU64,
    wait_counts: [AtomicU64; WAIT_BUCKETS_MICROS.len() + 1],
    wait_sum_micros: AtomicU64,
    wait_max_micros: AtomicU64,
}

impl Metrics {
    fn record_wait(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let bucket = WAIT_BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(WAIT_BUCKETS_MICROS.len());
        self.wait_counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.wait_sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.wait_max_micros.fetch_max(micros, Ordering::Relaxed);
        self.acquired.fetch_add(1, Ordering::Relaxed);
    }

    fn histogram(&self) -> WaitHistogram {
        let counts: Vec<u64> = self
            .wait_counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        WaitHistogram {
            count: counts.iter().sum(),
            counts,
            sum_micros: self.wait_sum_micros.load(Ordering::Relaxed),
            max_micros: self.wait_max_micros.load(Ordering::Relaxed),
        }
    }
}

/// Whether the store is reachable, as learned from connect attempts.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
    last_error: Mutex<Option<String>>,
    wake: tokio::sync::Notify,
}

impl Health {
    fn mark_down(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        if !self.down.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("store reachable again");
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Receives bb8's background errors: connect failures mark the store down.
#[derive(Debug, Clone)]
struct HealthSink {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl bb8::ErrorSink<Error> for HealthSink {
    fn sink(&self, error: Error) {
        match &error {
            Error::Connect { .. } => {
                self.metrics.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "cannot open a database connection");
                self.health.mark_down(error.to_string());
            }
            _ => tracing::debug!(error = %error, "pooled connection failed validation"),
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<Error>> {
        Box::new(self.clone())
    }
}

#[derive(Debug)]
struct LeaseInfo {
    since: Instant,
    span: tracing::Span,
    reported: bool,
}

/// Leases currently out, for leak detection.
#[derive(Debug, Default)]
struct Leases {
    next_id: AtomicU64,
    out: Mutex<HashMap<u64, LeaseInfo>>,
}

impl Leases {
    fn register(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = LeaseInfo {
            since: Instant::now(),
            span: tracing::Span::current(),
            reported: false,
        };
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, info);
        id
    }

    fn release(&self, id: u64) {
        let info = self
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(info) = info.filter(|info| info.reported) {
            tracing::info!(parent: &info.span, held_ms = info.since.elapsed().as_millis() as u64,
                "connection reported as leaked was returned");
        }
    }

    /// Logs every lease older than `threshold` not reported yet; returns how many.
    fn report(&self, threshold: Duration) -> u64 {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = 0;
        for info in out.values_mut() {
            let held = info.since.elapsed();
            if !info.reported && held > threshold {
                info.reported = true;
                found += 1;
                tracing::warn!(parent: &info.span, held_ms = held.as_millis() as u64,
                    threshold_ms = threshold.as_millis() as u64,
                    "pooled connection held longer than the leak threshold");
            }
        }
        found
    }
}

/// A connection lent by a [`Pool`]; returns to it when dropped.
pub(crate) struct Lease<M: bb8::ManageConnection> {
    conn: bb8::PooledConnection<'static, M>,
    id: u64,
    leases: Arc<Leases>,
    _permit: OwnedSemaphorePermit,
}

impl<M: bb8::ManageConnection> Deref for Lease<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn
    }
}

impl<M: bb8::ManageConnection> DerefMut for Lease<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn
    }
}

impl<M: bb8::ManageConnection> Drop for Lease<M> {
    fn drop(&mut self) {
        self.leases.release(self.id);
    }
}

impl<M: bb8::ManageConnection> std::fmt::Debug for Lease<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

struct Shared<M: bb8::ManageConnection> {
    inner: bb8::Pool<M>,
    gate: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    leases: Arc<Leases>,
    options: PoolOptions,
}

/// A fair, instrumented pool of store connections; cheap to clone.
pub(crate) struct Pool<M: bb8::ManageConnection<Error = Error>> {
    shared: Arc<Shared<M>>,
}

impl<M: bb8::ManageConnection<Error = Error>> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: bb8::ManageConnection<Error = Error>> std::fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Pseudo-random jitter in `0..=bound` without a random-number crate: the low bits of
/// the clock, mixed.
fn jitter(bound: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 31;
    let bound_micros = bound.as_micros().max(1) as u64;
    Duration::from_micros(z % (bound_micros + 1))
}

impl<M: bb8::ManageConnection<Error = Error>> Pool<M> {
    /// Builds the pool without waiting for the store: warm-up to `min_idle` and
    /// reconnects happen in the background, so a store that is down at start does not
    /// stop the caller.
    pub(crate) fn new(manager: M, options: &PoolOptions) -> Self {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let max_size = options.max_size.max(1);
        let inner = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(options.min_idle.min(max_size))
            .connection_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            .max_lifetime(options.max_lifetime)
            .test_on_check_out(true)
            .retry_connection(false)
            .queue_strategy(bb8::QueueStrategy::Fifo)
            .error_sink(Box::new(HealthSink {
                health: Arc::clone(&health),
                metrics: Arc::clone(&metrics),
            }))
            .build_unchecked(manager);
        let shared = Arc::new(Shared {
            inner,
            gate: Arc::new(Semaphore::new(max_size as usize)),
            metrics,
            health,
            leases: Arc::new(Leases::default()),
            options: options.clone(),
        });
        tokio::spawn(keep(Arc::downgrade(&shared)));
        tokio::spawn(watch_leases(
            Arc::downgrade(&shared.leases),
            Arc::downgrade(&shared.metrics),
            options.leak_threshold,
        ));
        Self { shared }
    }

    /// The options the pool was built with.
    pub(crate) fn options(&self) -> &PoolOptions {
        &self.shared.options
    }

    /// Lends a connection, waiting in arrival order for at most the acquire timeout.
    pub(crate) async fn get(&self) -> Result<Lease<M>> {
        let shared = &*self.shared;
        if shared.health.down.load(Ordering::Acquire) {
            shared.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(self.unavailable());
        }
        let start = Instant::now();
        let timeout = shared.options.acquire_timeout;
        shared.metrics.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(timeout, Arc::clone(&shared.gate).acquire_owned()).await;
        shared.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(Ok(permit)) = permit else {
            shared.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(self.timed_out());
        };
        let remaining = timeout.saturating_sub(start.elapsed());
        let get = shared.inner.get_owned();
        tokio::pin!(get);
        let deadline = tokio::time::sleep(remaining);
        tokio::pin!(deadline);
        let conn = loop {
            tokio::select! {
                biased;
                result = &mut get => match result {
                    Ok(conn) => break conn,
                    Err(bb8::RunError::User(err)) => return Err(err),
                    Err(bb8::RunError::TimedOut) => return Err(self.slow_or_down()),
                },
                () = &mut deadline => return Err(self.slow_or_down()),
                // bb8 waits out its whole timeout when connecting fails; learn sooner
                // that the store went down and say so.
                () = tokio::time::sleep(DOWN_CHECK) => {
                    if shared.health.down.load(Ordering::Acquire) {
                        shared.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                        return Err(self.unavailable());
                    }
                }
            }
        };
        shared.metrics.record_wait(start.elapsed());
        Ok(Lease {
            conn,
            id: shared.leases.register(),
            leases: Arc::clone(&shared.leases),
            _permit: permit,
        })
    }

    /// bb8 found no connection in time: either the store is down (the sink saw why) or
    /// every connection stayed busy.
    fn slow_or_down(&self) -> Error {
        let shared = &*self.shared;
        if shared.health.down.load(Ordering::Acquire) {
            shared.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
            return self.unavailable();
        }
        shared.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
        self.timed_out()
    }

    fn timed_out(&self) -> Error {
        Error::PoolTimeout {
            timeout: self.shared.options.acquire_timeout,
            max_size: self.shared.options.max_size,
        }
    }

    fn unavailable(&self) -> Error {
        Error::Unavailable(
            self.shared
                .health
                .last_error()
                .unwrap_or_else(|| "the database is not reachable".to_owned()),
        )
    }

    /// Current occupancy and counters.
    pub(crate) fn status(&self) -> PoolStatus {
        let shared = &*self.shared;
        let state = shared.inner.state();
        let stats = &state.statistics;
        let metrics = &shared.metrics;
        let acquired = metrics.acquired.load(Ordering::Relaxed);
        let created = stats.connections_created;
        PoolStatus {
            max_size: shared.options.max_size,
            connections: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            waiting: metrics.waiting.load(Ordering::Relaxed),
            acquired,
            acquire_timeouts: metrics.timeouts.load(Ordering::Relaxed),
            acquire_unavailable: metrics.unavailable.load(Ordering::Relaxed),
            connections_created: created,
            connections_broken: stats.connections_closed_broken + stats.connections_closed_invalid,
            connections_retired: stats.connections_closed_max_lifetime
                + stats.connections_closed_idle_timeout,
            connect_errors: metrics.connect_errors.load(Ordering::Relaxed),
            leaks_detected: metrics.leaks.load(Ordering::Relaxed),
            reuse_rate: if acquired == 0 {
                0.0
            } else {
                1.0 - (created.min(acquired) as f64 / acquired as f64)
            },
            reachable: !shared.health.down.load(Ordering::Acquire),
            last_error: shared.health.last_error(),
            acquire_wait: metrics.histogram(),
        }
    }
}

/// While the store is down, tries to open a connection with exponential backoff and
/// jitter; the first success brings the pool back up (and bb8 refills to `min_idle`).
async fn keep<M: bb8::ManageConnection<Error = Error>>(shared: Weak<Shared<M>>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    loop {
        let Some(health) = shared.upgrade().map(|s| Arc::clone(&s.health)) else {
            return;
        };
        // Wait until something marks the store down (or re-check now and then, so a
        // dropped pool ends this task).
        if !health.down.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_secs(5), health.wake.notified()).await;
            continue;
        }
        drop(health);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let max_backoff = shared.options.max_backoff;
            match shared.inner.dedicated_connection().await {
                Ok(conn) => {
                    // Hand it to the pool (ignored when the pool is full meanwhile).
                    let _ = shared.inner.add(conn);
                    shared.health.mark_up();
                    break;
                }
                Err(err) => {
                    shared
                        .metrics
                        .connect_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %err, backoff_ms = backoff.as_millis() as u64, "store still unreachable");
                    shared.health.mark_down(err.to_string());
                }
            }
            drop(shared);
            let pause = backoff / 2 + jitter(backoff / 2);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }
}

/// Reports leases held past `threshold`, until the pool is dropped.
async fn watch_leases(leases: Weak<Leases>, metrics: Weak<Metrics>, threshold: Duration) {
    let period = (threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(period).await;
        let (Some(leases), Some(metrics)) = (leases.upgrade(), metrics.upgrade()) else {
            return;
        };
        let found = leases.report(threshold);
        metrics.leaks.fetch_add(found, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let metrics = Metrics::default();
        for _ in 0..98 {
            metrics.record_wait(Duration::from_micros(3));
        }
        metrics.record_wait(Duration::from_micros(700));
        metrics.record_wait(Duration::from_millis(8));
        let histogram = metrics.histogram();
        assert_eq!(histogram.count, 100);
        assert_eq!(histogram.quantile_micros(0.5), 5);
        assert_eq!(histogram.quantile_micros(0.99), 1_000);
        assert_eq!(histogram.quantile_micros(1.0), 8_000);
        assert_eq!(histogram.max_micros, 8_000);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }
}
