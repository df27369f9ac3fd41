//! The change log's tables and capture triggers, as SQL text for each backend.
//!
//! The tables (internal, hidden from every catalog listing; on PostgreSQL in a schema of
//! their own, `_quiver`):
//! - `_quiver_changes`: one row per changed row — table, op (`insert`, `update`,
//!   `delete`, `truncate`), primary key, row after and row before as JSON.
//! - `_quiver_commits`: one row per commit — its version, commit time (µs since the
//!   epoch), number of changes and the caller's W3C trace context.
//! - `_quiver_clock`: the latest version, one row.
//! - `_quiver_versions`: the latest version that changed each table.
//! - `_quiver_idempotency`: answers to requests that carried an idempotency key.
//!
//! Changes are captured by triggers, so statements of any shape — DML sent through
//! Flight SQL, foreign-key cascades, bulk ingest — are logged without Quiver parsing
//! them. Only Quiver's own write transactions are captured: on SQLite the triggers are
//! `TEMP` triggers of Quiver's writer connection; on PostgreSQL they fire only when the
//! transaction set `quiver.capture`. Writes made directly to the database bypass the log.

use crate::catalog::TableInfo;
use crate::dialect::Dialect;

pub(crate) const SQLITE_SCHEMA_SQL: &str = "
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

pub(crate) const POSTGRES_SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _quiver;
-- Databases from before the change log had a schema of its own keep their log: its
-- tables and functions move over (triggers follow their functions).
DO $migrate$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['_quiver_changes', '_quiver_commits', '_quiver_clock',
                                '_quiver_versions', '_quiver_idempotency'] LOOP
        IF to_regclass('public.' || name) IS NOT NULL
           AND to_regclass('_quiver.' || name) IS NULL THEN
            EXECUTE format('ALTER TABLE public.%I SET SCHEMA _quiver', name);
        END IF;
    END LOOP;
    FOREACH name IN ARRAY ARRAY['_quiver_key(jsonb, text[])', '_quiver_table_name(text, text)',
                                '_quiver_capture_insert()', '_quiver_capture_delete()',
                                '_quiver_capture_update()', '_quiver_capture_truncate()'] LOOP
        IF to_regprocedure('public.' || name) IS NOT NULL
           AND to_regprocedure('_quiver.' || name) IS NULL THEN
            EXECUTE format('ALTER FUNCTION public.%s SET SCHEMA _quiver', name);
        END IF;
    END LOOP;
END $migrate$;
CREATE TABLE IF NOT EXISTS _quiver._quiver_changes (
    id BIGSERIAL PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    row_key JSONB,
    row_after JSONB,
    row_before JSONB
);
CREATE INDEX IF NOT EXISTS _quiver_changes_txid ON _quiver._quiver_changes (txid);
CREATE TABLE IF NOT EXISTS _quiver._quiver_commits (
    version BIGINT PRIMARY KEY,
    txid xid8 NOT NULL,
    committed_at BIGINT NOT NULL,
    changes BIGINT NOT NULL,
    trace_context TEXT
);
CREATE INDEX IF NOT EXISTS _quiver_commits_txid ON _quiver._quiver_commits (txid);
CREATE TABLE IF NOT EXISTS _quiver._quiver_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO _quiver._quiver_clock (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS _quiver._quiver_versions (
    table_name TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS _quiver._quiver_idempotency (
    idempotency_key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS _quiver_idempotency_created ON _quiver._quiver_idempotency (created_at);

CREATE OR REPLACE FUNCTION _quiver._quiver_key(row_data jsonb, key_columns text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE cardinality(key_columns)
           WHEN 0 THEN NULL
           -- TG_ARGV counts from 0: take the first element whatever the lower bound.
           WHEN 1 THEN jsonb_build_object(key_columns[array_lower(key_columns, 1)],
                                          row_data -> key_columns[array_lower(key_columns, 1)])
           ELSE (SELECT jsonb_object_agg(k, row_data -> k) FROM unnest(key_columns) AS k) END
$$;

CREATE OR REPLACE FUNCTION _quiver._quiver_table_name(schema_name text, table_name text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN schema_name = 'public' THEN table_name ELSE schema_name || '.' || table_name END
$$;

CREATE OR REPLACE FUNCTION _quiver._quiver_capture_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO _quiver._quiver_changes (table_name, op, row_key, row_after)
    SELECT _quiver._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'insert',
           _quiver._quiver_key(r.j, TG_ARGV), r.j
    -- `n.*`, not `n`: a column named `n` would shadow the row.
    FROM (SELECT to_jsonb(n.*) AS j FROM _quiver_new AS n) AS r;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION _quiver._quiver_capture_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO _quiver._quiver_changes (table_name, op, row_key, row_before)
    SELECT _quiver._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'delete',
           _quiver._quiver_key(r.j, TG_ARGV), r.j
    FROM (SELECT to_jsonb(o.*) AS j FROM _quiver_old AS o) AS r;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION _quiver._quiver_capture_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO _quiver._quiver_changes (table_name, op, row_key, row_after, row_before)
    VALUES (_quiver._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'update',
            _quiver._quiver_key(to_jsonb(NEW), TG_ARGV), to_jsonb(NEW), to_jsonb(OLD));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION _quiver._quiver_capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('quiver.capture', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
    INSERT INTO _quiver._quiver_changes (table_name, op)
    VALUES (_quiver._quiver_table_name(TG_TABLE_SCHEMA, TG_TABLE_NAME), 'truncate');
    RETURN NULL;
END $$;
";

/// Advisory lock key serializing change-log installation across replicas.
pub(crate) const POSTGRES_INSTALL_LOCK: i64 = 0x5155_4956_4552_0002;

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
             EXECUTE FUNCTION _quiver._quiver_capture_insert({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_delete AFTER DELETE ON {target}
             REFERENCING OLD TABLE AS _quiver_old FOR EACH STATEMENT
             EXECUTE FUNCTION _quiver._quiver_capture_delete({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_update AFTER UPDATE ON {target}
             FOR EACH ROW EXECUTE FUNCTION _quiver._quiver_capture_update({keys});
         CREATE OR REPLACE TRIGGER _quiver_capture_truncate AFTER TRUNCATE ON {target}
             FOR EACH STATEMENT EXECUTE FUNCTION _quiver._quiver_capture_truncate();\n"
    )
}

/// The name a table goes by in the log: bare in the default schema, else qualified.
pub fn table_log_name(table: &TableInfo, dialect: Dialect) -> String {
    if table.schema == dialect.default_schema() {
        table.name.clone()
    } else {
        format!("{}.{}", table.schema, table.name)
    }
}
