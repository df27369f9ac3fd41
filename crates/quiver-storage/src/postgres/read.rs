//! Decoding PostgreSQL's binary result format into Arrow arrays, and binding
//! [`Value`]s as parameters: the two directions of one wire format, kept together
//! (one cohesive thing, hence one file past 600 lines).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    ListArray, NullBufferBuilder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano, IntervalUnit, TimeUnit};
use bytes::BufMut;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::error::BindError;
use crate::value::Value;

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A column value exactly as the server sent it (binary format), or NULL.
pub(crate) struct Raw<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// How a text-like column's bytes become a string.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TextForm {
    /// UTF-8 as sent (text, varchar, enums, json, `::text` casts).
    Plain,
    /// `jsonb`: a version byte, then the JSON text.
    Jsonb,
    /// `uuid`: 16 bytes, shown hyphenated.
    Uuid,
}

/// Appends decoded values of one result column to an Arrow builder.
pub(crate) enum Decoder {
    Boolean(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    /// `true` for `oid`, an unsigned 32-bit number.
    Int64(Int64Builder, bool),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, i8),
    Text(StringBuilder, TextForm),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: Box<Decoder>,
    },
    /// A column read as PostgreSQL's own type, then cast to the Arrow type ingest
    /// recorded for it (`Int8` kept in a `smallint`).
    Cast(Box<Decoder>, DataType),
    /// A `Null` column: the number of rows (every value NULL).
    Null(usize),
}

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", raw.len()))
}

fn int(raw: &[u8]) -> Result<i64, String> {
    Ok(match raw.len() {
        2 => i64::from(i16::from_be_bytes(be(raw)?)),
        4 => i64::from(i32::from_be_bytes(be(raw)?)),
        8 => i64::from_be_bytes(be(raw)?),
        n => return Err(format!("an integer of {n} bytes")),
    })
}

fn float(raw: &[u8]) -> Result<f64, String> {
    Ok(match raw.len() {
        4 => f64::from(f32::from_be_bytes(be(raw)?)),
        8 => f64::from_be_bytes(be(raw)?),
        n => return Err(format!("a float of {n} bytes")),
    })
}

fn text(raw: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(raw).map_err(|err| format!("invalid UTF-8 ({err})"))
}

