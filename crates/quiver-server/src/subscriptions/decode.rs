//! Change-log rows decoded once — typed values, Arrow batches of row images and the
//! protobuf event — and shared by every subscriber that receives them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::kernels::cast_utils::parse_decimal;
use arrow::datatypes::{DataType, Decimal128Type, TimeUnit};
use datafusion::common::ScalarValue;
use quiver_proto::v1::{self as pb, value::Kind};
use quiver_storage::{Catalog, Change, TableInfo, time};
use serde_json::value::RawValue;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Snapshot,
}

impl Op {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "truncate" => Op::Truncate,
            _ => return None,
        })
    }

    /// The name Flight streams carry in their `_op` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Snapshot => "snapshot",
        }
    }

    fn proto(self) -> pb::Op {
        match self {
            Op::Insert => pb::Op::Insert,
            Op::Update => pb::Op::Update,
            Op::Delete => pb::Op::Delete,
            Op::Truncate => pb::Op::Truncate,
            Op::Snapshot => pb::Op::Snapshot,
        }
    }

    /// Whether the change carries the row after it.
    pub(crate) fn has_after(self) -> bool {
        matches!(self, Op::Insert | Op::Update | Op::Snapshot)
    }

    /// Whether the change carries the row before it.
    pub(crate) fn has_before(self) -> bool {
        matches!(self, Op::Update | Op::Delete)
    }
}

/// One change, decoded.
#[derive(Debug)]
pub(crate) struct Event {
    pub version: u64,
    pub committed_at_micros: i64,
    /// The table's name in the log: bare in the default schema, else `schema.table`.
    pub table: Arc<str>,
    pub op: Op,
    /// This change's row in its table's [`TableImages`] (`None` for truncates and for
    /// tables the catalog does not know).
    pub row: Option<usize>,
    /// The event with every column, as most subscribers receive it.
    pub message: pb::ChangeEvent,
}

/// The row images of one table's changes in a page, row `i` belonging to the `i`-th
/// of its events; a missing image is a row of NULLs.
#[derive(Debug)]
pub(crate) struct TableImages {
    pub after: RecordBatch,
    pub before: RecordBatch,
    /// The row after the change, or before it for deletes: what Flight streams carry.
    pub current: RecordBatch,
}

/// Consecutive commits of the change log, decoded: what the shared tail hands to
/// every subscriber, and what a subscriber catching up reads for itself.
#[derive(Debug)]
pub(crate) struct Page {
    /// The first and last version in the page (versions are consecutive).
    pub first: u64,
    pub last: u64,
    pub events: Vec<Event>,
    pub tables: HashMap<Arc<str>, TableImages>,
}

/// Per-table columns being built.
struct Images {
    table: Arc<TableInfo>,
    after: Vec<Vec<ScalarValue>>,
    before: Vec<Vec<ScalarValue>>,
    current: Vec<Vec<ScalarValue>>,
    rows: usize,
}

impl Images {
    fn new(table: Arc<TableInfo>) -> Self {
        let columns = table.columns.len();
        Self {
            table,
            after: vec![Vec::new(); columns],
            before: vec![Vec::new(); columns],
            current: vec![Vec::new(); columns],
            rows: 0,
        }
    }

    fn finish(self) -> Result<TableImages, String> {
        let schema = self.table.arrow_schema();
        let build = |columns: Vec<Vec<ScalarValue>>| -> Result<RecordBatch, String> {
            let arrays = columns
                .into_iter()
                .zip(&self.table.columns)
                .map(|(values, column)| {
                    ScalarValue::iter_to_array(values).and_then(|array| {
                        if array.data_type() == &column.data_type {
                            Ok(array)
                        } else {
                            Ok(arrow::compute::cast(&array, &column.data_type)?)
                        }
                    })
                })
                .collect::<Result<Vec<ArrayRef>, _>>()
                .map_err(|err| err.to_string())?;
            // Nullability follows the data: a missing image is NULLs in NOT NULL columns.
            let fields: Vec<_> = schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), arrays)
                .map_err(|err| err.to_string())
        };
        Ok(TableImages {
            after: build(self.after)?,
            before: build(self.before)?,
            current: build(self.current)?,
        })
    }
}

/// Finds catalog tables by their change-log name.
pub(crate) struct TableLookup<'a> {
    catalog: &'a Catalog,
    default_schema: &'a str,
    found: HashMap<String, Option<Arc<TableInfo>>>,
}

impl<'a> TableLookup<'a> {
    pub(crate) fn new(catalog: &'a Catalog, default_schema: &'a str) -> Self {
        Self {
            catalog,
            default_schema,
            found: HashMap::new(),
        }
    }

