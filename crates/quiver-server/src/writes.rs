//! The write path shared by Flight SQL and the Mutations API: work run in a
//! transaction on the store and committed with a change-log version; Flight SQL
//! transactions pinned to one connection; bulk ingest; change-log retention.
//!
//! Every write goes through [`Writer::transact`], the one place that begins, commits
//! and rolls back, so each one is in the change log. After DDL the engine's catalog is
//! re-read at once, and capture triggers are installed on new tables inside the same
//! transaction.
//!
//! # Layout
//! - [`statement`]: what a statement does, by its first keyword.
//! - [`guard`]: what a client's statement may do on the store.
//! - `transactions`: Flight SQL transactions by id, and their idle reaper.
//! - `ingest`: `CommandStatementIngest`.
//! - `upkeep`: background retention of the change log and idempotency records.

pub mod guard;
mod ingest;
pub mod statement;
mod transactions;
mod upkeep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quiver_query::QueryEngine;
use quiver_storage::{CommitOptions, CommitOutcome, Transaction, Value};
use tracing::Instrument;

pub use self::statement::{StatementKind, statement_kind};
use self::transactions::TransactionSlot;
use crate::config::WriteConfig;
use crate::connection::ConnectionId;
use crate::error::{Error, Result};

/// How a unit of write work ends.
#[derive(Debug)]
pub enum Finish<T> {
    /// Commit what it wrote, storing `options` with the commit (in a Flight SQL
    /// transaction, the commit waits for `EndTransaction` and `options` are dropped).
    Commit(T, CommitOptions),
    /// It wrote nothing (an idempotent replay): end without committing.
    Nothing(T),
}

/// What a unit of write work produced.
#[derive(Debug)]
pub struct Written<T> {
    /// The work's own answer.
    pub value: T,
    /// The commit, when the work committed on its own (not inside a Flight SQL
    /// transaction, and not [`Finish::Nothing`]).
    pub commit: Option<CommitOutcome>,
}

/// The write path: runs statements and ingests, keeps Flight SQL transactions.
#[derive(Debug)]
pub struct Writer {
    engine: Arc<QueryEngine>,
    config: WriteConfig,
    transactions: Mutex<HashMap<Bytes, Arc<TransactionSlot>>>,
}

impl Writer {
    /// A writer over `engine`'s store.
    pub fn new(engine: Arc<QueryEngine>, config: WriteConfig) -> Self {
        Self {
            engine,
            config,
            transactions: Mutex::new(HashMap::new()),
        }
    }

    /// The engine whose store this writes to.
    pub fn engine(&self) -> &Arc<QueryEngine> {
        &self.engine
    }

    /// The write limits.
    pub fn config(&self) -> &WriteConfig {
        &self.config
    }

    /// Runs a client's data-changing or DDL statement once per parameter row, in the
    /// Flight SQL transaction `transaction_id` of `owner` or in a transaction of its
    /// own. The statement is checked against the statement limits and [`guard`] first.
    /// Returns the rows changed.
    pub async fn execute_update(
        &self,
        sql: &str,
        rows: Vec<Vec<Value>>,
        transaction_id: Option<&Bytes>,
        owner: Option<ConnectionId>,
    ) -> Result<u64> {
        self.config
            .limits
            .check("statement", sql)
            .map_err(Error::from)?;
        guard::check_query(sql)?;
        let kind = statement_kind(sql, self.engine.store().dialect());
        if kind == StatementKind::Query {
            return Err(Error::InvalidRequest(
                "a query cannot be executed as an update; run it as a query".to_owned(),
            ));
        }
        if rows.len() > self.config.max_rows {
            return Err(Error::ResourceExhausted(format!(
                "{} parameter rows are bound; the limit is {} (max_mutation_rows)",
                rows.len(),
                self.config.max_rows
            )));
        }
        let dialect = self.engine.store().dialect();
        guard::check_client_statement(sql, dialect)?;
        let sql = statement::store_placeholders(sql, dialect)?;
        let ddl = kind == StatementKind::Ddl;
        let written = self
            .transact(transaction_id, owner, ddl, async move |tx| {
                let (changed, _) = tx.run_many(&sql, rows).await?;
                if ddl {
                    tx.capture_new_tables().await?;
                    // DDL changes no rows (SQLite would report the last DML's count).
                    return Ok(Finish::Commit(0, CommitOptions::default()));
                }
                Ok(Finish::Commit(changed, CommitOptions::default()))
            })
            .await?;
        Ok(written.value)
    }

