//! The change log: every commit made through Quiver, row by row, in version order.
//!
//! The tables it lives in and the triggers that fill it are in [`crate::capture`].
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

pub use crate::capture::table_log_name;
use crate::capture::{
    POSTGRES_INSTALL_LOCK, POSTGRES_SCHEMA_SQL, SQLITE_SCHEMA_SQL, SQLITE_WRITER_SQL,
};
use crate::dialect::Dialect;
use crate::error::Result;
use crate::store::Store;

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
            "SELECT version, changes FROM {} WHERE version > {} ORDER BY version LIMIT {}",
            self.dialect().internal_table("_quiver_commits"),
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
                 FROM _quiver._quiver_commits m JOIN _quiver._quiver_changes c ON c.txid = m.txid
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
            .query_int64s(format!(
                "SELECT min(version) FROM {}",
                self.dialect().internal_table("_quiver_commits")
            ))
            .await?;
        Ok(values.first().and_then(|v| u64::try_from(*v).ok()))
    }

    /// The latest committed version (0 before the first commit).
    pub async fn latest_version(&self) -> Result<u64> {
        let values = self
            .query_int64s(format!(
                "SELECT version FROM {} WHERE id = 1",
                self.dialect().internal_table("_quiver_clock")
            ))
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
                format!(
                    "SELECT table_name, version FROM {} ORDER BY table_name",
                    self.dialect().internal_table("_quiver_versions")
                ),
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
                "DELETE FROM _quiver._quiver_changes c USING _quiver._quiver_commits m WHERE c.txid = m.txid AND m.committed_at < $1::int8",
                "DELETE FROM _quiver._quiver_commits WHERE committed_at < $1::int8",
                "DELETE FROM _quiver._quiver_idempotency WHERE created_at < $1::int8",
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