/// Decodes PostgreSQL's binary `numeric` into an integer scaled by `10^scale`,
/// rounding half away from zero.
pub(crate) fn decode_numeric(raw: &[u8], scale: i8) -> Result<i128, String> {
    if raw.len() < 8 {
        return Err("a truncated numeric".to_owned());
    }
    let ndigits = i16::from_be_bytes([raw[0], raw[1]]);
    let weight = i16::from_be_bytes([raw[2], raw[3]]);
    let sign = u16::from_be_bytes([raw[4], raw[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN".to_owned()),
        _ => return Err("an infinite numeric".to_owned()),
    }
    let digits = &raw[8..];
    if digits.len() != usize::try_from(ndigits).unwrap_or(0) * 2 {
        return Err("a numeric with a bad digit count".to_owned());
    }
    let overflow = || "a numeric too large for Decimal128".to_owned();
    let mut value: i128 = 0;
    let mut round_up = false;
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let digit = i128::from(i16::from_be_bytes([pair[0], pair[1]]));
        // This base-10000 digit is worth 10^(4 * (weight - i)); scaled by 10^scale.
        let exponent = 4 * (i32::from(weight) - i as i32) + i32::from(scale);
        if exponent >= 0 {
            let factor = 10i128.checked_pow(exponent as u32).ok_or_else(overflow)?;
            value = digit
                .checked_mul(factor)
                .and_then(|d| value.checked_add(d))
                .ok_or_else(overflow)?;
        } else if exponent > -4 {
            let divisor = 10i128.pow((-exponent) as u32);
            value = value.checked_add(digit / divisor).ok_or_else(overflow)?;
            round_up = (digit % divisor) * 2 >= divisor;
            break;
        } else {
            // The first digit entirely below the scale decides rounding.
            round_up = digit >= 5000;
            break;
        }
    }
    if round_up {
        value = value.checked_add(1).ok_or_else(overflow)?;
    }
    Ok(if sign == 0x4000 { -value } else { value })
}

fn format_uuid(raw: &[u8]) -> Result<String, String> {
    let bytes: [u8; 16] = be(raw)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

impl Decoder {
    /// A decoder producing `data_type` from values of the PostgreSQL type `pg`.
    pub(crate) fn new(data_type: &DataType, pg: &Type, capacity: usize) -> Result<Self, String> {
        Ok(match data_type {
            DataType::Boolean => Decoder::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int16 => Decoder::Int16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => Decoder::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => {
                Decoder::Int64(Int64Builder::with_capacity(capacity), *pg == Type::OID)
            }
            DataType::Float32 => Decoder::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Decoder::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(precision, scale) => Decoder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .map_err(|err| err.to_string())?,
                *scale,
            ),
            DataType::Utf8 => {
                let form = match *pg {
                    Type::JSONB => TextForm::Jsonb,
                    Type::UUID => TextForm::Uuid,
                    _ => TextForm::Plain,
                };
                Decoder::Text(StringBuilder::with_capacity(capacity, capacity * 16), form)
            }
            DataType::Binary => Decoder::Binary(BinaryBuilder::with_capacity(capacity, capacity)),
            DataType::Date32 => Decoder::Date(Date32Builder::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Microsecond) => {
                Decoder::Time(Time64MicrosecondBuilder::with_capacity(capacity))
            }
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Decoder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity)
                    .with_timezone_opt(zone.clone()),
            ),
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                Decoder::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            DataType::List(field) => {
                let element = match pg.kind() {
                    Kind::Array(element) => element.clone(),
                    _ => return Err(format!("a list column from non-array type {pg}")),
                };
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Decoder::List {
                    field: Arc::clone(field),
                    offsets,
                    nulls: NullBufferBuilder::new(capacity),
                    item: Box::new(Decoder::new(field.data_type(), &element, capacity)?),
                }
            }
            DataType::Null => Decoder::Null(0),
            other => match super::types::native_type(other) {
                Some(native) if native != *other => Decoder::Cast(
                    Box::new(Decoder::new(&native, pg, capacity)?),
                    other.clone(),
                ),
                _ => return Err(format!("no PostgreSQL decoder for Arrow type {other}")),
            },
        })
    }

    /// Appends one value (`None` is NULL); the error says what did not fit.
    pub(crate) fn append(&mut self, raw: Option<&[u8]>) -> Result<(), String> {
        let Some(raw) = raw else {
            self.append_null();
            return Ok(());
        };
        match self {
            Decoder::Cast(native, _) => return native.append(Some(raw)),
            Decoder::Null(_) => return Err("a value in a column of Arrow type Null".to_owned()),
            Decoder::Boolean(b) => b.append_value(raw.first().is_some_and(|v| *v != 0)),
            Decoder::Int16(b) => b.append_value(
                i16::try_from(int(raw)?).map_err(|_| "an integer out of Int16 range")?,
            ),
            Decoder::Int32(b) => b.append_value(
                i32::try_from(int(raw)?).map_err(|_| "an integer out of Int32 range")?,
            ),
            Decoder::Int64(b, true) => b.append_value(i64::from(u32::from_be_bytes(be(raw)?))),
            Decoder::Int64(b, false) => b.append_value(int(raw)?),
            Decoder::Float32(b) => b.append_value(float(raw)? as f32),
            Decoder::Float64(b) => b.append_value(float(raw)?),
            Decoder::Decimal(b, scale) => b.append_value(decode_numeric(raw, *scale)?),
            Decoder::Text(b, form) => match form {
                TextForm::Plain => b.append_value(text(raw)?),
                TextForm::Jsonb => b.append_value(text(raw.get(1..).unwrap_or_default())?),
                TextForm::Uuid => b.append_value(format_uuid(raw)?),
            },
            Decoder::Binary(b) => b.append_value(raw),
            Decoder::Date(b) => {
                let days = i32::from_be_bytes(be(raw)?);
                // ±infinity are i32::MAX / i32::MIN and stay at the extremes.
                b.append_value(match days {
                    i32::MAX | i32::MIN => days,
                    _ => days
                        .checked_add(EPOCH_DAYS)
                        .ok_or("a date beyond Arrow's Date32")?,
                });
            }
            Decoder::Time(b) => b.append_value(i64::from_be_bytes(be(raw)?)),
            Decoder::Timestamp(b) => {
                let micros = i64::from_be_bytes(be(raw)?);
                b.append_value(match micros {
                    i64::MAX | i64::MIN => micros,
                    _ => micros
                        .checked_add(EPOCH_MICROS)
                        .ok_or("a timestamp beyond Arrow's microseconds")?,
                });
            }
            Decoder::Interval(b) => {
                let bytes: [u8; 16] = be(raw)?;
                let micros = i64::from_be_bytes(bytes[0..8].try_into().unwrap_or_default());
                let days = i32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default());
                let months = i32::from_be_bytes(bytes[12..16].try_into().unwrap_or_default());
                b.append_value(IntervalMonthDayNano::new(
                    months,
                    days,
                    micros.saturating_mul(1000),
                ));
            }
            Decoder::List {
                offsets,
                nulls,
                item,
                ..
            } => {
                let count = append_array(raw, item)?;
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last + i32::try_from(count).map_err(|_| "an array too large")?);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Decoder::Cast(native, _) => native.append_null(),
            Decoder::Null(rows) => *rows += 1,
            Decoder::Boolean(b) => b.append_null(),
            Decoder::Int16(b) => b.append_null(),
            Decoder::Int32(b) => b.append_null(),
            Decoder::Int64(b, _) => b.append_null(),
            Decoder::Float32(b) => b.append_null(),
            Decoder::Float64(b) => b.append_null(),
            Decoder::Decimal(b, _) => b.append_null(),
            Decoder::Text(b, _) => b.append_null(),
            Decoder::Binary(b) => b.append_null(),
            Decoder::Date(b) => b.append_null(),
            Decoder::Time(b) => b.append_null(),
            Decoder::Timestamp(b) => b.append_null(),
            Decoder::Interval(b) => b.append_null(),
            Decoder::List { offsets, nulls, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    /// The values appended so far as an array; the decoder starts over empty. Fails
    /// when a value does not fit the Arrow type recorded for its column.
    pub(crate) fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Decoder::Boolean(b) => Arc::new(b.finish()),
            Decoder::Int16(b) => Arc::new(b.finish()),
            Decoder::Int32(b) => Arc::new(b.finish()),
            Decoder::Int64(b, _) => Arc::new(b.finish()),
            Decoder::Float32(b) => Arc::new(b.finish()),
            Decoder::Float64(b) => Arc::new(b.finish()),
            Decoder::Decimal(b, _) => Arc::new(b.finish()),
            Decoder::Text(b, _) => Arc::new(b.finish()),
            Decoder::Binary(b) => Arc::new(b.finish()),
            Decoder::Date(b) => Arc::new(b.finish()),
            Decoder::Time(b) => Arc::new(b.finish()),
            Decoder::Timestamp(b) => Arc::new(b.finish()),
            Decoder::Interval(b) => Arc::new(b.finish()),
            Decoder::Null(rows) => Arc::new(arrow::array::NullArray::new(std::mem::take(rows))),
            Decoder::Cast(native, data_type) => {
                // A value the recorded type does not hold (written outside Quiver)
                // fails instead of turning NULL.
                let options = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                arrow::compute::cast_with_options(&native.finish()?, data_type, &options)
                    .map_err(|err| err.to_string())?
            }
            Decoder::List {
                field,
                offsets,
                nulls,
                item,
            } => {
                let values = item.finish()?;
                let taken = std::mem::replace(offsets, vec![0]);
                let offsets = OffsetBuffer::new(taken.into());
                Arc::new(ListArray::new(
                    Arc::clone(field),
                    offsets,
                    values,
                    nulls.finish(),
                ))
            }
        })
    }
}