    /// Runs `work` in the Flight SQL transaction `transaction_id` of `owner`, or in a
    /// transaction of its own, committed (or ended) as the work's [`Finish`] says and
    /// rolled back when it fails. `changes_schema` re-reads the catalog after the
    /// commit.
    pub async fn transact<T>(
        &self,
        transaction_id: Option<&Bytes>,
        owner: Option<ConnectionId>,
        changes_schema: bool,
        work: impl AsyncFnOnce(&mut Transaction) -> Result<Finish<T>>,
    ) -> Result<Written<T>> {
        let Some(id) = transaction_id.filter(|id| !id.is_empty()) else {
            let span = tracing::debug_span!(
                "store.transaction",
                otel.name = "transaction",
                otel.kind = "client",
                db.system.name = self.engine.store().system_name(),
            );
            let mut tx = self.begin_on_store().instrument(span.clone()).await?;
            return match work(&mut tx).instrument(span.clone()).await {
                Ok(Finish::Commit(value, options)) => {
                    let outcome = self.commit(tx, options, changes_schema).await?;
                    Ok(Written {
                        value,
                        commit: Some(outcome),
                    })
                }
                Ok(Finish::Nothing(value)) => {
                    self.rollback(tx).await;
                    Ok(Written {
                        value,
                        commit: None,
                    })
                }
                Err(err) => {
                    self.rollback(tx).await;
                    Err(err)
                }
            };
        };
        let slot = self.slot(id, owner)?;
        let mut open = slot.state.lock().await;
        *slot.last_used.lock().expect("never poisoned") = Instant::now();
        if open.transaction.is_none() {
            open.transaction = Some(self.begin_on_store().await?);
        }
        let tx = open
            .transaction
            .as_mut()
            .expect("a transaction was just begun");
        let value = match work(tx).await? {
            Finish::Commit(value, _) | Finish::Nothing(value) => value,
        };
        open.changed_schema |= changes_schema;
        *slot.last_used.lock().expect("never poisoned") = Instant::now();
        Ok(Written {
            value,
            commit: None,
        })
    }

    /// Begins a transaction on the store.
    async fn begin_on_store(&self) -> Result<Transaction> {
        Ok(self.engine.store().begin().await?)
    }

    /// Commits `tx`; re-reads the catalog when it changed the schema.
    async fn commit(
        &self,
        tx: Transaction,
        options: CommitOptions,
        changed_schema: bool,
    ) -> Result<CommitOutcome> {
        // The change log names the span that wrote (tracing on), else the client's
        // own trace context: deliveries of these changes link back to it.
        let mut options = options;
        if let Some(traceparent) = crate::telemetry::current_traceparent() {
            options.trace_context = Some(traceparent);
        }
        let outcome = tx
            .commit(options)
            .instrument(tracing::debug_span!(
                "store.commit",
                otel.name = "COMMIT",
                otel.kind = "client",
                db.operation.name = "COMMIT",
            ))
            .await?;
        tracing::Span::current().record("commit_version", outcome.version as i64);
        crate::metrics::metrics().commits.inc();
        if changed_schema {
            self.engine.refresh_catalog().await?;
        }
        Ok(outcome)
    }

    /// Rolls `tx` back; a failure is logged (the store ends the transaction anyway:
    /// the connection is retired or rolled back when dropped).
    async fn rollback(&self, tx: Transaction) {
        if let Err(err) = tx.rollback().await {
            tracing::warn!(error = %err, "rollback failed");
        }
    }
}
