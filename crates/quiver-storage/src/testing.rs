//! Test helpers (feature `test-utils`): rows as canonical text, from SQLite directly
//! and from Arrow batches, so that results through Quiver can be compared with what
//! SQLite itself answers.

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};

/// A float as text: integral values without a fraction, others with six decimals.
pub fn canonical_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.6}")
    }
}

/// Runs `sql` with SQLite on the database file at `path` (with standard, case-sensitive
/// `LIKE`) and returns each row as `a | b | …`.
pub fn sqlite_rows(path: &Path, sql: &str) -> Vec<String> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open(path).expect("open database");
    conn.execute_batch("PRAGMA case_sensitive_like = ON")
        .expect("pragma");
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = statement.column_count();
    let mut rows = statement.query([]).expect("query");
    let mut out = Vec::new();
    while let Some(row) = rows.next().expect("row") {
        let cells: Vec<String> = (0..columns)
            .map(|i| match row.get_ref(i).expect("value") {
                ValueRef::Null => "NULL".to_owned(),
                ValueRef::Integer(v) => v.to_string(),
                ValueRef::Real(v) => canonical_float(v),
                ValueRef::Text(v) => String::from_utf8_lossy(v).into_owned(),
                ValueRef::Blob(v) => format!("{v:?}"),
            })
            .collect();
        out.push(cells.join(" | "));
    }
    out
}

fn canonical_cell(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".to_owned();
    }
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt64 => array
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(row)
            .to_string(),
        DataType::Int32 => array
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(row)
            .to_string(),
        DataType::Float64 => canonical_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::Boolean => i64::from(array.as_boolean().value(row)).to_string(),
        DataType::Binary => format!("{:?}", array.as_binary::<i32>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => crate::time::format_timestamp_micros(
            array.as_primitive::<TimestampMicrosecondType>().value(row),
        ),
        DataType::Date32 => crate::time::format_date(array.as_primitive::<Date32Type>().value(row)),
        other => panic!("no canonical form for {other}"),
    }
}

/// The rows of a batch as `a | b | …`, in the form [`sqlite_rows`] produces.
pub fn canonical_batch(batch: &RecordBatch) -> Vec<String> {
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
