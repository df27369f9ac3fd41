//! SQLite declared types → Arrow types.
//!
//! SQLite is dynamically typed: a column's declared type only gives it an *affinity*.
//! Quiver reads every column as one Arrow type chosen from the declared type:
//!
//! | declared type (case-insensitive)                 | Arrow type                    |
//! |--------------------------------------------------|-------------------------------|
//! | `BOOL`, `BOOLEAN`                                | `Boolean`                     |
//! | `DATE`                                           | `Date32`                      |
//! | `DATETIME`, `TIMESTAMP`                          | `Timestamp(µs, none)`         |
//! | `TIMESTAMPTZ`, `TIMESTAMP WITH TIME ZONE`        | `Timestamp(µs, "UTC")`        |
//! | `TIMESTAMPTZ 'Europe/Paris'`                     | `Timestamp(µs, "Europe/Paris")` |
//! | … with a precision: `(0)`, `(1)`–`(3)`, `(7)`–`(9)` | unit `s`, `ms`, `ns`       |
//! | `DATE64`                                         | `Date64`                      |
//! | `TIME`, `TIME(6)`                                | `Time64(µs)`                  |
//! | `TIME(0)`, `TIME(3)`, `TIME(9)`                  | `Time32(s)`, `Time32(ms)`, `Time64(ns)` |
//! | `DURATION`, `DURATION(0)`, `(3)`, `(9)`          | `Duration(µs)`, `(s)`, `(ms)`, `(ns)` |
//! | `FIXED_BLOB(n)`                                  | `FixedSizeBinary(n)`          |
//! | `NULLTYPE`                                       | `Null`                        |
//! | `TINYINT`                                        | `Int8`                        |
//! | `SMALLINT`, `INT2`                               | `Int16`                       |
//! | `MEDIUMINT`, `INT4`, `INT32`                     | `Int32`                       |
//! | `UINT8`, `UINT16`, `UINT32`, `UINT64`            | `UInt8` … `UInt64`            |
//! | `FLOAT4`                                         | `Float32`                     |
//! | `LONGTEXT`, `LONGBLOB`                           | `LargeUtf8`, `LargeBinary`    |
//! | contains `INT` (SQLite's INTEGER affinity)       | `Int64`                       |
//! | contains `CHAR`, `CLOB`, `TEXT`                  | `Utf8`                        |
//! | contains `BLOB`, `BINARY` (`VARBINARY(n)`), `BYTEA` | `Binary`                    |
//! | contains `REAL`, `FLOA`, `DOUB`                  | `Float64`                     |
//! | `DECIMAL(p,s)`, `NUMERIC(p,s)`, `NUMERIC(p)`, p ≤ 38 | `Decimal128(p,s)`         |
//! | `DECIMAL_TEXT(p,s)` (made by ingest: TEXT affinity) | `Decimal128(p,s)`         |
//! | anything else (`NUMERIC`, `DECIMAL`, …)          | `Float64` (NUMERIC affinity)  |
//! | no declared type (view expressions)              | inferred from stored values   |
//!
//! The narrow types have SQLite's INTEGER (or REAL) affinity; a value outside the
//! type's range is refused when written through Quiver and fails the read otherwise.
//! Bulk ingest creates columns with these names, so an `Int16` column reads back as
//! `Int16`. `UINT64` holds what SQLite's 64-bit integers hold: 0 to 2^63 − 1 (a larger
//! value is refused, naming the column). Timestamps and times are ISO-8601 text with up
//! to nine fractional digits; a duration is an INTEGER count of its unit; a time zone
//! (a name or an offset) is kept in the declared type, and the values are UTC instants.
//!
//! A `DECIMAL(p,s)` column declared by hand has NUMERIC affinity: SQLite keeps its
//! values as INTEGER or REAL, exact to about 15 significant digits; they are read at
//! the column's scale (rounded half away from zero). Ingest declares `DECIMAL_TEXT`,
//! whose TEXT affinity keeps every digit, so `Decimal128` round-trips exactly; its
//! values are never compared in the store (text order is not numeric order).
//!
//! NUMERIC affinity stores values as 8-byte INTEGER or REAL, so `Float64` loses
//! nothing SQLite kept except integers beyond 2^53. Date and time columns accept the
//! ISO-8601 text SQLite's date functions produce, Unix seconds (INTEGER) and Julian
//! day numbers (REAL).

