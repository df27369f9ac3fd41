//! The subscription service's state for the metrics registry: how many are open and
//! how far each has delivered (the counters go to [`crate::metrics`] directly).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the metrics endpoint reads of the subscriptions when scraped.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) active: AtomicUsize,
    /// The version each live subscription has delivered up to, by subscription id.
    pub(super) positions: std::sync::Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

impl Metrics {
    /// Open subscriptions, and the versions the furthest behind has yet to receive.
    pub(super) fn state(&self, latest: u64) -> (usize, u64) {
        let max_lag = self
            .positions
            .lock()
            .expect("metrics lock is never poisoned")
            .values()
            .map(|position| latest.saturating_sub(position.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0);
        (self.active.load(Ordering::Relaxed), max_lag)
    }

    /// The positions of the open subscriptions, by id (for the system table).
    pub(super) fn positions(&self) -> Vec<(u64, u64)> {
        let mut positions: Vec<(u64, u64)> = self
            .positions
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
            .map(|(id, position)| (*id, position.load(Ordering::Relaxed)))
            .collect();
        positions.sort_unstable();
        positions
    }
}
