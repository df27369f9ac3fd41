//! Scalar values bound as statement parameters.

use std::fmt;

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
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "'{v}'"),
            Value::Blob(v) => write!(f, "<{} bytes>", v.len()),
            Value::Date(v) => write!(f, "{}", crate::time::format_date(*v)),
            Value::Timestamp(v) => write!(f, "{}", crate::time::format_timestamp_micros(*v)),
        }
    }
}
