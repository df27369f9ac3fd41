//! Subscriptions: the change log as filtered, ordered, resumable streams, over gRPC
//! (`quiver.v1.Subscriptions`) and Flight (`subscribe` action, then `DoGet`).
//!
//! # One tail, many subscribers
//! The [`Hub`] runs one task per server that follows the change log: woken by each
//! commit made through this server, by PostgreSQL `NOTIFY` for commits made through
//! other replicas, and by a slow fallback timer, it reads the new commits once,
//! decodes them once ([`decode::Page`]) and broadcasts the page to every subscriber.
//! The database is read once per wake-up, whatever the number of subscribers.
//!
//! # Delivery
//! Each subscriber keeps the version it has delivered up to. Pages at or below it are
//! skipped; a page that starts beyond the next version (the subscriber joined while the
//! tail was ahead, or fell behind) is preceded by a catch-up read of the missing
//! commits from the log. Versions are consecutive, so a gap is always seen, and the
//! seam between catch-up and the live tail neither repeats nor loses a change.
//!
//! # Slow subscribers
//! Writers never wait for subscribers. A subscriber's outgoing queue is bounded
//! (`subscription_buffer` messages); while it is full the subscriber stops taking
//! pages, the shared tail keeps only its most recent pages for it, and once those
//! are overwritten the subscriber reads what it missed from the change log itself,
//! then rejoins the tail. A subscriber whose next change is older than the log's
//! retention is ended with `RESOURCE_EXHAUSTED` naming the version to resume from.

pub mod decode;
mod flight;
mod grpc;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver_query::QueryEngine;
use quiver_query::predicate::RowFilter;
use quiver_storage::TableInfo;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use self::decode::{Op, Page, TableLookup};
pub use self::flight::{SUBSCRIBE_ACTION, SUBSCRIBE_TICKET_TYPE, subscribe, subscribe_ticket};
pub use self::grpc::SubscriptionService;
use crate::error::{Error, Result};

/// Most changes read from the log at once (whole commits; a larger commit is read whole).
const PAGE_CHANGES: usize = 4096;
/// Pages the shared tail keeps for subscribers that have not taken them yet.
const TAIL_PAGES: usize = 256;
/// How often the tail looks at the log when no commit woke it.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Settings of the subscription service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// Most concurrent subscriptions per server.
    pub max_subscribers: usize,
    /// How often each subscription is sent a progress message.
    pub progress_interval: Duration,
    /// Messages queued per subscription before it is served from the log instead.
    pub buffer: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            max_subscribers: 10_000,
            progress_interval: Duration::from_secs(1),
            buffer: 1024,
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this version.
    After(u64),
    /// After the latest version.
    Latest,
    /// The current rows first, then the changes after the version read before them.
    Snapshot,
}

/// A subscription request, as both surfaces take it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Tables by name (`tasks`, `schema.table`).
    pub tables: Vec<String>,
    /// Optional SQL predicate over a row.
    pub filter: Option<String>,
    /// Where to start.
    pub start: Start,
    /// Optional projection of the row images.
    pub columns: Vec<String>,
}

/// One followed table of a subscription.
#[derive(Debug)]
pub(crate) struct Follow {
    /// The table's name in the change log.
    pub name: Arc<str>,
    pub table: Arc<TableInfo>,
    filter: Option<RowFilter>,
    /// Column positions kept in row images (`None`: all).
    pub columns: Option<Vec<usize>>,
}

/// Which rows of a page's after and before images match a filter.
type ImageMatches = (Vec<bool>, Vec<bool>);

/// A request checked against the catalog: tables exist, the filter compiles.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Followed tables by change-log name.
    pub follows: HashMap<Arc<str>, Follow>,
    start: Start,
}