    fn get(&mut self, log_name: &str) -> Option<Arc<TableInfo>> {
        if let Some(found) = self.found.get(log_name) {
            return found.clone();
        }
        let (schema, name) = log_name
            .split_once('.')
            .unwrap_or((self.default_schema, log_name));
        let table = self.catalog.table(schema, name).cloned().map(Arc::new);
        self.found.insert(log_name.to_owned(), table.clone());
        table
    }
}

impl Page {
    /// Decodes changes read from the log (whole commits, in order; at least one).
    pub(crate) fn decode(changes: Vec<Change>, tables: &mut TableLookup<'_>) -> Page {
        let first = changes.first().map_or(0, |c| c.version);
        let last = changes.last().map_or(0, |c| c.version);
        let mut images: HashMap<Arc<str>, Images> = HashMap::new();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            let Some(op) = Op::parse(&change.op) else {
                tracing::warn!(op = %change.op, version = change.version, "unknown operation in the change log; skipped");
                continue;
            };
            let name = Arc::clone(
                names
                    .entry(change.table.clone())
                    .or_insert_with(|| Arc::from(change.table.as_str())),
            );
            let mut message = pb::ChangeEvent {
                version: change.version,
                committed_at_micros: change.committed_at_micros,
                table: change.table.clone(),
                op: op.proto().into(),
                key: None,
                after: None,
                before: None,
                trace_parent: change.trace_context.clone().unwrap_or_default(),
            };
            let table = if op == Op::Truncate {
                None
            } else {
                tables.get(&change.table)
            };
            let row = table.map(|table| {
                let images = images
                    .entry(Arc::clone(&name))
                    .or_insert_with(|| Images::new(Arc::clone(&table)));
                let after = decode_row(&table, change.after.as_deref());
                let before = decode_row(&table, change.before.as_deref());
                message.key = change
                    .key
                    .as_deref()
                    .map(|key| proto_row(&table, &decode_row(&table, Some(key)), true));
                message.after = change
                    .after
                    .as_ref()
                    .map(|_| proto_row(&table, &after, false));
                message.before = change
                    .before
                    .as_ref()
                    .map(|_| proto_row(&table, &before, false));
                let current = if op.has_after() { &after } else { &before };
                for (i, value) in current.iter().enumerate() {
                    images.current[i].push(value.clone());
                }
                for (i, value) in after.into_iter().enumerate() {
                    images.after[i].push(value);
                }
                for (i, value) in before.into_iter().enumerate() {
                    images.before[i].push(value);
                }
                images.rows += 1;
                images.rows - 1
            });
            events.push(Event {
                version: change.version,
                committed_at_micros: change.committed_at_micros,
                table: name,
                op,
                row,
                message,
            });
        }
        let tables = images
            .into_iter()
            .filter_map(|(name, images)| match images.finish() {
                Ok(built) => Some((name, built)),
                Err(err) => {
                    tracing::error!(table = %name, error = %err, "cannot build row images; the table's changes carry no rows");
                    None
                }
            })
            .collect::<HashMap<_, _>>();
        for event in &mut events {
            if !tables.contains_key(&event.table) {
                event.row = None;
            }
        }
        Page {
            first,
            last,
            events,
            tables,
        }
    }
}

/// A row image (a JSON object of column values) as typed values in table column
/// order; columns the image lacks (or no image) are NULL.
fn decode_row(table: &TableInfo, json: Option<&str>) -> Vec<ScalarValue> {
    let values: BTreeMap<String, &RawValue> = match json.map(serde_json::from_str) {
        Some(Ok(values)) => values,
        Some(Err(err)) => {
            tracing::warn!(table = %table.name, error = %err, "unreadable row image in the change log");
            BTreeMap::new()
        }
        None => BTreeMap::new(),
    };
    table
        .columns
        .iter()
        .map(|column| {
            let raw = values.get(&column.name).copied();
            decode_value(raw, &column.data_type).unwrap_or_else(|| {
                tracing::warn!(
                    table = %table.name,
                    column = %column.name,
                    value = raw.map(RawValue::get).unwrap_or_default(),
                    "change-log value does not read as {}; sent as NULL",
                    column.data_type
                );
                null_of(&column.data_type)
            })
        })
        .collect()
}

fn null_of(data_type: &DataType) -> ScalarValue {
    ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null)
}

