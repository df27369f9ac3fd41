//! What a SQL statement sent as an update does, judged by its first keyword, and its
//! placeholders as the store takes them.
//!
//! The first keyword is found with the comment rules of the store that will run the
//! statement: PostgreSQL nests block comments, SQLite does not, and neither reads
//! MySQL's `/*! … */` as SQL. Read with any other rules, `/*!INSERT*/ DROP TABLE t`
//! or `/* /* */ DROP TABLE t -- */ INSERT …` would pass for an `INSERT` while the
//! store drops the table.

use datafusion::sql::sqlparser::dialect::{
    Dialect as SqlDialect, GenericDialect, PostgreSqlDialect, SQLiteDialect,
};
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

/// The tokenizer rules of `dialect`'s store (`None`: DataFusion's, for queries it
/// plans itself).
pub(crate) fn sql_dialect(dialect: Option<Dialect>) -> Box<dyn SqlDialect> {
    match dialect {
        Some(Dialect::Postgres) => Box::new(PostgreSqlDialect {}),
        Some(Dialect::Sqlite) => Box::new(SQLiteDialect {}),
        None => Box::new(GenericDialect {}),
    }
}

/// Classifies `sql`, as the store of `dialect` would read it, by its first keyword
/// (comments and parentheses skipped). Text that does not tokenize is a query:
/// DataFusion then refuses it, and nothing runs on the store.
pub fn statement_kind(sql: &str, dialect: Dialect) -> StatementKind {
    let rules = sql_dialect(Some(dialect));
    let Ok(tokens) = Tokenizer::new(rules.as_ref(), sql).tokenize() else {
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

    fn statement_kind_sqlite(sql: &str) -> StatementKind {
        statement_kind(sql, Dialect::Sqlite)
    }

    #[test]
    fn comments_are_read_as_the_store_reads_them() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            // Neither store reads MySQL's comment hints.
            assert_eq!(
                statement_kind("/*!INSERT*/ DROP TABLE tasks", dialect),
                StatementKind::Ddl
            );
        }
        // SQLite ends a comment at the first `*/`; PostgreSQL nests them.
        let nested = "/* /* */ DROP TABLE tasks -- */ INSERT INTO t VALUES (1)";
        assert_eq!(statement_kind(nested, Dialect::Sqlite), StatementKind::Ddl);
        assert_eq!(
            statement_kind(
                "/* /* */ DROP TABLE t */ INSERT INTO t VALUES (1)",
                Dialect::Postgres
            ),
            StatementKind::Update
        );
    }

    #[test]
    fn statements_are_classified_by_their_first_keyword() {
        assert_eq!(statement_kind_sqlite("SELECT 1"), StatementKind::Query);
        assert_eq!(
            statement_kind_sqlite("  -- note\n (SELECT 1)"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind_sqlite("WITH x AS (SELECT 1) SELECT * FROM x"),
            StatementKind::Query
        );
        assert_eq!(
            statement_kind_sqlite("update tasks set status = 'done'"),
            StatementKind::Update
        );
        assert_eq!(
            statement_kind_sqlite("/* bulk */ INSERT INTO t VALUES (1)"),
            StatementKind::Update
        );
        assert_eq!(
            statement_kind_sqlite("DELETE FROM t"),
            StatementKind::Update
        );
        assert_eq!(
            statement_kind_sqlite("create index i on t (a)"),
            StatementKind::Ddl
        );
        assert_eq!(statement_kind_sqlite("DROP TABLE t"), StatementKind::Ddl);
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
