//! The PostgreSQL → Arrow type mapping.
//!
//! | PostgreSQL                                   | Arrow                                   |
//! |----------------------------------------------|-----------------------------------------|
//! | `boolean`                                    | `Boolean`                               |
//! | `smallint`, `integer`, `bigint`              | `Int16`, `Int32`, `Int64`               |
//! | `oid`                                        | `Int64`                                 |
//! | `real`, `double precision`                   | `Float32`, `Float64`                    |
//! | `numeric(p, s)`                              | `Decimal128(p, s)` (p ≤ 38)             |
//! | `numeric` (unconstrained, or p > 38)         | `Decimal128(38, 10)`, rounded half up   |
//! | `text`, `varchar`, `char(n)`, `name`, enums  | `Utf8`                                  |
//! | `json`, `jsonb`, `uuid`                      | `Utf8` (the canonical text form)        |
//! | `bytea`                                      | `Binary`                                |
//! | `date`                                       | `Date32`                                |
//! | `time`                                       | `Time64(µs)`                            |
//! | `timestamp`                                  | `Timestamp(µs, none)`                   |
//! | `timestamptz`                                | `Timestamp(µs, "UTC")`                  |
//! | `interval`                                   | `Interval(MonthDayNano)`                |
//! | one-dimensional arrays of the above          | `List` of the element type              |
//! | anything else (`inet`, `money`, domains, …)  | `Utf8`, read through a `::text` cast    |
//!
//! Multi-dimensional arrays are read flattened into one list per value.
//!
//! # Ingest
//! Bulk ingest creates each column with the nearest type that holds every value:
//! `Int8`/`UInt8`/`Int16` → `smallint`, `UInt16`/`Int32` → `integer`,
//! `UInt32`/`Int64` → `bigint`, `UInt64` → `numeric(20, 0)`, strings → `text`,
//! binaries → `bytea`, `Date64` → `date`, times → `time`, durations → `interval`,
//! `Null` → `text`, a list of one of these → an array of it (`bigint[]`). Where that
//! type would read back as another Arrow type, a column comment records the one sent
//! ([`comment_for`]); the column reads back as it while it keeps that type. PostgreSQL
//! keeps microseconds: nanoseconds below them are dropped. Any other type (lists of
//! lists, structs, `Decimal256`, intervals) is refused before anything is written,
//! naming the column and the type. docs/types.md has the table.

use arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use tokio_postgres::types::Type;

/// Precision and scale used for `numeric` columns declared without them.
pub const UNCONSTRAINED_NUMERIC: (u8, i8) = (38, 10);

/// How one column type is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The Arrow type values become.
    pub data_type: DataType,
    /// Whether the value is selected as `col::text` because its binary form is not
    /// decoded.
    pub read_as_text: bool,
}

/// The type of a column as the catalog describes it.
#[derive(Debug, Clone, Copy)]
pub struct ColumnType<'a> {
    /// `pg_type.oid` of the column type.
    pub oid: u32,
    /// `pg_attribute.atttypmod` (-1 when none).
    pub typmod: i32,
    /// `pg_type.typtype`: `b` base, `e` enum, `d` domain, `c` composite, …
    pub typtype: &'a str,
    /// For arrays, the element type's oid, typtype; otherwise `None`.
    pub element: Option<(u32, &'a str)>,
    /// The column's comment: where ingest records the Arrow type it was created for.
    pub comment: Option<&'a str>,
}

/// The longest recorded type parsed (ingest writes at most a list of a zoned
/// timestamp: well within it).
const MAX_RECORDED_TYPE: usize = 200;

/// How a column comment records the Arrow type ingest created the column for.
pub const ARROW_TYPE_COMMENT: &str = "quiver:arrow=";

fn numeric(typmod: i32) -> DataType {
    if typmod >= 4 {
        let packed = typmod - 4;
        let precision = (packed >> 16) & 0xffff;
        // The scale is an 11-bit signed number since PostgreSQL 15.
        let scale = ((packed & 0x7ff) ^ 0x400) - 0x400;
        if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
            return DataType::Decimal128(precision as u8, scale as i8);
        }
    }
    let (precision, scale) = UNCONSTRAINED_NUMERIC;
    DataType::Decimal128(precision, scale)
}

/// The Arrow type of a scalar (non-array) type, or `None` when it is not decoded.
fn scalar(oid: u32, typmod: i32, typtype: &str) -> Option<DataType> {
    if typtype == "e" {
        return Some(DataType::Utf8);
    }
    let ty = Type::from_oid(oid)?;
    Some(match ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => numeric(typmod),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::CHAR
        | Type::JSON
        | Type::JSONB
        | Type::UUID => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Type::INTERVAL => DataType::Interval(IntervalUnit::MonthDayNano),
        _ => return None,
    })
}

