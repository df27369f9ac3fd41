//! Bounds on the SQL text clients send — statements, Mutations predicates,
//! Subscriptions filters — checked before anything parses or plans it.
//!
//! The parser bounds its own recursion (nested parentheses, prefix operators), but
//! infix chains — `a OR b OR c …`, `1 + 1 + …`, `… UNION ALL …` — are parsed in a loop
//! into trees as deep as the chain is long, and every later pass over such a tree
//! (planning, simplification, cloning, evaluation) recurses once per level. So the
//! depth is estimated from the tokens first, with one linear pass that never
//! recurses: per parenthesis level, the length of the current chain of each
//! precedence class (a looser operator starts the tighter classes over, as the
//! operands of a chain are the tighter expressions between its operators), summed
//! over the open levels.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// The defaults of [`StatementLimits`].
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 1 << 20;
/// Default most nesting, as [`expression_depth`] counts it.
pub const DEFAULT_MAX_EXPRESSION_DEPTH: usize = 1000;

/// How large and how deeply nested client SQL may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLimits {
    /// Most bytes of SQL text.
    pub max_bytes: usize,
    /// Most expression nesting ([`expression_depth`]).
    pub max_depth: usize,
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            max_depth: DEFAULT_MAX_EXPRESSION_DEPTH,
        }
    }
}

impl StatementLimits {
    /// Checks `sql` (`what` names it in messages: "statement", "predicate", "filter")
    /// against the limits, before it is parsed.
    pub fn check(&self, what: &str, sql: &str) -> Result<()> {
        if sql.len() > self.max_bytes {
            return Err(Error::Limit(format!(
                "the {what} is {} bytes; the limit is {} (max_statement_kb)",
                sql.len(),
                self.max_bytes
            )));
        }
        let depth = expression_depth(sql);
        if depth > self.max_depth {
            return Err(Error::Limit(format!(
                "the {what} nests expressions {depth} deep; the limit is {} (max_expression_depth)",
                self.max_depth
            )));
        }
        Ok(())
    }
}

/// Precedence classes of infix operators, loosest first. A chain of one class is
/// parsed into a tree as deep as the chain is long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// `UNION`, `INTERSECT`, `EXCEPT`.
    SetOperation,
    /// `JOIN`, and the commas of a `FROM` list (cross joins).
    Join,
    Or,
    And,
    Not,
    /// `=`, `<`, `LIKE`, `IS`, `IN`, `BETWEEN`, …
    Comparison,
    /// `|`, `&`, `#`, shifts, `||` and other operators of the same binding.
    Bitwise,
    Additive,
    Multiplicative,
    /// `::`, `->`, `^`, `AT TIME ZONE` and whatever else binds tighter.
    Other,
}

const CLASSES: usize = Class::Other as usize + 1;

/// The operator class of a token, if it is an infix operator.
fn class_of(token: &Token) -> Option<Class> {
    Some(match token {
        Token::Word(word) => match word.keyword {
            Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => Class::SetOperation,
            Keyword::JOIN => Class::Join,
            Keyword::OR => Class::Or,
            Keyword::AND => Class::And,
            Keyword::NOT => Class::Not,
            Keyword::IS
            | Keyword::IN
            | Keyword::LIKE
            | Keyword::ILIKE
            | Keyword::BETWEEN
            | Keyword::SIMILAR
            | Keyword::REGEXP
            | Keyword::RLIKE => Class::Comparison,
            _ => return None,
        },
        Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk => Class::Comparison,
        Token::Pipe
        | Token::Ampersand
        | Token::Sharp
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::StringConcat => Class::Bitwise,
        Token::Plus | Token::Minus => Class::Additive,
        Token::Mul | Token::Div | Token::Mod | Token::DuckIntDiv => Class::Multiplicative,
        Token::DoubleColon | Token::Caret | Token::Arrow | Token::LongArrow => Class::Other,
        _ => return None,
    })
}

/// Keywords that start a clause: expression chains end there (set operations and
/// joins continue across them).
fn starts_clause(keyword: Keyword) -> bool {
    matches!(
        keyword,
        Keyword::SELECT
            | Keyword::FROM
            | Keyword::WHERE
            | Keyword::GROUP
            | Keyword::HAVING
            | Keyword::ORDER
            | Keyword::LIMIT
            | Keyword::OFFSET
            | Keyword::ON
            | Keyword::USING
            | Keyword::SET
            | Keyword::VALUES
            | Keyword::RETURNING
            | Keyword::WINDOW
            | Keyword::QUALIFY
            | Keyword::CASE
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::END
            | Keyword::BY
            | Keyword::AS
    )
}

/// One parenthesis level: the current chain length of each class, and whether its
/// commas separate `FROM` items.
#[derive(Debug, Default)]
struct Level {
    /// Nesting of the enclosing levels when this one opened.
    base: usize,
    chains: [usize; CLASSES],
    in_from: bool,
}

