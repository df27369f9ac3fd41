//! A write transaction on SQLite: the single writer connection, held from
//! `BEGIN IMMEDIATE` to `COMMIT`, every call run on a blocking thread.
//!
//! The writer's per-connection state (`temp._quiver_txn`) carries the version the
//! open transaction writes and whether capture is on; the `TEMP` capture triggers
//! read it (see [`crate::capture`]).

use arrow::array::RecordBatch;
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use tokio::sync::OwnedMutexGuard;

use super::SqliteStore;
use super::guard::{self, Trust};
use crate::capture;
use crate::commit::{Capture, CommitOptions, CommitOutcome, StoredResponse};
use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::value::{Value, cell_at};

/// An open SQLite write transaction; rolled back when dropped unfinished.
pub(crate) struct SqliteTransaction {
    /// `None` only while a call runs on a blocking thread.
    guard: Option<OwnedMutexGuard<Connection>>,
    trust: Trust,
    capture: Capture,
    finished: bool,
}

impl SqliteTransaction {
    /// Waits for the writer (up to the pool's acquire timeout) and begins.
    pub(crate) async fn begin(store: &SqliteStore, capture: Capture) -> Result<Self> {
        let timeout = store.acquire_timeout();
        let guard = tokio::time::timeout(timeout, store.writer_guard())
            .await
            .map_err(|_| Error::WriterBusy(timeout))?;
        let mut transaction = Self {
            guard: Some(guard),
            trust: store.trust().clone(),
            capture,
            finished: false,
        };
        let begin = match capture {
            Capture::On => {
                "BEGIN IMMEDIATE;
                 UPDATE temp._quiver_txn
                    SET version = (SELECT version FROM main._quiver_clock WHERE id = 1) + 1,
                        capture = 1;"
            }
            Capture::Off => "BEGIN IMMEDIATE; UPDATE temp._quiver_txn SET capture = 0;",
        };
        transaction
            .run(Trusted::Yes, move |conn| {
                if !conn.is_autocommit() {
                    // A transaction abandoned by a cancelled caller.
                    conn.execute_batch("ROLLBACK")?;
                }
                conn.execute_batch(begin)?;
                Ok(())
            })
            .await?;
        Ok(transaction)
    }

