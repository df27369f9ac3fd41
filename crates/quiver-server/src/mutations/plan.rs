//! Checking a request completely against the catalog — tables, columns, value types,
//! keys, predicates, limits — and turning it into the statements to run, before any
//! transaction begins.

use std::sync::Arc;

use quiver_proto::v1::{
    self as pb, DeleteRequest, InsertRequest, UpdateRequest, operation, selector,
};
use quiver_query::{QueryEngine, StatementLimits};
use quiver_storage::{Dialect, TableInfo, Value};

use super::convert::{arrow_rows, column, store_value, typed_rows};
use super::statements::Statements;
use crate::config::WriteConfig;
use crate::error::{Error, Result};

/// How the rows of one statement get to the store.
#[derive(Debug)]
pub(super) enum Execution {
    /// One statement per parameter row; returned rows are generated keys.
    Rows {
        sql: String,
        rows: Vec<Vec<Value>>,
        returns_keys: bool,
    },
    /// The store's bulk path.
    Bulk {
        schema: String,
        table: String,
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
}

/// One validated operation, ready to run.
#[derive(Debug)]
pub(super) struct Planned {
    pub(super) table: Arc<TableInfo>,
    pub(super) steps: Vec<Execution>,
}

/// A request, validated.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) operations: Vec<Planned>,
    pub(super) idempotency_key: Option<String>,
    pub(super) request_hash: String,
}

/// Plans requests against the engine's catalog, within the write limits.
pub(super) struct Planner<'a> {
    pub(super) engine: &'a QueryEngine,
    pub(super) limits: &'a WriteConfig,
}

impl Planner<'_> {
    fn resolve_table(&self, name: &str) -> Result<Arc<TableInfo>> {
        Ok(self.engine.resolve_table(name)?)
    }

    fn plan_insert(
        &self,
        request: &InsertRequest,
        upsert: bool,
        dialect: Dialect,
    ) -> Result<Planned> {
        let table = self.resolve_table(&request.table)?;
        let statements = Statements {
            table: &table,
            dialect,
        };
        if upsert && table.primary_key.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "table '{}' has no primary key to upsert on",
                request.table
            )));
        }
        let rows = request.rows.clone().unwrap_or_default();
        if !rows.rows.is_empty() && !rows.arrow_ipc.is_empty() {
            return Err(Error::InvalidRequest(
                "send typed rows or arrow_ipc, not both".to_owned(),
            ));
        }
        let mut steps = Vec::new();
        if !rows.arrow_ipc.is_empty() {
            let (columns, values) = arrow_rows(
                &table,
                &rows.arrow_ipc,
                (self.limits.max_rows, self.limits.max_request_bytes),
                dialect,
            )?;
            if upsert {
                check_keys_present(&table, &columns, 1)?;
                steps.push(Execution::Rows {
                    sql: statements.insert(&columns, true),
                    rows: values,
                    returns_keys: false,
                });
            } else {
                steps.push(Execution::Bulk {
                    schema: table.schema.clone(),
                    table: table.name.clone(),
                    columns,
                    rows: values,
                });
            }
        } else {
            let mut row_number = 1;
            for (columns, values) in typed_rows(&table, &rows.rows, dialect)? {
                if upsert {
                    check_keys_present(&table, &columns, row_number)?;
                }
                row_number += values.len();
                steps.push(Execution::Rows {
                    sql: statements.insert(&columns, upsert),
                    rows: values,
                    returns_keys: !table.primary_key.is_empty(),
                });
            }
        }
        Ok(Planned { table, steps })
    }

    fn plan_update(&self, request: &UpdateRequest, dialect: Dialect) -> Result<Planned> {
        let table = self.resolve_table(&request.table)?;
        let set = request.set.clone().unwrap_or_default();
        if set.values.is_empty() {
            return Err(Error::InvalidRequest(
                "update sets no columns: fill `set`".to_owned(),
            ));
        }
        let statements = Statements {
            table: &table,
            dialect,
        };
        let set_values = set
            .values
            .iter()
            .map(|(name, value)| store_value(column(&table, name)?, value, 1, dialect))
            .collect::<Result<Vec<_>>>()?;
        let assignments: Vec<String> = set
            .values
            .keys()
            .enumerate()
            .map(|(i, name)| format!("{} = {}", statements.quote(name), statements.param(i + 1)))
            .collect();
        let (condition, selector_rows, _) = plan_selector(
            &table,
            &request.r#where,
            dialect,
            &self.limits.limits,
            set_values.len() + 1,
        )?;
        let sql = format!(
            "UPDATE {} SET {} WHERE {condition}",
            statements.target(),
            assignments.join(", ")
        );
        let rows = selector_rows
            .into_iter()
            .map(|mut params| {
                let mut row = set_values.clone();
                row.append(&mut params);
                row
            })
            .collect();
        Ok(Planned {
            steps: vec![Execution::Rows {
                sql,
                rows,
                returns_keys: false,
            }],
            table,
        })
    }

    fn plan_delete(&self, request: &DeleteRequest, dialect: Dialect) -> Result<Planned> {
        let table = self.resolve_table(&request.table)?;
        let statements = Statements {
            table: &table,
            dialect,
        };
        let (condition, rows, _) =
            plan_selector(&table, &request.r#where, dialect, &self.limits.limits, 1)?;
        let sql = format!("DELETE FROM {} WHERE {condition}", statements.target());
        Ok(Planned {
            steps: vec![Execution::Rows {
                sql,
                rows,
                returns_keys: false,
            }],
            table,
        })
    }

    /// Validates a request of `operations` and sizes it against the limits.
    pub(super) fn plan(
        &self,
        operations: Vec<operation::Op>,
        idempotency_key: &str,
        encoded: &[u8],
    ) -> Result<Plan> {
        let limits = self.limits;
        // Counted before any per-operation work.
        if operations.len() > limits.max_operations {
            return Err(Error::ResourceExhausted(format!(
                "the request has {} operations; the limit is {} (max_mutation_operations)",
                operations.len(),
                limits.max_operations
            )));
        }
        if encoded.len() > limits.max_request_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the request is {} bytes; the limit is {} (max_mutation_size_mb)",
                encoded.len(),
                limits.max_request_bytes
            )));
        }
        let typed_rows: usize = operations
            .iter()
            .map(|op| match op {
                operation::Op::Insert(r) => row_count(&r.rows),
                operation::Op::Upsert(r) => row_count(&r.rows),
                operation::Op::Update(r) => key_count(&r.r#where),
                operation::Op::Delete(r) => key_count(&r.r#where),
            })
            .sum();
        check_row_limit(typed_rows, limits.max_rows)?;
        let dialect = self.engine.store().dialect();
        let planned = operations
            .iter()
            .map(|op| match op {
                operation::Op::Insert(r) => self.plan_insert(r, false, dialect),
                operation::Op::Upsert(r) => self.plan_insert(
                    &InsertRequest {
                        table: r.table.clone(),
                        rows: r.rows.clone(),
                        idempotency_key: String::new(),
                    },
                    true,
                    dialect,
                ),
                operation::Op::Update(r) => self.plan_update(r, dialect),
                operation::Op::Delete(r) => self.plan_delete(r, dialect),
            })
            .collect::<Result<Vec<_>>>()?;
        let all_rows: usize = planned
            .iter()
            .flat_map(|p| &p.steps)
            .map(|step| match step {
                Execution::Rows { rows, .. } | Execution::Bulk { rows, .. } => rows.len(),
            })
            .sum();
        check_row_limit(all_rows, limits.max_rows)?;
        Ok(Plan {
            operations: planned,
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_owned()),
            request_hash: request_digest(encoded),
        })
    }
}

