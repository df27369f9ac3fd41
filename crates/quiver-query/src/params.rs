//! Statement parameters: `?` placeholders and bound values.
//!
//! DataFusion numbers placeholders `$1, $2, …`; ODBC/JDBC/ADBC clients write `?`.
//! [`number_placeholders`] rewrites each `?` (and SQLite-style `?N`) to `$N` using the
//! SQL tokenizer, so question marks inside strings, identifiers and comments stay put.

use datafusion::arrow::datatypes::DataType;
pub use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// A placeholder of a prepared statement and the type the planner inferred for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// `$1`, `$2`, …
    pub name: String,
    /// The type the value must have, if the planner could infer it.
    pub data_type: Option<DataType>,
}

/// Rewrites `?` and `?N` placeholders to DataFusion's `$N`, keeping the rest of the text
/// byte for byte. Text without question-mark placeholders is returned unchanged.
pub fn number_placeholders(sql: &str) -> Result<String> {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        // Let the parser report the error with its own message.
        return Ok(sql.to_owned());
    };
    // (line, column) of each `?` placeholder, and its text.
    let marks: Vec<(u64, u64, String)> = tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Placeholder(text) if text.starts_with('?') => {
                Some((t.span.start.line, t.span.start.column, text.clone()))
            }
            _ => None,
        })
        .collect();
    if marks.is_empty() {
        return Ok(sql.to_owned());
    }
    let has_dollar = tokens
        .iter()
        .any(|t| matches!(&t.token, Token::Placeholder(text) if text.starts_with('$')));
    if has_dollar {
        return Err(Error::Parameter {
            name: "?".to_owned(),
            message: "mixing ? and $N placeholders in one statement is not supported".to_owned(),
        });
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let (mut line, mut column) = (1u64, 1u64);
    let mut next_mark = marks.iter().peekable();
    let mut sequential = 0usize;
    let mut chars = sql.char_indices().peekable();
    while let Some((_, ch)) = chars.next() {
        match next_mark.peek() {
            Some((mark_line, mark_column, text))
                if *mark_line == line && *mark_column == column =>
            {
                let explicit = &text[1..];
                if explicit.is_empty() {
                    sequential += 1;
                    out.push_str(&format!("${sequential}"));
                } else {
                    out.push('$');
                    out.push_str(explicit);
                    // Skip the digits of `?N`; they are part of the token.
                    for _ in 0..explicit.chars().count() {
                        chars.next();
                        column += 1;
                    }
                }
                next_mark.next();
            }
            _ => out.push(ch),
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Ok(out)
}

/// Converts bound values to the parameter types the planner inferred.
pub fn coerce_values(
    parameters: &[Parameter],
    values: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>> {
    if parameters.len() != values.len() {
        return Err(Error::ParameterCount {
            expected: parameters.len(),
            actual: values.len(),
        });
    }
    parameters
        .iter()
        .zip(values)
        .map(|(parameter, value)| match &parameter.data_type {
            Some(target) if value.data_type() != *target && !value.is_null() => {
                value.cast_to(target).map_err(|_| Error::Parameter {
                    name: parameter.name.clone(),
                    message: format!("cannot use {} value {value} as {target}", value.data_type()),
                })
            }
            Some(target) if value.is_null() => {
                ScalarValue::try_from(target).map_err(|err| Error::Parameter {
                    name: parameter.name.clone(),
                    message: err.to_string(),
                })
            }
            _ => Ok(value),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b > ?").unwrap(),
            "SELECT * FROM t WHERE a = $1 AND b > $2"
        );
    }

    #[test]
    fn question_marks_in_strings_comments_and_identifiers_stay() {
        let sql = "SELECT '?', \"what?\" -- why?\nFROM t WHERE x = ? /* ? */ AND y = 'é?'";
        assert_eq!(
            number_placeholders(sql).unwrap(),
            "SELECT '?', \"what?\" -- why?\nFROM t WHERE x = $1 /* ? */ AND y = 'é?'"
        );
    }

    #[test]
    fn numbered_question_marks_keep_their_numbers() {
        assert_eq!(
            number_placeholders("SELECT ?2, ?1").unwrap(),
            "SELECT $2, $1"
        );
    }

    #[test]
    fn text_without_placeholders_is_untouched() {
        let sql = "SELECT  1 ;  -- trailing";
        assert_eq!(number_placeholders(sql).unwrap(), sql);
        assert_eq!(number_placeholders("SELECT $1").unwrap(), "SELECT $1");
    }

    #[test]
    fn mixing_styles_is_an_error() {
        assert!(number_placeholders("SELECT ?, $1").is_err());
    }

    #[test]
    fn values_are_cast_to_inferred_types() {
        let parameters = vec![
            Parameter {
                name: "$1".into(),
                data_type: Some(DataType::Int32),
            },
            Parameter {
                name: "$2".into(),
                data_type: None,
            },
            Parameter {
                name: "$3".into(),
                data_type: Some(DataType::Utf8),
            },
        ];
        let values = vec![
            ScalarValue::Int64(Some(7)),
            ScalarValue::Boolean(Some(true)),
            ScalarValue::Int64(None),
        ];
        let coerced = coerce_values(&parameters, values).unwrap();
        assert_eq!(
            coerced,
            vec![
                ScalarValue::Int32(Some(7)),
                ScalarValue::Boolean(Some(true)),
                ScalarValue::Utf8(None)
            ]
        );

        let err = coerce_values(
            &parameters[..1],
            vec![ScalarValue::Utf8(Some("seven".into()))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter $1: cannot use Utf8 value seven as Int32"
        );
        let err = coerce_values(&parameters, vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the statement has 3 parameter(s) but 0 value(s) were bound"
        );
    }
}
