//! Scalar values bound as statement parameters, and Arrow columns read as them.

use std::fmt;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float16Type, Float32Type,
    Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType,
    Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use crate::dialect::Dialect;
use crate::error::{Error, Result};

/// A parameter value in the store's terms.
///
/// Dates and timestamps travel in the Arrow units Quiver uses everywhere:
/// days since the Unix epoch and microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00 UTC.
    Timestamp(i64),
    /// Nanoseconds since 1970-01-01T00:00:00 UTC (PostgreSQL keeps microseconds).
    TimestampNanos(i64),
    /// Nanoseconds since midnight.
    Time(i64),
    /// A length of time: a count of the unit.
    Duration(i64, TimeUnit),
    /// An exact decimal number as text (`-12.50`).
    Decimal(String),
    /// A list of values (a PostgreSQL array).
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "'{}'", shorten(v)),
            Value::Blob(v) => write!(f, "<{} bytes>", v.len()),
            Value::Date(v) => write!(f, "{}", crate::time::format_date(*v)),
            Value::Timestamp(v) => write!(f, "{}", crate::time::format_timestamp_micros(*v)),
            Value::TimestampNanos(v) => write!(f, "{}", crate::time::format_timestamp_nanos(*v)),
            Value::Time(v) => write!(f, "{}", crate::time::format_time_nanos(*v)),
            Value::Duration(v, unit) => write!(f, "{v} {}", unit_name(*unit)),
            Value::Decimal(v) => f.write_str(&shorten(v)),
            Value::List(items) => write!(f, "<a list of {} values>", items.len()),
        }
    }
}

impl Dialect {
    /// The placeholder for the one-based parameter `index`, bound to `value`.
    pub fn placeholder(self, index: usize, value: &Value) -> String {
        match self {
            Dialect::Sqlite => format!("?{index}"),
            Dialect::Postgres => format!("${index}::{}", placeholder_cast(value)),
        }
    }
}

/// The PostgreSQL type a placeholder for `value` is cast to, so that PostgreSQL infers
/// the parameter's type from the value rather than from context.
pub fn placeholder_cast(value: &Value) -> &'static str {
    match value {
        Value::Null | Value::Text(_) => "text",
        Value::Bool(_) => "boolean",
        Value::Int(_) => "int8",
        Value::Float(_) => "float8",
        Value::Blob(_) => "bytea",
        Value::Date(_) => "date",
        Value::Timestamp(_) | Value::TimestampNanos(_) => "timestamp",
        Value::Time(_) => "time",
        Value::Duration(..) => "interval",
        Value::Decimal(_) => "numeric",
        Value::List(items) => match items.iter().find(|v| **v != Value::Null) {
            None | Some(Value::Null | Value::Text(_) | Value::List(_)) => "text[]",
            Some(Value::Bool(_)) => "boolean[]",
            Some(Value::Int(_)) => "int8[]",
            Some(Value::Float(_)) => "float8[]",
            Some(Value::Blob(_)) => "bytea[]",
            Some(Value::Date(_)) => "date[]",
            Some(Value::Timestamp(_) | Value::TimestampNanos(_)) => "timestamp[]",
            Some(Value::Time(_)) => "time[]",
            Some(Value::Duration(..)) => "interval[]",
            Some(Value::Decimal(_)) => "numeric[]",
        },
    }
}

/// A time unit's name, for messages.
fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "µs",
        TimeUnit::Nanosecond => "ns",
    }
}

/// A count of `unit` in microseconds, rounded toward negative infinity; `None` when
/// it overflows.
pub fn duration_micros(count: i64, unit: TimeUnit) -> Option<i64> {
    match unit {
        TimeUnit::Second => count.checked_mul(1_000_000),
        TimeUnit::Millisecond => count.checked_mul(1_000),
        TimeUnit::Microsecond => Some(count),
        TimeUnit::Nanosecond => Some(count.div_euclid(1_000)),
    }
}