impl Level {
    fn depth(&self) -> usize {
        self.chains.iter().sum()
    }

    /// An operator of `class`: its chain grows, the tighter chains start over.
    fn operator(&mut self, class: Class) {
        let index = class as usize;
        self.chains[index] += 1;
        for tighter in &mut self.chains[index + 1..] {
            *tighter = 0;
        }
    }

    /// A clause or list item begins: expression chains start over.
    fn restart_expressions(&mut self) {
        for chain in &mut self.chains[Class::Or as usize..] {
            *chain = 0;
        }
    }
}

/// An estimate, never below the truth for infix chains, of how deeply `sql`'s
/// expressions nest: the largest sum, over the open parenthesis levels, of each
/// level's chain lengths plus one per level. Text that does not tokenize counts as
/// depth 0 (the parser then reports the error).
pub fn expression_depth(sql: &str) -> usize {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return 0;
    };
    let mut levels = vec![Level::default()];
    let mut deepest = 0usize;
    for token in &tokens {
        match token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                let base = levels.last().map_or(0, |level| level.base + level.depth()) + 1;
                levels.push(Level {
                    base,
                    ..Level::default()
                });
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            Token::Comma => {
                let level = levels
                    .last_mut()
                    .expect("the outermost level is never popped");
                if level.in_from {
                    level.operator(Class::Join);
                } else {
                    level.restart_expressions();
                }
            }
            Token::Word(word) if class_of(token).is_none() => {
                let level = levels
                    .last_mut()
                    .expect("the outermost level is never popped");
                if word.keyword == Keyword::FROM {
                    level.in_from = true;
                } else if starts_clause(word.keyword) {
                    level.in_from = false;
                }
                if starts_clause(word.keyword) {
                    level.restart_expressions();
                }
            }
            _ => {
                if let Some(class) = class_of(token) {
                    levels
                        .last_mut()
                        .expect("the outermost level is never popped")
                        .operator(class);
                }
            }
        }
        let current = levels.last().map_or(0, |level| level.base + level.depth());
        deepest = deepest.max(current);
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(term: &str, operator: &str, n: usize) -> String {
        vec![term; n].join(operator)
    }

    #[test]
    fn left_deep_chains_count_their_length() {
        assert_eq!(expression_depth(&chain("1", " + ", 101)), 100);
        let ors = chain("id = 1", " OR ", 500);
        let depth = expression_depth(&format!("SELECT * FROM t WHERE {ors}"));
        assert!((500..=502).contains(&depth), "{depth}");
        let unions = chain("SELECT 1", " UNION ALL ", 300);
        assert!(expression_depth(&unions) >= 299);
        let ands = chain("a = a", " AND ", 2000);
        assert!(expression_depth(&ands) >= 2000);
    }

    #[test]
    fn flat_lists_stay_shallow() {
        let list = (0..10_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(expression_depth(&format!("SELECT * FROM t WHERE id IN ({list})")) < 10);
        let columns = (0..5_000)
            .map(|i| format!("a + b AS c{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(expression_depth(&format!("SELECT {columns} FROM t")) < 10);
        let demo = "SELECT f.id, count(*) FILTER (WHERE t.status = 'done') * 100.0 / count(*) \
                    FROM features f JOIN tasks t ON t.feature_id = f.id \
                    WHERE f.epic_id = 1 AND t.priority <= 2 GROUP BY f.id ORDER BY f.id";
        assert!(expression_depth(demo) < 12);
    }

    #[test]
    fn parentheses_and_from_lists_add_up() {
        let nested = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert!(expression_depth(&nested) >= 40);
        let tables = (0..200)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(expression_depth(&format!("SELECT 1 FROM {tables}")) >= 199);
    }

    #[test]
    fn limits_refuse_long_and_deep_text_before_parsing() {
        let limits = StatementLimits {
            max_bytes: 1_000,
            max_depth: 100,
        };
        assert!(limits.check("statement", "SELECT 1").is_ok());
        let long = format!("SELECT '{}'", "x".repeat(2_000));
        let err = limits.check("statement", &long).unwrap_err().to_string();
        assert!(err.contains("max_statement_kb"), "{err}");
        let deep = chain("1", "+", 200);
        let err = limits.check("filter", &deep).unwrap_err().to_string();
        assert!(err.contains("max_expression_depth"), "{err}");
        assert!(err.starts_with("the filter nests"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any text gets a depth, never a panic; a chain of n operators is at
            /// least n deep.
            #[test]
            fn any_text_gets_a_depth(text in ".{0,300}", n in 1usize..300) {
                let _ = expression_depth(&text);
                let chain = vec!["x"; n + 1].join(" OR ");
                prop_assert!(expression_depth(&chain) >= n);
            }
        }
    }
}