impl Spec {
    /// The events of `page` after version `after` this subscription receives, by index.
    fn select(&self, page: &Page, after: u64) -> Result<Vec<usize>> {
        // Per table: which image rows match the filter (None: no filter, all match).
        let mut matched: HashMap<&str, Option<ImageMatches>> = HashMap::new();
        for (name, follow) in &self.follows {
            let Some(images) = page.tables.get(name) else {
                continue;
            };
            let outcome = match &follow.filter {
                None => None,
                Some(filter) => {
                    let flags = |batch: &RecordBatch| -> Result<Vec<bool>> {
                        let matches = filter.matches(batch)?;
                        Ok(matches.iter().map(|m| m == Some(true)).collect())
                    };
                    Some((flags(&images.after)?, flags(&images.before)?))
                }
            };
            matched.insert(name, outcome);
        }
        let mut selected = Vec::new();
        for (index, event) in page.events.iter().enumerate() {
            if event.version <= after || !self.follows.contains_key(&event.table) {
                continue;
            }
            let keep = match (event.op, event.row) {
                (Op::Truncate, _) => true,
                (_, None) => self.follows[&event.table].filter.is_none(),
                (op, Some(row)) => match matched.get(&*event.table) {
                    Some(Some((after, before))) => {
                        (op.has_after() && after[row]) || (op.has_before() && before[row])
                    }
                    _ => true,
                },
            };
            if keep {
                selected.push(index);
            }
        }
        Ok(selected)
    }
}

/// Counters kept for the metrics endpoint.
#[derive(Debug, Default)]
struct Metrics {
    active: AtomicUsize,
    delivered: AtomicU64,
    catch_up_reads: AtomicU64,
    ended_behind_retention: AtomicU64,
    /// The version each live subscription has delivered up to, by subscription id.
    positions: std::sync::Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

/// A subscription's place among the active ones; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Registration {
    hub: Arc<Hub>,
    id: u64,
    position: Arc<AtomicU64>,
}

impl Registration {
    fn advance(&self, version: u64) {
        self.position.store(version, Ordering::Relaxed);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.metrics.active.fetch_sub(1, Ordering::AcqRel);
        self.hub
            .metrics
            .positions
            .lock()
            .expect("metrics lock is never poisoned")
            .remove(&self.id);
    }
}