/// Maps a catalog column type to Arrow.
pub fn map_type(column: ColumnType<'_>) -> Mapping {
    let mapped = match column.element {
        // Array typmods apply to the element (`numeric(10,2)[]`).
        Some((element, element_typtype)) => scalar(element, column.typmod, element_typtype)
            .map(|item| DataType::List(Field::new("item", item, true).into())),
        None => scalar(column.oid, column.typmod, column.typtype),
    };
    match mapped {
        Some(data_type) => Mapping {
            data_type: recorded_type(column.comment, &data_type).unwrap_or(data_type),
            read_as_text: false,
        },
        None => Mapping {
            data_type: DataType::Utf8,
            read_as_text: true,
        },
    }
}

/// The Arrow type a column comment records, when the column still has the type
/// ingest created for it (`native`: what that type reads as without the record).
fn recorded_type(comment: Option<&str>, native: &DataType) -> Option<DataType> {
    let text = comment?.strip_prefix(ARROW_TYPE_COMMENT)?;
    // Anyone who may comment on a column writes this text, and Arrow's parser recurses
    // once per nesting: only what ingest writes (short, a list at most) is parsed.
    if text.len() > MAX_RECORDED_TYPE || text.matches('(').count() > 3 {
        return None;
    }
    let recorded: DataType = text.parse().ok()?;
    (native_type(&recorded).as_ref() == Some(native)).then_some(recorded)
}

/// The Arrow type a column created for `data_type` reads as from PostgreSQL's own
/// type (`Int8` → `smallint` → `Int16`); `None` when no column holds it.
pub fn native_type(data_type: &DataType) -> Option<DataType> {
    if !crate::value::is_writable(data_type) {
        return None;
    }
    Some(match data_type {
        DataType::Int8 | DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Float16 => DataType::Float32,
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::Date64 => DataType::Date32,
        DataType::Time32(_) | DataType::Time64(_) => DataType::Time64(TimeUnit::Microsecond),
        DataType::Timestamp(_, zone) => {
            DataType::Timestamp(TimeUnit::Microsecond, zone.as_ref().map(|_| "UTC".into()))
        }
        DataType::Duration(_) => DataType::Interval(IntervalUnit::MonthDayNano),
        // Arrays read as lists of their element's type, named as the catalog names them.
        DataType::List(item) | DataType::LargeList(item) => {
            DataType::List(Field::new("item", native_type(item.data_type())?, true).into())
        }
        other => other.clone(),
    })
}

/// The comment ingest gives a column created for `data_type`, when PostgreSQL's own
/// type would read back as another Arrow type.
pub fn comment_for(data_type: &DataType) -> Option<String> {
    let native = native_type(data_type)?;
    // View types and `Float16` read back as their plain kin on both stores.
    let plain = matches!(
        data_type,
        DataType::Utf8View | DataType::BinaryView | DataType::Float16
    );
    (native != *data_type && !plain).then(|| format!("{ARROW_TYPE_COMMENT}{data_type}"))
}

