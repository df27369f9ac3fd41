//! What a client's statement may do on the store.
//!
//! Statements sent as updates run on the store as written, so before one runs it is
//! read token by token (the tokenizer never recurses, whatever the input) and refused
//! when it:
//! - names anything of Quiver's own — a table, trigger, function, schema or string
//!   starting with `_quiver` — so no statement reads or changes the change log, the
//!   clock, the idempotency records or the capture triggers;
//! - creates temporary objects, which would outlive the statement on a connection
//!   other clients share;
//! - on PostgreSQL, is not one of the statements Quiver runs for clients (DML, and
//!   DDL on tables, indexes, views, sequences, types and schemas), changes triggers,
//!   rules or ownership, or calls a function that could reach around these rules:
//!   `set_config` (capture is a setting), `setval`, the administrative `pg_*`
//!   functions, large objects, `dblink`, and the functions that run SQL text
//!   (`query_to_xml` and its family, `ts_stat`, `ts_rewrite`).
//!
//! On SQLite an authorizer on the writer connection enforces the same rules inside the
//! engine (see `quiver_storage::sqlite`); this check answers first, with a clear
//! message.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};
use quiver_storage::Dialect;
use quiver_storage::dialect::is_internal_name;

use crate::error::{Error, Result};

fn refuse(message: impl Into<String>) -> Error {
    Error::PermissionDenied(message.into())
}

/// The statement's tokens without whitespace, read with the comment rules of the
/// store of `dialect` (`None`: DataFusion's); `None` when it does not tokenize (the
/// store then reports the syntax error, and runs nothing).
fn tokens(sql: &str, dialect: Option<Dialect>) -> Option<Vec<Token>> {
    let rules = super::statement::sql_dialect(dialect);
    let tokens = Tokenizer::new(rules.as_ref(), sql).tokenize().ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
    )
}

fn word(token: &Token) -> Option<&Word> {
    match token {
        Token::Word(word) => Some(word),
        _ => None,
    }
}

fn keyword(token: Option<&Token>) -> Keyword {
    token
        .and_then(word)
        .map_or(Keyword::NoKeyword, |w| w.keyword)
}

/// Checks a client's query before it is planned: it may not name Quiver's own
/// objects (the catalog hides them; this says why they cannot be reached).
pub fn check_query(sql: &str) -> Result<()> {
    match tokens(sql, None) {
        Some(tokens) => check_names(&tokens),
        None => Ok(()),
    }
}

/// Refuses any name or string that names one of Quiver's own objects.
fn check_names(tokens: &[Token]) -> Result<()> {
    for token in tokens {
        let text = match token {
            Token::Word(word) => Some(word.value.as_str()),
            Token::SingleQuotedString(text)
            | Token::DoubleQuotedString(text)
            | Token::DollarQuotedString(datafusion::sql::sqlparser::ast::DollarQuotedString {
                value: text,
                ..
            })
            | Token::EscapedStringLiteral(text)
            | Token::UnicodeStringLiteral(text)
            | Token::NationalStringLiteral(text) => Some(text.as_str()),
            _ => None,
        };
        if let Some(text) = text
            && mentions_internal(text)
        {
            return Err(refuse(format!(
                "statements may not name Quiver's internal objects ('{}')",
                shorten(text)
            )));
        }
    }
    Ok(())
}

/// Checks a client statement before it runs on the store of `dialect`.
pub fn check_client_statement(sql: &str, dialect: Dialect) -> Result<()> {
    let Some(tokens) = tokens(sql, Some(dialect)) else {
        return Ok(());
    };
    check_names(&tokens)?;
    let first = keyword(tokens.first());
    let temporary = tokens
        .iter()
        .take(4)
        .any(|t| matches!(keyword(Some(t)), Keyword::TEMP | Keyword::TEMPORARY));
    if first == Keyword::CREATE && temporary {
        return Err(refuse(
            "temporary objects cannot be created: the store's connections are shared",
        ));
    }
    if dialect == Dialect::Postgres {
        check_postgres(&tokens)?;
    }
    Ok(())
}

/// Whether a name or string names something of Quiver's (`_quiver…`, also behind a
/// schema qualifier written inside a string, such as `'public._quiver_clock'`).
fn mentions_internal(text: &str) -> bool {
    text.split(['.', ' ', '"', '\''])
        .any(|part| is_internal_name(part.trim()))
}

fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(64).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// The statements PostgreSQL runs for clients, and the functions they may not call.
fn check_postgres(tokens: &[Token]) -> Result<()> {
    let first = keyword(tokens.first());
    // The object a CREATE / DROP / ALTER is about, after its modifiers.
    let object = tokens
        .iter()
        .skip(1)
        .map(|t| keyword(Some(t)))
        .find(|k| {
            !matches!(
                k,
                Keyword::OR
                    | Keyword::REPLACE
                    | Keyword::UNIQUE
                    | Keyword::UNLOGGED
                    | Keyword::GLOBAL
                    | Keyword::LOCAL
                    | Keyword::MATERIALIZED
                    | Keyword::RECURSIVE
                    | Keyword::CONCURRENTLY
                    | Keyword::IF
                    | Keyword::NOT
                    | Keyword::EXISTS
            )
        })
        .unwrap_or(Keyword::NoKeyword);
    match first {
        Keyword::CREATE | Keyword::DROP | Keyword::ALTER => {
            let allowed = matches!(
                object,
                Keyword::TABLE
                    | Keyword::INDEX
                    | Keyword::VIEW
                    | Keyword::SEQUENCE
                    | Keyword::TYPE
                    | Keyword::SCHEMA
                    | Keyword::DOMAIN
            );
            if !allowed {
                return Err(refuse(format!(
                    "{first:?} {object:?} is not run for clients: Quiver runs DML and DDL on \
                     tables, indexes, views, sequences, types and schemas"
                )));
            }
            if first == Keyword::ALTER
                && tokens.iter().any(|t| {
                    matches!(
                        keyword(Some(t)),
                        Keyword::TRIGGER | Keyword::RULE | Keyword::OWNER | Keyword::POLICY
                    ) || matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("security"))
                })
            {
                return Err(refuse(
                    "ALTER of triggers, rules, policies or ownership is not run for clients",
                ));
            }
        }
        Keyword::INSERT
        | Keyword::UPDATE
        | Keyword::DELETE
        | Keyword::MERGE
        | Keyword::TRUNCATE
        | Keyword::COMMENT => {}
        other => {
            return Err(refuse(format!(
                "{other:?} statements are not run for clients"
            )));
        }
    }
    // The system catalogs (`pg_catalog.pg_trigger`, `pg_temp.x`, …): a superuser's
    // connection could change them, or shadow the user's tables for every later user
    // of the pooled connection.
    for token in tokens {
        if let Token::Word(word) = token {
            let name = word.value.to_ascii_lowercase();
            if (name.starts_with("pg_") || name == "information_schema")
                && !tokens.windows(2).any(|pair| {
                    matches!((&pair[0], &pair[1]), (Token::Word(w), Token::LParen) if w.value == word.value)
                })
            {
                return Err(refuse(format!(
                    "statements may not name PostgreSQL's system objects ('{}')",
                    shorten(&word.value)
                )));
            }
        }
    }
    // Function calls: a name followed by `(`.
    for pair in tokens.windows(2) {
        let (Some(name), Token::LParen) = (word(&pair[0]), &pair[1]) else {
            continue;
        };
        let name = name.value.to_ascii_lowercase();
        let forbidden = name == "set_config"
            || name == "setval"
            || name.starts_with("pg_")
            || name.starts_with("lo_")
            || name.starts_with("dblink")
            || name.contains("to_xml")
            || name == "ts_stat"
            || name == "ts_rewrite"
            || name == "loread"
            || name == "lowrite";
        if forbidden {
            return Err(refuse(format!(
                "function {name}() is not available to client statements"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str, dialect: Dialect) -> bool {
        matches!(
            check_client_statement(sql, dialect),
            Err(Error::PermissionDenied(_))
        )
    }

    #[test]
    fn internal_names_are_refused_everywhere() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for sql in [
                "UPDATE _quiver_clock SET version = 0",
                "DELETE FROM \"_QUIVER_changes\"",
                "DROP TABLE _quiver_commits",
                "CREATE VIEW v AS SELECT * FROM _quiver_idempotency",
                "INSERT INTO tasks (title) SELECT row_after FROM main._quiver_changes",
                "UPDATE temp._quiver_txn SET capture = 0",
                "ALTER TABLE tasks RENAME TO _quiver_hidden",
                "INSERT INTO t SELECT * FROM x WHERE y = '_quiver._quiver_clock'",
                "DROP TABLE _quiver._quiver_changes",
            ] {
                assert!(refused(sql, dialect), "{dialect:?}: {sql}");
            }
        }
    }

    #[test]
    fn ordinary_statements_pass() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for sql in [
                "UPDATE tasks SET status = 'done' WHERE id = 7",
                "INSERT INTO notes (id, body) VALUES (?, ?)",
                "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
                "CREATE UNIQUE INDEX notes_body ON notes (body)",
                "DROP TABLE IF EXISTS notes",
                "ALTER TABLE notes ADD COLUMN score INTEGER",
                "DELETE FROM notes WHERE body = 'quiver'",
            ] {
                assert!(
                    check_client_statement(sql, dialect).is_ok(),
                    "{dialect:?}: {sql}"
                );
            }
        }
    }

    #[test]
    fn temporary_objects_are_refused() {
        assert!(refused("CREATE TEMP TABLE t (x)", Dialect::Sqlite));
        assert!(refused(
            "CREATE TEMPORARY TABLE t (x INT)",
            Dialect::Postgres
        ));
        assert!(refused(
            "CREATE TEMP TRIGGER x AFTER INSERT ON tasks BEGIN SELECT 1; END",
            Dialect::Sqlite
        ));
    }

    #[test]
    fn postgres_escape_hatches_are_closed() {
        for sql in [
            "INSERT INTO t SELECT set_config('quiver.capture', 'off', true)",
            "INSERT INTO t SELECT pg_catalog.set_config('quiver.capture', 'off', true)",
            "ALTER TABLE tasks DISABLE TRIGGER ALL",
            "ALTER TABLE tasks ENABLE REPLICA TRIGGER _x",
            "DROP TRIGGER x ON tasks",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE TRIGGER t AFTER INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION f()",
            "INSERT INTO t SELECT query_to_xml('SELECT 1', true, true, '')",
            "INSERT INTO t SELECT pg_terminate_backend(1)",
            "UPDATE t SET x = setval('s', 1)",
            "ALTER TABLE tasks OWNER TO nobody",
            "CREATE EXTENSION dblink",
            "UPDATE pg_catalog.pg_trigger SET tgenabled = 'D'",
            "UPDATE pg_trigger SET tgenabled = 'D'",
            "CREATE TABLE pg_temp.tasks (id INT)",
        ] {
            assert!(refused(sql, Dialect::Postgres), "{sql}");
        }
        // SQLite has no such functions; its authorizer covers the rest.
        assert!(check_client_statement("ALTER TABLE t ADD COLUMN x", Dialect::Sqlite).is_ok());
    }
}