/// Appends the elements of a binary array value to `item`; returns how many.
fn append_array(raw: &[u8], item: &mut Decoder) -> Result<usize, String> {
    let truncated = || "a truncated array".to_owned();
    let read_i32 = |at: usize| -> Result<i32, String> {
        raw.get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(truncated)
    };
    let dimensions = usize::try_from(read_i32(0)?).map_err(|_| truncated())?;
    // Header: ndim, has-null flag, element oid, then (length, lower bound) per dimension.
    let mut at = 12;
    let mut count = usize::from(dimensions > 0);
    for _ in 0..dimensions {
        count *= usize::try_from(read_i32(at)?).map_err(|_| truncated())?;
        at += 8;
    }
    for _ in 0..count {
        let length = read_i32(at)?;
        at += 4;
        if length < 0 {
            item.append(None)?;
        } else {
            let end = at + length as usize;
            item.append(Some(raw.get(at..end).ok_or_else(truncated)?))?;
            at = end;
        }
    }
    Ok(count)
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

fn bind_error(message: impl Into<String>) -> BoxError {
    Box::new(BindError(message.into()))
}

fn mismatch(value: &Value, ty: &Type) -> BoxError {
    bind_error(format!("cannot bind {value} to a parameter of type {ty}"))
}

fn fits<T: TryFrom<i64>>(value: i64, ty: &Type) -> Result<T, BoxError> {
    T::try_from(value).map_err(|_| bind_error(format!("{value} is out of range for {ty}")))
}

fn parsed<T: std::str::FromStr>(text: &str, ty: &Type) -> Result<T, BoxError> {
    text.parse()
        .map_err(|_| bind_error(format!("'{}' is not a {ty}", crate::value::shorten(text))))
}

/// µs since 1970 as PostgreSQL's µs since 2000, refusing what would wrap or land on
/// its ±infinity.
fn timestamp_2000(micros: i64) -> Result<i64, BoxError> {
    micros
        .checked_sub(EPOCH_MICROS)
        .filter(|v| *v != i64::MIN && *v != i64::MAX)
        .ok_or_else(|| bind_error(format!("timestamp {micros} µs is out of range")))
}

/// Days since 1970 as PostgreSQL's days since 2000.
fn date_2000(days: i32) -> Result<i32, BoxError> {
    days.checked_sub(EPOCH_DAYS)
        .filter(|v| *v != i32::MIN && *v != i32::MAX)
        .ok_or_else(|| bind_error(format!("date {days} days is out of range")))
}

/// A UUID's 16 bytes from its text (hyphens anywhere, as PostgreSQL accepts).
fn uuid_bytes(text: &str) -> Result<[u8; 16], BoxError> {
    let invalid = || bind_error(format!("'{}' is not a UUID", crate::value::shorten(text)));
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid());
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| invalid())?;
    }
    Ok(bytes)
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::Bool(v) => match *ty {
                Type::BOOL => out.put_u8(u8::from(*v)),
                _ => return Err(mismatch(self, ty)),
            },
            Value::Int(v) => match *ty {
                Type::INT8 => out.put_i64(*v),
                Type::INT4 => out.put_i32(fits(*v, ty)?),
                Type::INT2 => out.put_i16(fits(*v, ty)?),
                Type::OID => out.put_u32(fits(*v, ty)?),
                Type::FLOAT8 => out.put_f64(*v as f64),
                Type::FLOAT4 => out.put_f32(*v as f32),
                Type::NUMERIC => out.put_slice(&encode_numeric(&v.to_string())?),
                Type::TEXT | Type::VARCHAR => out.put_slice(v.to_string().as_bytes()),
                _ => return Err(mismatch(self, ty)),
            },
            Value::Float(v) => match *ty {
                Type::FLOAT8 => out.put_f64(*v),
                Type::FLOAT4 => out.put_f32(*v as f32),
                Type::NUMERIC if v.is_finite() => out.put_slice(&encode_numeric(&v.to_string())?),
                _ => return Err(mismatch(self, ty)),
            },
            Value::Decimal(v) => match *ty {
                Type::NUMERIC => out.put_slice(&encode_numeric(v)?),
                Type::FLOAT8 => out.put_f64(parsed(v, ty)?),
                Type::FLOAT4 => out.put_f32(parsed(v, ty)?),
                Type::INT8 => out.put_i64(parsed(v, ty)?),
                Type::INT4 => out.put_i32(parsed(v, ty)?),
                Type::INT2 => out.put_i16(parsed(v, ty)?),
                Type::TEXT | Type::VARCHAR => out.put_slice(v.as_bytes()),
                _ => return Err(mismatch(self, ty)),
            },
            Value::Text(v) => match (ty.kind(), ty) {
                (Kind::Enum(_), _) => out.put_slice(v.as_bytes()),
                (_, &Type::JSONB) => {
                    out.put_u8(1);
                    out.put_slice(v.as_bytes());
                }
                (_, &Type::UUID) => out.put_slice(&uuid_bytes(v)?),
                (
                    _,
                    &Type::TEXT
                    | &Type::VARCHAR
                    | &Type::BPCHAR
                    | &Type::NAME
                    | &Type::JSON
                    | &Type::UNKNOWN,
                ) => out.put_slice(v.as_bytes()),
                (_, &Type::NUMERIC) => out.put_slice(&encode_numeric(v)?),
                (_, &Type::DATE) => {
                    let days = crate::time::parse_date_days(v).ok_or_else(|| {
                        bind_error(format!("'{}' is not a date", crate::value::shorten(v)))
                    })?;
                    out.put_i32(date_2000(days)?);
                }
                (_, &Type::TIMESTAMP | &Type::TIMESTAMPTZ) => {
                    let micros = crate::time::parse_timestamp_micros(v).ok_or_else(|| {
                        bind_error(format!("'{}' is not a timestamp", crate::value::shorten(v)))
                    })?;
                    out.put_i64(timestamp_2000(micros)?);
                }
                _ => return Err(mismatch(self, ty)),
            },
            Value::Blob(v) => match *ty {
                Type::BYTEA => out.put_slice(v),
                _ => return Err(mismatch(self, ty)),
            },
            Value::Date(days) => match *ty {
                Type::DATE => out.put_i32(date_2000(*days)?),
                _ => return Err(mismatch(self, ty)),
            },
            Value::TimestampNanos(nanos) => {
                return Value::Timestamp(nanos.div_euclid(1_000)).to_sql(ty, out);
            }
            Value::Time(nanos) => match *ty {
                Type::TIME if (0..86_400_000_000_000).contains(nanos) => {
                    out.put_i64(nanos / 1_000);
                }
                _ => return Err(mismatch(self, ty)),
            },
            Value::Duration(count, unit) => match *ty {
                Type::INTERVAL => {
                    let micros = crate::value::duration_micros(*count, *unit).ok_or_else(|| {
                        bind_error(format!("{self} is out of range for an interval"))
                    })?;
                    out.put_i64(micros);
                    out.put_i32(0);
                    out.put_i32(0);
                }
                Type::INT8 => out.put_i64(*count),
                _ => return Err(mismatch(self, ty)),
            },
            Value::List(items) => {
                let Kind::Array(element) = ty.kind() else {
                    return Err(mismatch(self, ty));
                };
                let count = i32::try_from(items.len())
                    .map_err(|_| bind_error("a list too long for an array"))?;
                out.put_i32(1);
                out.put_i32(i32::from(items.contains(&Value::Null)));
                out.put_u32(element.oid());
                out.put_i32(count);
                out.put_i32(1);
                for item in items {
                    if *item == Value::Null {
                        out.put_i32(-1);
                        continue;
                    }
                    let at = out.len();
                    out.put_i32(0);
                    item.to_sql(element, out)?;
                    let length = i32::try_from(out.len() - at - 4)
                        .map_err(|_| bind_error("an array element too large"))?;
                    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
                }
            }
            Value::Timestamp(micros) => match *ty {
                Type::TIMESTAMP | Type::TIMESTAMPTZ => out.put_i64(timestamp_2000(*micros)?),
                Type::DATE => {
                    let days = i32::try_from(micros.div_euclid(86_400_000_000)).map_err(|_| {
                        bind_error(format!("timestamp {micros} µs is out of range for a date"))
                    })?;
                    out.put_i32(date_2000(days)?);
                }
                _ => return Err(mismatch(self, ty)),
            },
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Encodes decimal text (`-12.50`, `1e3` is not accepted) in PostgreSQL's binary
/// `numeric` format: base-10000 digits, weight, sign and display scale.
pub(crate) fn encode_numeric(text: &str) -> Result<Vec<u8>, BoxError> {
    let invalid = || -> BoxError {
        bind_error(format!(
            "'{}' is not a decimal number",
            crate::value::shorten(text)
        ))
    };
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let dscale = u16::try_from(fraction.len()).map_err(|_| invalid())?;
    // Pad the whole part on the left and the fraction on the right to groups of four.
    let whole_pad = (4 - whole.len() % 4) % 4;
    let fraction_pad = (4 - fraction.len() % 4) % 4;
    let padded: String = std::iter::repeat_n('0', whole_pad)
        .chain(whole.chars())
        .chain(fraction.chars())
        .chain(std::iter::repeat_n('0', fraction_pad))
        .collect();
    let mut digits: Vec<i16> = padded
        .as_bytes()
        .chunks(4)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0'))
        })
        .collect();
    let mut weight = i16::try_from((whole.len() + whole_pad) / 4).map_err(|_| invalid())? - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let mut out = Vec::with_capacity(8 + digits.len() * 2);
    out.extend_from_slice(
        &i16::try_from(digits.len())
            .map_err(|_| invalid())?
            .to_be_bytes(),
    );
    out.extend_from_slice(&weight.to_be_bytes());
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::Array;

    use super::*;

    /// Encodes `digits` (base 10000) as PostgreSQL's binary numeric.
    fn numeric(digits: &[i16], weight: i16, negative: bool, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_decode_at_the_target_scale() {
        // 12345.6789 = [1, 2345, 6789], weight 1.
        let raw = numeric(&[1, 2345, 6789], 1, false, 4);
        assert_eq!(decode_numeric(&raw, 4).unwrap(), 123_456_789);
        assert_eq!(decode_numeric(&raw, 2).unwrap(), 1_234_568);
        assert_eq!(decode_numeric(&raw, 0).unwrap(), 12_346);
        let negative = numeric(&[1, 2345, 6789], 1, true, 4);
        assert_eq!(decode_numeric(&negative, 4).unwrap(), -123_456_789);
        // 0.05 = [500], weight -1.
        assert_eq!(
            decode_numeric(&numeric(&[500], -1, false, 2), 2).unwrap(),
            5
        );
        assert_eq!(decode_numeric(&numeric(&[], 0, false, 0), 3).unwrap(), 0);
        // 1e40 does not fit.
        assert!(decode_numeric(&numeric(&[1], 10, false, 0), 0).is_err());
        assert!(decode_numeric(&numeric(&[], 0, false, 0)[..4], 0).is_err());
    }

    #[test]
    fn numerics_encode_and_decode_back() {
        for (text, scale, expected) in [
            ("-12.50", 2, -1250i128),
            ("0.005", 3, 5),
            ("123456789.0001", 4, 1_234_567_890_001),
            ("0", 0, 0),
            ("10000", 0, 10_000),
        ] {
            let encoded = encode_numeric(text).unwrap();
            assert_eq!(decode_numeric(&encoded, scale).unwrap(), expected, "{text}");
        }
        assert!(encode_numeric("1e3").is_err());
        assert!(encode_numeric("abc").is_err());
    }

    #[test]
    fn uuids_are_hyphenated() {
        let raw: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            format_uuid(&raw).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }

    #[test]
    fn arrays_flatten_into_lists() {
        // int4[] {1, NULL, 3}
        let mut raw = Vec::new();
        for v in [1i32, 1, 23, 3, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        for item in [Some(1i32), None, Some(3)] {
            match item {
                Some(v) => {
                    raw.extend_from_slice(&4i32.to_be_bytes());
                    raw.extend_from_slice(&v.to_be_bytes());
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let data_type =
            DataType::List(arrow::datatypes::Field::new("item", DataType::Int32, true).into());
        let mut decoder = Decoder::new(&data_type, &Type::INT4_ARRAY, 4).unwrap();
        decoder.append(Some(&raw)).unwrap();
        decoder.append(None).unwrap();
        let array = decoder.finish().unwrap();
        let list = array.as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_null(1));
        let values = list.value(0);
        let values = values
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .unwrap();
        assert_eq!(
            values.iter().collect::<Vec<_>>(),
            vec![Some(1), None, Some(3)]
        );
        // A recorded list type (large, narrower items) is read as the array, then cast.
        let recorded =
            DataType::LargeList(arrow::datatypes::Field::new("item", DataType::Int16, true).into());
        let mut decoder = Decoder::new(&recorded, &Type::INT4_ARRAY, 4).unwrap();
        decoder.append(Some(&raw)).unwrap();
        assert_eq!(decoder.finish().unwrap().data_type(), &recorded);
    }
}
