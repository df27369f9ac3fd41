//! Background upkeep of the write path: idle Flight SQL transactions rolled back,
//! the change log and idempotency records pruned past their retention.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Writer;
use crate::error::Result;

impl Writer {
    /// Background upkeep until `shutdown`: rolls back idle transactions every second
    /// and prunes the change log and idempotency keys every minute.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reap_idle_transactions().await;
            seconds += 1;
            if seconds.is_multiple_of(60)
                && let Err(err) = self.prune().await
            {
                tracing::warn!(error = %err, "cannot prune the change log");
            }
        }
    }

    /// Deletes change-log commits and idempotency keys past their retention.
    pub async fn prune(&self) -> Result<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = |keep: Duration| {
            i64::try_from(now.saturating_sub(keep).as_micros()).unwrap_or(i64::MAX)
        };
        let pruned = self
            .engine
            .store()
            .prune_change_log(
                before(self.config.change_log_retention),
                before(self.config.idempotency_window),
            )
            .await?;
        if pruned > 0 {
            tracing::info!(commits = pruned, "change log pruned");
        }
        Ok(pruned)
    }
}
