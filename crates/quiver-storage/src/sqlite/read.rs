//! Reading SQLite rows into Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder,
    Int64Builder, NullArray, RecordBatch, RecordBatchOptions, StringBuilder,
    Time64NanosecondBuilder, TimestampMicrosecondBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use crate::error::{Error, Result};
use crate::time;
use crate::value::{Cell as ValueCell, Value};

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        if let Value::List(_) = self {
            return Err(no_lists());
        }
        Ok(sql_output(self.as_cell()))
    }
}

impl ToSql for ValueCell<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        if let ValueCell::List(_) | ValueCell::Values(_) = self {
            return Err(no_lists());
        }
        Ok(sql_output(self.clone()))
    }
}

fn no_lists() -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure("SQLite has no list type".into())
}

/// A value as SQLite stores it: dates and timestamps as the ISO-8601 text its date
/// functions read, decimals as text its NUMERIC affinity converts.
fn sql_output(cell: ValueCell<'_>) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, Value as Owned, ValueRef as Borrowed};
    match cell {
        ValueCell::Null => ToSqlOutput::Borrowed(Borrowed::Null),
        ValueCell::Bool(v) => ToSqlOutput::Owned(Owned::Integer(i64::from(v))),
        ValueCell::Int(v) => ToSqlOutput::Owned(Owned::Integer(v)),
        ValueCell::Float(v) => ToSqlOutput::Owned(Owned::Real(v)),
        ValueCell::Text(v) => ToSqlOutput::Borrowed(Borrowed::Text(v.as_bytes())),
        ValueCell::Blob(v) => ToSqlOutput::Borrowed(Borrowed::Blob(v)),
        ValueCell::Date(days) => ToSqlOutput::Owned(Owned::Text(time::format_date(days))),
        ValueCell::Timestamp(micros) => {
            ToSqlOutput::Owned(Owned::Text(time::format_timestamp_micros(micros)))
        }
        ValueCell::TimestampNanos(nanos) => {
            ToSqlOutput::Owned(Owned::Text(time::format_timestamp_nanos(nanos)))
        }
        ValueCell::Time(nanos) => ToSqlOutput::Owned(Owned::Text(time::format_time_nanos(nanos))),
        // A count of the column's unit (its declared type names the unit).
        ValueCell::Duration(count, _) => ToSqlOutput::Owned(Owned::Integer(count)),
        ValueCell::Decimal(v) => ToSqlOutput::Owned(Owned::Text(v)),
        // Refused before (`ToSql`): SQLite has no list type.
        ValueCell::List(_) | ValueCell::Values(_) => ToSqlOutput::Borrowed(Borrowed::Null),
    }
}

/// The Arrow types SQLite columns are read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadType {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    /// 0 to `i64::MAX`: what SQLite's integers hold of `UInt64`.
    UInt64,
    Float32,
    Float64,
    /// `Decimal128(precision, scale)`.
    Decimal(u8, i8),
    Utf8,
    Binary,
    /// `FixedSizeBinary(size)`.
    FixedBinary(i32),
    Date32,
    /// Microseconds since the epoch (timestamps in seconds, milliseconds or µs).
    Timestamp,
    /// Nanoseconds since the epoch.
    TimestampNanos,
    /// Nanoseconds since midnight (times in every unit).
    Time,
    /// Only NULL.
    Null,
}