/// A JSON value of the change log as a value of the column's Arrow type. JSON comes
/// from SQLite's `json_object` (blobs as hex, dates as text or numbers) or
/// PostgreSQL's `to_jsonb` (bytea as `\x…`, timestamps as ISO text).
fn decode_value(raw: Option<&RawValue>, data_type: &DataType) -> Option<ScalarValue> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Some(null_of(data_type));
    };
    let text = raw.get();
    if let DataType::Decimal128(precision, scale) = data_type {
        // Read from the JSON text itself: exact, never through a double.
        let digits = text.trim_matches('"');
        let value = parse_decimal::<Decimal128Type>(digits, *precision, *scale).ok()?;
        return Some(ScalarValue::Decimal128(Some(value), *precision, *scale));
    }
    if matches!(
        data_type,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    ) && let Ok(number) = text.parse::<f64>()
    {
        // Rust's parser rounds correctly (serde_json's may overflow at the extremes).
        return ScalarValue::Float64(Some(number)).cast_to(data_type).ok();
    }
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    use serde_json::Value as J;
    let integer = |json: &J| -> Option<i64> {
        match json {
            J::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|v| v.fract() == 0.0 && v.abs() < 9.2e18)
                    .map(|v| v as i64)
            }),
            J::String(s) => s.trim().parse().ok(),
            J::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    };
    let float = |json: &J| -> Option<f64> {
        match json {
            J::Number(n) => n.as_f64(),
            J::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let cast = |value: ScalarValue| value.cast_to(data_type).ok();
    match data_type {
        DataType::Boolean => Some(ScalarValue::Boolean(Some(match &json {
            J::Bool(b) => *b,
            J::Number(n) => n.as_f64()? != 0.0,
            J::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "t" | "yes" | "y" | "on" => true,
                "0" | "false" | "f" | "no" | "n" | "off" => false,
                _ => return None,
            },
            _ => return None,
        }))),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => cast(ScalarValue::Int64(Some(integer(&json)?))),
        DataType::UInt64 => Some(ScalarValue::UInt64(Some(match &json {
            J::Number(n) => n.as_u64()?,
            J::String(s) => s.trim().parse().ok()?,
            _ => return None,
        }))),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            cast(ScalarValue::Float64(Some(float(&json)?)))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = match json {
                J::String(s) => s,
                other => other.to_string(),
            };
            cast(ScalarValue::Utf8(Some(text)))
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            let J::String(s) = json else {
                return cast(ScalarValue::Binary(Some(json.to_string().into_bytes())));
            };
            let bytes = match s.strip_prefix("\\x") {
                Some(hex) => decode_hex(hex)?,
                None => decode_hex(&s).unwrap_or_else(|| s.into_bytes()),
            };
            match data_type {
                DataType::FixedSizeBinary(size) => (usize::try_from(*size).ok()? == bytes.len())
                    .then(|| ScalarValue::FixedSizeBinary(*size, Some(bytes))),
                _ => cast(ScalarValue::Binary(Some(bytes))),
            }
        }
        DataType::Date32 | DataType::Date64 => {
            let days = match &json {
                J::String(s) => time::parse_date_days(s)?,
                J::Number(_) => i32::try_from(integer(&json)?.div_euclid(86_400)).ok()?,
                _ => return None,
            };
            cast(ScalarValue::Date32(Some(days)))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, zone) => {
            let nanos = match &json {
                J::String(s) => time::parse_timestamp_nanos_bytes(s.as_bytes())?,
                J::Number(n) if n.is_f64() => {
                    time::julian_day_to_micros(n.as_f64()?)?.checked_mul(1_000)?
                }
                J::Number(_) => integer(&json)?.checked_mul(1_000_000_000)?,
                _ => return None,
            };
            Some(ScalarValue::TimestampNanosecond(Some(nanos), zone.clone()))
        }
        DataType::Timestamp(_, zone) => {
            let micros = match &json {
                J::String(s) => time::parse_timestamp_micros(s)?,
                J::Number(n) if n.is_f64() => time::julian_day_to_micros(n.as_f64()?)?,
                J::Number(_) => integer(&json)?.checked_mul(1_000_000)?,
                _ => return None,
            };
            cast(ScalarValue::TimestampMicrosecond(
                Some(micros),
                zone.clone(),
            ))
        }
        DataType::Time32(_) | DataType::Time64(_) => match &json {
            J::String(s) => cast(ScalarValue::Time64Nanosecond(Some(
                time::parse_time_nanos_bytes(s.as_bytes())?,
            ))),
            _ => None,
        },
        DataType::Duration(unit) => match &json {
            // PostgreSQL's interval text.
            J::String(s) => cast(ScalarValue::DurationMicrosecond(Some(interval_micros(s)?))),
            // SQLite's count of the column's unit.
            _ => {
                let count = Some(integer(&json)?);
                Some(match unit {
                    TimeUnit::Second => ScalarValue::DurationSecond(count),
                    TimeUnit::Millisecond => ScalarValue::DurationMillisecond(count),
                    TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(count),
                    TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(count),
                })
            }
        },
        DataType::Null => Some(ScalarValue::Null),
        DataType::List(item) | DataType::LargeList(item) => {
            let J::Array(elements) = json else {
                return None;
            };
            let values = elements
                .into_iter()
                .map(|element| {
                    let raw = RawValue::from_string(element.to_string()).ok()?;
                    decode_value(Some(&raw), item.data_type())
                })
                .collect::<Option<Vec<_>>>()?;
            let list = ScalarValue::List(ScalarValue::new_list_nullable(&values, item.data_type()));
            list.cast_to(data_type).ok()
        }
        other => {
            let text = match json {
                J::String(s) => s,
                json => json.to_string(),
            };
            ScalarValue::Utf8(Some(text)).cast_to(other).ok()
        }
    }
}

