//! What a SQL statement sent as an update does, judged by its first keyword, and its
//! placeholders as the store takes them.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use quiver_storage::Dialect;

use crate::error::Result;

/// What a SQL statement does, judged by its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Returns rows (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, `SHOW`, …): planned by DataFusion.
    Query,
    /// Changes rows (`INSERT`, `UPDATE`, `DELETE`, …): run on the store as written.
    Update,
    /// Changes the schema (`CREATE`, `DROP`, `ALTER`): run on the store, then the catalog
    /// is re-read.
    Ddl,
}

/// Classifies `sql` by its first keyword (comments and parentheses skipped).
pub fn statement_kind(sql: &str) -> StatementKind {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return StatementKind::Query;
    };
    let first = tokens.iter().find_map(|token| match token {
        Token::Word(word) => Some(word.keyword),
        Token::Whitespace(_) | Token::LParen => None,
        _ => Some(Keyword::NoKeyword),
    });
    match first {
        Some(
            Keyword::INSERT
            | Keyword::UPDATE
            | Keyword::DELETE
            | Keyword::MERGE
            | Keyword::REPLACE
            | Keyword::TRUNCATE,
        ) => StatementKind::Update,
        Some(Keyword::CREATE | Keyword::DROP | Keyword::ALTER | Keyword::COMMENT) => {
            StatementKind::Ddl
        }
        _ => StatementKind::Query,
    }
}

/// `sql` with its placeholders as the store takes them: SQLite numbers `?` itself;
/// PostgreSQL needs `$N`.
pub(crate) fn store_placeholders(sql: &str, dialect: Dialect) -> Result<String> {
    Ok(match dialect {
        Dialect::Postgres => quiver_query::params::number_placeholders(sql)?,
        Dialect::Sqlite => sql.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_first_keyword() {
        assert_eq!(statement_kind("SELECT 1"), StatementKind::Query);
        assert_eq!(
            statement_kind("  -- note\n (SELECT 1)"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind("WITH x AS (SELECT 1) SELECT * FROM x"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind("update tasks set status = 'done'"),
            StatementKind::Update
        );
        assert_eq!(
            statement_kind("/* bulk */ INSERT INTO t VALUES (1)"),
            StatementKind::Update
        );
        assert_eq!(statement_kind("DELETE FROM t"), StatementKind::Update);
        assert_eq!(
            statement_kind("create index i on t (a)"),
            StatementKind::Ddl
        );
        assert_eq!(statement_kind("DROP TABLE t"), StatementKind::Ddl);
    }

    #[test]
    fn placeholders_follow_the_store() {
        let sql = "INSERT INTO t (a, b) VALUES (?, '?')";
        assert_eq!(
            store_placeholders(sql, Dialect::Postgres).unwrap(),
            "INSERT INTO t (a, b) VALUES ($1, '?')"
        );
        assert_eq!(store_placeholders(sql, Dialect::Sqlite).unwrap(), sql);
        assert_eq!(
            store_placeholders("DELETE FROM t", Dialect::Sqlite).unwrap(),
            "DELETE FROM t"
        );
    }
}
