//! Reading SQLite rows into Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    RecordBatch, RecordBatchOptions, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use crate::error::{Error, Result};
use crate::time;
use crate::value::Value;

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as Owned, ValueRef as Borrowed};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(Borrowed::Null),
            Value::Bool(v) => ToSqlOutput::Owned(Owned::Integer(i64::from(*v))),
            Value::Int(v) => ToSqlOutput::Owned(Owned::Integer(*v)),
            Value::Float(v) => ToSqlOutput::Owned(Owned::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(Borrowed::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(Borrowed::Blob(v)),
            Value::Date(days) => ToSqlOutput::Owned(Owned::Text(time::format_date(*days))),
            Value::Timestamp(micros) => {
                ToSqlOutput::Owned(Owned::Text(time::format_timestamp_micros(*micros)))
            }
            Value::Decimal(v) => ToSqlOutput::Borrowed(Borrowed::Text(v.as_bytes())),
        })
    }
}

/// Appends SQLite values of one column to an Arrow builder of the column's type.
enum ColumnReader {
    Boolean(BooleanBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Time64(Time64MicrosecondBuilder),
}

fn describe(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(v) => format!("INTEGER {v}"),
        ValueRef::Real(v) => format!("REAL {v}"),
        ValueRef::Text(v) => {
            let text = String::from_utf8_lossy(v);
            let shown: String = text.chars().take(40).collect();
            if shown.len() < text.len() {
                format!("TEXT '{shown}…'")
            } else {
                format!("TEXT '{shown}'")
            }
        }
        ValueRef::Blob(v) => format!("BLOB of {} bytes", v.len()),
    }
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

impl ColumnReader {
    fn new(data_type: &DataType, capacity: usize) -> Result<Self> {
        Ok(match data_type {
            DataType::Boolean => ColumnReader::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int64 => ColumnReader::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float64 => ColumnReader::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Utf8 => {
                ColumnReader::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            DataType::Binary => {
                ColumnReader::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            DataType::Date32 => ColumnReader::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Timestamp(TimeUnit::Microsecond, zone) => ColumnReader::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity)
                    .with_timezone_opt(zone.clone()),
            ),
            DataType::Time64(TimeUnit::Microsecond) => {
                ColumnReader::Time64(Time64MicrosecondBuilder::with_capacity(capacity))
            }
            other => {
                return Err(Error::Internal(format!(
                    "no SQLite reader for Arrow type {other}"
                )));
            }
        })
    }

