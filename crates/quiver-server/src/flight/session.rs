//! Flight session options (`SetSessionOptions`, `GetSessionOptions`, `CloseSession`).
//!
//! ADBC reads and sets the current catalog and schema through these actions. Quiver
//! keeps no session state (any replica serves any call), so the options reflect the
//! server's fixed defaults: setting them to those values succeeds, a catalog or
//! schema that does not exist is `NOT_FOUND`, any other value is refused per option
//! with `INVALID_VALUE`, and unknown names with `INVALID_NAME`.
//! The messages are those of `Flight.proto`, which arrow-flight does not generate.

use std::collections::HashMap;

/// Action type names.
pub const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
/// Action type names.
pub const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
/// Action type names.
pub const CLOSE_SESSION: &str = "CloseSession";

/// `arrow.flight.protocol.SessionOptionValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionOptionValue {
    /// The value.
    #[prost(oneof = "session_option_value::OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<session_option_value::OptionValue>,
}

/// Nested types of [`SessionOptionValue`].
pub mod session_option_value {
    /// A list of strings.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringListValue {
        /// The strings.
        #[prost(string, repeated, tag = "1")]
        pub values: Vec<String>,
    }

    /// The value variants.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum OptionValue {
        /// A string.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// A boolean.
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        /// An integer.
        #[prost(sfixed64, tag = "3")]
        Int64Value(i64),
        /// A float.
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        /// A list of strings.
        #[prost(message, tag = "5")]
        StringListValue(StringListValue),
    }
}

/// `arrow.flight.protocol.SetSessionOptionsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsRequest {
    /// Options to set.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `arrow.flight.protocol.SetSessionOptionsResult.ErrorValue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SetSessionOptionsErrorValue {
    /// Protobuf default.
    Unspecified = 0,
    /// The option name is not known.
    InvalidName = 1,
    /// The value is not acceptable for the option.
    InvalidValue = 2,
    /// Another failure.
    Error = 3,
}

/// `arrow.flight.protocol.SetSessionOptionsResult.Error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsError {
    /// What went wrong.
    #[prost(enumeration = "SetSessionOptionsErrorValue", tag = "1")]
    pub value: i32,
}

/// `arrow.flight.protocol.SetSessionOptionsResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsResult {
    /// Options that were not set, by name.
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionsError>,
}

/// `arrow.flight.protocol.GetSessionOptionsResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetSessionOptionsResult {
    /// The options in effect.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `arrow.flight.protocol.CloseSessionResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseSessionResult {
    /// 1 = closed.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// The session options every session has.
pub fn current_options(catalog: &str, schema: &str) -> GetSessionOptionsResult {
    let string = |value: &str| SessionOptionValue {
        option_value: Some(session_option_value::OptionValue::StringValue(
            value.to_owned(),
        )),
    };
    GetSessionOptionsResult {
        session_options: HashMap::from([
            ("catalog".to_owned(), string(catalog)),
            ("schema".to_owned(), string(schema)),
        ]),
    }
}

/// What a request to set options names that does not exist: a catalog other than
/// `catalog`, or a schema `exists` does not know.
pub fn missing_target(
    request: &SetSessionOptionsRequest,
    catalog: &str,
    exists: impl Fn(&str) -> bool,
) -> Option<String> {
    request.session_options.iter().find_map(|(name, value)| {
        let Some(session_option_value::OptionValue::StringValue(wanted)) = &value.option_value
        else {
            return None;
        };
        let shown: String = wanted.chars().take(128).collect();
        match name.as_str() {
            "catalog" if wanted != catalog => Some(format!(
                "catalog '{shown}' does not exist (the only catalog is '{catalog}')"
            )),
            "schema" if !exists(wanted) => Some(format!("schema '{shown}' does not exist")),
            _ => None,
        }
    })
}

/// Checks a request to set options against the fixed values.
pub fn set_options(
    request: &SetSessionOptionsRequest,
    catalog: &str,
    schema: &str,
) -> SetSessionOptionsResult {
    let mut errors = HashMap::new();
    for (name, value) in &request.session_options {
        let wanted = match name.as_str() {
            "catalog" => catalog,
            "schema" => schema,
            _ => {
                errors.insert(
                    name.clone(),
                    SetSessionOptionsError {
                        value: SetSessionOptionsErrorValue::InvalidName as i32,
                    },
                );
                continue;
            }
        };
        let accepted = matches!(
            &value.option_value,
            Some(session_option_value::OptionValue::StringValue(v)) if v == wanted
        );
        if !accepted {
            errors.insert(
                name.clone(),
                SetSessionOptionsError {
                    value: SetSessionOptionsErrorValue::InvalidValue as i32,
                },
            );
        }
    }
    SetSessionOptionsResult { errors }
}
