//! A subscription request, and the same request checked against the catalog: the
//! tables it follows, its compiled filter, its projection, where it starts.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use quiver_query::QueryEngine;
use quiver_query::predicate::RowFilter;
use quiver_storage::TableInfo;

use super::decode::{Op, Page};
use crate::error::{Error, Result};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this version.
    After(u64),
    /// After the latest version.
    Latest,
    /// The current rows first, then the changes after the version read before them.
    Snapshot,
}

/// A subscription request, as both surfaces take it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Tables by name (`tasks`, `schema.table`).
    pub tables: Vec<String>,
    /// Optional SQL predicate over a row.
    pub filter: Option<String>,
    /// Where to start.
    pub start: Start,
    /// Optional projection of the row images.
    pub columns: Vec<String>,
}

/// One followed table of a subscription.
#[derive(Debug)]
pub(crate) struct Follow {
    /// The table's name in the change log.
    pub name: Arc<str>,
    pub table: Arc<TableInfo>,
    pub(super) filter: Option<RowFilter>,
    /// Column positions kept in row images (`None`: all).
    pub columns: Option<Vec<usize>>,
}

/// Which rows of a page's after and before images match a filter.
type ImageMatches = (Vec<bool>, Vec<bool>);

/// A request checked against the catalog: tables exist, the filter compiles.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Followed tables by change-log name.
    pub follows: HashMap<Arc<str>, Follow>,
    pub(super) start: Start,
}

impl Spec {
    /// Checks `request` against the catalog.
    pub(crate) fn compile(
        engine: &QueryEngine,
        request: &Request,
        max_tables: usize,
    ) -> Result<Self> {
        if request.tables.is_empty() {
            return Err(Error::InvalidRequest(
                "a subscription needs at least one table".to_owned(),
            ));
        }
        // Counted before any per-table work, repeats included.
        if request.tables.len() > max_tables {
            return Err(Error::ResourceExhausted(format!(
                "the subscription names {} tables; the limit is {max_tables} \
                 (max_subscription_tables)",
                request.tables.len()
            )));
        }
        let mut names: Vec<&String> = request.tables.iter().collect();
        names.sort();
        names.dedup();
        let filter = request.filter.as_deref().filter(|f| !f.trim().is_empty());
        if let Some(filter) = filter {
            // Once, before it is compiled for each table.
            engine.limits().check("filter", filter)?;
        }
        let mut follows = HashMap::new();
        for name in names {
            let table = engine.resolve_table(name).map_err(Error::from)?;
            let log_name: Arc<str> = Arc::from(quiver_storage::changelog::table_log_name(
                &table,
                engine.store().dialect(),
            ));
            let filter = filter
                .map(|predicate| {
                    RowFilter::compile(&table, predicate, engine.limits()).map_err(|err| {
                        match request.tables.len() {
                            1 => Error::from(err),
                            _ => Error::InvalidRequest(format!("table '{name}': {err}")),
                        }
                    })
                })
                .transpose()?;
            let columns = if request.columns.is_empty() {
                None
            } else {
                let positions = request
                    .columns
                    .iter()
                    .map(|column| {
                        table
                            .columns
                            .iter()
                            .position(|c| &c.name == column)
                            .ok_or_else(|| {
                                Error::InvalidRequest(format!(
                                    "table '{name}' has no column '{column}'"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(positions)
            };
            follows.insert(
                Arc::clone(&log_name),
                Follow {
                    name: log_name,
                    table,
                    filter,
                    columns,
                },
            );
        }
        Ok(Self {
            follows,
            start: request.start,
        })
    }

    /// The events of `page` after version `after` this subscription receives, by index.
    pub(super) fn select(&self, page: &Page, after: u64) -> Result<Vec<usize>> {
        // Per table: which image rows match the filter (None: no filter, all match).
        let mut matched: HashMap<&str, Option<ImageMatches>> = HashMap::new();
        for (name, follow) in &self.follows {
            let Some(images) = page.tables.get(name) else {
                continue;
            };
            let outcome = match &follow.filter {
                None => None,
                Some(filter) => {
                    let flags = |batch: &RecordBatch| -> Result<Vec<bool>> {
                        let matches = filter.matches(batch)?;
                        Ok(matches.iter().map(|m| m == Some(true)).collect())
                    };
                    Some((flags(&images.after)?, flags(&images.before)?))
                }
            };
            matched.insert(name, outcome);
        }
        let mut selected = Vec::new();
        for (index, event) in page.events.iter().enumerate() {
            if event.version <= after || !self.follows.contains_key(&event.table) {
                continue;
            }
            let keep = match (event.op, event.row) {
                (Op::Truncate, _) => true,
                (_, None) => self.follows[&event.table].filter.is_none(),
                (op, Some(row)) => match matched.get(&*event.table) {
                    Some(Some((after, before))) => {
                        (op.has_after() && after[row]) || (op.has_before() && before[row])
                    }
                    _ => true,
                },
            };
            if keep {
                selected.push(index);
            }
        }
        Ok(selected)
    }
}
