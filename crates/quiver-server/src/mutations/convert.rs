//! Values in and out of the Mutations API: typed protobuf values checked against a
//! column's type, Arrow IPC rows checked against a table, and store values read back
//! (generated keys) as protobuf values of the column's type.

use arrow::datatypes::DataType;
use quiver_proto::v1::{self as pb, value::Kind};
use quiver_storage::{ColumnInfo, Dialect, TableInfo, Value};

use crate::error::{Error, Result};

/// Rows naming the same columns: the column names, then each row's values.
pub(super) type RowRun = (Vec<String>, Vec<Vec<Value>>);

/// What to call a value's kind in messages.
fn kind_name(kind: &Option<Kind>) -> &'static str {
    match kind {
        None | Some(Kind::Null(_)) => "null",
        Some(Kind::Bool(_)) => "bool",
        Some(Kind::Int64(_)) => "int64",
        Some(Kind::Double(_)) => "double",
        Some(Kind::String(_)) => "string",
        Some(Kind::Bytes(_)) => "bytes",
        Some(Kind::TimestampMicros(_)) => "timestamp_micros",
        Some(Kind::DateDays(_)) => "date_days",
        Some(Kind::Decimal(_)) => "decimal",
    }
}

/// What a column takes, for messages.
fn expected_kind(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "bool",
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "int64",
        DataType::Duration(_) => "int64 (a count of the column's unit)",
        DataType::Float32 | DataType::Float64 => "double or int64",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "decimal, int64 or double",
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => "bytes",
        DataType::Date32 | DataType::Date64 => "date_days",
        DataType::Null => "null",
        DataType::Timestamp(..) => "timestamp_micros",
        _ => "string",
    }
}

/// The `int64` values an integer column holds.
fn integer_range(data_type: &DataType) -> (i64, i64) {
    match data_type {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, i64::MAX),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Converts a protobuf value for `column`, or explains why it does not fit.
///
/// The value must also be one the store of `dialect` holds as written (dates and
/// timestamps within its range, no NaN on SQLite, decimals that parse).
pub(super) fn store_value(
    column: &ColumnInfo,
    value: &pb::Value,
    row: usize,
    dialect: Dialect,
) -> Result<Value> {
    let converted = convert_value(column, value, row)?;
    converted.check_storable(dialect).map_err(|problem| {
        Error::InvalidRequest(format!("row {row}, column '{}': {problem}", column.name))
    })?;
    Ok(converted)
}

fn convert_value(column: &ColumnInfo, value: &pb::Value, row: usize) -> Result<Value> {
    let kind = &value.kind;
    let mismatch = || {
        Error::InvalidRequest(format!(
            "row {row}, column '{}': expected {} ({}), got {}",
            column.name,
            expected_kind(&column.data_type),
            column.declared_type,
            kind_name(kind)
        ))
    };
    let out_of_range = |v: i64| {
        Error::InvalidRequest(format!(
            "row {row}, column '{}': {v} is out of range for {}",
            column.name, column.declared_type
        ))
    };
    let Some(kind) = kind else {
        return Ok(Value::Null);
    };
    Ok(match (&column.data_type, kind) {
        (_, Kind::Null(_)) => Value::Null,
        (DataType::Boolean, Kind::Bool(v)) => Value::Bool(*v),
        (
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64,
            Kind::Int64(v),
        ) => {
            let (low, high) = integer_range(&column.data_type);
            if !(low..=high).contains(v) {
                return Err(out_of_range(*v));
            }
            Value::Int(*v)
        }
        // A count of the column's unit.
        (DataType::Duration(unit), Kind::Int64(v)) => Value::Duration(*v, *unit),
        (DataType::Float32 | DataType::Float64, Kind::Double(v)) => Value::Float(*v),
        (DataType::Float32 | DataType::Float64, Kind::Int64(v)) => Value::Float(*v as f64),
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Decimal(v)) => {
            if !quiver_storage::value::is_decimal_text(v) {
                return Err(Error::InvalidRequest(format!(
                    "row {row}, column '{}': '{}' is not a decimal number",
                    column.name,
                    quiver_storage::value::shorten(v)
                )));
            }
            Value::Decimal(v.clone())
        }
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Int64(v)) => {
            Value::Decimal(v.to_string())
        }
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Double(v)) if v.is_finite() => {
            Value::Decimal(v.to_string())
        }
        (
            DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_),
            Kind::Bytes(v),
        ) => Value::Blob(v.clone()),
        (DataType::Date32 | DataType::Date64, Kind::DateDays(v)) => Value::Date(*v),
        (DataType::Timestamp(..), Kind::TimestampMicros(v)) => Value::Timestamp(*v),
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Kind::String(v)) => {
            Value::Text(v.clone())
        }
        // Types without a typed form (time, interval, arrays) are written as text the
        // store parses.
        (
            DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Interval(_)
            | DataType::List(_)
            | DataType::LargeList(_),
            Kind::String(v),
        ) => Value::Text(v.clone()),
        _ => return Err(mismatch()),
    })
}

