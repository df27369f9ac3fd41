//! Write transactions: statements on one connection, committed with a change-log
//! version (see [`crate::changelog`]).
//!
//! On SQLite a transaction holds the single writer connection from `BEGIN IMMEDIATE`
//! to `COMMIT`, so transactions are short and readers are never blocked (WAL); on
//! PostgreSQL it holds one pooled connection. Each backend's transaction lives beside
//! its backend ([`crate::sqlite`], [`crate::postgres`]); this is the one face both
//! share. A transaction dropped without [`Transaction::commit`] is rolled back.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::commit::{Capture, CommitOptions, CommitOutcome, StoredResponse, now_micros};
use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::postgres::transaction::PostgresTransaction;
use crate::sqlite::transaction::SqliteTransaction;
use crate::store::{Backend as StoreBackend, Store};
use crate::value::Value;

/// How long a Flight SQL transaction may sit idle before it is rolled back.
pub const DEFAULT_TRANSACTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

enum Backend {
    Sqlite(SqliteTransaction),
    Postgres(PostgresTransaction),
}

/// An open write transaction.
pub struct Transaction {
    backend: Backend,
    commits: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("dialect", &self.dialect())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Begins a write transaction whose changes go to the change log. On SQLite this
    /// waits for the writer (up to the pool's acquire timeout); on PostgreSQL it takes
    /// a pooled connection.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_with(Capture::On).await
    }

    /// Begins a write transaction, capturing its changes or not.
    pub async fn begin_with(&self, capture: Capture) -> Result<Transaction> {
        let backend = match self.backend() {
            StoreBackend::Sqlite(store) => {
                Backend::Sqlite(SqliteTransaction::begin(store, capture).await?)
            }
            StoreBackend::Postgres(store) => {
                Backend::Postgres(PostgresTransaction::begin(store, capture).await?)
            }
        };
        Ok(Transaction {
            backend,
            commits: self.commit_sender(),
        })
    }
}

/// Checks that the store can hold every value of `rows` as written.
fn check_values(dialect: Dialect, rows: &[Vec<Value>]) -> Result<()> {
    for (row_index, row) in rows.iter().enumerate() {
        for (index, value) in row.iter().enumerate() {
            if let Err(problem) = value.check_storable(dialect) {
                let row = if rows.len() > 1 {
                    format!("row {}, ", row_index + 1)
                } else {
                    String::new()
                };
                return Err(crate::error::Error::Value(format!(
                    "{row}parameter {}: {problem}",
                    index + 1
                )));
            }
        }
    }
    Ok(())
}

