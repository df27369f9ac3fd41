//! Facts about each backend's SQL that every other module may need: quoting,
//! placeholders, default schemas, the ranges of values each holds, the names Quiver
//! reserves, and the `COPY` text encoding. A leaf: it imports nothing but the catalog
//! types. (Placeholders typed by a bound value are in [`crate::value`].)

use crate::catalog::ColumnInfo;

/// The only schema of a SQLite database as Quiver exposes it.
pub const SQLITE_SCHEMA: &str = "main";

/// The schema unqualified names resolve in on PostgreSQL.
pub const POSTGRES_SCHEMA: &str = "public";

/// Prefix of the names Quiver keeps for itself (tables, triggers, schemas); objects
/// named so are not part of the user catalog and clients cannot touch them.
pub const INTERNAL_PREFIX: &str = "_quiver";

/// The PostgreSQL schema Quiver's own tables and functions live in.
pub const POSTGRES_INTERNAL_SCHEMA: &str = "_quiver";

/// Prefix of Quiver's own tables in SQLite's `main` schema.
pub const INTERNAL_TABLE_PREFIX: &str = "_quiver_";

/// Whether `name` (a table, trigger, index, function or schema name) is one Quiver
/// reserves for itself, compared case-insensitively as SQL identifiers are.
pub fn is_internal_name(name: &str) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name.as_bytes()[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

/// How SQL text is spelled for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: `"ident"`, `?N` placeholders.
    Sqlite,
    /// PostgreSQL: `"ident"`, `$N::type` placeholders (typed by the bound value, so
    /// the server never has to guess a parameter's type from context).
    Postgres,
}

impl Dialect {
    /// Quotes an identifier.
    pub fn quote_identifier(self, identifier: &str) -> String {
        format!("\"{}\"", identifier.replace('"', "\"\""))
    }

    /// The schema unqualified names resolve in.
    pub fn default_schema(self) -> &'static str {
        match self {
            Dialect::Sqlite => SQLITE_SCHEMA,
            Dialect::Postgres => POSTGRES_SCHEMA,
        }
    }

    /// A column as a select-list item: its quoted name, or a cast to text when the
    /// store's type has no Arrow form (`read_as_text`).
    pub fn select_column(self, column: &ColumnInfo) -> String {
        let name = self.quote_identifier(&column.name);
        if column.read_as_text {
            format!("CAST({name} AS TEXT)")
        } else {
            name
        }
    }

    /// The `index`th (one-based) parameter, untyped: the store types it by its use.
    pub fn parameter(self, index: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{index}"),
            Dialect::Postgres => format!("${index}"),
        }
    }

    /// Whether text comparisons (`<`, `BETWEEN`, …) must name the byte-order collation
    /// to order like Arrow does.
    pub fn text_order_collation(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("\"C\""),
        }
    }

    /// One of Quiver's own tables (`_quiver_changes`, …) as statements name it.
    pub fn internal_table(self, name: &str) -> String {
        match self {
            Dialect::Sqlite => name.to_owned(),
            Dialect::Postgres => format!("{POSTGRES_INTERNAL_SCHEMA}.{name}"),
        }
    }

    /// The timestamps (µs since the Unix epoch) the store holds and reads back: years
    /// 0–9999 as SQLite's date text; PostgreSQL's own range (from 4714 BC), without
    /// its ±infinity.
    pub fn timestamp_range(self) -> std::ops::RangeInclusive<i64> {
        match self {
            Dialect::Sqlite => -62_167_219_200_000_000..=253_402_300_799_999_999,
            Dialect::Postgres => -210_866_803_200_000_000..=i64::MAX,
        }
    }

    /// The dates (days since the Unix epoch) the store holds and reads back.
    pub fn date_range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Dialect::Sqlite => -719_528..=2_932_896,
            Dialect::Postgres => -2_440_588..=2_145_042_905,
        }
    }

    /// Most parameters one statement may bind.
    pub fn max_parameters(self) -> usize {
        match self {
            // SQLITE_MAX_VARIABLE_NUMBER of the bundled library.
            Dialect::Sqlite => 32_766,
            // The wire protocol counts parameters in 16 bits.
            Dialect::Postgres => 65_535,
        }
    }
}

/// Appends one line of PostgreSQL `COPY … (FORMAT text)` data: tab-separated fields,
/// `\N` for NULL, and the format's backslash escapes.
pub fn copy_line<'a>(out: &mut String, fields: impl IntoIterator<Item = Option<&'a str>>) {
    for (index, field) in fields.into_iter().enumerate() {
        if index > 0 {
            out.push('\t');
        }
        let Some(value) = field else {
            out.push_str("\\N");
            continue;
        };
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_quoting_follow_the_dialect() {
        assert_eq!(Dialect::Postgres.parameter(4), "$4");
        assert_eq!(Dialect::Sqlite.parameter(4), "?4");
        assert_eq!(Dialect::Sqlite.quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn internal_names_are_recognised_in_any_case() {
        assert!(is_internal_name("_quiver_changes"));
        assert!(is_internal_name("_QUIVER"));
        assert!(is_internal_name("_Quiver_capture_insert_tasks"));
        assert!(!is_internal_name("quiver"));
        assert!(!is_internal_name("_quive"));
        assert!(!is_internal_name("tasks"));
    }

    #[test]
    fn copy_lines_escape_the_text_format() {
        let mut out = String::new();
        copy_line(&mut out, [Some("a\tb"), None, Some("c\\d\ne")]);
        assert_eq!(out, "a\\tb\t\\N\tc\\\\d\\ne\n");
    }
}