/// A value read back from the store (generated keys) as a protobuf value of the
/// column's type.
pub(super) fn proto_value(column: &ColumnInfo, value: Value) -> pb::Value {
    let kind = match (value, &column.data_type) {
        (Value::Null, _) => Kind::Null(pb::NullValue::NullValue as i32),
        (Value::Int(v), DataType::Boolean) => Kind::Bool(v != 0),
        (Value::Bool(v), _) => Kind::Bool(v),
        (Value::Int(v), DataType::Float32 | DataType::Float64) => Kind::Double(v as f64),
        (Value::Int(v), DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            Kind::Decimal(v.to_string())
        }
        (Value::Int(v), _) => Kind::Int64(v),
        (Value::Float(v), _) => Kind::Double(v),
        (Value::Text(v), DataType::Timestamp(..)) => {
            match quiver_storage::time::parse_timestamp_micros(&v) {
                Some(micros) => Kind::TimestampMicros(micros),
                None => Kind::String(v),
            }
        }
        (Value::Text(v), DataType::Date32) => match quiver_storage::time::parse_date_days(&v) {
            Some(days) => Kind::DateDays(days),
            None => Kind::String(v),
        },
        (
            Value::Text(v) | Value::Decimal(v),
            DataType::Decimal128(..) | DataType::Decimal256(..),
        ) => Kind::Decimal(v),
        (Value::Text(v) | Value::Decimal(v), _) => Kind::String(v),
        (Value::Blob(v), _) => Kind::Bytes(v),
        (Value::Date(v), _) => Kind::DateDays(v),
        (Value::Timestamp(v), _) => Kind::TimestampMicros(v),
        (Value::TimestampNanos(v), _) => Kind::TimestampMicros(v.div_euclid(1_000)),
        (Value::Time(v), _) => Kind::String(quiver_storage::time::format_time_nanos(v)),
        (Value::Duration(v, _), _) => Kind::Int64(v),
        // Generated keys are scalars; a list has no typed form in the Mutations API.
        (value @ Value::List(_), _) => Kind::String(value.to_string()),
    };
    pb::Value { kind: Some(kind) }
}

pub(super) fn column<'t>(table: &'t TableInfo, name: &str) -> Result<&'t ColumnInfo> {
    table.column(name).ok_or_else(|| {
        Error::InvalidRequest(format!("table '{}' has no column '{name}'", table.name))
    })
}

/// Typed rows grouped into runs of rows naming the same columns, each run one
/// statement.
pub(super) fn typed_rows(
    table: &TableInfo,
    rows: &[pb::Row],
    dialect: Dialect,
) -> Result<Vec<RowRun>> {
    let mut runs: Vec<RowRun> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let columns: Vec<String> = row.values.keys().cloned().collect();
        let values = row
            .values
            .iter()
            .map(|(name, value)| store_value(column(table, name)?, value, index + 1, dialect))
            .collect::<Result<Vec<_>>>()?;
        match runs.last_mut() {
            Some((run_columns, run_rows)) if *run_columns == columns => run_rows.push(values),
            _ => runs.push((columns, vec![values])),
        }
    }
    Ok(runs)
}

/// An Arrow IPC stream as column names and rows, checked against the table.
///
/// The stream is checked and its rows counted against `max_rows` before any row is
/// converted; each value must be one the store holds as written.
pub(super) fn arrow_rows(
    table: &TableInfo,
    ipc: &[u8],
    (max_rows, max_bytes): (usize, usize),
    dialect: Dialect,
) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
    let (schema, batches) =
        crate::ipc::read_stream(ipc, "arrow_ipc", max_rows, "max_mutation_rows")?;
    crate::ipc::check_materialised(
        &batches,
        max_bytes,
        "arrow_ipc rows",
        "max_mutation_size_mb",
    )?;
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = column(table, field.name())?;
        if !arrow_fits(field.data_type(), &column.data_type) {
            return Err(Error::InvalidRequest(format!(
                "column '{}': Arrow type {} does not fit {} ({})",
                field.name(),
                field.data_type(),
                column.declared_type,
                column.data_type
            )));
        }
        columns.push(field.name().clone());
    }
    let mut rows = Vec::new();
    for batch in &batches {
        for values in quiver_storage::value::rows_of_batch(batch)? {
            for (value, name) in values.iter().zip(&columns) {
                value.check_storable(dialect).map_err(|problem| {
                    Error::InvalidRequest(format!(
                        "row {}, column '{name}': {problem}",
                        rows.len() + 1
                    ))
                })?;
            }
            rows.push(values);
        }
    }
    Ok((columns, rows))
}

/// Whether Arrow values of type `from` can be written to a column read as `to`.
fn arrow_fits(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let integer = |t: &T| t.is_integer();
    let float = |t: &T| matches!(t, T::Float16 | T::Float32 | T::Float64);
    let decimal = |t: &T| matches!(t, T::Decimal128(..) | T::Decimal256(..));
    let text = |t: &T| matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    let binary = |t: &T| matches!(t, T::Binary | T::LargeBinary | T::BinaryView);
    match to {
        _ if from.is_null() => true,
        t if integer(t) => integer(from),
        t if float(t) => integer(from) || float(from),
        t if decimal(t) => integer(from) || float(from) || decimal(from),
        t if text(t) => text(from),
        t if binary(t) => binary(from),
        T::Boolean => matches!(from, T::Boolean),
        T::Date32 | T::Date64 => matches!(from, T::Date32 | T::Date64),
        T::Timestamp(..) => matches!(from, T::Timestamp(..)),
        _ => text(from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_fit_columns_by_kind() {
        assert!(arrow_fits(&DataType::Int32, &DataType::Int64));
        assert!(arrow_fits(&DataType::Int64, &DataType::Float64));
        assert!(!arrow_fits(&DataType::Utf8, &DataType::Int64));
        assert!(!arrow_fits(&DataType::Float64, &DataType::Int64));
        assert!(arrow_fits(&DataType::Null, &DataType::Utf8));
    }
}