use arrow::datatypes::{DataType, TimeUnit};

/// The Arrow type a column with this declared type is read as, or `None` when the
/// declared type is empty and the type must be inferred from the values.
pub fn arrow_type_for_declared(declared: &str) -> Option<DataType> {
    let upper = declared.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return None;
    }
    // The base name without a length/precision suffix: `VARCHAR(20)` → `VARCHAR`.
    let base = upper.split(['(', '\'']).next().unwrap_or("").trim();
    // A zone Quiver would write (`TIMESTAMPTZ 'Europe/Paris'(3)`); any other quoted
    // text leaves the declared type to the rules below.
    if let Some((name, zone)) = zoned(declared)
        && matches!(
            name.to_ascii_uppercase().as_str(),
            "TIMESTAMPTZ" | "TIMESTAMP"
        )
        && declarable_zone(zone)
    {
        return Some(DataType::Timestamp(
            timestamp_unit(&upper),
            Some(zone.into()),
        ));
    }
    let data_type = match base {
        "BOOL" | "BOOLEAN" => DataType::Boolean,
        "DATE" => DataType::Date32,
        "DATE64" => DataType::Date64,
        "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => {
            DataType::Timestamp(timestamp_unit(&upper), None)
        }
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => {
            DataType::Timestamp(timestamp_unit(&upper), Some("UTC".into()))
        }
        "TIME" => match timestamp_unit(&upper) {
            unit @ (TimeUnit::Second | TimeUnit::Millisecond) => DataType::Time32(unit),
            unit => DataType::Time64(unit),
        },
        "DURATION" => DataType::Duration(timestamp_unit(&upper)),
        "UINT64" => DataType::UInt64,
        "FIXED_BLOB" => match fixed_size(&upper) {
            Some(size) => DataType::FixedSizeBinary(size),
            None => DataType::Binary,
        },
        "NULLTYPE" => DataType::Null,
        "TINYINT" => DataType::Int8,
        "SMALLINT" | "INT2" => DataType::Int16,
        "MEDIUMINT" | "INT4" | "INT32" => DataType::Int32,
        "UINT8" => DataType::UInt8,
        "UINT16" => DataType::UInt16,
        "UINT32" => DataType::UInt32,
        "FLOAT4" => DataType::Float32,
        "DECIMAL" | "NUMERIC" | "DECIMAL_TEXT" if decimal_of(&upper).is_some() => {
            let (precision, scale) = decimal_of(&upper)?;
            DataType::Decimal128(precision, scale)
        }
        "LONGTEXT" => DataType::LargeUtf8,
        "LONGBLOB" => DataType::LargeBinary,
        _ if upper.contains("INT") => DataType::Int64,
        _ if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") => {
            DataType::Utf8
        }
        _ if upper.contains("BLOB") || upper.contains("BINARY") || upper.contains("BYTEA") => {
            DataType::Binary
        }
        _ if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") => {
            DataType::Float64
        }
        _ => DataType::Float64,
    };
    Some(data_type)
}

/// The unit of a timestamp type from its fractional-second precision, as SQL writes it
/// (`TIMESTAMP(3)`: milliseconds); microseconds when none is given.
fn timestamp_unit(declared: &str) -> TimeUnit {
    let precision = declared
        .split_once('(')
        .and_then(|(_, rest)| rest.split(')').next())
        .and_then(|digits| digits.trim().parse::<u32>().ok());
    match precision {
        Some(0) => TimeUnit::Second,
        Some(1..=3) => TimeUnit::Millisecond,
        Some(7..) => TimeUnit::Nanosecond,
        _ => TimeUnit::Microsecond,
    }
}

