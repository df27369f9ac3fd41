//! Translating DataFusion filters into SQL the store runs.
//!
//! A filter is pushed down only when the store computes exactly what DataFusion would:
//! comparisons, `IN`, `BETWEEN`, `IS [NOT] NULL` and boolean combinations over integer,
//! float and text columns against literals of the same kind, or another such column.
//! Literals travel as bound parameters, never spliced into the SQL.
//!
//! `LIKE` on a text column is pushed *inexactly*: SQLite's `LIKE` ignores ASCII case,
//! so it returns a superset and DataFusion filters the rows again. Everything else —
//! dates and timestamps (stored as text in SQLite, where text order need not be time
//! order), booleans, casts, functions — stays in DataFusion.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::{InList, Like};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use quiver_storage::{ColumnInfo, Dialect, TableInfo, Value};

/// The kinds of column whose comparisons the store evaluates like DataFusion does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
}

/// The kind of a column whose values the store compares exactly as Arrow does.
///
/// On PostgreSQL, text is pushed only for `text` and `varchar` columns (`char(n)`
/// compares ignoring trailing blanks, other types read as text compare by their own
/// rules), and ordering comparisons name the byte-order collation.
fn column_kind(column: &ColumnInfo, dialect: Dialect) -> Option<Kind> {
    if column.read_as_text {
        return None;
    }
    match (&column.data_type, dialect) {
        (DataType::Int64 | DataType::Float64, _) => Some(Kind::Number),
        (
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32,
            Dialect::Sqlite,
        ) => Some(Kind::Number),
        (DataType::Int16 | DataType::Int32 | DataType::Float32, Dialect::Postgres) => {
            Some(Kind::Number)
        }
        (DataType::Utf8, Dialect::Sqlite) => Some(Kind::Text),
        (DataType::Utf8, Dialect::Postgres) => {
            let declared = column.declared_type.to_ascii_lowercase();
            (declared == "text" || declared.starts_with("character varying")).then_some(Kind::Text)
        }
        _ => None,
    }
}

