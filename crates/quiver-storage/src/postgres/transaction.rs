//! A write transaction on PostgreSQL: one pooled connection from `BEGIN` to `COMMIT`.
//!
//! Capture is switched on for the transaction (`quiver.capture`); the version is taken
//! as the last step before `COMMIT` by updating the clock row, whose lock orders the
//! commits (see [`crate::changelog`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use tokio_postgres::types::{ToSql, Type};

use super::{COMMIT_CHANNEL, PgManager, PostgresStore};
use crate::capture;
use crate::catalog::{TableInfo, TableKind};
use crate::commit::{Capture, CommitOptions, CommitOutcome, StoredResponse};
use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::pool::Lease;
use crate::value::{Value, cell_at};

/// An open PostgreSQL write transaction; its connection is retired when it is dropped
/// unfinished (it must never be handed out inside a transaction).
pub(crate) struct PostgresTransaction {
    lease: Box<Lease<PgManager>>,
    capture: Capture,
    finished: bool,
    /// Set when a statement's caller went away before it finished: the statement was
    /// cancelled on the server, and the transaction can only be rolled back.
    aborted: Arc<AtomicBool>,
}

/// Watches one statement: dropped before [`StatementWatch::done`], it cancels the
/// statement on the server and marks the transaction aborted.
struct StatementWatch {
    cancel: Option<tokio_postgres::CancelToken>,
    tls: super::tls::Connector,
    aborted: Arc<AtomicBool>,
}

impl StatementWatch {
    fn done(mut self) {
        self.cancel = None;
    }
}

impl Drop for StatementWatch {
    fn drop(&mut self) {
        let Some(token) = self.cancel.take() else {
            return;
        };
        self.aborted.store(true, Ordering::Release);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tls = self.tls.clone();
            runtime.spawn(async move {
                if let Err(err) = token.cancel_query(tls.0).await {
                    tracing::debug!(error = %err, "cannot cancel an abandoned statement");
                }
            });
        }
    }
}

type Param<'a> = &'a (dyn ToSql + Sync);