/// The PostgreSQL type a column of `data_type` is created with (ingest, demo), or
/// `None` when no column holds it (see the ingest mapping in the module docs).
pub fn declared_type_for(data_type: &DataType) -> Option<String> {
    if !crate::value::is_writable(data_type) {
        return None;
    }
    Some(match data_type {
        DataType::Boolean => "boolean".to_owned(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".to_owned(),
        DataType::Int32 | DataType::UInt16 => "integer".to_owned(),
        DataType::Int64 | DataType::UInt32 => "bigint".to_owned(),
        DataType::UInt64 => "numeric(20, 0)".to_owned(),
        DataType::Float16 | DataType::Float32 => "real".to_owned(),
        DataType::Float64 => "double precision".to_owned(),
        DataType::Decimal128(p, s) if (0..=*p as i8).contains(s) => format!("numeric({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            "text".to_owned()
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea".to_owned(),
        DataType::Date32 | DataType::Date64 => "date".to_owned(),
        DataType::Time32(_) | DataType::Time64(_) => "time".to_owned(),
        DataType::Timestamp(_, None) => "timestamp".to_owned(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".to_owned(),
        DataType::Duration(_) => "interval".to_owned(),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("{}[]", declared_type_for(item.data_type())?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(oid: u32, typmod: i32) -> Mapping {
        map_type(ColumnType {
            oid,
            typmod,
            typtype: "b",
            element: None,
            comment: None,
        })
    }

    #[test]
    fn recorded_arrow_types_read_back_while_the_column_keeps_its_type() {
        let units = [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ];
        let mut types = vec![
            DataType::Int8,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
            DataType::LargeUtf8,
            DataType::LargeBinary,
            DataType::FixedSizeBinary(16),
            DataType::Date64,
            DataType::Null,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("+05:30".into())),
            DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into())),
            DataType::List(Field::new("item", DataType::Int8, true).into()),
            DataType::LargeList(Field::new("item", DataType::Float64, true).into()),
            DataType::List(Field::new("element", DataType::Int64, false).into()),
        ];
        for unit in units {
            types.push(DataType::Duration(unit));
            types.push(DataType::Timestamp(unit, None));
        }
        types.push(DataType::Time32(TimeUnit::Second));
        types.push(DataType::Time32(TimeUnit::Millisecond));
        types.push(DataType::Time64(TimeUnit::Nanosecond));
        types.retain(|t| *t != DataType::Timestamp(TimeUnit::Microsecond, None));
        for data_type in types {
            let comment = comment_for(&data_type).expect("recorded");
            let native = native_type(&data_type).unwrap();
            assert_eq!(
                recorded_type(Some(&comment), &native),
                Some(data_type.clone()),
                "{comment}"
            );
            // A column whose type changed since is read by its type.
            assert_eq!(recorded_type(Some(&comment), &DataType::Utf8View), None);
        }
        for same in [DataType::Int16, DataType::Utf8, DataType::Decimal128(10, 2)] {
            assert_eq!(comment_for(&same), None, "{same}");
        }
        assert_eq!(
            recorded_type(Some("a comment of the user's"), &DataType::Int16),
            None
        );
        assert_eq!(
            recorded_type(Some("quiver:arrow=Nonsense"), &DataType::Int16),
            None
        );
        // A comment anyone may write is parsed only when it is short and shallow.
        let deep = format!(
            "quiver:arrow={}Int8{}",
            "List(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert_eq!(recorded_type(Some(&deep), &DataType::Int16), None);
    }

    #[test]
    fn scalar_types_map_as_documented() {
        let cases = [
            (Type::BOOL, DataType::Boolean),
            (Type::INT2, DataType::Int16),
            (Type::INT4, DataType::Int32),
            (Type::INT8, DataType::Int64),
            (Type::FLOAT4, DataType::Float32),
            (Type::FLOAT8, DataType::Float64),
            (Type::TEXT, DataType::Utf8),
            (Type::VARCHAR, DataType::Utf8),
            (Type::JSONB, DataType::Utf8),
            (Type::UUID, DataType::Utf8),
            (Type::BYTEA, DataType::Binary),
            (Type::DATE, DataType::Date32),
            (Type::TIME, DataType::Time64(TimeUnit::Microsecond)),
            (
                Type::TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                Type::TIMESTAMPTZ,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            (
                Type::INTERVAL,
                DataType::Interval(IntervalUnit::MonthDayNano),
            ),
        ];
        for (ty, expected) in cases {
            let mapping = base(ty.oid(), -1);
            assert_eq!(mapping.data_type, expected, "{ty}");
            assert!(!mapping.read_as_text, "{ty}");
        }
    }

    #[test]
    fn numeric_takes_its_declared_precision() {
        // numeric(12, 2): typmod = (12 << 16 | 2) + 4.
        assert_eq!(
            base(Type::NUMERIC.oid(), (12 << 16 | 2) + 4).data_type,
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            base(Type::NUMERIC.oid(), -1).data_type,
            DataType::Decimal128(38, 10)
        );
        // Too wide for Decimal128: falls back to the unconstrained mapping.
        assert_eq!(
            base(Type::NUMERIC.oid(), (50 << 16 | 2) + 4).data_type,
            DataType::Decimal128(38, 10)
        );
    }

    #[test]
    fn arrays_enums_and_unknown_types() {
        let array = map_type(ColumnType {
            oid: Type::INT4_ARRAY.oid(),
            typmod: -1,
            typtype: "b",
            element: Some((Type::INT4.oid(), "b")),
            comment: None,
        });
        assert_eq!(
            array.data_type,
            DataType::List(Field::new("item", DataType::Int32, true).into())
        );
        let status = map_type(ColumnType {
            oid: 99_999,
            typmod: -1,
            typtype: "e",
            element: None,
            comment: None,
        });
        assert_eq!(status.data_type, DataType::Utf8);
        assert!(!status.read_as_text);
        let inet = base(Type::INET.oid(), -1);
        assert_eq!(inet.data_type, DataType::Utf8);
        assert!(inet.read_as_text);
    }
}
