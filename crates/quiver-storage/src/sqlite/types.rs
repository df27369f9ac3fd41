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
//! | … with a precision: `(0)`, `(1)`–`(3)`, `(7)`–`(9)` | unit `s`, `ms`, `ns`       |
//! | `TIME`                                           | `Time64(µs)`                  |
//! | `TINYINT`                                        | `Int8`                        |
//! | `SMALLINT`, `INT2`                               | `Int16`                       |
//! | `MEDIUMINT`, `INT4`, `INT32`                     | `Int32`                       |
//! | `UINT8`, `UINT16`, `UINT32`                      | `UInt8`, `UInt16`, `UInt32`   |
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
//! `Int16`.
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
    let base = upper.split('(').next().unwrap_or("").trim();
    let data_type = match base {
        "BOOL" | "BOOLEAN" => DataType::Boolean,
        "DATE" => DataType::Date32,
        "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => {
            DataType::Timestamp(timestamp_unit(&upper), None)
        }
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => {
            DataType::Timestamp(timestamp_unit(&upper), Some("UTC".into()))
        }
        "TIME" => DataType::Time64(TimeUnit::Microsecond),
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
    declared_name_for_arrow(data_type).map(str::to_owned)
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
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) | DataType::UInt64 => "NUMERIC",
        DataType::Utf8 | DataType::Utf8View => "TEXT",
        DataType::LargeUtf8 => "LONGTEXT",
        DataType::Binary | DataType::BinaryView | DataType::FixedSizeBinary(_) => "BLOB",
        DataType::LargeBinary => "LONGBLOB",
        DataType::Date32 | DataType::Date64 => "DATE",
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
        DataType::Time32(_) | DataType::Time64(_) => "TIME",
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
        ] {
            let declared = declared_type_for_arrow(&arrow).unwrap();
            let back = arrow_type_for_declared(&declared).unwrap();
            let expected = match &arrow {
                DataType::Timestamp(unit, Some(_)) => {
                    DataType::Timestamp(*unit, Some("UTC".into()))
                }
                other => other.clone(),
            };
            assert_eq!(back, expected, "{declared}");
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