/// The WHERE clause and its parameter rows for a selector; `first` is the first
/// parameter number the clause may use.
fn plan_selector(
    table: &TableInfo,
    selector: &Option<pb::Selector>,
    dialect: Dialect,
    limits: &StatementLimits,
    first: usize,
) -> Result<(String, Vec<Vec<Value>>, usize)> {
    let statements = Statements { table, dialect };
    match selector.as_ref().and_then(|s| s.target.as_ref()) {
        None => Err(Error::InvalidRequest(
            "no rows selected: give `where` keys or a predicate".to_owned(),
        )),
        Some(selector::Target::Keys(keys)) => {
            if table.primary_key.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "table '{}' has no primary key; select rows with a predicate",
                    table.name
                )));
            }
            let rows = keys
                .keys
                .iter()
                .enumerate()
                .map(|(index, key)| {
                    if key.values.len() != table.primary_key.len() {
                        return Err(Error::InvalidRequest(format!(
                            "key {}: give exactly the primary key columns ({})",
                            index + 1,
                            table.primary_key.join(", ")
                        )));
                    }
                    table
                        .primary_key
                        .iter()
                        .map(|name| {
                            let value = key.values.get(name).ok_or_else(|| {
                                Error::InvalidRequest(format!(
                                    "key {}: primary key column '{name}' is missing",
                                    index + 1
                                ))
                            })?;
                            store_value(column(table, name)?, value, index + 1, dialect)
                        })
                        .collect()
                })
                .collect::<Result<Vec<Vec<Value>>>>()?;
            Ok((statements.key_condition(first), rows, keys.keys.len()))
        }
        Some(selector::Target::Predicate(predicate)) => {
            let (sql, params) =
                quiver_query::predicate::predicate_sql(table, dialect, predicate, first, limits)?;
            Ok((sql, vec![params], 0))
        }
    }
}

/// A SHA-256 digest of the encoded request: a retry with the same idempotency key
/// must be the same request, and a different one can never collide with it.
fn request_digest(encoded: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(encoded);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn row_count(rows: &Option<pb::Rows>) -> usize {
    rows.as_ref().map_or(0, |r| r.rows.len())
}

fn key_count(selector: &Option<pb::Selector>) -> usize {
    match selector.as_ref().and_then(|s| s.target.as_ref()) {
        Some(selector::Target::Keys(keys)) => keys.keys.len(),
        _ => 0,
    }
}

fn check_row_limit(rows: usize, limit: usize) -> Result<()> {
    if rows > limit {
        return Err(Error::ResourceExhausted(format!(
            "the request writes {rows} rows; the limit is {limit} (max_mutation_rows)"
        )));
    }
    Ok(())
}

fn check_keys_present(table: &TableInfo, columns: &[String], row: usize) -> Result<()> {
    for key in &table.primary_key {
        if !columns.contains(key) {
            return Err(Error::InvalidRequest(format!(
                "row {row}: upsert needs primary key column '{key}'"
            )));
        }
    }
    Ok(())
}