/// The shared tail of the change log and the registry of subscriptions.
#[derive(Debug)]
pub struct Hub {
    engine: Arc<QueryEngine>,
    config: SubscriptionConfig,
    pages: broadcast::Sender<Arc<Page>>,
    /// The newest version the tail has read.
    latest: AtomicU64,
    metrics: Metrics,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

/// Where a new subscription stands before its first message.
pub(crate) struct Opened {
    registration: Registration,
    pages: broadcast::Receiver<Arc<Page>>,
    spec: Spec,
    /// The version delivered up to (for a snapshot, the snapshot's version).
    from: u64,
}

impl Hub {
    /// A hub over `engine`'s store; [`Hub::follow`] runs its tail, and `shutdown`
    /// ends every subscription (with UNAVAILABLE) so the server can stop.
    pub fn new(
        engine: Arc<QueryEngine>,
        config: SubscriptionConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            engine,
            config,
            pages: broadcast::channel(TAIL_PAGES).0,
            latest: AtomicU64::new(0),
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
            shutdown,
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SubscriptionConfig {
        &self.config
    }

    /// The newest version the tail has read.
    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Runs the shared tail until `shutdown`: reads new commits once per wake-up and
    /// broadcasts them to every subscriber.
    pub async fn follow(self: Arc<Self>) {
        let store = self.engine.store().clone();
        let mut signal = store.commit_signal();
        let listener = store.follow_commits();
        tokio::pin!(listener);
        let mut cursor: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let read = match cursor {
                None => store
                    .latest_version()
                    .await
                    .map(|v| {
                        self.latest.fetch_max(v, Ordering::AcqRel);
                        cursor = Some(v);
                    })
                    .map_err(Error::from),
                Some(ref mut position) => self.read_new(position).await,
            };
            let wait = match read {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    FALLBACK_POLL
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the change log; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = &mut listener => {}
                changed = signal.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads and broadcasts every commit after `cursor`.
    async fn read_new(&self, cursor: &mut u64) -> Result<()> {
        loop {
            let changes = self
                .engine
                .store()
                .changes_after(*cursor, PAGE_CHANGES)
                .await?;
            if changes.is_empty() {
                return Ok(());
            }
            let page = Arc::new(self.decode(changes));
            *cursor = page.last;
            self.latest.fetch_max(page.last, Ordering::AcqRel);
            // No receivers is fine: nobody subscribes.
            let _ = self.pages.send(page);
        }
    }

    fn decode(&self, changes: Vec<quiver_storage::Change>) -> Page {
        let catalog = self.engine.catalog();
        let mut tables = TableLookup::new(&catalog, self.engine.store().default_schema());
        Page::decode(changes, &mut tables)
    }

    /// Checks `request` against the catalog.
    pub(crate) fn compile(&self, request: &Request) -> Result<Spec> {
        if request.tables.is_empty() {
            return Err(Error::InvalidRequest(
                "a subscription needs at least one table".to_owned(),
            ));
        }
        let filter = request.filter.as_deref().filter(|f| !f.trim().is_empty());
        let mut follows = HashMap::new();
        for name in &request.tables {
            let table = crate::writes::resolve_table(&self.engine, name)?;
            let log_name: Arc<str> = Arc::from(quiver_storage::changelog::table_log_name(
                &table,
                self.engine.store().dialect(),
            ));
            let filter = filter
                .map(|predicate| {
                    RowFilter::compile(&table, predicate).map_err(|err| {
                        match request.tables.len() {
                            1 => Error::from(err),
                            _ => Error::InvalidRequest(format!("table '{name}': {err}")),
                        }
                    })
                })
                .transpose()?;
            let columns = if request.columns.is_empty() {
                None
            } else {
                let positions = request
                    .columns
                    .iter()
                    .map(|column| {
                        table
                            .columns
                            .iter()
                            .position(|c| &c.name == column)
                            .ok_or_else(|| {
                                Error::InvalidRequest(format!(
                                    "table '{name}' has no column '{column}'"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(positions)
            };
            follows.insert(
                Arc::clone(&log_name),
                Follow {
                    name: log_name,
                    table,
                    filter,
                    columns,
                },
            );
        }
        Ok(Spec {
            follows,
            start: request.start,
        })
    }

    /// Takes a place for a new subscription and fixes where it starts; fails with
    /// RESOURCE_EXHAUSTED over the subscriber limit or when the start is older than
    /// the change log keeps.
    pub(crate) async fn open(self: &Arc<Self>, spec: Spec) -> Result<Opened> {
        let active = self.metrics.active.fetch_add(1, Ordering::AcqRel);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let position = Arc::new(AtomicU64::new(0));
        let registration = Registration {
            hub: Arc::clone(self),
            id,
            position: Arc::clone(&position),
        };
        self.metrics
            .positions
            .lock()
            .expect("metrics lock is never poisoned")
            .insert(id, position);
        if active >= self.config.max_subscribers {
            return Err(Error::ResourceExhausted(format!(
                "this server already serves its limit of {} subscriptions",
                self.config.max_subscribers
            )));
        }
        // Taken before the start is read, so no page after it can be missed.
        let pages = self.pages.subscribe();
        let store = self.engine.store();
        let latest = store.latest_version().await?;
        self.latest.fetch_max(latest, Ordering::AcqRel);
        let from = match spec.start {
            Start::Latest | Start::Snapshot => latest,
            Start::After(version) if version > latest => {
                return Err(Error::InvalidRequest(format!(
                    "from_version {version} is ahead of the latest version {latest} of this database"
                )));
            }
            Start::After(version) => {
                let oldest = store.oldest_version().await?;
                let first_needed = version + 1;
                match oldest {
                    // Nothing to read, or all of it is still there.
                    _ if version == latest => version,
                    Some(oldest) if oldest <= first_needed => version,
                    // "Everything the log still holds."
                    Some(oldest) if version == 0 => oldest - 1,
                    _ if version == 0 => latest,
                    oldest => {
                        self.metrics
                            .ended_behind_retention
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(behind_retention(version, oldest));
                    }
                }
            }
        };
        registration.advance(from);
        Ok(Opened {
            registration,
            pages,
            spec,
            from,
        })
    }

    /// Renders the subscription metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let latest = self.latest();
        let positions: Vec<(u64, u64)> = self
            .metrics
            .positions
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
            .map(|(id, position)| (*id, position.load(Ordering::Relaxed)))
            .collect();
        let max_lag = positions
            .iter()
            .map(|(_, p)| latest.saturating_sub(*p))
            .max()
            .unwrap_or(0);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "quiver_change_log_latest_version",
            "gauge",
            "Newest change-log version the subscription tail has read.",
            latest,
        );
        metric(
            "quiver_subscriptions_active",
            "gauge",
            "Open subscriptions (gRPC and Flight).",
            self.metrics.active.load(Ordering::Relaxed) as u64,
        );
        metric(
            "quiver_subscription_events_delivered_total",
            "counter",
            "Change events handed to subscribers.",
            self.metrics.delivered.load(Ordering::Relaxed),
        );
        metric(
            "quiver_subscription_catchup_reads_total",
            "counter",
            "Reads of the change log by subscribers catching up (start, or fell behind).",
            self.metrics.catch_up_reads.load(Ordering::Relaxed),
        );
        metric(
            "quiver_subscriptions_behind_retention_total",
            "counter",
            "Subscriptions refused or ended because their changes were pruned.",
            self.metrics.ended_behind_retention.load(Ordering::Relaxed),
        );
        metric(
            "quiver_subscription_lag_versions_max",
            "gauge",
            "Largest number of versions any subscription is behind the tail.",
            max_lag,
        );
        let _ = writeln!(
            out,
            "# HELP quiver_subscription_lag_versions Versions each subscription is behind the tail.\n# TYPE quiver_subscription_lag_versions gauge"
        );
        for (id, position) in positions {
            let _ = writeln!(
                out,
                "quiver_subscription_lag_versions{{subscription=\"{id}\"}} {}",
                latest.saturating_sub(position)
            );
        }
    }
}

fn behind_retention(version: u64, oldest: Option<u64>) -> Error {
    let held = match oldest {
        Some(oldest) => format!("the change log now starts at version {oldest}"),
        None => "the change log holds no commits".to_owned(),
    };
    Error::ResourceExhausted(format!(
        "the changes after version {version} are no longer in the change log ({held}); \
         resume_version={version}: start again from a snapshot"
    ))
}

/// Where a subscription's messages go: a gRPC stream or a Flight stream.
pub(crate) trait Sink: Send {
    /// Sends the selected events of `page`, then records `position` as delivered.
    fn deliver(
        &mut self,
        spec: &Spec,
        page: &Page,
        selected: &[usize],
        position: u64,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
    /// Sends snapshot rows of one table (a batch of its rows, all columns).
    fn snapshot(
        &mut self,
        follow: &Follow,
        version: u64,
        rows: RecordBatch,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
    /// Sends a checkpoint.
    fn progress(
        &mut self,
        version: u64,
        latest: u64,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
    /// Ends the stream with an error.
    fn fail(&mut self, status: Status) -> impl std::future::Future<Output = ()> + Send;
    /// Resolves when the client has gone.
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The client went away.
#[derive(Debug)]
pub(crate) struct Closed;

/// Why delivery stopped.
enum Stop {
    Closed,
    Failed(Error),
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Closed
    }
}

impl From<Error> for Stop {
    fn from(err: Error) -> Self {
        Stop::Failed(err)
    }
}

impl From<quiver_storage::Error> for Stop {
    fn from(err: quiver_storage::Error) -> Self {
        Stop::Failed(err.into())
    }
}

/// A running subscription: delivers until the client goes, the server stops, or it
/// falls behind the log's retention.
pub(crate) async fn run<S: Sink>(hub: Arc<Hub>, opened: Opened, mut sink: S) {
    let Opened {
        registration,
        mut pages,
        spec,
        from,
    } = opened;
    let mut delivery = Delivery {
        hub: &hub,
        spec: &spec,
        registration: &registration,
        delivered: from,
    };
    let outcome = tokio::select! {
        outcome = delivery.run(&mut pages, &mut sink) => outcome,
        () = hub.shutdown.cancelled() => Err(Stop::Failed(Error::Unavailable(format!(
            "the server is shutting down; resume from version {}",
            delivery_position(&registration)
        )))),
    };
    match outcome {
        Ok(()) | Err(Stop::Closed) => {}
        Err(Stop::Failed(err)) => {
            tracing::debug!(error = %err, "subscription ended");
            sink.fail(err.into()).await;
        }
    }
}

fn delivery_position(registration: &Registration) -> u64 {
    registration.position.load(Ordering::Relaxed)
}

struct Delivery<'a> {
    hub: &'a Arc<Hub>,
    spec: &'a Spec,
    registration: &'a Registration,
    delivered: u64,
}

impl Delivery<'_> {
    async fn run<S: Sink>(
        &mut self,
        pages: &mut broadcast::Receiver<Arc<Page>>,
        sink: &mut S,
    ) -> Result<(), Stop> {
        if self.spec.start == Start::Snapshot {
            self.snapshot(sink).await?;
        }
        self.catch_up(sink, None).await?;
        sink.progress(self.delivered, self.hub.latest().max(self.delivered))
            .await?;
        let period = self.hub.config.progress_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = sink.closed() => return Err(Stop::Closed),
                received = pages.recv() => match received {
                    Ok(page) => self.take(&page, sink).await?,
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "subscriber fell behind the tail; reading the log");
                        self.catch_up(sink, None).await?;
                    }
                    Err(RecvError::Closed) => {
                        return Err(Stop::Failed(Error::Unavailable(format!(
                            "the server is shutting down; resume from version {}",
                            self.delivered
                        ))));
                    }
                },
                _ = ticker.tick() => {
                    sink.progress(self.delivered, self.hub.latest().max(self.delivered)).await?;
                }
            }
        }
    }

    /// Delivers a page of the tail, first reading any commits it skips past.
    async fn take<S: Sink>(&mut self, page: &Page, sink: &mut S) -> Result<(), Stop> {
        if page.last <= self.delivered {
            return Ok(());
        }
        if page.first > self.delivered + 1 {
            self.catch_up(sink, Some(page.first - 1)).await?;
        }
        self.deliver(page, sink).await
    }

    async fn deliver<S: Sink>(&mut self, page: &Page, sink: &mut S) -> Result<(), Stop> {
        let selected = self.spec.select(page, self.delivered)?;
        sink.deliver(self.spec, page, &selected, page.last).await?;
        self.hub
            .metrics
            .delivered
            .fetch_add(selected.len() as u64, Ordering::Relaxed);
        self.delivered = page.last;
        self.registration.advance(page.last);
        Ok(())
    }

    /// Reads the commits after the delivered version from the log and delivers them:
    /// up to `upto`, or to the end of the log.
    async fn catch_up<S: Sink>(&mut self, sink: &mut S, upto: Option<u64>) -> Result<(), Stop> {
        let store = self.hub.engine.store();
        loop {
            if upto.is_some_and(|upto| self.delivered >= upto) {
                return Ok(());
            }
            self.hub
                .metrics
                .catch_up_reads
                .fetch_add(1, Ordering::Relaxed);
            let changes = store.changes_after(self.delivered, PAGE_CHANGES).await?;
            let Some(first) = changes.first().map(|c| c.version) else {
                return Ok(());
            };
            if first > self.delivered + 1 {
                self.hub
                    .metrics
                    .ended_behind_retention
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Stop::Failed(behind_retention(self.delivered, Some(first))));
            }
            let page = self.hub.decode(changes);
            self.deliver(&page, sink).await?;
        }
    }

    /// Sends the current rows matching the filter, at the version read before them.
    async fn snapshot<S: Sink>(&mut self, sink: &mut S) -> Result<(), Stop> {
        let version = self.delivered;
        for follow in self.spec.follows.values() {
            let filter = follow.filter.as_ref().map(RowFilter::expr);
            let mut rows = self
                .hub
                .engine
                .scan(&follow.table, filter)
                .await
                .map_err(Error::from)?;
            while let Some(batch) = rows
                .try_next()
                .await
                .map_err(|err| Error::from(quiver_query::Error::from(err)))?
            {
                if batch.num_rows() > 0 {
                    sink.snapshot(follow, version, batch).await?;
                }
            }
        }
        sink.progress(version, self.hub.latest().max(version))
            .await?;
        Ok(())
    }
}
