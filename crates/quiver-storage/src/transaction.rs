//! Write transactions: statements on one connection, committed with a change-log
//! version (see [`crate::changelog`]).
//!
//! On SQLite a transaction holds the single writer connection from `BEGIN IMMEDIATE`
//! to `COMMIT`, so transactions are short and readers are never blocked (WAL). On
//! PostgreSQL it holds one pooled connection. A transaction dropped without
//! [`Transaction::commit`] is rolled back.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::pool::Lease;
use crate::postgres::PgManager;
use crate::store::{Dialect, Store};
use crate::value::Value;

/// What a commit produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The version of this commit, or the latest version when nothing changed.
    pub version: u64,
    /// Rows captured in the change log (0: nothing changed, no version taken).
    pub changes: u64,
}

/// An idempotency record stored with a commit.
pub struct IdempotencyRecord {
    /// The caller's key.
    pub key: String,
    /// A digest of the request, so reusing a key for another request is detected.
    pub request_hash: String,
    /// Encodes the response to store, given the commit version.
    pub response: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
}

impl std::fmt::Debug for IdempotencyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyRecord")
            .field("key", &self.key)
            .field("request_hash", &self.request_hash)
            .finish_non_exhaustive()
    }
}

/// What is stored with a commit besides the changes.
#[derive(Debug, Default)]
pub struct CommitOptions {
    /// The caller's W3C `traceparent`, kept for linking deliveries to the mutation.
    pub trace_context: Option<String>,
    /// The answer to keep for an idempotent request.
    pub idempotency: Option<IdempotencyRecord>,
}

/// A stored answer to an earlier request with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Digest of the request that produced it.
    pub request_hash: String,
    /// The encoded response.
    pub response: Vec<u8>,
}

/// The connection a transaction holds.
enum Held {
    Sqlite(Option<OwnedMutexGuard<Connection>>),
    Postgres(Box<Lease<PgManager>>),
}

/// An open write transaction.
pub struct Transaction {
    connection: Held,
    finished: bool,
    commits: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.connection {
            Held::Sqlite(_) => "sqlite",
            Held::Postgres(_) => "postgresql",
        };
        f.debug_struct("Transaction")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

fn sqlite_values(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Vec<Value>> {
    use rusqlite::types::ValueRef;
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

/// Runs one statement per parameter row on SQLite; returns the rows changed and, when
/// the statement returns rows, those rows.
fn sqlite_run_many(
    conn: &Connection,
    sql: &str,
    rows: &[Vec<Value>],
) -> Result<(u64, Vec<Vec<Value>>)> {
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
                returned.push(sqlite_values(row, columns)?);
            }
            changed += conn.changes();
        }
    }
    Ok((changed, returned))
}

