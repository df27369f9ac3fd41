//! Row predicates written by API callers (`status = 'blocked' AND priority <= 2`),
//! compiled with DataFusion against one table and rendered as store SQL.

use datafusion::common::DFSchema;
use datafusion::prelude::SessionContext;
use quiver_storage::{Dialect, TableInfo, Value};

use crate::error::{Error, Result};
use crate::pushdown::FilterRenderer;

/// `predicate` as SQL the store evaluates exactly as DataFusion would, with its
/// literals as parameters numbered from `$1` / `?1`.
///
/// The predicate must be a boolean expression over the table's columns; parts the
/// store cannot evaluate identically (functions, casts, date comparisons) are refused
/// rather than run with different semantics.
pub fn predicate_sql(
    table: &TableInfo,
    dialect: Dialect,
    predicate: &str,
) -> Result<(String, Vec<Value>)> {
    let invalid = |message: String| Error::Predicate {
        predicate: predicate.to_owned(),
        message,
    };
    if predicate.trim().is_empty() {
        return Err(invalid("the predicate is empty".to_owned()));
    }
    let schema = DFSchema::try_from(table.arrow_schema().as_ref().clone())
        .map_err(|err| invalid(err.to_string()))?;
    let expr = SessionContext::new()
        .parse_sql_expr(predicate, &schema)
        .map_err(|err| invalid(err.find_root().to_string()))?;
    let mut renderer = FilterRenderer::new(table, dialect);
    let sql = renderer.exact(&expr).ok_or_else(|| {
        invalid(
            "only comparisons, IN, BETWEEN, IS [NOT] NULL, AND, OR and NOT over number and \
             text columns and literals are supported"
                .to_owned(),
        )
    })?;
    Ok((sql, renderer.params))
}