/// The time zone a declared type names in quotes (`TIMESTAMPTZ 'Europe/Paris'(3)`):
/// the name before it and the zone.
fn zoned(declared: &str) -> Option<(&str, &str)> {
    let (name, rest) = declared.trim().split_once('\'')?;
    let (zone, _) = rest.split_once('\'')?;
    Some((name.trim(), zone))
}

/// Whether Quiver writes `zone` into a declared type: a zone name or offset as Arrow
/// writes them (letters, digits, `/`, `_`, `+`, `-`, `:`), not `UTC`.
fn declarable_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 64
        && zone != "UTC"
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-:".contains(&b))
}

/// The size of `FIXED_BLOB(n)`, 1 ≤ n ≤ 2^31 − 1.
fn fixed_size(declared: &str) -> Option<i32> {
    let (_, rest) = declared.split_once('(')?;
    let size: i32 = rest.split(')').next()?.trim().parse().ok()?;
    (size > 0).then_some(size)
}

/// The precision and scale of `DECIMAL(p, s)` / `NUMERIC(p)`, when Arrow's
/// `Decimal128` holds them (1 ≤ p ≤ 38, 0 ≤ s ≤ p).
fn decimal_of(declared: &str) -> Option<(u8, i8)> {
    let (_, rest) = declared.split_once('(')?;
    let inner = rest.split(')').next()?;
    let (precision, scale) = match inner.split_once(',') {
        Some((p, s)) => (p.trim().parse::<u8>().ok()?, s.trim().parse::<i8>().ok()?),
        None => (inner.trim().parse::<u8>().ok()?, 0),
    };
    ((1..=38).contains(&precision) && (0..=precision as i8).contains(&scale))
        .then_some((precision, scale))
}

/// The SQLite storage classes seen in a column with no declared type.
#[derive(Debug, Default, Clone, Copy)]
pub struct ObservedClasses {
    /// An INTEGER value was seen.
    pub integer: bool,
    /// A REAL value was seen.
    pub real: bool,
    /// A TEXT value was seen.
    pub text: bool,
    /// A BLOB value was seen.
    pub blob: bool,
}

impl ObservedClasses {
    /// Records the storage class of one value.
    pub fn observe(&mut self, value: rusqlite::types::ValueRef<'_>) {
        use rusqlite::types::ValueRef;
        match value {
            ValueRef::Null => {}
            ValueRef::Integer(_) => self.integer = true,
            ValueRef::Real(_) => self.real = true,
            ValueRef::Text(_) => self.text = true,
            ValueRef::Blob(_) => self.blob = true,
        }
    }

    /// The narrowest Arrow type that holds every value seen: integers → `Int64`,
    /// numbers → `Float64`, blobs only → `Binary`, anything else → `Utf8`.
    pub fn arrow_type(self) -> DataType {
        match (self.integer, self.real, self.text, self.blob) {
            (true, false, false, false) => DataType::Int64,
            (_, true, false, false) => DataType::Float64,
            (false, false, false, true) => DataType::Binary,
            _ => DataType::Utf8,
        }
    }
}

/// The declared type Quiver creates a column with for an Arrow type (bulk ingest, DDL).
pub fn declared_type_for_arrow(data_type: &DataType) -> Option<String> {
    if let DataType::Decimal128(precision, scale) = data_type
        && (0..=*precision as i8).contains(scale)
    {
        // TEXT affinity keeps every digit (NUMERIC affinity would store a REAL).
        return Some(format!("DECIMAL_TEXT({precision}, {scale})"));
    }
    match data_type {
        DataType::FixedSizeBinary(size) if *size > 0 => Some(format!("FIXED_BLOB({size})")),
        DataType::FixedSizeBinary(_) => None,
        DataType::Timestamp(unit, Some(zone)) if declarable_zone(zone) => {
            let precision = match unit {
                TimeUnit::Second => "(0)",
                TimeUnit::Millisecond => "(3)",
                TimeUnit::Microsecond => "",
                TimeUnit::Nanosecond => "(9)",
            };
            Some(format!("TIMESTAMPTZ '{zone}'{precision}"))
        }
        // A zone Quiver would not write into a declared type is refused (the values
        // would read back in UTC), as are types no column holds.
        DataType::Timestamp(_, Some(zone)) if zone.as_ref() != "UTC" => None,
        _ if !crate::value::is_writable(data_type) => None,
        _ => declared_name_for_arrow(data_type).map(str::to_owned),
    }
}