fn pg_value(row: &tokio_postgres::Row, index: usize) -> Result<Value> {
    use tokio_postgres::types::Type;
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

impl Store {
    /// Begins a write transaction. On SQLite this waits for the writer (up to the
    /// pool's acquire timeout); on PostgreSQL it takes a pooled connection.
    pub async fn begin(&self) -> Result<Transaction> {
        if let Some(store) = self.sqlite() {
            let timeout = store.acquire_timeout();
            let guard = tokio::time::timeout(timeout, store.writer_guard())
                .await
                .map_err(|_| Error::WriterBusy(timeout))?;
            let mut transaction = Transaction {
                connection: Held::Sqlite(Some(guard)),
                finished: false,
                commits: self.commit_sender(),
            };
            transaction
                .sqlite(|conn| {
                    if !conn.is_autocommit() {
                        // A transaction abandoned by a cancelled caller.
                        conn.execute_batch("ROLLBACK")?;
                    }
                    conn.execute_batch(
                        "BEGIN IMMEDIATE;
                         UPDATE temp._quiver_txn
                            SET version = (SELECT version FROM main._quiver_clock WHERE id = 1) + 1,
                                capture = 1;",
                    )?;
                    Ok(())
                })
                .await?;
            return Ok(transaction);
        }
        let store = self.postgres().expect("a store is SQLite or PostgreSQL");
        let mut lease = store.connection().await?;
        lease
            .client()
            .batch_execute("BEGIN; SET LOCAL quiver.capture = 'on'; SET LOCAL TimeZone = 'UTC';")
            .await?;
        Ok(Transaction {
            connection: Held::Postgres(Box::new(lease)),
            finished: false,
            commits: self.commit_sender(),
        })
    }
}

impl Transaction {
    /// The SQL dialect of the connection.
    pub fn dialect(&self) -> Dialect {
        match self.connection {
            Held::Sqlite(_) => Dialect::Sqlite,
            Held::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` on the SQLite connection on a blocking thread.
    async fn sqlite<T, F>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let Held::Sqlite(slot) = &mut self.connection else {
            return Err(Error::Internal("not a SQLite transaction".to_owned()));
        };
        let mut guard = slot
            .take()
            .ok_or_else(|| Error::Internal("transaction connection lost".to_owned()))?;
        let span = tracing::Span::current();
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let result = span.in_scope(|| f(&mut guard));
            (guard, result)
        })
        .await?;
        *slot = Some(guard);
        result
    }

    /// Executes one statement; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        let (changed, _) = self.run_many(sql, vec![params]).await?;
        Ok(changed)
    }

    /// Executes `;`-separated statements without parameters (DDL).
    pub async fn execute_script(&mut self, sql: &str) -> Result<()> {
        match &mut self.connection {
            Held::Sqlite(_) => {
                let sql = sql.to_owned();
                self.sqlite(move |conn| Ok(conn.execute_batch(&sql)?)).await
            }
            Held::Postgres(lease) => Ok(lease.client().batch_execute(sql).await?),
        }
    }

    /// Runs `sql` once per parameter row; returns the rows changed and the rows the
    /// statement returned (`RETURNING`), in order. On PostgreSQL the executions are
    /// pipelined: one round trip's wait for all of them.
    pub async fn run_many(
        &mut self,
        sql: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<(u64, Vec<Vec<Value>>)> {
        match &mut self.connection {
            Held::Sqlite(_) => {
                let sql = sql.to_owned();
                self.sqlite(move |conn| sqlite_run_many(conn, &sql, &rows))
                    .await
            }
            Held::Postgres(lease) => {
                let statement = lease.prepare(sql).await?;
                let client = lease.client();
                let returns_rows = !statement.columns().is_empty();
                let runs = rows.iter().map(|params| {
                    let statement = &statement;
                    async move {
                        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                            params.iter().map(|p| p as _).collect();
                        if returns_rows {
                            let rows = client.query(statement, &params).await?;
                            let values = rows
                                .iter()
                                .map(|row| (0..row.len()).map(|i| pg_value(row, i)).collect())
                                .collect::<Result<Vec<Vec<Value>>>>()?;
                            Ok::<_, Error>((values.len() as u64, values))
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
                Ok((changed, returned))
            }
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
        let target = format!(
            "{}.{}",
            dialect.quote_identifier(schema),
            dialect.quote_identifier(table)
        );
        let column_list: Vec<String> = columns
            .iter()
            .map(|c| dialect.quote_identifier(c))
            .collect();
        let column_list = column_list.join(", ");
        match &mut self.connection {
            Held::Sqlite(_) => {
                let placeholders: Vec<String> =
                    (1..=columns.len()).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT INTO {target} ({column_list}) VALUES ({})",
                    placeholders.join(", ")
                );
                let (changed, _) = self.run_many(&sql, rows).await?;
                Ok(changed)
            }
            Held::Postgres(lease) => {
                let statement = format!("COPY {target} ({column_list}) FROM STDIN");
                let chunks = crate::postgres::copy_chunks(&rows);
                crate::postgres::PostgresStore::copy_in(lease.client(), &statement, chunks).await
            }
        }
    }

    /// The stored answer for `key`, if an earlier request with it committed.
    pub async fn stored_response(&mut self, key: &str) -> Result<Option<StoredResponse>> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT request_hash, response FROM _quiver_idempotency WHERE idempotency_key = ?1"
            }
            Dialect::Postgres => {
                "SELECT request_hash, response FROM public._quiver_idempotency WHERE idempotency_key = $1::text"
            }
        };
        let (_, rows) = self
            .run_many(sql, vec![vec![Value::Text(key.to_owned())]])
            .await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let mut row = row.into_iter();
            match (row.next(), row.next()) {
                (Some(Value::Text(request_hash)), Some(Value::Blob(response))) => {
                    Some(StoredResponse {
                        request_hash,
                        response,
                    })
                }
                _ => None,
            }
        }))
    }

    /// Logs a table-level event (`truncate` when a table's rows are replaced wholesale).
    pub async fn log_table_event(&mut self, table: &str, op: &str) -> Result<()> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "INSERT INTO _quiver_changes (version, table_name, op)
                 SELECT version, ?1, ?2 FROM temp._quiver_txn WHERE capture"
            }
            Dialect::Postgres => {
                "INSERT INTO public._quiver_changes (table_name, op) VALUES ($1::text, $2::text)"
            }
        };
        self.execute(
            sql,
            vec![Value::Text(table.to_owned()), Value::Text(op.to_owned())],
        )
        .await?;
        Ok(())
    }

    /// Installs change capture on the tables that lack it (those DDL in this
    /// transaction created, for example), as this transaction sees them, so rows
    /// written later in the same transaction are logged too. On SQLite every table's
    /// TEMP triggers are recreated (their column lists may have changed).
    pub async fn capture_new_tables(&mut self) -> Result<()> {
        match &mut self.connection {
            Held::Sqlite(_) => {
                self.sqlite(|conn| {
                    let mut script = String::new();
                    for table in sqlite_base_tables(conn)? {
                        script.push_str(&crate::changelog::triggers_sql(Dialect::Sqlite, &table));
                    }
                    Ok(conn.execute_batch(&script)?)
                })
                .await
            }
            Held::Postgres(lease) => {
                // Replicas starting together take turns (CREATE TRIGGER races otherwise).
                lease
                    .client()
                    .batch_execute(&format!(
                        "SELECT pg_advisory_xact_lock({})",
                        crate::changelog::POSTGRES_INSTALL_LOCK
                    ))
                    .await?;
                let uncaptured = lease
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
                           AND c.relname NOT LIKE '\\_quiver\\_%'
                           AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                           WHERE t.tgrelid = c.oid AND t.tgname = '_quiver_capture_insert')",
                    )
                    .await?;
                let rows = lease.client().query(&uncaptured, &[]).await?;
                let mut script = String::new();
                for row in rows {
                    let table = bare_table(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                    script.push_str(&crate::changelog::triggers_sql(Dialect::Postgres, &table));
                }
                if !script.is_empty() {
                    lease.client().batch_execute(&script).await?;
                }
                Ok(())
            }
        }
    }

    /// Commits: takes the next version when anything changed, records the commit, the
    /// per-table versions and the idempotency answer, all in this transaction.
    pub async fn commit(mut self, options: CommitOptions) -> Result<CommitOutcome> {
        let committed_at = now_micros();
        let outcome = match &mut self.connection {
            Held::Sqlite(_) => {
                self.sqlite(move |conn| sqlite_commit(conn, committed_at, options))
                    .await?
            }
            Held::Postgres(lease) => postgres_commit(lease, committed_at, options).await?,
        };
        self.finished = true;
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
    pub async fn rollback(mut self) -> Result<()> {
        self.finished = true;
        match &mut self.connection {
            Held::Sqlite(_) => {
                self.sqlite(|conn| {
                    if !conn.is_autocommit() {
                        conn.execute_batch("ROLLBACK")?;
                    }
                    Ok(())
                })
                .await
            }
            Held::Postgres(lease) => Ok(lease.client().batch_execute("ROLLBACK").await?),
        }
    }
}

/// A table known only by name, columns and primary key (enough for capture triggers).
fn bare_table(schema: String, name: String, primary_key: Vec<String>) -> crate::TableInfo {
    crate::TableInfo {
        schema,
        name,
        kind: crate::TableKind::Table,
        columns: Vec::new(),
        primary_key,
        foreign_keys: Vec::new(),
        indexes: Vec::new(),
        estimated_rows: None,
        range_key: None,
    }
}

/// The base tables of a SQLite database as `conn` sees them (uncommitted DDL included).
fn sqlite_base_tables(conn: &Connection) -> Result<Vec<crate::TableInfo>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM main.sqlite_master WHERE type = 'table'
             AND name NOT LIKE '\\_quiver\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let mut columns = Vec::new();
        let mut keys: Vec<(i64, String)> = Vec::new();
        let mut info = conn.prepare(&format!(
            "PRAGMA main.table_info({})",
            Dialect::Sqlite.quote_identifier(&name)
        ))?;
        let mut rows = info.query([])?;
        while let Some(row) = rows.next()? {
            let column: String = row.get(1)?;
            let key: i64 = row.get(5)?;
            if key > 0 {
                keys.push((key, column.clone()));
            }
            columns.push(crate::ColumnInfo {
                name: column,
                declared_type: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                data_type: arrow::datatypes::DataType::Utf8,
                nullable: true,
                default: None,
                read_as_text: false,
            });
        }
        keys.sort();
        let mut table = bare_table(
            crate::sqlite::SQLITE_SCHEMA.to_owned(),
            name,
            keys.into_iter().map(|(_, name)| name).collect(),
        );
        table.columns = columns;
        tables.push(table);
    }
    Ok(tables)
}

fn sqlite_commit(
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

async fn postgres_commit(
    lease: &mut Lease<PgManager>,
    committed_at: i64,
    options: CommitOptions,
) -> Result<CommitOutcome> {
    let counted = lease
        .prepare(
            "SELECT count(*), coalesce(array_agg(DISTINCT table_name), '{}')
             FROM public._quiver_changes WHERE txid = pg_current_xact_id()",
        )
        .await?;
    let row = lease.client().query_one(&counted, &[]).await?;
    let changes: i64 = row.try_get(0)?;
    let tables: Vec<String> = row.try_get(1)?;
    let version: i64 = if changes > 0 {
        // The clock row's lock orders commits: taken last, held until COMMIT.
        let tick = lease
            .prepare("UPDATE public._quiver_clock SET version = version + 1 WHERE id = 1 RETURNING version")
            .await?;
        let version: i64 = lease.client().query_one(&tick, &[]).await?.try_get(0)?;
        let record = lease
            .prepare(
                "INSERT INTO public._quiver_commits (version, txid, committed_at, changes, trace_context)
                 VALUES ($1, pg_current_xact_id(), $2, $3, $4)",
            )
            .await?;
        let versions = lease
            .prepare(
                "INSERT INTO public._quiver_versions (table_name, version)
                 SELECT unnest($1::text[]), $2
                 ON CONFLICT (table_name) DO UPDATE SET version = excluded.version",
            )
            .await?;
        // Delivered to listening replicas when (and only if) the commit succeeds.
        let notify = lease
            .prepare(&format!(
                "SELECT pg_notify('{}', $1::text)",
                crate::postgres::COMMIT_CHANNEL
            ))
            .await?;
        let client = lease.client();
        let record_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&version, &committed_at, &changes, &options.trace_context];
        let versions_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tables, &version];
        let announced = version.to_string();
        let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&announced];
        futures::try_join!(
            client.execute(&record, &record_params),
            client.execute(&versions, &versions_params),
            client.query_one(&notify, &notify_params),
        )?;
        version
    } else {
        let latest = lease
            .prepare("SELECT version FROM public._quiver_clock WHERE id = 1")
            .await?;
        lease.client().query_one(&latest, &[]).await?.try_get(0)?
    };
    let version = u64::try_from(version).unwrap_or_default();
    if let Some(record) = options.idempotency {
        let insert = lease
            .prepare(
                "INSERT INTO public._quiver_idempotency (idempotency_key, request_hash, response, created_at)
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

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match &mut self.connection {
            Held::Sqlite(slot) => {
                if let Some(guard) = slot.take() {
                    // Rolled back off the async threads; the writer stays locked until then.
                    let rollback = move || {
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
            Held::Postgres(lease) => {
                // The connection is inside a transaction: never hand it out as it is.
                lease.retire = true;
            }
        }
    }
}

/// How long a Flight SQL transaction may sit idle before it is rolled back.
pub const DEFAULT_TRANSACTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
