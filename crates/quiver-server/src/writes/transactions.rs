//! Flight SQL transactions: opened by `BeginTransaction`, begun on the store at their
//! first write (so a client that keeps a transaction open only to read never holds a
//! connection, or on SQLite the writer), ended by `EndTransaction`, by the client's
//! `CloseSession` or disconnect, or rolled back when idle too long.
//!
//! A transaction belongs to the connection that began it. Its id is 128 random bits,
//! and every use is checked against the connection it comes on: another client can
//! neither guess an id nor use one it learned.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use quiver_query::ReadThrough;
use quiver_storage::{CommitOptions, Transaction, Value};

use super::Writer;
use crate::connection::ConnectionId;
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
    pub(super) owner: Option<ConnectionId>,
    pub(super) state: tokio::sync::Mutex<OpenTransaction>,
    pub(super) last_used: Mutex<Instant>,
}

/// An open transaction as `system.transactions` shows it.
#[derive(Debug, Clone)]
pub struct TransactionState {
    /// The connection it belongs to (`c12`).
    pub connection: String,
    /// Since its last statement.
    pub idle: std::time::Duration,
    /// Whether a statement runs in it now.
    pub in_use: bool,
}

/// Most transactions one connection (and principal) may hold open.
const MAX_TRANSACTIONS_PER_CONNECTION: usize = 64;
/// Most transactions open on the server.
const MAX_TRANSACTIONS: usize = 10_000;

/// What a client is told of a transaction that is not its own or not there: the same,
/// so nothing is learned about other clients' ids.
fn unknown(id: &Bytes) -> Error {
    let shown: String = String::from_utf8_lossy(id).chars().take(64).collect();
    Error::NotFound(format!(
        "transaction '{shown}' does not exist (it ended, timed out, began on another \
         connection, or on another replica)"
    ))
}

impl Writer {
    /// The open transaction `id`, when `owner` began it.
    pub(super) fn slot(
        &self,
        id: &Bytes,
        owner: Option<ConnectionId>,
    ) -> Result<Arc<TransactionSlot>> {
        let transactions = self.transactions.lock().expect("never poisoned");
        match transactions.get(id) {
            Some(slot) if slot.owner == owner => Ok(Arc::clone(slot)),
            _ => Err(unknown(id)),
        }
    }

    /// Checks that `transaction_id`, when given, names an open transaction of `owner`.
    pub fn check_transaction(
        &self,
        transaction_id: Option<&Bytes>,
        owner: Option<ConnectionId>,
    ) -> Result<()> {
        match transaction_id.filter(|id| !id.is_empty()) {
            Some(id) => self.slot(id, owner).map(drop),
            None => Ok(()),
        }
    }

