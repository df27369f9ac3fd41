//! Query history and the slow-query log: the last queries run (bounded, in memory),
//! with what they sent to the store, how long they took, what they returned and the
//! trace they belong to; the ones over the slow-query threshold are kept apart for
//! longer. Both are system tables (`system.queries`, `system.slow_queries`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use quiver_query::StoreSql;

use crate::metrics::metrics;

/// How much history is kept and what counts as slow (changed live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Queries kept in `system.queries`.
    pub capacity: usize,
    /// Queries kept in `system.slow_queries`.
    pub slow_capacity: usize,
    /// A query taking at least this long is slow.
    pub slow_threshold: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            slow_capacity: 1000,
            slow_threshold: Duration::from_secs(1),
        }
    }
}

/// One query as the history keeps it.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    pub id: u64,
    /// Microseconds since the epoch.
    pub started_at_micros: i64,
    /// `None` while running.
    pub duration: Option<Duration>,
    pub surface: &'static str,
    pub principal: String,
    pub client_address: String,
    pub sql: String,
    /// The statements sent to the store.
    pub store_sql: Vec<String>,
    /// gRPC code name, or `RUNNING`.
    pub status: &'static str,
    pub error: Option<String>,
    pub rows: u64,
    pub bytes: u64,
    pub trace_id: Option<String>,
}

/// Most bytes of a query's text kept.
const KEPT_SQL: usize = 4096;
/// Most bytes of an error message kept.
const KEPT_ERROR: usize = 1024;

fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The query history of this server.
#[derive(Debug, Default)]
pub struct QueryLog {
    config: RwLock<HistoryConfig>,
    next_id: AtomicU64,
    finished: Mutex<VecDeque<Arc<QueryRecord>>>,
    slow: Mutex<VecDeque<Arc<QueryRecord>>>,
    running: Mutex<HashMap<u64, Arc<Live>>>,
}

/// A running query's counters.
#[derive(Debug)]
struct Live {
    record: QueryRecord,
    started: Instant,
    rows: AtomicU64,
    bytes: AtomicU64,
    store_sql: StoreSql,
}

impl QueryLog {
    /// A history kept as `config` says.
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            config: RwLock::new(config),
            ..Self::default()
        }
    }

    /// The settings now in force.
    pub fn config(&self) -> HistoryConfig {
        *self.config.read().expect("never poisoned")
    }

    /// Changes the settings; the kept queries beyond the new sizes are dropped.
    pub fn set_config(&self, config: HistoryConfig) {
        *self.config.write().expect("never poisoned") = config;
        trim(
            &mut self.finished.lock().expect("never poisoned"),
            config.capacity,
        );
        trim(
            &mut self.slow.lock().expect("never poisoned"),
            config.slow_capacity,
        );
    }

    /// Starts recording a query.
    pub fn start(
        self: &Arc<Self>,
        surface: &'static str,
        sql: &str,
        principal: String,
        client_address: String,
    ) -> Tracker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let started_at_micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let live = Arc::new(Live {
            record: QueryRecord {
                id,
                started_at_micros,
                duration: None,
                surface,
                principal,
                client_address,
                sql: cut(sql, KEPT_SQL),
                store_sql: Vec::new(),
                status: "RUNNING",
                error: None,
                rows: 0,
                bytes: 0,
                trace_id: crate::telemetry::current_trace_id(),
            },
            started: Instant::now(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            store_sql: StoreSql::default(),
        });
        self.running
            .lock()
            .expect("never poisoned")
            .insert(id, Arc::clone(&live));
        metrics().queries_running.inc();
        Tracker {
            log: Arc::clone(self),
            live,
            planned: None,
            first_batch: None,
            finished: false,
        }
    }

    /// The queries kept, oldest first, then the running ones.
    pub fn queries(&self) -> Vec<Arc<QueryRecord>> {
        let mut all: Vec<Arc<QueryRecord>> = self
            .finished
            .lock()
            .expect("never poisoned")
            .iter()
            .cloned()
            .collect();
        let mut running: Vec<Arc<QueryRecord>> = self
            .running
            .lock()
            .expect("never poisoned")
            .values()
            .map(|live| Arc::new(live.snapshot()))
            .collect();
        running.sort_by_key(|r| r.id);
        all.extend(running);
        all
    }

    /// The slow queries kept, oldest first.
    pub fn slow_queries(&self) -> Vec<Arc<QueryRecord>> {
        self.slow
            .lock()
            .expect("never poisoned")
            .iter()
            .cloned()
            .collect()
    }

    fn finish(&self, record: QueryRecord) {
        let config = self.config();
        let slow = record.duration.is_some_and(|d| d >= config.slow_threshold);
        let record = Arc::new(record);
        if slow {
            metrics().slow_queries.inc();
            tracing::info!(
                query_id = record.id,
                duration_ms = record.duration.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                rows = record.rows,
                status = record.status,
                principal = %record.principal,
                sql = %crate::telemetry::shown_sql(&record.sql),
                "slow query"
            );
            let mut kept = self.slow.lock().expect("never poisoned");
            kept.push_back(Arc::clone(&record));
            trim(&mut kept, config.slow_capacity);
        }
        let mut kept = self.finished.lock().expect("never poisoned");
        kept.push_back(record);
        trim(&mut kept, config.capacity);
    }
}