    /// Appends one value; `None` means the value does not convert (the caller names it).
    #[inline]
    fn append(&mut self, value: ValueRef<'_>) -> Option<()> {
        match self {
            ColumnReader::Int64(b) => match value {
                ValueRef::Integer(v) => b.append_value(v),
                ValueRef::Null => b.append_null(),
                ValueRef::Real(v) if v.fract() == 0.0 && v.abs() < 9.2e18 => {
                    b.append_value(v as i64)
                }
                ValueRef::Text(t) => b.append_value(text(t)?.trim().parse().ok()?),
                _ => return None,
            },
            ColumnReader::Utf8(b) => match value {
                ValueRef::Text(t) => b.append_value(text(t)?),
                ValueRef::Null => b.append_null(),
                ValueRef::Integer(v) => b.append_value(v.to_string()),
                ValueRef::Real(v) => b.append_value(format_real(v)),
                ValueRef::Blob(t) => b.append_value(text(t)?),
            },
            ColumnReader::Float64(b) => match value {
                ValueRef::Real(v) => b.append_value(v),
                ValueRef::Integer(v) => b.append_value(v as f64),
                ValueRef::Null => b.append_null(),
                ValueRef::Text(t) => b.append_value(text(t)?.trim().parse().ok()?),
                ValueRef::Blob(_) => return None,
            },
            ColumnReader::Boolean(b) => match value {
                ValueRef::Integer(v) => b.append_value(v != 0),
                ValueRef::Null => b.append_null(),
                ValueRef::Real(v) => b.append_value(v != 0.0),
                ValueRef::Text(t) => b.append_value(parse_bool(text(t)?)?),
                ValueRef::Blob(_) => return None,
            },
            ColumnReader::Binary(b) => match value {
                ValueRef::Blob(v) | ValueRef::Text(v) => b.append_value(v),
                ValueRef::Null => b.append_null(),
                ValueRef::Integer(v) => b.append_value(v.to_string()),
                ValueRef::Real(v) => b.append_value(format_real(v)),
            },
            ColumnReader::Timestamp(b) => match value {
                ValueRef::Text(t) => b.append_value(time::parse_timestamp_bytes(t)?),
                ValueRef::Null => b.append_null(),
                ValueRef::Integer(seconds) => b.append_value(seconds.checked_mul(1_000_000)?),
                ValueRef::Real(julian_day) => {
                    b.append_value(time::julian_day_to_micros(julian_day)?)
                }
                ValueRef::Blob(_) => return None,
            },
            ColumnReader::Date32(b) => match value {
                ValueRef::Text(t) => b.append_value(time::parse_date_bytes(t)?),
                ValueRef::Null => b.append_null(),
                ValueRef::Integer(seconds) => {
                    b.append_value(i32::try_from(seconds.div_euclid(86_400)).ok()?)
                }
                ValueRef::Real(julian_day) => {
                    let micros = time::julian_day_to_micros(julian_day)?;
                    b.append_value(i32::try_from(micros.div_euclid(86_400_000_000)).ok()?)
                }
                ValueRef::Blob(_) => return None,
            },
            ColumnReader::Time64(b) => match value {
                ValueRef::Text(t) => b.append_value(time::parse_time_bytes(t)?),
                ValueRef::Null => b.append_null(),
                _ => return None,
            },
        }
        Some(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnReader::Boolean(b) => Arc::new(b.finish()),
            ColumnReader::Int64(b) => Arc::new(b.finish()),
            ColumnReader::Float64(b) => Arc::new(b.finish()),
            ColumnReader::Utf8(b) => Arc::new(b.finish()),
            ColumnReader::Binary(b) => Arc::new(b.finish()),
            ColumnReader::Date32(b) => Arc::new(b.finish()),
            ColumnReader::Timestamp(b) => Arc::new(b.finish()),
            ColumnReader::Time64(b) => Arc::new(b.finish()),
        }
    }
}

/// Formats a REAL the way SQLite's `CAST(x AS TEXT)` does for common values.
fn format_real(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Runs `sql` with `params` and hands the rows to `emit` as batches of at most
/// `batch_size` rows shaped like `schema`. Stops early, without error, when `emit`
/// returns `false`.
///
/// `schema` must have one field per result column, or no field at all (then only rows
/// are counted: the batches carry a row count and no column).
pub(crate) fn read_batches(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    schema: &SchemaRef,
    batch_size: usize,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> Result<()> {
    let batch_size = batch_size.max(1);
    let mut statement = conn.prepare_cached(sql)?;
    let column_count = statement.column_count();
    let field_count = schema.fields().len();
    if field_count != 0 && field_count != column_count {
        return Err(Error::Internal(format!(
            "statement returns {column_count} columns but the schema has {field_count}"
        )));
    }
    for (index, param) in params.iter().enumerate() {
        statement.raw_bind_parameter(index + 1, param)?;
    }
    let mut readers = schema
        .fields()
        .iter()
        .map(|field| ColumnReader::new(field.data_type(), batch_size))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = statement.raw_query();
    let mut row_count = 0usize;
    let finish = |readers: &mut Vec<ColumnReader>, row_count: usize| -> Result<RecordBatch> {
        let columns = readers.iter_mut().map(ColumnReader::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(row_count));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &options,
        )?)
    };
    while let Some(row) = rows.next()? {
        for (index, reader) in readers.iter_mut().enumerate() {
            let value = row.get_ref(index)?;
            if reader.append(value).is_none() {
                let field = schema.field(index);
                return Err(Error::Conversion {
                    column: field.name().clone(),
                    value: describe(value),
                    target: field.data_type().to_string(),
                });
            }
        }
        row_count += 1;
        if row_count == batch_size {
            if !emit(finish(&mut readers, row_count)?) {
                return Ok(());
            }
            row_count = 0;
        }
    }
    if row_count > 0 {
        emit(finish(&mut readers, row_count)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, Schema};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn read_all(
        conn: &Connection,
        sql: &str,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        read_batches(conn, sql, &[], &schema, batch_size, |b| {
            batches.push(b);
            true
        })?;
        Ok(batches)
    }

    #[test]
    fn every_mapped_type_reads_values_and_nulls() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n NUMERIC, f BOOLEAN, d DATE, ts TIMESTAMP, tm TIME);
             INSERT INTO t VALUES (1, 1.5, 'a', x'0102', 10, 1, '2026-01-02', '2026-01-02 03:04:05.5', '12:00:01');
             INSERT INTO t VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO t VALUES (-7, 2, 'ü', x'', 2.25, 0, '1969-12-31', 86400, '00:00');",
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("r", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Binary, true),
            Field::new("n", DataType::Float64, true),
            Field::new("f", DataType::Boolean, true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("tm", DataType::Time64(TimeUnit::Microsecond), true),
        ]));
        let batches = read_all(&conn, "SELECT * FROM t ORDER BY rowid", schema, 2).unwrap();
        assert_eq!(batches.len(), 2, "3 rows in batches of 2");
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let expected = "\
+----+-----+---+------+------+-------+------------+-------------------------+----------+
| i  | r   | s | b    | n    | f     | d          | ts                      | tm       |
+----+-----+---+------+------+-------+------------+-------------------------+----------+
| 1  | 1.5 | a | 0102 | 10.0 | true  | 2026-01-02 | 2026-01-02T03:04:05.500 | 12:00:01 |
|    |     |   |      |      |       |            |                         |          |
| -7 | 2.0 | ü |      | 2.25 | false | 1969-12-31 | 1970-01-02T00:00:00     | 00:00:00 |
+----+-----+---+------+------+-------+------------+-------------------------+----------+";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_value_that_does_not_convert_names_its_column() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (ts TIMESTAMP); INSERT INTO t VALUES ('soon');")
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]));
        let err = read_all(&conn, "SELECT ts FROM t", schema, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column 'ts': cannot read TEXT 'soon' as Timestamp(µs)"
        );
    }

    #[test]
    fn empty_schema_counts_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let batches = read_all(&conn, "SELECT NULL FROM t", Arc::new(Schema::empty()), 2).unwrap();
        let counts: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(counts, vec![2, 1]);
    }

    #[test]
    fn emit_false_stops_reading() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER); WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 1000) INSERT INTO t SELECT n FROM c;")
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let mut seen = 0;
        read_batches(&conn, "SELECT x FROM t", &[], &schema, 100, |_| {
            seen += 1;
            false
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn timestamps_agree_with_sqlite_julianday() {
        let conn = Connection::open_in_memory().unwrap();
        let texts = [
            "2026-01-01 00:00:00",
            "2026-07-15T13:45:30.123456",
            "1999-12-31 23:59:59",
            "2000-02-29 12:00",
            "2026-03-01T10:00:00+02:00",
            "2026-03-01T10:00:00Z",
            "1901-05-06",
        ];
        for text in texts {
            let truth: i64 = conn
                .query_row(
                    "SELECT CAST(round((julianday(?1) - 2440587.5) * 86400000000.0) AS INTEGER)",
                    [text],
                    |r| r.get(0),
                )
                .unwrap();
            let ours = crate::time::parse_timestamp_micros(text).unwrap();
            // julianday() works in milliseconds; compare at that precision.
            assert!(
                (truth - ours).abs() < 1_000,
                "{text}: sqlite {truth}, quiver {ours}"
            );
        }
    }
}
