//! Delivering to one subscriber: catch-up reads from the log, then pages of the shared
//! tail, with periodic progress, to a gRPC or Flight sink.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver_query::predicate::RowFilter;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tracing::Instrument;

use super::decode::Page;
use super::hub::{Hub, Opened, PAGE_CHANGES, Registration, behind_retention};
use super::spec::{Follow, Spec, Start};
use crate::error::{Error, Result};

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
        if selected.is_empty() {
            sink.deliver(self.spec, page, &selected, page.last).await?;
        } else {
            // One span per page handed over, in a trace of its own, linked to the
            // spans of the commits it carries (also when written on another replica).
            let span = tracing::info_span!(
                parent: None,
                "subscription.deliver",
                otel.name = "subscription deliver",
                otel.kind = "producer",
                messaging.operation.type = "send",
                // Integers as i64: OpenTelemetry has no unsigned attribute.
                subscription.id = self.registration.id() as i64,
                events = selected.len() as i64,
                first_version = page.first as i64,
                last_version = page.last as i64,
            );
            crate::telemetry::link_to_writers(
                &span,
                selected
                    .iter()
                    .map(|&i| page.events[i].message.trace_parent.as_str()),
            );
            sink.deliver(self.spec, page, &selected, page.last)
                .instrument(span)
                .await?;
            let metrics = crate::metrics::metrics();
            metrics.subscription_events.inc_by(selected.len() as u64);
            let now = now_micros();
            let mut last_commit = None;
            for &i in &selected {
                let committed = page.events[i].committed_at_micros;
                if last_commit != Some(committed) {
                    last_commit = Some(committed);
                    let waited = now.saturating_sub(committed).max(0) as f64 / 1e6;
                    metrics.delivery_latency.observe(waited);
                }
            }
        }
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
            crate::metrics::metrics().subscription_catch_up_reads.inc();
            let changes = store.changes_after(self.delivered, PAGE_CHANGES).await?;
            let Some(first) = changes.first().map(|c| c.version) else {
                return Ok(());
            };
            if first > self.delivered + 1 {
                crate::metrics::metrics()
                    .subscriptions_behind_retention
                    .inc();
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

/// Microseconds since the Unix epoch, as commits are stamped.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