fn literal_value(value: &ScalarValue) -> Option<(Kind, Value)> {
    Some(match value {
        ScalarValue::Int8(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::Int16(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::Int32(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::Int64(Some(v)) => (Kind::Number, Value::Int(*v)),
        ScalarValue::UInt8(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::UInt16(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::UInt32(Some(v)) => (Kind::Number, Value::Int(i64::from(*v))),
        ScalarValue::UInt64(Some(v)) => (Kind::Number, Value::Int(i64::try_from(*v).ok()?)),
        ScalarValue::Float32(Some(v)) if v.is_finite() => {
            (Kind::Number, Value::Float(f64::from(*v)))
        }
        ScalarValue::Float64(Some(v)) if v.is_finite() => (Kind::Number, Value::Float(*v)),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => (Kind::Text, Value::Text(v.clone())),
        _ => return None,
    })
}

/// Renders filters as SQL for one table, collecting literal values as parameters.
#[derive(Debug)]
pub(crate) struct FilterRenderer<'a> {
    table: &'a TableInfo,
    dialect: Dialect,
    /// Values bound so far, in placeholder order.
    pub(crate) params: Vec<Value>,
    /// The number of the first placeholder.
    first_param: usize,
}

impl<'a> FilterRenderer<'a> {
    pub(crate) fn new(table: &'a TableInfo, dialect: Dialect) -> Self {
        Self {
            table,
            dialect,
            params: Vec::new(),
            first_param: 1,
        }
    }

    /// The same renderer, numbering its placeholders from `first` (when they follow
    /// other parameters of the statement).
    pub(crate) fn starting_at(mut self, first: usize) -> Self {
        self.first_param = first.max(1);
        self
    }

    fn bind(&mut self, value: Value) -> String {
        let placeholder = self
            .dialect
            .placeholder(self.first_param + self.params.len(), &value);
        self.params.push(value);
        placeholder
    }

    /// `operand`, in the collation that orders text as Arrow does, for ordering
    /// comparisons of text.
    fn ordered(&self, operand: String, kind: Kind) -> String {
        match (kind, self.dialect.text_order_collation()) {
            (Kind::Text, Some(collation)) => format!("{operand} COLLATE {collation}"),
            _ => operand,
        }
    }

    fn column(&self, expr: &Expr) -> Option<(String, Kind)> {
        let Expr::Column(column) = expr else {
            return None;
        };
        let info = self.table.column(&column.name)?;
        Some((
            self.dialect.quote_identifier(&info.name),
            column_kind(info, self.dialect)?,
        ))
    }

    /// A column or a literal of a pushable kind.
    fn operand(&mut self, expr: &Expr) -> Option<(String, Kind)> {
        if let Some(column) = self.column(expr) {
            return Some(column);
        }
        let Expr::Literal(value, _) = expr else {
            return None;
        };
        let (kind, value) = literal_value(value)?;
        Some((self.bind(value), kind))
    }

    /// Renders `expr` if the store evaluates it exactly as DataFusion does.
    pub(crate) fn exact(&mut self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => {
                    let left = self.exact(left)?;
                    let right = self.exact(right)?;
                    let word = if *op == Operator::And { "AND" } else { "OR" };
                    Some(format!("({left} {word} {right})"))
                }
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => {
                    // At least one side must be a column: literal-only comparisons are
                    // folded by DataFusion and need no pushdown.
                    if self.column(left).is_none() && self.column(right).is_none() {
                        return None;
                    }
                    let (left, left_kind) = self.operand(left)?;
                    let (right, right_kind) = self.operand(right)?;
                    if left_kind != right_kind {
                        return None;
                    }
                    let left = match op {
                        Operator::Eq | Operator::NotEq => left,
                        _ => self.ordered(left, left_kind),
                    };
                    Some(format!("{left} {op} {right}"))
                }
                _ => None,
            },
            Expr::Not(inner) => Some(format!("NOT ({})", self.exact(inner)?)),
            Expr::IsNull(inner) => {
                let (column, _) = self.column(inner)?;
                Some(format!("{column} IS NULL"))
            }
            Expr::IsNotNull(inner) => {
                let (column, _) = self.column(inner)?;
                Some(format!("{column} IS NOT NULL"))
            }
            Expr::InList(InList {
                expr,
                list,
                negated,
            }) => {
                let (column, kind) = self.column(expr)?;
                let mut items = Vec::with_capacity(list.len());
                for item in list {
                    let Expr::Literal(value, _) = item else {
                        return None;
                    };
                    let (item_kind, value) = literal_value(value)?;
                    if item_kind != kind {
                        return None;
                    }
                    items.push(self.bind(value));
                }
                let not = if *negated { "NOT " } else { "" };
                Some(format!("{column} {not}IN ({})", items.join(", ")))
            }
            Expr::Between(Between {
                expr,
                negated,
                low,
                high,
            }) => {
                let (column, kind) = self.column(expr)?;
                let (low, low_kind) = self.operand(low)?;
                let (high, high_kind) = self.operand(high)?;
                let not = if *negated { "NOT " } else { "" };
                let column = self.ordered(column, kind);
                (low_kind == kind && high_kind == kind)
                    .then(|| format!("{column} {not}BETWEEN {low} AND {high}"))
            }
            _ => None,
        }
    }

    /// Renders a case-sensitive `LIKE` whose store result is a superset of DataFusion's.
    pub(crate) fn superset(&mut self, expr: &Expr) -> Option<String> {
        let Expr::Like(Like {
            negated: false,
            expr,
            pattern,
            escape_char,
            case_insensitive: false,
        }) = expr
        else {
            return None;
        };
        let (column, Kind::Text) = self.column(expr)? else {
            return None;
        };
        let Expr::Literal(value, _) = pattern.as_ref() else {
            return None;
        };
        let (Kind::Text, pattern) = literal_value(value)? else {
            return None;
        };
        let pattern = self.bind(pattern);
        Some(match escape_char {
            Some(escape) => {
                let escape = self.bind(Value::Text(escape.to_string()));
                format!("{column} LIKE {pattern} ESCAPE {escape}")
            }
            None => format!("{column} LIKE {pattern}"),
        })
    }

    /// Renders a filter either way; `None` if it cannot be pushed at all.
    pub(crate) fn render(&mut self, expr: &Expr) -> Option<String> {
        self.exact(expr).or_else(|| self.superset(expr))
    }
}

/// How far the store can take each filter.
pub(crate) fn classify(
    table: &TableInfo,
    dialect: Dialect,
    filter: &Expr,
) -> TableProviderFilterPushDown {
    let mut scratch = FilterRenderer::new(table, dialect);
    if scratch.exact(filter).is_some() {
        TableProviderFilterPushDown::Exact
    } else if scratch.superset(filter).is_some() {
        TableProviderFilterPushDown::Inexact
    } else {
        TableProviderFilterPushDown::Unsupported
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};
    use quiver_storage::{ColumnInfo, TableKind};

    use super::*;

    fn table() -> TableInfo {
        let column = |name: &str, data_type: DataType| ColumnInfo {
            name: name.to_owned(),
            declared_type: match data_type {
                DataType::Utf8 => "text".to_owned(),
                _ => String::new(),
            },
            data_type,
            nullable: true,
            default: None,
            read_as_text: false,
        };
        TableInfo {
            schema: "main".into(),
            name: "tasks".into(),
            kind: TableKind::Table,
            columns: vec![
                column("id", DataType::Int64),
                column("status", DataType::Utf8),
                column("estimate", DataType::Float64),
                column(
                    "created_at",
                    DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
                ),
            ],
            primary_key: vec!["id".into()],
            foreign_keys: vec![],
            indexes: vec![],
            estimated_rows: None,
            range_key: None,
        }
    }

    fn render(expr: Expr) -> Option<(String, Vec<Value>)> {
        let table = table();
        let mut renderer = FilterRenderer::new(&table, Dialect::Sqlite);
        let sql = renderer.exact(&expr)?;
        Some((sql, renderer.params))
    }

    #[test]
    fn comparisons_and_logic_push_down_with_bound_literals() {
        let (sql, params) = render(
            col("status")
                .eq(lit("blocked"))
                .and(col("id").lt_eq(lit(2i64))),
        )
        .unwrap();
        assert_eq!(sql, "(\"status\" = ?1 AND \"id\" <= ?2)");
        assert_eq!(params, vec![Value::Text("blocked".into()), Value::Int(2)]);

        let (sql, _) = render(lit(5i64).gt(col("id")).or(col("estimate").is_null())).unwrap();
        assert_eq!(sql, "(?1 > \"id\" OR \"estimate\" IS NULL)");

        let (sql, params) = render(col("id").in_list(vec![lit(1i64), lit(2i64)], true)).unwrap();
        assert_eq!(sql, "\"id\" NOT IN (?1, ?2)");
        assert_eq!(params.len(), 2);

        let (sql, _) = render(col("estimate").between(lit(1.5), lit(3i64))).unwrap();
        assert_eq!(sql, "\"estimate\" BETWEEN ?1 AND ?2");
    }

    #[test]
    fn postgres_placeholders_are_typed_and_text_orders_bytewise() {
        let table = table();
        let mut renderer = FilterRenderer::new(&table, Dialect::Postgres);
        let sql = renderer
            .exact(
                &col("status")
                    .lt(lit("b"))
                    .and(col("id").eq(lit(3i64)))
                    .and(col("status").eq(lit("x"))),
            )
            .unwrap();
        assert_eq!(
            sql,
            "((\"status\" COLLATE \"C\" < $1::text AND \"id\" = $2::int8) AND \"status\" = $3::text)"
        );
        let mut char_table = table.clone();
        char_table.columns[1].declared_type = "character(8)".to_owned();
        assert_eq!(
            classify(&char_table, Dialect::Postgres, &col("status").eq(lit("x"))),
            TableProviderFilterPushDown::Unsupported
        );
    }

    #[test]
    fn what_the_store_would_answer_differently_stays_in_datafusion() {
        let table = table();
        let unsupported = [
            col("created_at").gt(lit("2025-01-01")),
            col("id").eq(lit("1")),
            col("status").eq(lit(ScalarValue::Utf8(None))),
            col("missing").eq(lit(1i64)),
            col("status").ilike(lit("a%")),
            col("status").not_like(lit("a%")),
        ];
        for filter in unsupported {
            assert_eq!(
                classify(&table, Dialect::Sqlite, &filter),
                TableProviderFilterPushDown::Unsupported,
                "{filter}"
            );
        }
        assert_eq!(
            classify(&table, Dialect::Sqlite, &col("status").like(lit("bl%"))),
            TableProviderFilterPushDown::Inexact
        );
        assert_eq!(
            classify(&table, Dialect::Sqlite, &col("status").eq(lit("x"))),
            TableProviderFilterPushDown::Exact
        );
    }
}