impl ReadType {
    /// The read type of an Arrow type, if SQLite columns can be read as it.
    pub(crate) fn of(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Boolean => ReadType::Boolean,
            DataType::Int8 => ReadType::Int8,
            DataType::Int16 => ReadType::Int16,
            DataType::Int32 => ReadType::Int32,
            DataType::Int64 => ReadType::Int64,
            DataType::UInt8 => ReadType::UInt8,
            DataType::UInt16 => ReadType::UInt16,
            DataType::UInt32 => ReadType::UInt32,
            DataType::UInt64 => ReadType::UInt64,
            DataType::Float32 => ReadType::Float32,
            DataType::Float64 => ReadType::Float64,
            DataType::Decimal128(precision, scale) => ReadType::Decimal(*precision, *scale),
            DataType::Utf8 | DataType::LargeUtf8 => ReadType::Utf8,
            DataType::Binary | DataType::LargeBinary => ReadType::Binary,
            DataType::FixedSizeBinary(size) => ReadType::FixedBinary(*size),
            DataType::Date32 | DataType::Date64 => ReadType::Date32,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => ReadType::TimestampNanos,
            DataType::Timestamp(_, _) => ReadType::Timestamp,
            DataType::Time32(_) | DataType::Time64(_) => ReadType::Time,
            // A count of the unit.
            DataType::Duration(_) => ReadType::Int64,
            DataType::Null => ReadType::Null,
            _ => return None,
        })
    }

    /// The values a narrow integer type holds.
    fn integer_range(self) -> Option<(i64, i64)> {
        Some(match self {
            ReadType::Int8 => (i8::MIN.into(), i8::MAX.into()),
            ReadType::Int16 => (i16::MIN.into(), i16::MAX.into()),
            ReadType::Int32 => (i32::MIN.into(), i32::MAX.into()),
            ReadType::UInt8 => (0, u8::MAX.into()),
            ReadType::UInt16 => (0, u16::MAX.into()),
            ReadType::UInt32 => (0, u32::MAX.into()),
            ReadType::UInt64 => (0, i64::MAX),
            _ => return None,
        })
    }

    /// A short tag naming the type in SQL text (the writer's value checks).
    pub(crate) fn tag(self) -> std::borrow::Cow<'static, str> {
        match self {
            ReadType::Decimal(precision, scale) => format!("dec:{precision}:{scale}").into(),
            ReadType::FixedBinary(size) => format!("fsb:{size}").into(),
            simple => simple.simple_tag().into(),
        }
    }

    /// The tag of a type without parameters.
    fn simple_tag(self) -> &'static str {
        match self {
            ReadType::Boolean => "bool",
            ReadType::Int8 => "i8",
            ReadType::Int16 => "i16",
            ReadType::Int32 => "i32",
            ReadType::Int64 => "i64",
            ReadType::UInt8 => "u8",
            ReadType::UInt16 => "u16",
            ReadType::UInt32 => "u32",
            ReadType::UInt64 => "u64",
            ReadType::Float32 => "f32",
            ReadType::Float64 => "f64",
            ReadType::Utf8 => "text",
            ReadType::Binary => "blob",
            ReadType::Date32 => "date",
            ReadType::Timestamp => "ts",
            ReadType::TimestampNanos => "tsns",
            ReadType::Time => "time",
            ReadType::Null => "null",
            ReadType::Decimal(..) => "dec",
            ReadType::FixedBinary(..) => "fsb",
        }
    }

    /// The read type a [`ReadType::tag`] names (run for every value a client writes:
    /// no allocation).
    pub(crate) fn from_tag(tag: &str) -> Option<Self> {
        if let Some(parameters) = tag.strip_prefix("dec:") {
            let (precision, scale) = parameters.split_once(':')?;
            return Some(ReadType::Decimal(
                precision.parse().ok()?,
                scale.parse().ok()?,
            ));
        }
        if let Some(size) = tag.strip_prefix("fsb:") {
            return Some(ReadType::FixedBinary(size.parse().ok()?));
        }
        [
            ReadType::Boolean,
            ReadType::Int8,
            ReadType::Int16,
            ReadType::Int32,
            ReadType::Int64,
            ReadType::UInt8,
            ReadType::UInt16,
            ReadType::UInt32,
            ReadType::UInt64,
            ReadType::Float32,
            ReadType::Float64,
            ReadType::Utf8,
            ReadType::Binary,
            ReadType::Date32,
            ReadType::Timestamp,
            ReadType::TimestampNanos,
            ReadType::Time,
            ReadType::Null,
        ]
        .into_iter()
        .find(|t| t.simple_tag() == tag)
    }

    /// The Arrow type's name, for messages.
    pub(crate) fn arrow_name(self) -> &'static str {
        match self {
            ReadType::Boolean => "Boolean",
            ReadType::Int8 => "Int8",
            ReadType::Int16 => "Int16",
            ReadType::Int32 => "Int32",
            ReadType::Int64 => "Int64",
            ReadType::UInt8 => "UInt8",
            ReadType::UInt16 => "UInt16",
            ReadType::UInt32 => "UInt32",
            ReadType::UInt64 => "UInt64 (0 to 2^63 - 1 in SQLite)",
            ReadType::Float32 => "Float32",
            ReadType::Float64 => "Float64",
            ReadType::Utf8 => "Utf8",
            ReadType::Binary => "Binary",
            ReadType::FixedBinary(..) => "FixedSizeBinary",
            ReadType::Date32 => "Date32",
            ReadType::Timestamp => "Timestamp(µs)",
            ReadType::TimestampNanos => "Timestamp(ns)",
            ReadType::Time => "Time",
            ReadType::Null => "Null",
            ReadType::Decimal(..) => "Decimal128",
        }
    }

    /// A stored value as this type: `None` when it does not convert. The one rule
    /// both the reader and the writer's value checks apply, so nothing is stored that
    /// cannot be read back.
    #[inline]
    pub(crate) fn decode<'a>(self, value: ValueRef<'a>) -> Option<Cell<'a>> {
        if let ValueRef::Null = value {
            return Some(Cell::Null);
        }
        // Narrow types: read as their wide kin, then checked to fit.
        if let Some((low, high)) = self.integer_range() {
            return match ReadType::Int64.decode(value)? {
                Cell::Int(v) if (low..=high).contains(&v) => Some(Cell::Int(v)),
                _ => None,
            };
        }
        if let ReadType::Decimal(precision, scale) = self {
            let scaled = match value {
                ValueRef::Integer(v) => {
                    crate::value::parse_decimal(&v.to_string(), precision, scale)
                }
                // The shortest text that reads back as the same double.
                ValueRef::Real(v) if v.is_finite() => {
                    crate::value::parse_decimal(&format!("{v:e}"), precision, scale)
                }
                ValueRef::Text(t) => crate::value::parse_decimal(text(t)?, precision, scale),
                _ => None,
            };
            return scaled.map(Cell::Decimal);
        }
        if let ReadType::FixedBinary(size) = self {
            return match value {
                ValueRef::Blob(v) if usize::try_from(size).is_ok_and(|size| size == v.len()) => {
                    Some(Cell::Bytes(v.into()))
                }
                _ => None,
            };
        }
        if self == ReadType::Float32 {
            return match ReadType::Float64.decode(value)? {
                Cell::Float(v) if !v.is_finite() || v.abs() <= f64::from(f32::MAX) => {
                    Some(Cell::Float(v))
                }
                _ => None,
            };
        }
        Some(match (self, value) {
            (ReadType::Int64, ValueRef::Integer(v)) => Cell::Int(v),
            (ReadType::Int64, ValueRef::Real(v)) if v.fract() == 0.0 && v.abs() < 9.2e18 => {
                Cell::Int(v as i64)
            }
            (ReadType::Int64, ValueRef::Text(t)) => Cell::Int(text(t)?.trim().parse().ok()?),
            (ReadType::Utf8, ValueRef::Text(t) | ValueRef::Blob(t)) => Cell::Text(text(t)?.into()),
            (ReadType::Utf8, ValueRef::Integer(v)) => Cell::Text(v.to_string().into()),
            (ReadType::Utf8, ValueRef::Real(v)) => Cell::Text(format_real(v).into()),
            (ReadType::Float64, ValueRef::Real(v)) => Cell::Float(v),
            (ReadType::Float64, ValueRef::Integer(v)) => Cell::Float(v as f64),
            (ReadType::Float64, ValueRef::Text(t)) => Cell::Float(text(t)?.trim().parse().ok()?),
            (ReadType::Boolean, ValueRef::Integer(v)) => Cell::Bool(v != 0),
            (ReadType::Boolean, ValueRef::Real(v)) => Cell::Bool(v != 0.0),
            (ReadType::Boolean, ValueRef::Text(t)) => Cell::Bool(parse_bool(text(t)?)?),
            (ReadType::Binary, ValueRef::Blob(v) | ValueRef::Text(v)) => Cell::Bytes(v.into()),
            (ReadType::Binary, ValueRef::Integer(v)) => {
                Cell::Bytes(v.to_string().into_bytes().into())
            }
            (ReadType::Binary, ValueRef::Real(v)) => {
                Cell::Bytes(format_real(v).into_bytes().into())
            }
            (ReadType::Timestamp, ValueRef::Text(t)) => Cell::Int(time::parse_timestamp_bytes(t)?),
            (ReadType::Timestamp, ValueRef::Integer(seconds)) => {
                Cell::Int(seconds.checked_mul(1_000_000)?)
            }
            (ReadType::Timestamp, ValueRef::Real(julian_day)) => {
                Cell::Int(time::julian_day_to_micros(julian_day)?)
            }
            (ReadType::Date32, ValueRef::Text(t)) => Cell::Day(time::parse_date_bytes(t)?),
            (ReadType::Date32, ValueRef::Integer(seconds)) => {
                Cell::Day(i32::try_from(seconds.div_euclid(86_400)).ok()?)
            }
            (ReadType::Date32, ValueRef::Real(julian_day)) => {
                let micros = time::julian_day_to_micros(julian_day)?;
                Cell::Day(i32::try_from(micros.div_euclid(86_400_000_000)).ok()?)
            }
            (ReadType::TimestampNanos, ValueRef::Text(t)) => {
                Cell::Int(time::parse_timestamp_nanos_bytes(t)?)
            }
            (ReadType::TimestampNanos, ValueRef::Integer(seconds)) => {
                Cell::Int(seconds.checked_mul(1_000_000_000)?)
            }
            (ReadType::TimestampNanos, ValueRef::Real(julian_day)) => {
                Cell::Int(time::julian_day_to_micros(julian_day)?.checked_mul(1_000)?)
            }
            (ReadType::Time, ValueRef::Text(t)) => Cell::Int(time::parse_time_nanos_bytes(t)?),
            _ => return None,
        })
    }
}

