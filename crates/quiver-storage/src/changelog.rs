//! The change log: every commit made through Quiver, row by row, in version order.
//!
//! # Tables (internal, hidden from every catalog listing)
//! - `_quiver_changes`: one row per changed row — table, op (`insert`, `update`,
//!   `delete`, `truncate`), primary key, row after and row before as JSON.
//! - `_quiver_commits`: one row per commit — its version, commit time (µs since the
//!   epoch), number of changes and the caller's W3C trace context.
//! - `_quiver_clock`: the latest version, one row.
//! - `_quiver_versions`: the latest version that changed each table.
//! - `_quiver_idempotency`: answers to requests that carried an idempotency key.
//!
//! # Capture
//! Changes are captured by triggers, so statements of any shape — DML sent through
//! Flight SQL, foreign-key cascades, bulk ingest — are logged without Quiver parsing
//! them. Only Quiver's own write transactions are captured: on SQLite the triggers are
//! `TEMP` triggers of Quiver's writer connection; on PostgreSQL they fire only when the
//! transaction set `quiver.capture`. Writes made directly to the database bypass the log.
//!
//! # Versions
//! On SQLite the single writer makes commit order total: a transaction takes version
//! `latest + 1` when it begins and every captured row carries it. On PostgreSQL
//! concurrent transactions commit in any order, so a version is taken as the *last*
//! step before `COMMIT`, by updating the clock row: the row lock orders the
//! commits, and a transaction waiting for it becomes visible only after the one
//! holding it has committed. A reader that has seen version `v` therefore never later
//! finds a commit below `v`. PostgreSQL change rows carry their transaction id and
//! meet their version through `_quiver_commits`.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use futures::TryStreamExt;

use crate::catalog::TableInfo;
use crate::error::Result;
use crate::store::{Dialect, Store};

/// One changed row, as read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The commit version.
    pub version: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub committed_at_micros: i64,
    /// The table (schema-qualified when not in the default schema).
    pub table: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub op: String,
    /// The primary key as a JSON object (`None` for tables without one, and truncates).
    pub key: Option<String>,
    /// The row after the change, as a JSON object.
    pub after: Option<String>,
    /// The row before the change, as a JSON object.
    pub before: Option<String>,
    /// The W3C trace context of the call that made the commit, when it carried one.
    pub trace_context: Option<String>,
}