impl PostgresTransaction {
    /// Takes a pooled connection and begins.
    pub(crate) async fn begin(store: &PostgresStore, capture: Capture) -> Result<Self> {
        let mut lease = store.connection().await?;
        let begin = match capture {
            Capture::On => "BEGIN; SET LOCAL quiver.capture = 'on'; SET LOCAL TimeZone = 'UTC';",
            Capture::Off => "BEGIN; SET LOCAL TimeZone = 'UTC';",
        };
        lease.client().batch_execute(begin).await?;
        Ok(Self {
            lease: Box::new(lease),
            capture,
            finished: false,
            aborted: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts watching a statement; fails when an earlier one was abandoned.
    fn watch(&mut self) -> Result<StatementWatch> {
        if self.aborted.load(Ordering::Acquire) {
            return Err(Error::TransactionAborted(
                "a statement of this transaction was interrupted; roll it back".to_owned(),
            ));
        }
        Ok(StatementWatch {
            cancel: Some(self.lease.client().cancel_token()),
            tls: self.lease.tls.clone(),
            aborted: Arc::clone(&self.aborted),
        })
    }

    /// Reads the result of `sql` on the transaction's connection, seeing its own
    /// writes: `emit` takes each batch and says whether to go on.
    pub(crate) async fn read(
        &mut self,
        sql: &str,
        params: &[Value],
        schema: &arrow::datatypes::SchemaRef,
        batch_size: usize,
        mut emit: impl FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        use futures::StreamExt;
        let watch = self.watch()?;
        let statement = self.lease.prepare(sql).await?;
        let mut decoders = super::decoders(&statement, schema, batch_size)?;
        let rows = self
            .lease
            .client()
            .query_raw(&statement, params.iter().map(|p| p as Param<'_>))
            .await?;
        let mut rows = std::pin::pin!(rows);
        let mut count = 0;
        while let Some(row) = rows.next().await {
            super::decode_row(&mut decoders, schema, &row?)?;
            count += 1;
            if count == batch_size.max(1) {
                emit(super::finish_batch(&mut decoders, schema, count)?)?;
                count = 0;
            }
        }
        if count > 0 {
            emit(super::finish_batch(&mut decoders, schema, count)?)?;
        }
        watch.done();
        Ok(())
    }

    /// Executes `;`-separated statements without parameters.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> Result<()> {
        let watch = self.watch()?;
        self.lease.client().batch_execute(sql).await?;
        watch.done();
        Ok(())
    }

    /// Runs `sql` once per parameter row, pipelined: one round trip's wait for all of
    /// them. Returns the rows changed and the rows returned, in order.
    pub(crate) async fn run_many(
        &mut self,
        sql: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<(u64, Vec<Vec<Value>>)> {
        let watch = self.watch()?;
        let statement = self.lease.prepare(sql).await?;
        let client = self.lease.client();
        let returns_rows = !statement.columns().is_empty();
        let runs = rows.iter().map(|params| {
            let statement = &statement;
            async move {
                let params: Vec<Param<'_>> = params.iter().map(|p| p as _).collect();
                if returns_rows {
                    let rows = client.query(statement, &params).await?;
                    let values = rows
                        .iter()
                        .map(|row| (0..row.len()).map(|i| row_value(row, i)).collect())
                        .collect::<Result<Vec<Vec<Value>>>>()?;
                    Ok::<_, crate::error::Error>((values.len() as u64, values))
                } else {
                    Ok((client.execute(statement, &params).await?, Vec::new()))
                }
            }
        });
        let results = futures::future::try_join_all(runs).await?;
        let mut changed = 0;
        let mut returned = Vec::new();
        for (count, values) in results {
            changed += count;
            returned.extend(values);
        }
        watch.done();
        Ok((changed, returned))
    }

    /// Inserts `rows` into `target` (quoted, qualified) with `COPY`.
    pub(crate) async fn bulk_insert(
        &mut self,
        target: &str,
        columns: &[String],
        rows: Vec<Vec<Value>>,
    ) -> Result<u64> {
        let statement = copy_statement(target, columns);
        let chunks = super::copy_chunks(&rows);
        let watch = self.watch()?;
        let written = PostgresStore::copy_in(self.lease.client(), &statement, chunks).await?;
        watch.done();
        Ok(written)
    }

    /// Inserts the rows of `batch` into `target` (quoted, qualified) with `COPY`,
    /// encoding each value straight from its Arrow array.
    pub(crate) async fn bulk_insert_batch(
        &mut self,
        target: &str,
        columns: &[String],
        batch: &RecordBatch,
    ) -> Result<u64> {
        let statement = copy_statement(target, columns);
        let schema = batch.schema();
        let mut chunks = super::CopyChunks::default();
        let mut cells = Vec::with_capacity(batch.num_columns());
        for row in 0..batch.num_rows() {
            cells.clear();
            for (index, column) in batch.columns().iter().enumerate() {
                let name = schema.field(index).name();
                let cell = cell_at(column, row, name)?;
                cell.check_storable(Dialect::Postgres).map_err(|problem| {
                    Error::Value(format!("row {}, column '{name}': {problem}", row + 1))
                })?;
                cells.push(cell);
            }
            chunks.row(&cells);
        }
        let watch = self.watch()?;
        let written =
            PostgresStore::copy_in(self.lease.client(), &statement, chunks.finish()).await?;
        watch.done();
        Ok(written)
    }

    /// The stored answer for `key`, if an earlier request with it committed.
    pub(crate) async fn stored_response(&mut self, key: &str) -> Result<Option<StoredResponse>> {
        let statement = self
            .lease
            .prepare(
                "SELECT request_hash, response FROM _quiver._quiver_idempotency WHERE idempotency_key = $1::text",
            )
            .await?;
        let row = self.lease.client().query_opt(&statement, &[&key]).await?;
        Ok(match row {
            None => None,
            Some(row) => Some(StoredResponse {
                request_hash: row.try_get(0)?,
                response: row.try_get(1)?,
            }),
        })
    }

    /// Logs a table-level event (`truncate`).
    pub(crate) async fn log_table_event(&mut self, table: &str, op: &str) -> Result<()> {
        let statement = self
            .lease
            .prepare(
                "INSERT INTO _quiver._quiver_changes (table_name, op) VALUES ($1::text, $2::text)",
            )
            .await?;
        self.lease
            .client()
            .execute(&statement, &[&table, &op])
            .await?;
        Ok(())
    }

    /// Installs capture triggers on the tables that lack them, as this transaction
    /// sees them. Replicas starting together take turns (an advisory lock), as
    /// `CREATE TRIGGER` races otherwise. It follows DDL: prepared statements of every
    /// pooled connection, this one included, are prepared afresh.
    pub(crate) async fn capture_tables(&mut self) -> Result<()> {
        self.lease.schema_changed();
        self.lease
            .client()
            .batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({})",
                capture::POSTGRES_INSTALL_LOCK
            ))
            .await?;
        let uncaptured = self
            .lease
            .prepare(
                "SELECT n.nspname::text, c.relname::text,
                        coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                                  FROM pg_index i
                                  CROSS JOIN unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                  WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_%'
                   AND n.nspname NOT LIKE '\\_quiver%'
                   AND c.relname NOT LIKE '\\_quiver%'
                   AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                   WHERE t.tgrelid = c.oid AND t.tgname = '_quiver_capture_insert')",
            )
            .await?;
        let rows = self.lease.client().query(&uncaptured, &[]).await?;
        let mut script = String::new();
        for row in rows {
            let table = keyed_table(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            script.push_str(&capture::triggers_sql(Dialect::Postgres, &table));
        }
        if !script.is_empty() {
            self.lease.client().batch_execute(&script).await?;
        }
        Ok(())
    }

    /// Commits: a version when anything changed (taken last, so the clock row's lock
    /// orders commits), the commit record, the per-table versions, the announcement
    /// and the idempotency answer, all in this transaction.
    pub(crate) async fn commit(
        mut self,
        committed_at: i64,
        options: CommitOptions,
    ) -> Result<CommitOutcome> {
        let watch = self.watch()?;
        let outcome = match self.capture {
            Capture::On => commit(&mut self.lease, committed_at, options).await?,
            Capture::Off => {
                self.lease.client().batch_execute("COMMIT").await?;
                CommitOutcome {
                    version: 0,
                    changes: 0,
                }
            }
        };
        watch.done();
        self.finished = true;
        Ok(outcome)
    }

    /// Rolls back everything this transaction did.
    pub(crate) async fn rollback(mut self) -> Result<()> {
        self.finished = true;
        Ok(self.lease.client().batch_execute("ROLLBACK").await?)
    }
}

impl Drop for PostgresTransaction {
    fn drop(&mut self) {
        if !self.finished {
            // The connection is inside a transaction: never hand it out as it is.
            self.lease.retire = true;
        }
    }
}

/// `COPY target (columns) FROM STDIN`.
fn copy_statement(target: &str, columns: &[String]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| Dialect::Postgres.quote_identifier(c))
        .collect();
    format!("COPY {target} ({}) FROM STDIN", names.join(", "))
}

/// A table known only by name and primary key (enough for capture triggers).
fn keyed_table(schema: String, name: String, primary_key: Vec<String>) -> TableInfo {
    TableInfo {
        schema,
        name,
        kind: TableKind::Table,
        columns: Vec::new(),
        primary_key,
        foreign_keys: Vec::new(),
        indexes: Vec::new(),
        estimated_rows: None,
        range_key: None,
    }
}

fn row_value(row: &tokio_postgres::Row, index: usize) -> Result<Value> {
    let ty = row.columns()[index].type_().clone();
    let value = match ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(Value::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|v| Value::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|v| Value::Int(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)?
            .map(|v| Value::Float(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(Value::Float),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
        _ => row.try_get::<_, Option<String>>(index)?.map(Value::Text),
    };
    Ok(value.unwrap_or(Value::Null))
}

async fn commit(
    lease: &mut Lease<PgManager>,
    committed_at: i64,
    options: CommitOptions,
) -> Result<CommitOutcome> {
    let counted = lease
        .prepare(
            "SELECT count(*), coalesce(array_agg(DISTINCT table_name), '{}')
             FROM _quiver._quiver_changes WHERE txid = pg_current_xact_id()",
        )
        .await?;
    let row = lease.client().query_one(&counted, &[]).await?;
    let changes: i64 = row.try_get(0)?;
    let tables: Vec<String> = row.try_get(1)?;
    let version: i64 = if changes > 0 {
        let tick = lease
            .prepare("UPDATE _quiver._quiver_clock SET version = version + 1 WHERE id = 1 RETURNING version")
            .await?;
        let version: i64 = lease.client().query_one(&tick, &[]).await?.try_get(0)?;
        let record = lease
            .prepare(
                "INSERT INTO _quiver._quiver_commits (version, txid, committed_at, changes, trace_context)
                 VALUES ($1, pg_current_xact_id(), $2, $3, $4)",
            )
            .await?;
        let versions = lease
            .prepare(
                "INSERT INTO _quiver._quiver_versions (table_name, version)
                 SELECT unnest($1::text[]), $2
                 ON CONFLICT (table_name) DO UPDATE SET version = excluded.version",
            )
            .await?;
        // Delivered to listening replicas when (and only if) the commit succeeds.
        let notify = lease
            .prepare(&format!("SELECT pg_notify('{COMMIT_CHANNEL}', $1::text)"))
            .await?;
        let client = lease.client();
        let record_params: [Param<'_>; 4] =
            [&version, &committed_at, &changes, &options.trace_context];
        let versions_params: [Param<'_>; 2] = [&tables, &version];
        let announced = version.to_string();
        let notify_params: [Param<'_>; 1] = [&announced];
        futures::try_join!(
            client.execute(&record, &record_params),
            client.execute(&versions, &versions_params),
            client.query_one(&notify, &notify_params),
        )?;
        version
    } else {
        let latest = lease
            .prepare("SELECT version FROM _quiver._quiver_clock WHERE id = 1")
            .await?;
        lease.client().query_one(&latest, &[]).await?.try_get(0)?
    };
    let version = u64::try_from(version).unwrap_or_default();
    if let Some(record) = options.idempotency {
        let insert = lease
            .prepare(
                "INSERT INTO _quiver._quiver_idempotency (idempotency_key, request_hash, response, created_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let response = (record.response)(version);
        lease
            .client()
            .execute(
                &insert,
                &[&record.key, &record.request_hash, &response, &committed_at],
            )
            .await?;
    }
    lease.client().batch_execute("COMMIT").await?;
    Ok(CommitOutcome {
        version,
        changes: u64::try_from(changes).unwrap_or_default(),
    })
}