fn trim(kept: &mut VecDeque<Arc<QueryRecord>>, capacity: usize) {
    while kept.len() > capacity {
        kept.pop_front();
    }
}

impl Live {
    fn snapshot(&self) -> QueryRecord {
        QueryRecord {
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            store_sql: self.store_sql.statements(),
            ..self.record.clone()
        }
    }
}

/// Records one query: its phases, rows and bytes, and how it ended. Dropped without
/// [`Tracker::finish`], the query counts as cancelled (the client went away).
#[derive(Debug)]
pub struct Tracker {
    log: Arc<QueryLog>,
    live: Arc<Live>,
    planned: Option<Instant>,
    first_batch: Option<Instant>,
    finished: bool,
}

impl Tracker {
    /// What the query's scans record their store statements into.
    pub fn store_sql(&self) -> StoreSql {
        self.live.store_sql.clone()
    }

    /// The surface the query came through.
    fn surface(&self) -> &'static str {
        self.live.record.surface
    }

    /// Planning ended.
    pub fn planned(&mut self) {
        let now = Instant::now();
        self.planned = Some(now);
        metrics().phase(self.surface(), "plan", now - self.live.started);
    }

    /// A batch of `rows` went out as `bytes`.
    pub fn sent(&mut self, rows: u64, bytes: u64) {
        if self.first_batch.is_none() && rows > 0 {
            let now = Instant::now();
            self.first_batch = Some(now);
            let from = self.planned.unwrap_or(self.live.started);
            metrics().phase(self.surface(), "execute", now - from);
        }
        self.live.rows.fetch_add(rows, Ordering::Relaxed);
        self.live.bytes.fetch_add(bytes, Ordering::Relaxed);
        let surface = crate::metrics::SurfaceLabels {
            surface: self.surface(),
        };
        metrics().rows_streamed.get_or_create(&surface).inc_by(rows);
        metrics()
            .bytes_streamed
            .get_or_create(&surface)
            .inc_by(bytes);
    }

    /// The query ended with `code` (and the error's message when it failed).
    pub fn finish(mut self, code: tonic::Code, error: Option<String>) {
        self.end(code, error);
    }

    fn end(&mut self, code: tonic::Code, error: Option<String>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let now = Instant::now();
        if let Some(first) = self.first_batch {
            metrics().phase(self.surface(), "stream", now - first);
        }
        metrics().queries_running.dec();
        let status = crate::error::code_name(code);
        metrics()
            .queries
            .get_or_create(&crate::metrics::QueryLabels {
                surface: self.surface(),
                status,
            })
            .inc();
        self.log
            .running
            .lock()
            .expect("never poisoned")
            .remove(&self.live.record.id);
        let record = QueryRecord {
            duration: Some(now - self.live.started),
            status,
            error: error.map(|e| cut(&e, KEPT_ERROR)),
            ..self.live.snapshot()
        };
        self.log.finish(record);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.end(tonic::Code::Cancelled, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_slow_queries_are_kept_apart() {
        let log = Arc::new(QueryLog::new(HistoryConfig {
            capacity: 3,
            slow_capacity: 2,
            slow_threshold: Duration::from_millis(20),
        }));
        for i in 0..5 {
            let mut tracker = log.start(
                "flight",
                &format!("SELECT {i}"),
                "p".into(),
                "127.0.0.1".into(),
            );
            tracker.planned();
            tracker.sent(2, 100);
            if i % 2 == 0 {
                std::thread::sleep(Duration::from_millis(25));
            }
            tracker.finish(tonic::Code::Ok, None);
        }
        let kept: Vec<String> = log.queries().iter().map(|q| q.sql.clone()).collect();
        assert_eq!(kept, ["SELECT 2", "SELECT 3", "SELECT 4"]);
        let slow: Vec<String> = log.slow_queries().iter().map(|q| q.sql.clone()).collect();
        assert_eq!(slow, ["SELECT 2", "SELECT 4"]);
        assert!(
            log.queries()
                .iter()
                .all(|q| q.rows == 2 && q.bytes == 100 && q.status == "OK")
        );
    }

    #[test]
    fn a_dropped_query_is_cancelled_and_a_running_one_is_listed() {
        let log = Arc::new(QueryLog::new(HistoryConfig::default()));
        let running = log.start("http", "SELECT 1", "p".into(), String::new());
        assert_eq!(log.queries()[0].status, "RUNNING");
        drop(running);
        let queries = log.queries();
        assert_eq!(queries.len(), 1);
        assert_eq!(queries[0].status, "CANCELLED");
        assert!(queries[0].duration.is_some());
    }
}