const SQLITE_SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS _quiver_changes (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    row_key TEXT,
    row_after TEXT,
    row_before TEXT
);
CREATE INDEX IF NOT EXISTS _quiver_changes_version ON _quiver_changes (version);
CREATE TABLE IF NOT EXISTS _quiver_commits (
    version INTEGER PRIMARY KEY,
    committed_at INTEGER NOT NULL,
    changes INTEGER NOT NULL,
    trace_context TEXT
);
CREATE TABLE IF NOT EXISTS _quiver_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO _quiver_clock (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS _quiver_versions (
    table_name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _quiver_idempotency (
    idempotency_key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS _quiver_idempotency_created ON _quiver_idempotency (created_at);
";

/// Per-connection state of the SQLite writer: the version the open transaction
/// writes, and whether capture is on (off for demo loads and schema work).
pub(crate) const SQLITE_WRITER_SQL: &str = "
CREATE TEMP TABLE IF NOT EXISTS _quiver_txn (version INTEGER NOT NULL, capture INTEGER NOT NULL);
INSERT INTO temp._quiver_txn (version, capture)
    SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM temp._quiver_txn);
";

const POSTGRES_SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS public._quiver_changes (
    id BIGSERIAL PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    row_key JSONB,
    row_after JSONB,
    row_before JSONB
);
CREATE INDEX IF NOT EXISTS _quiver_changes_txid ON public._quiver_changes (txid);
CREATE TABLE IF NOT EXISTS public._quiver_commits (
    version BIGINT PRIMARY KEY,
    txid xid8 NOT NULL,
    committed_at BIGINT NOT NULL,
    changes BIGINT NOT NULL,
    trace_context TEXT
);
CREATE INDEX IF NOT EXISTS _quiver_commits_txid ON public._quiver_commits (txid);
CREATE TABLE IF NOT EXISTS public._quiver_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO public._quiver_clock (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS public._quiver_versions (
    table_name TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS public._quiver_idempotency (
    idempotency_key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS _quiver_idempotency_created ON public._quiver_idempotency (created_at);

CREATE OR REPLACE FUNCTION public._quiver_key(row_data jsonb, key_columns text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE cardinality(key_columns)
           WHEN 0 THEN NULL
           -- TG_ARGV counts from 0: take the first element whatever the lower bound.
           WHEN 1 THEN jsonb_build_object(key_columns[array_lower(key_columns, 1)],
                                          row_data -> key_columns[array_lower(key_columns, 1)])
           ELSE (SELECT jsonb_object_agg(k, row_data -> k) FROM unnest(key_columns) AS k) END
$$;

CREATE OR REPLACE FUNCTION public._quiver_table_name(schema_name text, table_name text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN schema_name = 'public' THEN table_name ELSE schema_name || '.' || table_name END
$$;

CREATE OR REPLACE FUNCTION public._quiver_capture_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO public._quiver_changes (table_name, op, row_key, row_after)
    SELECT public._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'insert',
           public._quiver_key(r.j, TG_ARGV), r.j
    FROM (SELECT to_jsonb(n) AS j FROM _quiver_new AS n) AS r;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public._quiver_capture_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO public._quiver_changes (table_name, op, row_key, row_before)
    SELECT public._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'delete',
           public._quiver_key(r.j, TG_ARGV), r.j
    FROM (SELECT to_jsonb(o) AS j FROM _quiver_old AS o) AS r;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public._quiver_capture_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO public._quiver_changes (table_name, op, row_key, row_after, row_before)
    VALUES (public._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'update',
            public._quiver_key(to_jsonb(NEW), TG_ARGV), to_jsonb(NEW), to_jsonb(OLD));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public._quiver_capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO public._quiver_changes (table_name, op)
    VALUES (public._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'truncate');
    RETURN NULL;
END $$;
";

/// Advisory lock key serializing change-log installation across replicas.
pub(crate) const POSTGRES_INSTALL_LOCK: i64 = 0x5155_4956_4552_0002;

/// Creates the change-log tables (idempotent; several replicas may start at once).
pub async fn install(store: &Store) -> Result<()> {
    match store.dialect() {
        Dialect::Sqlite => {
            store
                .execute_script(format!("{SQLITE_SCHEMA_SQL}{SQLITE_WRITER_SQL}"))
                .await
        }
        Dialect::Postgres => {
            store
                .execute_script(format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({POSTGRES_INSTALL_LOCK}); {POSTGRES_SCHEMA_SQL} COMMIT;"
                ))
                .await
        }
    }
}

/// Installs capture triggers on every base table that lacks them (at start): the same
/// mechanism DDL uses inside its own transaction, run in a transaction of its own.
/// On SQLite the writer's TEMP triggers are (re)created for every table.
pub async fn capture_tables(store: &Store) -> Result<()> {
    let mut tx = store.begin().await?;
    tx.capture_new_tables().await?;
    tx.commit(crate::CommitOptions::default()).await?;
    Ok(())
}

/// The capture triggers of one table, as SQL run inside the caller's transaction.
pub(crate) fn triggers_sql(dialect: Dialect, table: &TableInfo) -> String {
    match dialect {
        Dialect::Sqlite => sqlite_triggers(table),
        Dialect::Postgres => postgres_triggers(table),
    }
}

fn quote(identifier: &str) -> String {
    Dialect::Sqlite.quote_identifier(identifier)
}

fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `json_object(...)` of `row` (`NEW` or `OLD`) over `columns`; blobs become hex.
fn sqlite_json<'a>(row: &str, columns: impl IntoIterator<Item = &'a str>) -> String {
    let pairs: Vec<String> = columns
        .into_iter()
        .map(|name| {
            let value = format!("{row}.{}", quote(name));
            format!(
                "{}, CASE typeof({value}) WHEN 'blob' THEN hex({value}) ELSE {value} END",
                sql_text(name)
            )
        })
        .collect();
    format!("json_object({})", pairs.join(", "))
}

fn sqlite_triggers(table: &TableInfo) -> String {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let name = table_log_name(table, Dialect::Sqlite);
    let key = |row: &str| {
        if table.primary_key.is_empty() {
            "NULL".to_owned()
        } else {
            sqlite_json(row, table.primary_key.iter().map(String::as_str))
        }
    };
    let target = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let trigger = |op: &str| quote(&format!("_quiver_capture_{op}_{}", table.name));
    let mut sql = String::new();
    for (op, event, row_key, after, before) in [
        (
            "insert",
            "INSERT",
            key("NEW"),
            sqlite_json("NEW", columns.iter().copied()),
            "NULL".to_owned(),
        ),
        (
            "update",
            "UPDATE",
            key("NEW"),
            sqlite_json("NEW", columns.iter().copied()),
            sqlite_json("OLD", columns.iter().copied()),
        ),
        (
            "delete",
            "DELETE",
            key("OLD"),
            "NULL".to_owned(),
            sqlite_json("OLD", columns.iter().copied()),
        ),
    ] {
        // Dropped first: the column list may have changed since it was created.
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS temp.{trigger};
             CREATE TEMP TRIGGER {trigger} AFTER {event} ON {target} BEGIN
                 INSERT INTO _quiver_changes (version, table_name, op, row_key, row_after, row_before)
                 SELECT version, {table_name}, '{op}', {row_key}, {after}, {before}
                 FROM _quiver_txn WHERE capture;
             END;\n",
            trigger = trigger(op),
            table_name = sql_text(&name),
        ));
    }
    sql
}

fn postgres_triggers(table: &TableInfo) -> String {
    let target = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let keys: Vec<String> = table.primary_key.iter().map(|k| sql_text(k)).collect();
    let keys = keys.join(", ");
    format!(
        "CREATE OR REPLACE TRIGGER _quiver_capture_insert AFTER INSERT ON {target}
             REFERENCING NEW TABLE AS _quiver_new FOR EACH STATEMENT
             EXECUTE FUNCTION public._quiver_capture_insert({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_delete AFTER DELETE ON {target}
             REFERENCING OLD TABLE AS _quiver_old FOR EACH STATEMENT
             EXECUTE FUNCTION public._quiver_capture_delete({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_update AFTER UPDATE ON {target}
             FOR EACH ROW EXECUTE FUNCTION public._quiver_capture_update({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_truncate AFTER TRUNCATE ON {target}
             FOR EACH STATEMENT EXECUTE FUNCTION public._quiver_capture_truncate();\n"
    )
}

/// The name a table goes by in the log: bare in the default schema, else qualified.
pub fn table_log_name(table: &TableInfo, dialect: Dialect) -> String {
    let default = match dialect {
        Dialect::Sqlite => crate::sqlite::SQLITE_SCHEMA,
        Dialect::Postgres => crate::postgres::POSTGRES_SCHEMA,
    };
    if table.schema == default {
        table.name.clone()
    } else {
        format!("{}.{}", table.schema, table.name)
    }
}

fn changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new("committed_at", DataType::Int64, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("row_key", DataType::Utf8, true),
        Field::new("row_after", DataType::Utf8, true),
        Field::new("row_before", DataType::Utf8, true),
        Field::new("trace_context", DataType::Utf8, true),
    ]))
}

impl Store {
    /// The changes of the commits after `after_version`, in version order and, within
    /// a commit, in the order they were made: whole commits only, as many as fit in
    /// `limit` changes — but always at least the next commit, however large.
    pub async fn changes_after(&self, after_version: u64, limit: usize) -> Result<Vec<Change>> {
        // The commits first (by their primary key), then their changes by a bounded
        // version range: the join never looks beyond the commits it returns, however
        // long the log.
        let schema = Arc::new(Schema::new(vec![
            Field::new("version", DataType::Int64, false),
            Field::new("changes", DataType::Int64, false),
        ]));
        let sql = format!(
            "SELECT version, changes FROM _quiver_commits WHERE version > {} ORDER BY version LIMIT {}",
            self.dialect().placeholder(1, &crate::Value::Int(0)),
            limit.max(1)
        );
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let commits: Vec<RecordBatch> = self
            .query(sql, vec![crate::Value::Int(after)], schema)
            .await?
            .try_collect()
            .await?;
        let mut upto = None;
        let mut total = 0_i64;
        'commits: for batch in &commits {
            let versions = batch.column(0).as_primitive::<Int64Type>();
            let counts = batch.column(1).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                total += counts.value(row);
                if upto.is_some() && total > i64::try_from(limit).unwrap_or(i64::MAX) {
                    break 'commits;
                }
                upto = Some(u64::try_from(versions.value(row)).unwrap_or_default());
            }
        }
        match upto {
            None => Ok(Vec::new()),
            Some(upto) => self.changes_between(after_version, upto).await,
        }
    }

    /// The changes with versions in `(after, upto]`.
    async fn changes_between(&self, after: u64, upto: u64) -> Result<Vec<Change>> {
        let sql = match self.dialect() {
            Dialect::Sqlite =>
                "SELECT c.version, m.committed_at, c.table_name, c.op, c.row_key, c.row_after, c.row_before, m.trace_context
                 FROM _quiver_changes c JOIN _quiver_commits m ON m.version = c.version
                 WHERE c.version > ?1 AND c.version <= ?2 ORDER BY c.version, c.id",
            Dialect::Postgres =>
                "SELECT m.version, m.committed_at, c.table_name, c.op, c.row_key::text, c.row_after::text, c.row_before::text, m.trace_context
                 FROM public._quiver_commits m JOIN public._quiver_changes c ON c.txid = m.txid
                 WHERE m.version > $1::int8 AND m.version <= $2::int8 ORDER BY m.version, c.id",
        };
        let bound = |version: u64| crate::Value::Int(i64::try_from(version).unwrap_or(i64::MAX));
        let batches: Vec<RecordBatch> = self
            .query(
                sql.to_owned(),
                vec![bound(after), bound(upto)],
                changes_schema(),
            )
            .await?
            .try_collect()
            .await?;
        let mut changes = Vec::new();
        for batch in &batches {
            let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
            let text = |i: usize| batch.column(i).as_string::<i32>();
            for row in 0..batch.num_rows() {
                let optional = |i: usize| {
                    let column = text(i);
                    column.is_valid(row).then(|| column.value(row).to_owned())
                };
                changes.push(Change {
                    version: u64::try_from(int(0).value(row)).unwrap_or_default(),
                    committed_at_micros: int(1).value(row),
                    table: text(2).value(row).to_owned(),
                    op: text(3).value(row).to_owned(),
                    key: optional(4),
                    after: optional(5),
                    before: optional(6),
                    trace_context: optional(7),
                });
            }
        }
        Ok(changes)
    }

    /// The oldest version the change log still holds (`None` when it holds none:
    /// nothing committed yet, or everything pruned).
    pub async fn oldest_version(&self) -> Result<Option<u64>> {
        let values = self
            .query_int64s("SELECT min(version) FROM _quiver_commits".to_owned())
            .await?;
        Ok(values.first().and_then(|v| u64::try_from(*v).ok()))
    }

    /// The latest committed version (0 before the first commit).
    pub async fn latest_version(&self) -> Result<u64> {
        let values = self
            .query_int64s("SELECT version FROM _quiver_clock WHERE id = 1".to_owned())
            .await?;
        Ok(values
            .first()
            .and_then(|v| u64::try_from(*v).ok())
            .unwrap_or(0))
    }

    /// The latest version that changed each table, by log name.
    pub async fn table_versions(&self) -> Result<Vec<(String, u64)>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
        ]));
        let batches: Vec<RecordBatch> = self
            .query(
                "SELECT table_name, version FROM _quiver_versions ORDER BY table_name",
                Vec::new(),
                schema,
            )
            .await?
            .try_collect()
            .await?;
        let mut versions = Vec::new();
        for batch in &batches {
            let names = batch.column(0).as_string::<i32>();
            let numbers = batch.column(1).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                versions.push((
                    names.value(row).to_owned(),
                    u64::try_from(numbers.value(row)).unwrap_or_default(),
                ));
            }
        }
        Ok(versions)
    }

    /// Deletes commits older than `before_micros` with their changes, and idempotency
    /// records older than `idempotency_before_micros`. Returns the commits deleted.
    pub async fn prune_change_log(
        &self,
        before_micros: i64,
        idempotency_before_micros: i64,
    ) -> Result<u64> {
        let (changes, commits, idempotency) = match self.dialect() {
            Dialect::Sqlite => (
                "DELETE FROM _quiver_changes WHERE version <= (SELECT max(version) FROM _quiver_commits WHERE committed_at < ?1)",
                "DELETE FROM _quiver_commits WHERE committed_at < ?1",
                "DELETE FROM _quiver_idempotency WHERE created_at < ?1",
            ),
            Dialect::Postgres => (
                "DELETE FROM public._quiver_changes c USING public._quiver_commits m WHERE c.txid = m.txid AND m.committed_at < $1::int8",
                "DELETE FROM public._quiver_commits WHERE committed_at < $1::int8",
                "DELETE FROM public._quiver_idempotency WHERE created_at < $1::int8",
            ),
        };
        self.execute(changes, vec![crate::Value::Int(before_micros)])
            .await?;
        let deleted = self
            .execute(commits, vec![crate::Value::Int(before_micros)])
            .await?;
        self.execute(
            idempotency,
            vec![crate::Value::Int(idempotency_before_micros)],
        )
        .await?;
        Ok(deleted)
    }

    /// The first column of `sql`'s rows, read as 64-bit integers.
    pub(crate) async fn query_int64s(&self, sql: String) -> Result<Vec<i64>> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::Int64,
            true,
        )]));
        let batches: Vec<RecordBatch> = self
            .query(sql, Vec::new(), schema)
            .await?
            .try_collect()
            .await?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                let column = b.column(0).as_primitive::<Int64Type>();
                (0..b.num_rows())
                    .filter(|row| column.is_valid(*row))
                    .map(|row| column.value(row))
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}