impl Transaction {
    /// The SQL dialect of the connection.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Executes one statement; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        let (changed, _) = self.run_many(sql, vec![params]).await?;
        Ok(changed)
    }

    /// Reads the result of `sql` on the transaction's own connection, so it sees the
    /// transaction's uncommitted writes, as batches shaped like `schema`. The rows are
    /// held while the transaction is busy reading them: a result larger than
    /// `limit_bytes` is refused.
    pub async fn read(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        schema: SchemaRef,
        batch_size: usize,
        limit_bytes: usize,
    ) -> Result<Vec<RecordBatch>> {
        let collected = Arc::new(std::sync::Mutex::new((Vec::new(), 0usize)));
        let sink = Arc::clone(&collected);
        let emit = move |batch: RecordBatch| {
            let mut sink = sink.lock().expect("never poisoned");
            sink.1 += batch.get_array_memory_size();
            if sink.1 > limit_bytes {
                return Err(Error::TooLarge(format!(
                    "a read inside a transaction holds at most {} MiB \
                     (transaction_read_limit_mb); commit first, or narrow the query",
                    limit_bytes >> 20
                )));
            }
            sink.0.push(batch);
            Ok(())
        };
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.read(sql, params, schema, batch_size, emit).await?,
            Backend::Postgres(tx) => tx.read(sql, &params, &schema, batch_size, emit).await?,
        }
        let batches = std::mem::take(&mut collected.lock().expect("never poisoned").0);
        Ok(batches)
    }

    /// Executes `;`-separated statements without parameters (DDL).
    pub async fn execute_script(&mut self, sql: &str) -> Result<()> {
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.execute_script(sql).await,
            Backend::Postgres(tx) => tx.execute_script(sql).await,
        }
    }

    /// Runs `sql` once per parameter row; returns the rows changed and the rows the
    /// statement returned (`RETURNING`), in order. On PostgreSQL the executions are
    /// pipelined: one round trip's wait for all of them. Values the store cannot hold
    /// as written are refused before anything runs.
    pub async fn run_many(
        &mut self,
        sql: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<(u64, Vec<Vec<Value>>)> {
        check_values(self.dialect(), &rows)?;
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.run_many(sql, rows).await,
            Backend::Postgres(tx) => tx.run_many(sql, rows).await,
        }
    }

    /// Inserts `rows` into `table` (`columns` in row order) by the store's bulk path:
    /// one prepared statement on SQLite, `COPY` on PostgreSQL. Returns the rows written.
    pub async fn bulk_insert(
        &mut self,
        schema: &str,
        table: &str,
        columns: &[String],
        rows: Vec<Vec<Value>>,
    ) -> Result<u64> {
        let dialect = self.dialect();
        check_values(dialect, &rows)?;
        let target = format!(
            "{}.{}",
            dialect.quote_identifier(schema),
            dialect.quote_identifier(table)
        );
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.bulk_insert(&target, columns, rows).await,
            Backend::Postgres(tx) => tx.bulk_insert(&target, columns, rows).await,
        }
    }

    /// Inserts the rows of `batch` (its columns named `columns`, in order) into
    /// `table` by the store's bulk path, each value bound straight from its Arrow
    /// array: one prepared statement on SQLite, `COPY` on PostgreSQL. Values the store
    /// cannot hold as written are refused. Returns the rows written.
    pub async fn bulk_insert_batch(
        &mut self,
        schema: &str,
        table: &str,
        columns: &[String],
        batch: RecordBatch,
    ) -> Result<u64> {
        let dialect = self.dialect();
        let target = format!(
            "{}.{}",
            dialect.quote_identifier(schema),
            dialect.quote_identifier(table)
        );
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.bulk_insert_batch(&target, columns, batch).await,
            Backend::Postgres(tx) => tx.bulk_insert_batch(&target, columns, &batch).await,
        }
    }

    /// The stored answer for `key`, if an earlier request with it committed.
    pub async fn stored_response(&mut self, key: &str) -> Result<Option<StoredResponse>> {
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.stored_response(key).await,
            Backend::Postgres(tx) => tx.stored_response(key).await,
        }
    }

    /// Logs a table-level event (`truncate` when a table's rows are replaced wholesale).
    pub async fn log_table_event(&mut self, table: &str, op: &str) -> Result<()> {
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.log_table_event(table, op).await,
            Backend::Postgres(tx) => tx.log_table_event(table, op).await,
        }
    }

    /// Installs change capture on the tables that lack it (those DDL in this
    /// transaction created, for example), as this transaction sees them, so rows
    /// written later in the same transaction are logged too. On SQLite every table's
    /// TEMP triggers are recreated (their column lists may have changed).
    pub async fn capture_new_tables(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Sqlite(tx) => tx.capture_tables().await,
            Backend::Postgres(tx) => tx.capture_tables().await,
        }
    }

    /// Commits: takes the next version when anything changed, records the commit, the
    /// per-table versions and the idempotency answer, all in this transaction, and
    /// announces the version on [`Store::commit_signal`].
    pub async fn commit(self, options: CommitOptions) -> Result<CommitOutcome> {
        let committed_at = now_micros();
        let outcome = match self.backend {
            Backend::Sqlite(tx) => tx.commit(committed_at, options).await?,
            Backend::Postgres(tx) => tx.commit(committed_at, options).await?,
        };
        if outcome.changes > 0 {
            let version = outcome.version;
            self.commits.send_if_modified(|latest| {
                let newer = version > *latest;
                if newer {
                    *latest = version;
                }
                newer
            });
        }
        Ok(outcome)
    }

    /// Rolls back everything this transaction did.
    pub async fn rollback(self) -> Result<()> {
        match self.backend {
            Backend::Sqlite(tx) => tx.rollback().await,
            Backend::Postgres(tx) => tx.rollback().await,
        }
    }
}