/// PostgreSQL's text of an interval without months (`1 day 02:00:00`,
/// `-00:00:00.000005`, `277:46:40`) in microseconds.
fn interval_micros(text: &str) -> Option<i64> {
    let mut micros = 0i64;
    let mut rest = text.trim();
    if let Some((count, after)) = rest.split_once(' ') {
        let (unit, after) = after.split_once(' ').unwrap_or((after, ""));
        if unit != "day" && unit != "days" {
            return None;
        }
        micros = count.parse::<i64>().ok()?.checked_mul(86_400_000_000)?;
        rest = after.trim_start();
        if rest.is_empty() {
            return Some(micros);
        }
    }
    let (negative, clock) = match rest.strip_prefix('-') {
        Some(clock) => (true, clock),
        None => (false, rest),
    };
    let mut parts = clock.splitn(3, ':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds = parts.next()?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    let clock = hours
        .checked_mul(3_600)?
        .checked_add(minutes.checked_mul(60)?)?
        .checked_add(whole.parse().ok()?)?
        .checked_mul(1_000_000)?
        .checked_add(fraction)?;
    micros.checked_add(if negative { -clock } else { clock })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Typed values of a table row as a protobuf row: every column, or with `key_only`
/// the primary-key columns.
pub(crate) fn proto_row(table: &TableInfo, values: &[ScalarValue], key_only: bool) -> pb::Row {
    let values = table
        .columns
        .iter()
        .zip(values)
        .filter(|(column, _)| !key_only || table.primary_key.contains(&column.name))
        .map(|(column, value)| (column.name.clone(), proto_value(value)))
        .collect();
    pb::Row { values }
}

/// A typed value in the Mutations API's encoding.
pub(crate) fn proto_value(value: &ScalarValue) -> pb::Value {
    use ScalarValue as S;
    if value.is_null() {
        return pb::Value {
            kind: Some(Kind::Null(pb::NullValue::NullValue.into())),
        };
    }
    let kind = match value {
        S::Boolean(Some(v)) => Kind::Bool(*v),
        S::Int8(Some(v)) => Kind::Int64(i64::from(*v)),
        S::Int16(Some(v)) => Kind::Int64(i64::from(*v)),
        S::Int32(Some(v)) => Kind::Int64(i64::from(*v)),
        S::Int64(Some(v)) => Kind::Int64(*v),
        S::UInt8(Some(v)) => Kind::Int64(i64::from(*v)),
        S::UInt16(Some(v)) => Kind::Int64(i64::from(*v)),
        S::UInt32(Some(v)) => Kind::Int64(i64::from(*v)),
        S::UInt64(Some(v)) => match i64::try_from(*v) {
            Ok(v) => Kind::Int64(v),
            Err(_) => Kind::Decimal(v.to_string()),
        },
        S::Float32(Some(v)) => Kind::Double(f64::from(*v)),
        S::Float64(Some(v)) => Kind::Double(*v),
        S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v)) => Kind::String(v.clone()),
        S::Binary(Some(v)) | S::LargeBinary(Some(v)) | S::BinaryView(Some(v)) => {
            Kind::Bytes(v.clone())
        }
        S::Date32(Some(v)) => Kind::DateDays(*v),
        S::TimestampMicrosecond(Some(v), _) => Kind::TimestampMicros(*v),
        S::Decimal128(Some(v), _, scale) => {
            Kind::Decimal(quiver_storage::value::format_decimal(*v, *scale))
        }
        other => match other.cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None)) {
            Ok(S::TimestampMicrosecond(Some(v), _)) if other.data_type().is_temporal() => {
                Kind::TimestampMicros(v)
            }
            _ => Kind::String(other.to_string()),
        },
    };
    pb::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn values_read_as_their_column_types() {
        let cases: Vec<(&str, DataType, ScalarValue)> = vec![
            ("7", DataType::Int64, ScalarValue::Int64(Some(7))),
            ("\"7\"", DataType::Int64, ScalarValue::Int64(Some(7))),
            ("1", DataType::Boolean, ScalarValue::Boolean(Some(true))),
            ("2.5", DataType::Float64, ScalarValue::Float64(Some(2.5))),
            ("3", DataType::Utf8, ScalarValue::Utf8(Some("3".to_owned()))),
            (
                "\"\\\\x00ff\"",
                DataType::Binary,
                ScalarValue::Binary(Some(vec![0, 255])),
            ),
            (
                "\"00FF\"",
                DataType::Binary,
                ScalarValue::Binary(Some(vec![0, 255])),
            ),
            (
                "\"1970-01-02\"",
                DataType::Date32,
                ScalarValue::Date32(Some(1)),
            ),
            (
                "\"1970-01-01T00:00:01.5+00:00\"",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                ScalarValue::TimestampMicrosecond(Some(1_500_000), Some("UTC".into())),
            ),
            (
                "\"1970-01-01 00:00:02\"",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                ScalarValue::TimestampMicrosecond(Some(2_000_000), None),
            ),
            (
                "12345678901234567.89",
                DataType::Decimal128(20, 2),
                ScalarValue::Decimal128(Some(1_234_567_890_123_456_789), 20, 2),
            ),
            ("null", DataType::Int64, ScalarValue::Int64(None)),
            (
                "18446744073709551615",
                DataType::UInt64,
                ScalarValue::UInt64(Some(u64::MAX)),
            ),
            (
                "\"1 day 02:00:00.5\"",
                DataType::Duration(TimeUnit::Millisecond),
                ScalarValue::DurationMillisecond(Some(93_600_500)),
            ),
            (
                "\"-00:00:00.000005\"",
                DataType::Duration(TimeUnit::Microsecond),
                ScalarValue::DurationMicrosecond(Some(-5)),
            ),
            (
                "\"277:46:40\"",
                DataType::Duration(TimeUnit::Second),
                ScalarValue::DurationSecond(Some(1_000_000)),
            ),
            (
                "-7",
                DataType::Duration(TimeUnit::Nanosecond),
                ScalarValue::DurationNanosecond(Some(-7)),
            ),
            (
                "\"23:59:59.123456789\"",
                DataType::Time64(TimeUnit::Nanosecond),
                ScalarValue::Time64Nanosecond(Some(86_399_123_456_789)),
            ),
            (
                "\"12:00:01.5\"",
                DataType::Time32(TimeUnit::Millisecond),
                ScalarValue::Time32Millisecond(Some(43_201_500)),
            ),
            (
                "\"2024-01-01 00:00:00.000000001\"",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                ScalarValue::TimestampNanosecond(Some(1_704_067_200_000_000_001), None),
            ),
            (
                "\"00ff\"",
                DataType::FixedSizeBinary(2),
                ScalarValue::FixedSizeBinary(2, Some(vec![0, 255])),
            ),
        ];
        // PostgreSQL arrays arrive as JSON arrays.
        let list = decode_value(
            Some(&raw("[1, null, 300]")),
            &DataType::List(arrow::datatypes::Field::new("item", DataType::Int16, true).into()),
        )
        .unwrap();
        assert_eq!(
            list,
            ScalarValue::List(ScalarValue::new_list_nullable(
                &[
                    ScalarValue::Int16(Some(1)),
                    ScalarValue::Int16(None),
                    ScalarValue::Int16(Some(300))
                ],
                &DataType::Int16
            ))
        );
        // PostgreSQL's jsonb of the lowest double: shortest digits, then zeros.
        let lowest = format!("-17976931348623157{}", "0".repeat(292));
        assert_eq!(
            decode_value(Some(&raw(&lowest)), &DataType::Float64),
            Some(ScalarValue::Float64(Some(f64::MIN)))
        );
        for (json, data_type, expected) in cases {
            let value = decode_value(Some(&raw(json)), &data_type);
            assert_eq!(value, Some(expected), "{json} as {data_type}");
        }
        assert_eq!(decode_value(Some(&raw("\"x\"")), &DataType::Int64), None);
    }

    #[test]
    fn decimals_keep_every_digit_in_the_protobuf_encoding() {
        let value = proto_value(&ScalarValue::Decimal128(Some(-1250), 10, 2));
        assert_eq!(value.kind, Some(Kind::Decimal("-12.50".to_owned())));
    }
}