    /// Runs `f` on the writer connection on a blocking thread, as Quiver's own
    /// statements or a client's ([`guard`]). Dropped before it finishes (the caller
    /// went away or timed out), the statement running is interrupted, and the
    /// transaction can only be rolled back.
    async fn run<T, F>(&mut self, trusted: Trusted, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let mut guard = self.guard.take().ok_or_else(|| {
            Error::TransactionAborted(
                "a statement of this transaction was interrupted; roll it back".to_owned(),
            )
        })?;
        let interrupt = Interrupt(Some(guard.get_interrupt_handle()));
        let span = tracing::Span::current();
        let trust = self.trust.clone();
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let _scope = trust.scope(trusted == Trusted::Yes);
            let result = span.in_scope(|| f(&mut guard));
            (guard, result)
        })
        .await?;
        interrupt.disarm();
        self.guard = Some(guard);
        result
    }

    /// Reads the result of `sql` on the writer connection, seeing the transaction's
    /// own writes: `emit` takes each batch and says whether to go on.
    pub(crate) async fn read(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        schema: arrow::datatypes::SchemaRef,
        batch_size: usize,
        mut emit: impl FnMut(RecordBatch) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let sql = sql.to_owned();
        self.run(Trusted::No, move |conn| {
            let mut failed = None;
            super::read::read_batches(
                conn,
                &sql,
                &params,
                &schema,
                batch_size,
                |batch| match emit(batch) {
                    Ok(()) => true,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                },
            )?;
            failed.map_or(Ok(()), Err)
        })
        .await
    }

    /// Executes `;`-separated statements without parameters.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        self.run(Trusted::No, move |conn| Ok(conn.execute_batch(&sql)?))
            .await
    }

    /// Runs `sql` once per parameter row; returns the rows changed and the rows it
    /// returned.
    pub(crate) async fn run_many(
        &mut self,
        sql: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<(u64, Vec<Vec<Value>>)> {
        let sql = sql.to_owned();
        self.run(Trusted::No, move |conn| run_many(conn, &sql, &rows))
            .await
    }

    /// Inserts `rows` into `target` (quoted, qualified) with one prepared statement.
    pub(crate) async fn bulk_insert(
        &mut self,
        target: &str,
        columns: &[String],
        rows: Vec<Vec<Value>>,
    ) -> Result<u64> {
        let sql = insert_sql(target, columns);
        let (changed, _) = self.run_many(&sql, rows).await?;
        Ok(changed)
    }

    /// Inserts the rows of `batch` into `target` (quoted, qualified), binding each value
    /// straight from its Arrow array.
    pub(crate) async fn bulk_insert_batch(
        &mut self,
        target: &str,
        columns: &[String],
        batch: RecordBatch,
    ) -> Result<u64> {
        let sql = insert_sql(target, columns);
        self.run(Trusted::No, move |conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let schema = batch.schema();
            let mut written = 0u64;
            for row in 0..batch.num_rows() {
                for (index, column) in batch.columns().iter().enumerate() {
                    let name = schema.field(index).name();
                    let cell = cell_at(column, row, name)?;
                    cell.check_storable(Dialect::Sqlite).map_err(|problem| {
                        Error::Value(format!("row {}, column '{name}': {problem}", row + 1))
                    })?;
                    statement.raw_bind_parameter(index + 1, &cell)?;
                }
                written += statement.raw_execute()? as u64;
            }
            Ok(written)
        })
        .await
    }

    /// The stored answer for `key`, if an earlier request with it committed.
    pub(crate) async fn stored_response(&mut self, key: &str) -> Result<Option<StoredResponse>> {
        let key = key.to_owned();
        self.run(Trusted::Yes, move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT request_hash, response FROM _quiver_idempotency WHERE idempotency_key = ?1",
            )?;
            let mut rows = statement.query([key])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(StoredResponse {
                request_hash: row.get(0)?,
                response: row.get(1)?,
            }))
        })
        .await
    }

    /// Logs a table-level event (`truncate`).
    pub(crate) async fn log_table_event(&mut self, table: &str, op: &str) -> Result<()> {
        let (table, op) = (table.to_owned(), op.to_owned());
        self.run(Trusted::Yes, move |conn| {
            conn.prepare_cached(
                "INSERT INTO _quiver_changes (version, table_name, op)
                 SELECT version, ?1, ?2 FROM temp._quiver_txn WHERE capture",
            )?
            .execute([table, op])?;
            Ok(())
        })
        .await
    }

    /// (Re)creates the writer's TEMP capture triggers of every table, as this
    /// transaction sees them (their column lists may have changed).
    pub(crate) async fn capture_tables(&mut self) -> Result<()> {
        self.run(Trusted::Yes, |conn| {
            let mut script = String::new();
            for table in super::introspect::base_tables(conn)? {
                script.push_str(&capture::triggers_sql(Dialect::Sqlite, &table));
                script.push_str(&guard::check_triggers_sql(&table));
            }
            Ok(conn.execute_batch(&script)?)
        })
        .await
    }

    /// Commits: a version when anything changed, the commit record, the per-table
    /// versions and the idempotency answer, all in this transaction.
    pub(crate) async fn commit(
        mut self,
        committed_at: i64,
        options: CommitOptions,
    ) -> Result<CommitOutcome> {
        let outcome = match self.capture {
            Capture::On => {
                self.run(Trusted::Yes, move |conn| {
                    commit(conn, committed_at, options)
                })
                .await?
            }
            Capture::Off => {
                self.run(Trusted::Yes, |conn| Ok(conn.execute_batch("COMMIT")?))
                    .await?;
                CommitOutcome {
                    version: 0,
                    changes: 0,
                }
            }
        };
        self.finished = true;
        Ok(outcome)
    }

    /// Rolls back everything this transaction did.
    pub(crate) async fn rollback(mut self) -> Result<()> {
        self.finished = true;
        self.run(Trusted::Yes, |conn| {
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK")?;
            }
            Ok(())
        })
        .await
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(guard) = self.guard.take() else {
            return;
        };
        // Rolled back off the async threads; the writer stays locked until then.
        let trust = self.trust.clone();
        let rollback = move || {
            let _scope = trust.scope(true);
            if !guard.is_autocommit()
                && let Err(err) = guard.execute_batch("ROLLBACK")
            {
                tracing::warn!(error = %err, "cannot roll back an abandoned transaction");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(rollback)),
            Err(_) => rollback(),
        }
    }
}