    /// What a query inside the transaction `transaction_id` of `owner` reads through:
    /// the transaction's own connection once it has begun on the store (so the query
    /// sees its writes); `None` outside a transaction or before its first write.
    pub async fn reads_through(
        &self,
        transaction_id: Option<&Bytes>,
        owner: Option<ConnectionId>,
    ) -> Result<Option<Arc<dyn ReadThrough>>> {
        let Some(id) = transaction_id.filter(|id| !id.is_empty()) else {
            return Ok(None);
        };
        let slot = self.slot(id, owner)?;
        if slot.state.lock().await.transaction.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(TransactionReads {
            slot,
            batch_size: self.engine.store().batch_size(),
            limit_bytes: self.config.transaction_read_limit,
        })))
    }

    /// Opens a Flight SQL transaction for the connection `owner`; its id.
    pub fn begin(&self, owner: Option<ConnectionId>) -> Result<Bytes> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random)
            .map_err(|err| Error::Internal(format!("no randomness for a transaction id: {err}")))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let id = Bytes::from(format!("qtx-{hex}"));
        let slot = Arc::new(TransactionSlot {
            owner,
            state: tokio::sync::Mutex::new(OpenTransaction::default()),
            last_used: Mutex::new(Instant::now()),
        });
        let mut transactions = self.transactions.lock().expect("never poisoned");
        // Each open transaction is kept until it ends or idles out: bounded per
        // connection and in all, so a client looping on BeginTransaction holds little.
        let mine = transactions
            .values()
            .filter(|slot| slot.owner.is_some() && slot.owner == owner)
            .count();
        if mine >= MAX_TRANSACTIONS_PER_CONNECTION || transactions.len() >= MAX_TRANSACTIONS {
            return Err(Error::ResourceExhausted(format!(
                "too many open transactions ({mine} on this connection, {} in all; at most \
                 {MAX_TRANSACTIONS_PER_CONNECTION} per connection): end one first",
                transactions.len()
            )));
        }
        transactions.insert(id.clone(), slot);
        Ok(id)
    }

    /// Commits or rolls back the Flight SQL transaction `id` of `owner`.
    pub async fn end(&self, id: &Bytes, commit: bool, owner: Option<ConnectionId>) -> Result<()> {
        let slot = {
            let mut transactions = self.transactions.lock().expect("never poisoned");
            match transactions.get(id) {
                Some(slot) if slot.owner == owner => transactions.remove(id),
                _ => None,
            }
        }
        .ok_or_else(|| unknown(id))?;
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

    /// Rolls back every transaction of the connection `owner` (its session closed, or
    /// the connection itself); how many there were.
    pub async fn end_connection(&self, owner: ConnectionId) -> usize {
        let ended: Vec<Arc<TransactionSlot>> = {
            let mut transactions = self.transactions.lock().expect("never poisoned");
            let ids: Vec<Bytes> = transactions
                .iter()
                .filter(|(_, slot)| slot.owner.is_some_and(|o| owner.covers(&o)))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| transactions.remove(id))
                .collect()
        };
        for slot in &ended {
            let mut open = slot.state.lock().await;
            if let Some(tx) = open.transaction.take() {
                self.rollback(tx).await;
            }
        }
        if !ended.is_empty() {
            tracing::info!(connection = %owner, transactions = ended.len(), "transactions of a closed session rolled back");
        }
        ended.len()
    }

    /// The open Flight SQL transactions: whose connection, idle how long, and whether
    /// a statement is running in one now.
    pub fn transactions(&self) -> Vec<TransactionState> {
        let transactions = self.transactions.lock().expect("never poisoned");
        let mut open: Vec<TransactionState> = transactions
            .values()
            .map(|slot| TransactionState {
                connection: slot
                    .owner
                    .map_or_else(|| "-".to_owned(), |owner| owner.to_string()),
                idle: slot.last_used.lock().expect("never poisoned").elapsed(),
                in_use: slot.state.try_lock().is_err(),
            })
            .collect();
        open.sort_by_key(|t| std::cmp::Reverse(t.idle));
        open
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

/// Reads of a query inside a Flight SQL transaction, on the transaction's connection.
#[derive(Debug)]
struct TransactionReads {
    slot: Arc<TransactionSlot>,
    batch_size: usize,
    limit_bytes: usize,
}

impl ReadThrough for TransactionReads {
    fn read(
        &self,
        sql: String,
        params: Vec<Value>,
        schema: SchemaRef,
    ) -> BoxFuture<'static, quiver_storage::Result<Vec<RecordBatch>>> {
        let slot = Arc::clone(&self.slot);
        let (batch_size, limit_bytes) = (self.batch_size, self.limit_bytes);
        Box::pin(async move {
            let mut open = slot.state.lock().await;
            *slot.last_used.lock().expect("never poisoned") = Instant::now();
            let Some(tx) = open.transaction.as_mut() else {
                return Err(quiver_storage::Error::TransactionAborted(
                    "the transaction ended while a query in it ran".to_owned(),
                ));
            };
            let batches = tx.read(&sql, params, schema, batch_size, limit_bytes).await;
            *slot.last_used.lock().expect("never poisoned") = Instant::now();
            batches
        })
    }
}
