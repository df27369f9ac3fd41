//! The subscription service's counters, rendered as Prometheus text.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters kept for the metrics endpoint.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) active: AtomicUsize,
    pub(super) delivered: AtomicU64,
    pub(super) catch_up_reads: AtomicU64,
    pub(super) ended_behind_retention: AtomicU64,
    /// The version each live subscription has delivered up to, by subscription id.
    pub(super) positions: std::sync::Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

impl Metrics {
    /// Renders the subscription metrics in Prometheus text format.
    pub(super) fn render(&self, latest: u64, out: &mut String) {
        let positions: Vec<(u64, u64)> = self
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
            self.active.load(Ordering::Relaxed) as u64,
        );
        metric(
            "quiver_subscription_events_delivered_total",
            "counter",
            "Change events handed to subscribers.",
            self.delivered.load(Ordering::Relaxed),
        );
        metric(
            "quiver_subscription_catchup_reads_total",
            "counter",
            "Reads of the change log by subscribers catching up (start, or fell behind).",
            self.catch_up_reads.load(Ordering::Relaxed),
        );
        metric(
            "quiver_subscriptions_behind_retention_total",
            "counter",
            "Subscriptions refused or ended because their changes were pruned.",
            self.ended_behind_retention.load(Ordering::Relaxed),
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