/// Nanoseconds in a day: a time of day is below it.
const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// Most characters of decimal text (far beyond any store's precision).
const MAX_DECIMAL_TEXT: usize = 1_000;

impl Value {
    /// Checks that the store of `dialect` can hold this value and read it back as
    /// written (see [`Cell::check_storable`]).
    pub fn check_storable(&self, dialect: Dialect) -> std::result::Result<(), String> {
        self.as_cell().check_storable(dialect)
    }
}

/// Whether `text` is a plain decimal number: optional sign, digits, optional fraction
/// (no exponent).
pub fn is_decimal_text(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    !(whole.is_empty() && fraction.is_empty())
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

/// The start of `text` for messages (at most 40 characters).
pub fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(40).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// One value of an Arrow column, borrowed where it can be: what bulk paths bind
/// without copying each row into [`Value`]s.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// Raw bytes.
    Blob(&'a [u8]),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00 UTC.
    Timestamp(i64),
    /// Nanoseconds since 1970-01-01T00:00:00 UTC.
    TimestampNanos(i64),
    /// Nanoseconds since midnight.
    Time(i64),
    /// A length of time: a count of the unit.
    Duration(i64, TimeUnit),
    /// An exact decimal number as text.
    Decimal(String),
    /// A list: the values of one row of a list column.
    List(ArrayRef),
    /// A list of values (a bound parameter).
    Values(&'a [Value]),
}

impl Cell<'_> {
    /// The owned value.
    pub fn to_value(&self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(v) => Value::Bool(*v),
            Cell::Int(v) => Value::Int(*v),
            Cell::Float(v) => Value::Float(*v),
            Cell::Text(v) => Value::Text((*v).to_owned()),
            Cell::Blob(v) => Value::Blob(v.to_vec()),
            Cell::Date(v) => Value::Date(*v),
            Cell::Timestamp(v) => Value::Timestamp(*v),
            Cell::TimestampNanos(v) => Value::TimestampNanos(*v),
            Cell::Time(v) => Value::Time(*v),
            Cell::Duration(v, unit) => Value::Duration(*v, *unit),
            Cell::Decimal(v) => Value::Decimal(v.clone()),
            // Elements were checked to be writable scalars when the cell was read.
            Cell::List(items) => Value::List(
                (0..items.len())
                    .map(|i| value_at(items, i, "item").unwrap_or(Value::Null))
                    .collect(),
            ),
            Cell::Values(items) => Value::List(items.to_vec()),
        }
    }

    /// Checks that the store of `dialect` can hold this value and read it back as
    /// written; the error says why not (without echoing more than the value's start).
    pub fn check_storable(&self, dialect: Dialect) -> std::result::Result<(), String> {
        match self {
            Cell::List(_) | Cell::Values(_) if dialect == Dialect::Sqlite => {
                Err("SQLite has no list type".to_owned())
            }
            Cell::List(items) => (0..items.len()).try_for_each(|i| {
                let item = cell_at(items, i, "item").map_err(|err| err.to_string())?;
                item.check_element(dialect)
            }),
            Cell::Values(items) => items
                .iter()
                .try_for_each(|item| item.as_cell().check_element(dialect)),
            Cell::TimestampNanos(nanos) => {
                Cell::Timestamp(nanos.div_euclid(1_000)).check_storable(dialect)
            }
            Cell::Time(nanos) if !(0..NANOS_PER_DAY).contains(nanos) => Err(format!(
                "time {nanos} ns is not a time of day (0 to 24 hours)"
            )),
            Cell::Duration(count, unit)
                if dialect == Dialect::Postgres && duration_micros(*count, *unit).is_none() =>
            {
                Err(format!(
                    "duration {count} {} is beyond what PostgreSQL's interval holds",
                    unit_name(*unit)
                ))
            }
            Cell::Timestamp(micros) if !dialect.timestamp_range().contains(micros) => Err(format!(
                "timestamp {micros} µs is outside what the store holds ({} to {} µs since 1970)",
                dialect.timestamp_range().start(),
                dialect.timestamp_range().end()
            )),
            Cell::Date(days) if !dialect.date_range().contains(days) => Err(format!(
                "date {days} days is outside what the store holds ({} to {} days since 1970)",
                dialect.date_range().start(),
                dialect.date_range().end()
            )),
            Cell::Float(v) if dialect == Dialect::Sqlite && !v.is_finite() => Err(format!(
                "{v} cannot be stored: SQLite keeps only finite numbers (NaN becomes NULL)"
            )),
            Cell::Decimal(text) => {
                if text.len() > MAX_DECIMAL_TEXT || !is_decimal_text(text) {
                    return Err(format!("'{}' is not a decimal number", shorten(text)));
                }
                if dialect == Dialect::Sqlite && !text.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(format!(
                        "'{}' is beyond what SQLite's numbers hold",
                        shorten(text)
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Cell<'_> {
    /// Checks an element of a list: storable, and not a list itself (arrays are read
    /// back with one dimension).
    fn check_element(&self, dialect: Dialect) -> std::result::Result<(), String> {
        match self {
            Cell::List(_) | Cell::Values(_) => Err("a list of lists has no column type".to_owned()),
            element => element.check_storable(dialect),
        }
    }
}

impl Value {
    /// The value as a [`Cell`] borrowing from it.
    pub fn as_cell(&self) -> Cell<'_> {
        match self {
            Value::Null => Cell::Null,
            Value::Bool(v) => Cell::Bool(*v),
            Value::Int(v) => Cell::Int(*v),
            Value::Float(v) => Cell::Float(*v),
            Value::Text(v) => Cell::Text(v),
            Value::Blob(v) => Cell::Blob(v),
            Value::Date(v) => Cell::Date(*v),
            Value::Timestamp(v) => Cell::Timestamp(*v),
            Value::TimestampNanos(v) => Cell::TimestampNanos(*v),
            Value::Time(v) => Cell::Time(*v),
            Value::Duration(v, unit) => Cell::Duration(*v, *unit),
            Value::Decimal(v) => Cell::Decimal(v.clone()),
            Value::List(items) => Cell::Values(items),
        }
    }
}

/// Reads row `row` of `column` as a [`Cell`]; `column_name` names it in errors.
pub fn cell_at<'a>(column: &'a ArrayRef, row: usize, column_name: &str) -> Result<Cell<'a>> {
    // A `Null`-typed array has no validity buffer: every value is NULL.
    if column.is_null(row) || column.data_type() == &DataType::Null {
        return Ok(Cell::Null);
    }
    let unsupported = || Error::Conversion {
        column: column_name.to_owned(),
        value: format!("a value of Arrow type {}", column.data_type()),
        target: "a store value".to_owned(),
    };
    Ok(match column.data_type() {
        DataType::Boolean => Cell::Bool(column.as_boolean().value(row)),
        DataType::Int8 => Cell::Int(column.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => Cell::Int(column.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => Cell::Int(column.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Cell::Int(column.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Cell::Int(column.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Cell::Int(column.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => Cell::Int(column.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => {
            let value = column.as_primitive::<UInt64Type>().value(row);
            i64::try_from(value)
                .map(Cell::Int)
                .unwrap_or_else(|_| Cell::Decimal(value.to_string()))
        }
        DataType::Float16 => Cell::Float(column.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => Cell::Float(column.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => Cell::Float(column.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Cell::Text(column.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Cell::Text(column.as_string::<i64>().value(row)),
        DataType::Utf8View => Cell::Text(column.as_string_view().value(row)),
        DataType::Binary => Cell::Blob(column.as_binary::<i32>().value(row)),
        DataType::LargeBinary => Cell::Blob(column.as_binary::<i64>().value(row)),
        DataType::BinaryView => Cell::Blob(column.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => Cell::Blob(column.as_fixed_size_binary().value(row)),
        DataType::Date32 => Cell::Date(column.as_primitive::<Date32Type>().value(row)),
        DataType::Date64 => {
            let millis = column.as_primitive::<Date64Type>().value(row);
            Cell::Date(i32::try_from(millis.div_euclid(86_400_000)).map_err(|_| unsupported())?)
        }
        DataType::Timestamp(unit, _) => Cell::Timestamp(match unit {
            TimeUnit::Second => column
                .as_primitive::<TimestampSecondType>()
                .value(row)
                .checked_mul(1_000_000)
                .ok_or_else(unsupported)?,
            TimeUnit::Millisecond => column
                .as_primitive::<TimestampMillisecondType>()
                .value(row)
                .checked_mul(1_000)
                .ok_or_else(unsupported)?,
            TimeUnit::Microsecond => column.as_primitive::<TimestampMicrosecondType>().value(row),
            TimeUnit::Nanosecond => {
                return Ok(Cell::TimestampNanos(
                    column.as_primitive::<TimestampNanosecondType>().value(row),
                ));
            }
        }),
        DataType::Time32(TimeUnit::Second) => Cell::Time(
            i64::from(column.as_primitive::<Time32SecondType>().value(row)) * 1_000_000_000,
        ),
        DataType::Time32(TimeUnit::Millisecond) => Cell::Time(
            i64::from(column.as_primitive::<Time32MillisecondType>().value(row)) * 1_000_000,
        ),
        DataType::Time64(TimeUnit::Microsecond) => Cell::Time(
            column
                .as_primitive::<Time64MicrosecondType>()
                .value(row)
                .checked_mul(1_000)
                .ok_or_else(unsupported)?,
        ),
        DataType::Time64(TimeUnit::Nanosecond) => {
            Cell::Time(column.as_primitive::<Time64NanosecondType>().value(row))
        }
        DataType::Duration(unit) => Cell::Duration(
            match unit {
                TimeUnit::Second => column.as_primitive::<DurationSecondType>().value(row),
                TimeUnit::Millisecond => {
                    column.as_primitive::<DurationMillisecondType>().value(row)
                }
                TimeUnit::Microsecond => {
                    column.as_primitive::<DurationMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => column.as_primitive::<DurationNanosecondType>().value(row),
            },
            *unit,
        ),
        DataType::Decimal128(_, scale) => Cell::Decimal(format_decimal(
            column.as_primitive::<Decimal128Type>().value(row),
            *scale,
        )),
        DataType::List(_) if is_writable(column.data_type()) => {
            Cell::List(column.as_list::<i32>().value(row))
        }
        DataType::LargeList(_) if is_writable(column.data_type()) => {
            Cell::List(column.as_list::<i64>().value(row))
        }
        _ => return Err(unsupported()),
    })
}

/// Whether [`cell_at`] reads values of `data_type` (what ingest and bound parameters
/// accept; a dictionary is accepted as its values).
pub fn is_writable(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(_, values) => is_writable(values),
        DataType::Time32(unit) => matches!(unit, TimeUnit::Second | TimeUnit::Millisecond),
        DataType::Time64(unit) => matches!(unit, TimeUnit::Microsecond | TimeUnit::Nanosecond),
        // One dimension of elements of the other types (PostgreSQL's arrays). Not of
        // views or dictionaries: their elements could name one large value many times,
        // beyond the byte bounds checked on top-level columns.
        DataType::List(item) | DataType::LargeList(item) => {
            !matches!(
                item.data_type(),
                DataType::List(_)
                    | DataType::LargeList(_)
                    | DataType::Null
                    | DataType::Dictionary(..)
                    | DataType::Utf8View
                    | DataType::BinaryView
            ) && is_writable(item.data_type())
        }
        _ => matches!(
            data_type,
            DataType::Null
                | DataType::Boolean
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Duration(_)
                | DataType::Decimal128(..)
        ),
    }
}

/// Reads row `row` of `column` as a [`Value`]; `column_name` names it in errors.
pub fn value_at(column: &ArrayRef, row: usize, column_name: &str) -> Result<Value> {
    cell_at(column, row, column_name).map(|cell| cell.to_value())
}

/// Every row of `batch` as values, in column order.
pub fn rows_of_batch(batch: &RecordBatch) -> Result<Vec<Vec<Value>>> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| value_at(column, row, field.name()))
                .collect()
        })
        .collect()
}

/// A scaled integer as decimal text: `format_decimal(-1250, 2)` is `-12.50`.
pub fn format_decimal(value: i128, scale: i8) -> String {
    if scale <= 0 {
        let mut text = value.to_string();
        if value != 0 {
            text.extend(std::iter::repeat_n('0', usize::from(scale.unsigned_abs())));
        }
        return text;
    }
    let scale = usize::from(scale.unsigned_abs());
    let digits = value.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let sign = if value < 0 { "-" } else { "" };
    format!("{sign}{whole}.{fraction}")
}

/// Decimal text (`-12.345`, `1e3`, ` 7 `) as an integer scaled by `10^scale`, rounded
/// half away from zero at the scale; `None` when it is not a number or has more than
/// `precision` digits.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // digits × 10^(exponent − fraction length) = the value; shifted to the scale,
    // the last `dropped` significant digits fall below it.
    let significant = || {
        whole
            .bytes()
            .chain(fraction.bytes())
            .skip_while(|b| *b == b'0')
    };
    let count = significant().count();
    let shift = exponent
        .checked_sub(i32::try_from(fraction.len()).ok()?)?
        .checked_add(i32::from(scale))?;
    let dropped = if shift < 0 {
        usize::try_from(-shift).ok()?
    } else {
        0
    };
    let limit = 10i128.checked_pow(u32::from(precision))?;
    let mut value: i128 = 0;
    for digit in significant().take(count.saturating_sub(dropped)) {
        value = value
            .checked_mul(10)?
            .checked_add(i128::from(digit - b'0'))?;
        if value >= limit {
            return None;
        }
    }
    if shift > 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?;
    }
    // Half away from zero, on the first dropped digit (an implied zero when every
    // significant digit falls further below the scale).
    let rounding = (1..=count)
        .contains(&dropped)
        .then(|| significant().nth(count - dropped))
        .flatten();
    if rounding.is_some_and(|digit| digit >= b'5') {
        value = value.checked_add(1)?;
    }
    if value >= limit {
        return None;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_parses_at_its_scale() {
        assert_eq!(parse_decimal("12.34", 10, 2), Some(1234));
        assert_eq!(parse_decimal("-0.005", 10, 2), Some(-1));
        assert_eq!(parse_decimal("0.004", 10, 2), Some(0));
        assert_eq!(parse_decimal("1e3", 10, 2), Some(100_000));
        assert_eq!(parse_decimal("1.5E-1", 10, 2), Some(15));
        assert_eq!(parse_decimal(" 7 ", 3, 0), Some(7));
        assert_eq!(
            parse_decimal("12345678901234567890.12", 38, 2),
            Some(1_234_567_890_123_456_789_012)
        );
        assert_eq!(parse_decimal("1000", 3, 0), None);
        assert_eq!(parse_decimal("999.995", 5, 2), None);
        assert_eq!(parse_decimal("0.00001", 3, 2), Some(0));
        assert_eq!(parse_decimal("abc", 10, 2), None);
        assert_eq!(parse_decimal("", 10, 2), None);
        assert_eq!(parse_decimal(".", 10, 2), None);
        assert_eq!(parse_decimal("1e999999", 38, 2), None);
        for value in [-1_234_567_i128, 0, 5, 99_999] {
            assert_eq!(parse_decimal(&format_decimal(value, 3), 38, 3), Some(value));
        }
    }

    #[test]
    fn every_writable_type_reads_as_a_cell() {
        use arrow::array::{BinaryArray, Int64Array, StringArray};
        let integers: ArrayRef = std::sync::Arc::new(Int64Array::from(vec![1]));
        let strings: ArrayRef = std::sync::Arc::new(StringArray::from(vec!["1"]));
        let bytes: ArrayRef = std::sync::Arc::new(BinaryArray::from(vec![&b"abcd"[..]]));
        let units = [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ];
        let mut types = vec![
            DataType::Null,
            DataType::Boolean,
            DataType::Int8,
            DataType::UInt64,
            DataType::Float16,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Binary,
            DataType::LargeBinary,
            DataType::BinaryView,
            DataType::FixedSizeBinary(4),
            DataType::Date32,
            DataType::Date64,
            DataType::Decimal128(10, 2),
            DataType::Decimal256(10, 2),
            DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        ];
        for unit in units {
            types.push(DataType::Time32(unit));
            types.push(DataType::Time64(unit));
            types.push(DataType::Timestamp(unit, None));
            types.push(DataType::Duration(unit));
        }
        for data_type in types {
            let source = [&integers, &strings, &bytes]
                .into_iter()
                .find(|a| arrow::compute::can_cast_types(a.data_type(), &data_type));
            let column = match data_type {
                DataType::Null => Some(arrow::array::new_null_array(&DataType::Null, 1)),
                _ => source.and_then(|a| arrow::compute::cast(a, &data_type).ok()),
            };
            let Some(column) = column else {
                assert!(!is_writable(&data_type), "{data_type}: no test value");
                continue;
            };
            assert_eq!(
                cell_at(&column, 0, "c").is_ok(),
                is_writable(&data_type),
                "{data_type}"
            );
        }
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        assert_eq!(Dialect::Sqlite.placeholder(3, &Value::Int(1)), "?3");
        assert_eq!(Dialect::Postgres.placeholder(2, &Value::Int(1)), "$2::int8");
        assert_eq!(
            Dialect::Postgres.placeholder(1, &Value::Text("a".into())),
            "$1::text"
        );
    }

    #[test]
    fn decimals_format_at_their_scale() {
        assert_eq!(format_decimal(-1250, 2), "-12.50");
        assert_eq!(format_decimal(5, 3), "0.005");
        assert_eq!(format_decimal(12, 0), "12");
        assert_eq!(format_decimal(12, -2), "1200");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn any_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::Int),
                any::<f64>().prop_map(Value::Float),
                ".{0,40}".prop_map(Value::Text),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
                any::<i32>().prop_map(Value::Date),
                any::<i64>().prop_map(Value::Timestamp),
                "[-+]?[0-9]{0,30}(\\.[0-9]{0,20})?".prop_map(Value::Decimal),
                ".{0,20}".prop_map(Value::Decimal),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// A value either is storable on a backend or says why not; when it is,
            /// SQLite's binding and PostgreSQL's binary encoding take it without a
            /// panic (they may refuse a value for a column type, as an error).
            #[test]
            fn values_are_checked_and_encoded_without_panics(value in any_value()) {
                for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                    if let Err(problem) = value.check_storable(dialect) {
                        prop_assert!(problem.len() < 300, "{problem}");
                    }
                }
                let _ = rusqlite::ToSql::to_sql(&value);
                use tokio_postgres::types::{ToSql, Type};
                for ty in [
                    Type::INT2, Type::INT4, Type::INT8, Type::FLOAT4, Type::FLOAT8,
                    Type::NUMERIC, Type::TEXT, Type::UUID, Type::DATE, Type::TIMESTAMP,
                    Type::TIMESTAMPTZ, Type::BYTEA, Type::BOOL, Type::JSONB,
                ] {
                    let mut out = bytes::BytesMut::new();
                    let _ = value.to_sql(&ty, &mut out);
                }
            }

            /// Timestamps inside a backend's range write and read back as the same
            /// microseconds.
            #[test]
            fn storable_timestamps_round_trip_through_sqlite_text(micros in any::<i64>()) {
                let value = Value::Timestamp(micros);
                if value.check_storable(Dialect::Sqlite).is_ok() {
                    let text = crate::time::format_timestamp_micros(micros);
                    prop_assert_eq!(crate::time::parse_timestamp_micros(&text), Some(micros));
                }
            }
        }
    }
}