/// The declared type name of an Arrow type without parameters.
fn declared_name_for_arrow(data_type: &DataType) -> Option<&'static str> {
    let precision = |unit: &TimeUnit| match unit {
        TimeUnit::Second => "(0)",
        TimeUnit::Millisecond => "(3)",
        TimeUnit::Microsecond => "",
        TimeUnit::Nanosecond => "(9)",
    };
    Some(match data_type {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 => "TINYINT",
        DataType::Int16 => "SMALLINT",
        DataType::Int32 => "INT32",
        DataType::Int64 => "INTEGER",
        DataType::UInt8 => "UINT8",
        DataType::UInt16 => "UINT16",
        DataType::UInt32 => "UINT32",
        DataType::Float16 | DataType::Float32 => "FLOAT4",
        DataType::Float64 => "REAL",
        DataType::UInt64 => "UINT64",
        DataType::Null => "NULLTYPE",
        DataType::Utf8 | DataType::Utf8View => "TEXT",
        DataType::LargeUtf8 => "LONGTEXT",
        DataType::Binary | DataType::BinaryView => "BLOB",
        DataType::LargeBinary => "LONGBLOB",
        DataType::Date32 => "DATE",
        DataType::Date64 => "DATE64",
        DataType::Timestamp(unit, None) => match precision(unit) {
            "(0)" => "TIMESTAMP(0)",
            "(3)" => "TIMESTAMP(3)",
            "(9)" => "TIMESTAMP(9)",
            _ => "TIMESTAMP",
        },
        DataType::Timestamp(unit, Some(_)) => match precision(unit) {
            "(0)" => "TIMESTAMPTZ(0)",
            "(3)" => "TIMESTAMPTZ(3)",
            "(9)" => "TIMESTAMPTZ(9)",
            _ => "TIMESTAMPTZ",
        },
        DataType::Time32(TimeUnit::Second) => "TIME(0)",
        DataType::Time32(_) => "TIME(3)",
        DataType::Time64(TimeUnit::Nanosecond) => "TIME(9)",
        DataType::Time64(_) => "TIME",
        DataType::Duration(unit) => match precision(unit) {
            "(0)" => "DURATION(0)",
            "(3)" => "DURATION(3)",
            "(9)" => "DURATION(9)",
            _ => "DURATION",
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_follow_affinity_rules() {
        let cases = [
            ("INTEGER", DataType::Int64),
            ("bigint", DataType::Int64),
            ("TINYINT", DataType::Int8),
            ("smallint", DataType::Int16),
            ("INT32", DataType::Int32),
            ("UINT32", DataType::UInt32),
            ("FLOAT4", DataType::Float32),
            ("UNSIGNED BIG INT", DataType::Int64),
            ("VARCHAR(255)", DataType::Utf8),
            ("text", DataType::Utf8),
            ("CLOB", DataType::Utf8),
            ("BLOB", DataType::Binary),
            ("VARBINARY(16)", DataType::Binary),
            ("BINARY(4)", DataType::Binary),
            ("bytea", DataType::Binary),
            ("REAL", DataType::Float64),
            ("DOUBLE PRECISION", DataType::Float64),
            ("FLOAT", DataType::Float64),
            ("NUMERIC", DataType::Float64),
            ("DECIMAL(10,5)", DataType::Decimal128(10, 5)),
            ("numeric(12)", DataType::Decimal128(12, 0)),
            ("DECIMAL_TEXT(38, 10)", DataType::Decimal128(38, 10)),
            ("DECIMAL(60,2)", DataType::Float64),
            ("BOOLEAN", DataType::Boolean),
            ("DATE", DataType::Date32),
            ("DATETIME", DataType::Timestamp(TimeUnit::Microsecond, None)),
            (
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                "TIMESTAMPTZ",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            ("TIME", DataType::Time64(TimeUnit::Microsecond)),
            ("TIMESTAMP(0)", DataType::Timestamp(TimeUnit::Second, None)),
            (
                "timestamp(3)",
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            (
                "DATETIME(6)",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                "TIMESTAMP(9)",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
            ),
            (
                "TIMESTAMPTZ(3)",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
            ("TIME(3)", DataType::Time32(TimeUnit::Millisecond)),
            ("time(9)", DataType::Time64(TimeUnit::Nanosecond)),
            ("FIXED_BLOB(4)", DataType::FixedSizeBinary(4)),
            ("TEXT 'note'", DataType::Utf8),
            (
                "TIMESTAMPTZ ''",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            ("DURATION(3)", DataType::Duration(TimeUnit::Millisecond)),
            (
                "TIMESTAMPTZ 'America/New_York'(9)",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("America/New_York".into())),
            ),
        ];
        for (arrow, _) in [
            (DataType::Timestamp(TimeUnit::Second, None), ()),
            (
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                (),
            ),
            (DataType::Int16, ()),
            (DataType::Float32, ()),
            (DataType::LargeUtf8, ()),
            (DataType::LargeBinary, ()),
            (DataType::Decimal128(38, 10), ()),
            (DataType::Decimal128(5, 0), ()),
            (DataType::UInt64, ()),
            (DataType::Date64, ()),
            (DataType::Null, ()),
            (DataType::FixedSizeBinary(16), ()),
            (DataType::Time32(TimeUnit::Second), ()),
            (DataType::Time32(TimeUnit::Millisecond), ()),
            (DataType::Time64(TimeUnit::Microsecond), ()),
            (DataType::Time64(TimeUnit::Nanosecond), ()),
            (DataType::Duration(TimeUnit::Second), ()),
            (DataType::Duration(TimeUnit::Nanosecond), ()),
            (DataType::Duration(TimeUnit::Microsecond), ()),
            (
                DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into())),
                (),
            ),
            (
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+05:30".into())),
                (),
            ),
        ] {
            let declared = declared_type_for_arrow(&arrow).unwrap();
            let back = arrow_type_for_declared(&declared).unwrap();
            assert_eq!(back, arrow, "{declared}");
        }
        // Zones Quiver would not write into a declared type, and types no column
        // holds, are refused.
        for arrow in [
            DataType::Timestamp(TimeUnit::Second, Some("Europe/Paris'); DROP".into())),
            DataType::Decimal256(60, 2),
            DataType::List(arrow::datatypes::Field::new("item", DataType::Int64, true).into()),
            DataType::FixedSizeBinary(0),
        ] {
            assert_eq!(declared_type_for_arrow(&arrow), None, "{arrow}");
        }
        for (declared, expected) in cases {
            assert_eq!(
                arrow_type_for_declared(declared),
                Some(expected),
                "{declared}"
            );
        }
        assert_eq!(arrow_type_for_declared("  "), None);
    }

    #[test]
    fn inferred_types_hold_every_value() {
        use rusqlite::types::ValueRef;
        let infer = |values: &[ValueRef<'_>]| {
            let mut classes = ObservedClasses::default();
            values.iter().for_each(|v| classes.observe(*v));
            classes.arrow_type()
        };
        assert_eq!(
            infer(&[ValueRef::Integer(1), ValueRef::Null]),
            DataType::Int64
        );
        assert_eq!(
            infer(&[ValueRef::Integer(1), ValueRef::Real(1.5)]),
            DataType::Float64
        );
        assert_eq!(
            infer(&[ValueRef::Integer(1), ValueRef::Text(b"x")]),
            DataType::Utf8
        );
        assert_eq!(infer(&[ValueRef::Blob(b"x")]), DataType::Binary);
        assert_eq!(infer(&[]), DataType::Utf8);
    }
}
