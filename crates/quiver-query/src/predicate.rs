//! Row predicates written by API callers (`status = 'blocked' AND priority <= 2`),
//! compiled with DataFusion against one table: rendered as store SQL (writes), or
//! evaluated on Arrow batches of the table's rows (the change feed).

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::prep_null_mask_filter;
use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use quiver_storage::{Dialect, TableInfo, Value};

use crate::error::{Error, Result};
use crate::limits::StatementLimits;
use crate::pushdown::FilterRenderer;

/// Stack kept free for work that recurses over a caller's expression tree, and the
/// size of the stack grown when less is left.
const EXPRESSION_RED_ZONE: usize = 8 << 20;
const EXPRESSION_STACK: usize = 64 << 20;

/// Runs `f`, which walks a caller's expression tree, with enough stack for the
/// deepest tree the statement limits admit.
fn with_stack<T>(f: impl FnOnce() -> T) -> T {
    stacker::maybe_grow(EXPRESSION_RED_ZONE, EXPRESSION_STACK, f)
}

/// The start of a caller's text, for messages.
fn shown(text: &str) -> String {
    let mut short: String = text.chars().take(100).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// `predicate` as SQL the store evaluates exactly as DataFusion would, with its
/// literals as parameters numbered from `first_param` (`$N` / `?N`).
///
/// The predicate must be a boolean expression over the table's columns; parts the
/// store cannot evaluate identically (functions, casts, date comparisons) are refused
/// rather than run with different semantics.
pub fn predicate_sql(
    table: &TableInfo,
    dialect: Dialect,
    predicate: &str,
    first_param: usize,
    limits: &StatementLimits,
) -> Result<(String, Vec<Value>)> {
    let invalid = |message: String| Error::Predicate {
        predicate: shown(predicate),
        message,
    };
    if predicate.trim().is_empty() {
        return Err(invalid("the predicate is empty".to_owned()));
    }
    limits.check("predicate", predicate)?;
    let (sql, params) = with_stack(|| render_predicate(table, dialect, predicate, first_param))?;
    let last = first_param + params.len();
    if last > dialect.max_parameters() {
        return Err(Error::Limit(format!(
            "the predicate binds {} values; the store takes at most {} parameters in a statement",
            params.len(),
            dialect.max_parameters()
        )));
    }
    Ok((sql, params))
}

fn render_predicate(
    table: &TableInfo,
    dialect: Dialect,
    predicate: &str,
    first_param: usize,
) -> Result<(String, Vec<Value>)> {
    let invalid = |message: String| Error::Predicate {
        predicate: shown(predicate),
        message,
    };
    let schema = DFSchema::try_from(table.arrow_schema().as_ref().clone())
        .map_err(|err| invalid(err.to_string()))?;
    let expr = SessionContext::new()
        .parse_sql_expr(predicate, &schema)
        .map_err(|err| invalid(err.find_root().to_string()))?;
    let mut renderer = FilterRenderer::new(table, dialect).starting_at(first_param);
    let sql = renderer.exact(&expr).ok_or_else(|| {
        invalid(
            "only comparisons, IN, BETWEEN, IS [NOT] NULL, AND, OR and NOT over number and \
             text columns and literals are supported"
                .to_owned(),
        )
    })?;
    Ok((sql, renderer.params))
}

/// A caller's row predicate compiled against one table for evaluation on Arrow
/// batches of its rows (the change feed's filter). Unlike [`predicate_sql`] the whole
/// SQL expression language of queries is allowed: it runs in DataFusion, not in the
/// store.
#[derive(Debug, Clone)]
pub struct RowFilter {
    expr: Expr,
    physical: Arc<dyn PhysicalExpr>,
}

impl RowFilter {
    /// Compiles `predicate` against `table`'s columns; it must be boolean.
    pub fn compile(table: &TableInfo, predicate: &str, limits: &StatementLimits) -> Result<Self> {
        if predicate.trim().is_empty() {
            return Err(Error::Predicate {
                predicate: String::new(),
                message: "the predicate is empty".to_owned(),
            });
        }
        limits.check("filter", predicate)?;
        with_stack(|| Self::compile_checked(table, predicate))
    }

    fn compile_checked(table: &TableInfo, predicate: &str) -> Result<Self> {
        let invalid = |message: String| Error::Predicate {
            predicate: shown(predicate),
            message,
        };
        let arrow_schema = table.arrow_schema();
        let schema = DFSchema::try_from(arrow_schema.as_ref().clone())
            .map_err(|err| invalid(err.to_string()))?;
        let context = SessionContext::new();
        let expr = context
            .parse_sql_expr(predicate, &schema)
            .map_err(|err| invalid(err.find_root().to_string()))?;
        let physical = context
            .state()
            .create_physical_expr(expr.clone(), &schema)
            .map_err(|err| invalid(err.find_root().to_string()))?;
        let data_type = physical
            .data_type(&arrow_schema)
            .map_err(|err| invalid(err.find_root().to_string()))?;
        if !matches!(data_type, DataType::Boolean | DataType::Null) {
            return Err(invalid(format!(
                "a filter must be a boolean condition, not a {data_type} value"
            )));
        }
        Ok(Self { expr, physical })
    }

    /// The predicate as a DataFusion expression over the table's columns.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Which rows of `batch` (rows of the table, in its column order) match; a NULL
    /// outcome does not match, as in `WHERE`.
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        with_stack(|| self.evaluate(batch))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let outcome = self.physical.evaluate(batch)?;
        let array = outcome.into_array(batch.num_rows())?;
        let matched = match array.as_boolean_opt() {
            Some(matched) => matched.clone(),
            // A NULL literal condition: nothing matches.
            None => BooleanArray::from(vec![false; batch.num_rows()]),
        };
        Ok(if matched.null_count() > 0 {
            prep_null_mask_filter(&matched)
        } else {
            matched
        })
    }
}
