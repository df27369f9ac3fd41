//! Flight SQL transactions: opened by `BeginTransaction`, begun on the store at their
//! first write (so a client that keeps a transaction open only to read never holds a
//! connection, or on SQLite the writer), ended by `EndTransaction` or rolled back when
//! idle too long.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use quiver_storage::{CommitOptions, Transaction};

use super::Writer;
use crate::error::{Error, Result};

/// A Flight SQL transaction: begun on the store at its first write, so a client that
/// keeps a transaction open only to read never holds a connection (or, on SQLite, the
/// writer).
#[derive(Debug, Default)]
pub(super) struct OpenTransaction {
    pub(super) transaction: Option<Transaction>,
    pub(super) changed_schema: bool,
}

#[derive(Debug)]
pub(super) struct TransactionSlot {
    pub(super) state: tokio::sync::Mutex<OpenTransaction>,
    pub(super) last_used: Mutex<Instant>,
}

impl Writer {
    pub(super) fn slot(&self, id: &Bytes) -> Result<Arc<TransactionSlot>> {
        self.transactions
            .lock()
            .expect("never poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "transaction '{}' does not exist (it ended, timed out, or began on another replica)",
                    String::from_utf8_lossy(id)
                ))
            })
    }

    /// Checks that `transaction_id`, when given, names an open transaction.
    pub fn check_transaction(&self, transaction_id: Option<&Bytes>) -> Result<()> {
        match transaction_id.filter(|id| !id.is_empty()) {
            Some(id) => self.slot(id).map(drop),
            None => Ok(()),
        }
    }

    /// Opens a Flight SQL transaction and returns its id.
    pub fn begin(&self) -> Bytes {
        let sequence = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = Bytes::from(format!("qtx-{:016x}-{sequence}", self.id_seed));
        let slot = Arc::new(TransactionSlot {
            state: tokio::sync::Mutex::new(OpenTransaction::default()),
            last_used: Mutex::new(Instant::now()),
        });
        self.transactions
            .lock()
            .expect("never poisoned")
            .insert(id.clone(), slot);
        id
    }

    /// Commits or rolls back a Flight SQL transaction.
    pub async fn end(&self, id: &Bytes, commit: bool) -> Result<()> {
        let slot = self
            .transactions
            .lock()
            .expect("never poisoned")
            .remove(id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "transaction '{}' does not exist (it ended, timed out, or began on another replica)",
                    String::from_utf8_lossy(id)
                ))
            })?;
        let mut open = slot.state.lock().await;
        let Some(tx) = open.transaction.take() else {
            return Ok(());
        };
        if commit {
            self.commit(tx, CommitOptions::default(), open.changed_schema)
                .await?;
        } else {
            self.rollback(tx).await;
        }
        Ok(())
    }

    /// Open Flight SQL transactions.
    pub fn open_transactions(&self) -> usize {
        self.transactions.lock().expect("never poisoned").len()
    }

    /// Rolls back transactions idle longer than the configured timeout.
    pub async fn reap_idle_transactions(&self) -> usize {
        let timeout = self.config.transaction_idle_timeout;
        let idle: Vec<(Bytes, Arc<TransactionSlot>)> = {
            let mut transactions = self.transactions.lock().expect("never poisoned");
            let ids: Vec<Bytes> = transactions
                .iter()
                .filter(|(_, slot)| {
                    slot.last_used.lock().expect("never poisoned").elapsed() > timeout
                        && slot.state.try_lock().is_ok()
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| transactions.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in &idle {
            let mut open = slot.state.lock().await;
            if let Some(tx) = open.transaction.take() {
                self.rollback(tx).await;
            }
            tracing::info!(transaction = %String::from_utf8_lossy(id), ?timeout, "idle transaction rolled back");
        }
        idle.len()
    }
}