/// `INSERT INTO target (columns) VALUES (?1, …)`.
fn insert_sql(target: &str, columns: &[String]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| Dialect::Sqlite.quote_identifier(c))
        .collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {target} ({}) VALUES ({})",
        names.join(", "),
        placeholders.join(", ")
    )
}

/// Whose statements a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trusted {
    /// Quiver's own (the change log, commits, capture triggers).
    Yes,
    /// A client's, or built from a client's request.
    No,
}

/// Interrupts the statement running on the writer when dropped armed: the future
/// waiting for it was dropped.
struct Interrupt(Option<rusqlite::InterruptHandle>);

impl Interrupt {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.interrupt();
        }
    }
}

fn row_values(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Vec<Value>> {
    (0..columns)
        .map(|i| {
            Ok(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Float(v),
                ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            })
        })
        .collect()
}

/// Runs one statement per parameter row; returns the rows changed and, when the
/// statement returns rows, those rows.
fn run_many(conn: &Connection, sql: &str, rows: &[Vec<Value>]) -> Result<(u64, Vec<Vec<Value>>)> {
    let mut statement = conn.prepare_cached(sql)?;
    let columns = statement.column_count();
    let mut changed = 0u64;
    let mut returned = Vec::new();
    for params in rows {
        for (index, param) in params.iter().enumerate() {
            statement.raw_bind_parameter(index + 1, param)?;
        }
        if columns == 0 {
            changed += statement.raw_execute()? as u64;
        } else {
            let mut result = statement.raw_query();
            while let Some(row) = result.next()? {
                returned.push(row_values(row, columns)?);
            }
            changed += conn.changes();
        }
    }
    Ok((changed, returned))
}

fn commit(
    conn: &mut Connection,
    committed_at: i64,
    options: CommitOptions,
) -> Result<CommitOutcome> {
    let version: i64 = conn.query_row("SELECT version FROM temp._quiver_txn", [], |r| r.get(0))?;
    let changes: i64 = conn.query_row(
        "SELECT count(*) FROM _quiver_changes WHERE version = ?1",
        [version],
        |r| r.get(0),
    )?;
    conn.execute_batch("UPDATE temp._quiver_txn SET capture = 0")?;
    let version = if changes > 0 {
        conn.execute(
            "UPDATE _quiver_clock SET version = ?1 WHERE id = 1",
            [version],
        )?;
        conn.execute(
            "INSERT INTO _quiver_commits (version, committed_at, changes, trace_context)
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![version, committed_at, changes, options.trace_context],
        )?;
        conn.execute(
            "INSERT INTO _quiver_versions (table_name, version)
             SELECT DISTINCT table_name, ?1 FROM _quiver_changes WHERE version = ?1
             ON CONFLICT (table_name) DO UPDATE SET version = excluded.version",
            [version],
        )?;
        version
    } else {
        version - 1
    };
    let version = u64::try_from(version).unwrap_or_default();
    if let Some(record) = options.idempotency {
        conn.execute(
            "INSERT INTO _quiver_idempotency (idempotency_key, request_hash, response, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                record.key,
                record.request_hash,
                (record.response)(version),
                committed_at
            ],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(CommitOutcome {
        version,
        changes: u64::try_from(changes).unwrap_or_default(),
    })
}