/// One stored value as its column's Arrow type sees it.
pub(crate) enum Cell<'a> {
    Null,
    /// A decimal scaled by its column's scale.
    Decimal(i128),
    Bool(bool),
    Int(i64),
    Day(i32),
    Float(f64),
    Text(std::borrow::Cow<'a, str>),
    Bytes(std::borrow::Cow<'a, [u8]>),
}

/// Appends SQLite values of one column to an Arrow builder of the column's type.
enum ColumnReader {
    Boolean(BooleanBuilder),
    Int64(Int64Builder),
    /// A narrow integer or `Float32` column (read wide, checked to fit), or a timestamp
    /// column in another unit than the microseconds stored: cast when the batch is
    /// finished.
    Narrow(ReadType, DataType, Box<ColumnReader>),
    Float64(Float64Builder),
    Decimal(ReadType, Decimal128Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampNanos(TimestampNanosecondBuilder),
    Time64(Time64NanosecondBuilder),
    /// A `Null` column: the number of rows.
    Null(usize),
}

pub(crate) fn describe(value: ValueRef<'_>) -> String {
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

/// The time zone of a timestamp type.
fn timezone_of(data_type: &DataType) -> Option<Arc<str>> {
    match data_type {
        DataType::Timestamp(_, zone) => zone.clone(),
        _ => None,
    }
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

impl ColumnReader {
    fn new(data_type: &DataType, capacity: usize) -> Result<Self> {
        let Some(read_type) = ReadType::of(data_type) else {
            return Err(Error::Internal(format!(
                "no SQLite reader for Arrow type {data_type}"
            )));
        };
        let wide = match (read_type, data_type) {
            (ReadType::Float32, _) => Some(DataType::Float64),
            (ReadType::Timestamp, DataType::Timestamp(unit, zone))
                if *unit != TimeUnit::Microsecond =>
            {
                // Stored to the microsecond; read so, then cast to the column's unit.
                Some(DataType::Timestamp(TimeUnit::Microsecond, zone.clone()))
            }
            _ if read_type.integer_range().is_some() => Some(DataType::Int64),
            (_, DataType::LargeUtf8) => Some(DataType::Utf8),
            (_, DataType::LargeBinary | DataType::FixedSizeBinary(_)) => Some(DataType::Binary),
            (_, DataType::Date64) => Some(DataType::Date32),
            (_, DataType::Duration(_)) => Some(DataType::Int64),
            (ReadType::Time, _) if *data_type != DataType::Time64(TimeUnit::Nanosecond) => {
                Some(DataType::Time64(TimeUnit::Nanosecond))
            }
            _ => None,
        };
        if let Some(wide) = wide {
            return Ok(ColumnReader::Narrow(
                read_type,
                data_type.clone(),
                Box::new(ColumnReader::new(&wide, capacity)?),
            ));
        }
        Ok(match (read_type, data_type) {
            (ReadType::Boolean, _) => {
                ColumnReader::Boolean(BooleanBuilder::with_capacity(capacity))
            }
            (
                ReadType::Int64
                | ReadType::Int8
                | ReadType::Int16
                | ReadType::Int32
                | ReadType::UInt8
                | ReadType::UInt16
                | ReadType::UInt32
                | ReadType::UInt64,
                _,
            ) => ColumnReader::Int64(Int64Builder::with_capacity(capacity)),
            (ReadType::Float64 | ReadType::Float32, _) => {
                ColumnReader::Float64(Float64Builder::with_capacity(capacity))
            }
            (ReadType::Decimal(precision, scale), _) => ColumnReader::Decimal(
                read_type,
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale)?,
            ),
            (ReadType::Utf8, _) => {
                ColumnReader::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            (ReadType::Binary | ReadType::FixedBinary(_), _) => {
                ColumnReader::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            (ReadType::Date32, _) => ColumnReader::Date32(Date32Builder::with_capacity(capacity)),
            (ReadType::Timestamp, DataType::Timestamp(_, zone)) => ColumnReader::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity)
                    .with_timezone_opt(zone.clone()),
            ),
            (ReadType::Timestamp, _) => {
                ColumnReader::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            (ReadType::TimestampNanos, _) => ColumnReader::TimestampNanos(
                TimestampNanosecondBuilder::with_capacity(capacity)
                    .with_timezone_opt(timezone_of(data_type)),
            ),
            (ReadType::Time, _) => {
                ColumnReader::Time64(Time64NanosecondBuilder::with_capacity(capacity))
            }
            (ReadType::Null, _) => ColumnReader::Null(0),
        })
    }

    fn read_type(&self) -> ReadType {
        match self {
            ColumnReader::Boolean(_) => ReadType::Boolean,
            ColumnReader::Int64(_) => ReadType::Int64,
            ColumnReader::Narrow(read_type, ..) => *read_type,
            ColumnReader::Float64(_) => ReadType::Float64,
            ColumnReader::Decimal(read_type, _) => *read_type,
            ColumnReader::Utf8(_) => ReadType::Utf8,
            ColumnReader::Binary(_) => ReadType::Binary,
            ColumnReader::Date32(_) => ReadType::Date32,
            ColumnReader::Timestamp(_) => ReadType::Timestamp,
            ColumnReader::TimestampNanos(_) => ReadType::TimestampNanos,
            ColumnReader::Time64(_) => ReadType::Time,
            ColumnReader::Null(_) => ReadType::Null,
        }
    }

    /// Appends one value; `None` means the value does not convert (the caller names it).
    #[inline]
    fn append(&mut self, value: ValueRef<'_>) -> Option<()> {
        let cell = self.read_type().decode(value)?;
        self.push(cell)
    }

    /// Appends one decoded value; `None` when it is not of the builder's kind.
    #[inline]
    fn push(&mut self, cell: Cell<'_>) -> Option<()> {
        match (self, cell) {
            (ColumnReader::Narrow(_, _, wide), cell) => wide.push(cell)?,
            (ColumnReader::Boolean(b), Cell::Null) => b.append_null(),
            (ColumnReader::Int64(b), Cell::Null) => b.append_null(),
            (ColumnReader::Float64(b), Cell::Null) => b.append_null(),
            (ColumnReader::Decimal(_, b), Cell::Null) => b.append_null(),
            (ColumnReader::Decimal(_, b), Cell::Decimal(v)) => b.append_value(v),
            (ColumnReader::Utf8(b), Cell::Null) => b.append_null(),
            (ColumnReader::Binary(b), Cell::Null) => b.append_null(),
            (ColumnReader::Date32(b), Cell::Null) => b.append_null(),
            (ColumnReader::Timestamp(b), Cell::Null) => b.append_null(),
            (ColumnReader::Time64(b), Cell::Null) => b.append_null(),
            (ColumnReader::TimestampNanos(b), Cell::Null) => b.append_null(),
            (ColumnReader::TimestampNanos(b), Cell::Int(v)) => b.append_value(v),
            (ColumnReader::Null(rows), Cell::Null) => *rows += 1,
            (ColumnReader::Boolean(b), Cell::Bool(v)) => b.append_value(v),
            (ColumnReader::Int64(b), Cell::Int(v)) => b.append_value(v),
            (ColumnReader::Float64(b), Cell::Float(v)) => b.append_value(v),
            (ColumnReader::Utf8(b), Cell::Text(v)) => b.append_value(v),
            (ColumnReader::Binary(b), Cell::Bytes(v)) => b.append_value(v),
            (ColumnReader::Date32(b), Cell::Day(v)) => b.append_value(v),
            (ColumnReader::Timestamp(b), Cell::Int(v)) => b.append_value(v),
            (ColumnReader::Time64(b), Cell::Int(v)) => b.append_value(v),
            _ => return None,
        }
        Some(())
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(match self {
            ColumnReader::Narrow(_, data_type, wide) => {
                // Narrow values were checked to fit when read; a timestamp that
                // overflows nanoseconds (after 2262) fails instead of turning NULL.
                let options = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                arrow::compute::cast_with_options(&wide.finish()?, data_type, &options)?
            }
            ColumnReader::Boolean(b) => Arc::new(b.finish()),
            ColumnReader::Int64(b) => Arc::new(b.finish()),
            ColumnReader::Float64(b) => Arc::new(b.finish()),
            ColumnReader::Decimal(_, b) => Arc::new(b.finish()),
            ColumnReader::Utf8(b) => Arc::new(b.finish()),
            ColumnReader::Binary(b) => Arc::new(b.finish()),
            ColumnReader::Date32(b) => Arc::new(b.finish()),
            ColumnReader::Timestamp(b) => Arc::new(b.finish()),
            ColumnReader::Time64(b) => Arc::new(b.finish()),
            ColumnReader::TimestampNanos(b) => Arc::new(b.finish()),
            ColumnReader::Null(rows) => Arc::new(NullArray::new(std::mem::take(rows))),
        })
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
        let columns = readers
            .iter_mut()
            .map(ColumnReader::finish)
            .collect::<Result<Vec<_>>>()?;
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
