//! The shared tail of the change log: one task reads new commits once per wake-up,
//! decodes them once and broadcasts the page to every subscriber; and the registry of
//! subscriptions, which places each new one and fixes where it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quiver_query::QueryEngine;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::decode::{Page, TableLookup};
use super::metrics::Metrics;
use super::spec::{Request, Spec, Start};
use crate::config::SubscriptionConfig;
use crate::error::{Error, Result};

/// Most changes read from the log at once (whole commits; a larger commit is read whole).
pub(super) const PAGE_CHANGES: usize = 4096;
/// Pages the shared tail keeps for subscribers that have not taken them yet.
const TAIL_PAGES: usize = 256;
/// How often the tail looks at the log when no commit woke it.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// A subscription's place among the active ones; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Registration {
    hub: Arc<Hub>,
    id: u64,
    pub(super) position: Arc<AtomicU64>,
}

impl Registration {
    /// The subscription's id in this process.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn advance(&self, version: u64) {
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
    pub(super) engine: Arc<QueryEngine>,
    pub(super) config: SubscriptionConfig,
    pub(super) pages: broadcast::Sender<Arc<Page>>,
    /// The newest version the tail has read.
    pub(super) latest: AtomicU64,
    pub(super) metrics: Metrics,
    pub(super) next_id: AtomicU64,
    pub(super) shutdown: CancellationToken,
}

/// Where a new subscription stands before its first message.
pub(crate) struct Opened {
    pub(super) registration: Registration,
    pub(super) pages: broadcast::Receiver<Arc<Page>>,
    pub(super) spec: Spec,
    /// The version delivered up to (for a snapshot, the snapshot's version).
    pub(super) from: u64,
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
    ///
    /// With no subscriber the log is not read at all, only its latest version: a
    /// subscriber that joins later reads what it needs from the log itself (it sees
    /// the gap), so nothing is lost, and a large commit costs no memory while nobody
    /// follows it.
    async fn read_new(&self, cursor: &mut u64) -> Result<()> {
        if self.pages.receiver_count() == 0 {
            let latest = self.engine.store().latest_version().await?;
            *cursor = (*cursor).max(latest);
            self.latest.fetch_max(latest, Ordering::AcqRel);
            return Ok(());
        }
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

    pub(super) fn decode(&self, changes: Vec<quiver_storage::Change>) -> Page {
        let catalog = self.engine.catalog();
        let mut tables = TableLookup::new(&catalog, self.engine.store().default_schema());
        Page::decode(changes, &mut tables)
    }

    /// Checks `request` against the catalog.
    pub(crate) fn compile(&self, request: &Request) -> Result<Spec> {
        Spec::compile(&self.engine, request, self.config.max_tables)
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
                        crate::metrics::metrics()
                            .subscriptions_behind_retention
                            .inc();
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

    /// Updates the subscription gauges of the metrics registry (when scraped).
    pub fn refresh_metrics(&self) {
        let latest = self.latest();
        let (active, max_lag) = self.metrics.state(latest);
        let metrics = crate::metrics::metrics();
        metrics.subscriptions_active.set(active as i64);
        metrics.subscription_lag_max.set(max_lag as i64);
        metrics.change_log_latest.set(latest as i64);
    }

    /// The open subscriptions: id and the version each has delivered up to.
    pub fn positions(&self) -> Vec<(u64, u64)> {
        self.metrics.positions()
    }
}

pub(super) fn behind_retention(version: u64, oldest: Option<u64>) -> Error {
    let held = match oldest {
        Some(oldest) => format!("the change log now starts at version {oldest}"),
        None => "the change log holds no commits".to_owned(),
    };
    Error::ResourceExhausted(format!(
        "the changes after version {version} are no longer in the change log ({held}); \
         resume_version={version}: start again from a snapshot"
    ))
}
