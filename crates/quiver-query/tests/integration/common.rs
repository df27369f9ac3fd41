//! Shared fixtures: a demo database on disk and canonical result text.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType, Date32Type};
use futures::TryStreamExt;
use quiver_query::{EngineConfig, QueryEngine};
use quiver_storage::{Store, StoreOptions, demo};

/// A demo database in a temporary directory and an engine over it.
pub(crate) struct Fixture {
    pub(crate) engine: QueryEngine,
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn demo(tasks: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
        demo::load(&store, tasks, false, Arc::new(|_| {})).await.unwrap();
        let engine = QueryEngine::new(store, EngineConfig::default()).await.unwrap();
        Fixture { engine, path, _dir: dir }
    }

    /// Rows of `sql` through Quiver, as canonical text.
    pub(crate) async fn quiver_rows(&self, sql: &str) -> Vec<String> {
        let stream = self.engine.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        batches.iter().flat_map(canonical_batch).collect()
    }

    /// Rows of `sql` run by SQLite itself on the same file, as canonical text.
    pub(crate) fn sqlite_rows(&self, sql: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        // Standard SQL LIKE is case-sensitive; SQLite's default is not.
        conn.execute_batch("PRAGMA case_sensitive_like = ON").unwrap();
        let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let columns = statement.column_count();
        let mut rows = statement.query([]).unwrap();
        let mut out = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            let cells: Vec<String> = (0..columns)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => canonical_float(v),
                    rusqlite::types::ValueRef::Text(v) => String::from_utf8_lossy(v).into_owned(),
                    rusqlite::types::ValueRef::Blob(v) => format!("{v:?}"),
                })
                .collect();
            out.push(cells.join(" | "));
        }
        out
    }
}

pub(crate) fn canonical_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.6}")
    }
}

fn canonical_cell(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".to_owned();
    }
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<arrow::datatypes::UInt64Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<arrow::datatypes::Int32Type>().value(row).to_string(),
        DataType::Float64 => canonical_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::Boolean => (array.as_boolean().value(row) as i64).to_string(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            quiver_storage::time::format_timestamp_micros(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Date32 => quiver_storage::time::format_date(array.as_primitive::<Date32Type>().value(row)),
        other => panic!("no canonical form for {other}"),
    }
}

pub(crate) fn canonical_batch(batch: &RecordBatch) -> Vec<String> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|column| canonical_cell(column.as_ref(), row))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}
