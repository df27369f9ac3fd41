//! `quiver.v1.Mutations`: typed row writes, atomic and idempotent, answering with the
//! commit version.
//!
//! A request is checked against the catalog completely — tables, columns, value types,
//! keys, predicates, row limits — before a transaction begins, so a bad request never
//! holds the writer. The statements then run in one transaction; any failure rolls it
//! back. Constraint violations come from the store and name the constraint.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::ipc::reader::StreamReader;
use prost::Message;
use quiver_proto::v1::mutations_server::Mutations;
use quiver_proto::v1::{
    self as pb, ApplyRequest, DeleteRequest, InsertRequest, MutateResponse, OperationResult,
    UpdateRequest, UpsertRequest, operation, selector, value::Kind,
};
use quiver_storage::{
    ColumnInfo, CommitOptions, Dialect, IdempotencyRecord, TableInfo, Transaction, Value,
};
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::writes::Writer;

/// The Mutations service.
#[derive(Debug, Clone)]
pub struct MutationService {
    writer: Arc<Writer>,
}

impl MutationService {
    /// A service writing through `writer`.
    pub fn new(writer: Arc<Writer>) -> Self {
        Self { writer }
    }
}

/// How the rows of one statement get to the store.
#[derive(Debug)]
enum Execution {
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

/// Rows naming the same columns: the column names, then each row's values.
type RowRun = (Vec<String>, Vec<Vec<Value>>);

/// One validated operation, ready to run.
#[derive(Debug)]
struct Planned {
    table: Arc<TableInfo>,
    steps: Vec<Execution>,
}

/// A request, validated.
#[derive(Debug)]
struct Plan {
    operations: Vec<Planned>,
    idempotency_key: Option<String>,
    request_hash: String,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What to call a value's kind in messages.
fn kind_name(kind: &Option<Kind>) -> &'static str {
    match kind {
        None | Some(Kind::Null(_)) => "null",
        Some(Kind::Bool(_)) => "bool",
        Some(Kind::Int64(_)) => "int64",
        Some(Kind::Double(_)) => "double",
        Some(Kind::String(_)) => "string",
        Some(Kind::Bytes(_)) => "bytes",
        Some(Kind::TimestampMicros(_)) => "timestamp_micros",
        Some(Kind::DateDays(_)) => "date_days",
        Some(Kind::Decimal(_)) => "decimal",
    }
}

/// What a column takes, for messages.
fn expected_kind(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int64",
        DataType::Float32 | DataType::Float64 => "double or int64",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "decimal, int64 or double",
        DataType::Binary | DataType::LargeBinary => "bytes",
        DataType::Date32 => "date_days",
        DataType::Timestamp(..) => "timestamp_micros",
        _ => "string",
    }
}

fn is_decimal_text(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    !(whole.is_empty() && fraction.is_empty())
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

/// Converts a protobuf value for `column`, or explains why it does not fit.
fn store_value(column: &ColumnInfo, value: &pb::Value, row: usize) -> Result<Value> {
    let kind = &value.kind;
    let mismatch = || {
        Error::InvalidRequest(format!(
            "row {row}, column '{}': expected {} ({}), got {}",
            column.name,
            expected_kind(&column.data_type),
            column.declared_type,
            kind_name(kind)
        ))
    };
    let out_of_range = |v: i64| {
        Error::InvalidRequest(format!(
            "row {row}, column '{}': {v} is out of range for {}",
            column.name, column.declared_type
        ))
    };
    let Some(kind) = kind else {
        return Ok(Value::Null);
    };
    Ok(match (&column.data_type, kind) {
        (_, Kind::Null(_)) => Value::Null,
        (DataType::Boolean, Kind::Bool(v)) => Value::Bool(*v),
        (DataType::Int8, Kind::Int64(v)) => {
            i8::try_from(*v).map_err(|_| out_of_range(*v))?;
            Value::Int(*v)
        }
        (DataType::Int16, Kind::Int64(v)) => {
            i16::try_from(*v).map_err(|_| out_of_range(*v))?;
            Value::Int(*v)
        }
        (DataType::Int32, Kind::Int64(v)) => {
            i32::try_from(*v).map_err(|_| out_of_range(*v))?;
            Value::Int(*v)
        }
        (DataType::Int64, Kind::Int64(v)) => Value::Int(*v),
        (DataType::Float32 | DataType::Float64, Kind::Double(v)) => Value::Float(*v),
        (DataType::Float32 | DataType::Float64, Kind::Int64(v)) => Value::Float(*v as f64),
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Decimal(v)) => {
            if !is_decimal_text(v) {
                return Err(Error::InvalidRequest(format!(
                    "row {row}, column '{}': '{v}' is not a decimal number",
                    column.name
                )));
            }
            Value::Decimal(v.clone())
        }
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Int64(v)) => {
            Value::Decimal(v.to_string())
        }
        (DataType::Decimal128(..) | DataType::Decimal256(..), Kind::Double(v)) if v.is_finite() => {
            Value::Decimal(v.to_string())
        }
        (DataType::Binary | DataType::LargeBinary, Kind::Bytes(v)) => Value::Blob(v.clone()),
        (DataType::Date32, Kind::DateDays(v)) => Value::Date(*v),
        (DataType::Timestamp(..), Kind::TimestampMicros(v)) => Value::Timestamp(*v),
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Kind::String(v)) => {
            Value::Text(v.clone())
        }
        // Types without a typed form (time, interval, arrays) are written as text the
        // store parses.
        (
            DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Interval(_)
            | DataType::List(_)
            | DataType::LargeList(_),
            Kind::String(v),
        ) => Value::Text(v.clone()),
        _ => return Err(mismatch()),
    })
}

/// A value read back from the store (generated keys) as a protobuf value of the
/// column's type.
fn proto_value(column: &ColumnInfo, value: Value) -> pb::Value {
    let kind = match (value, &column.data_type) {
        (Value::Null, _) => Kind::Null(pb::NullValue::NullValue as i32),
        (Value::Int(v), DataType::Boolean) => Kind::Bool(v != 0),
        (Value::Bool(v), _) => Kind::Bool(v),
        (Value::Int(v), DataType::Float32 | DataType::Float64) => Kind::Double(v as f64),
        (Value::Int(v), DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            Kind::Decimal(v.to_string())
        }
        (Value::Int(v), _) => Kind::Int64(v),
        (Value::Float(v), _) => Kind::Double(v),
        (Value::Text(v), DataType::Timestamp(..)) => {
            match quiver_storage::time::parse_timestamp_micros(&v) {
                Some(micros) => Kind::TimestampMicros(micros),
                None => Kind::String(v),
            }
        }
        (Value::Text(v), DataType::Date32) => match quiver_storage::time::parse_date_days(&v) {
            Some(days) => Kind::DateDays(days),
            None => Kind::String(v),
        },
        (
            Value::Text(v) | Value::Decimal(v),
            DataType::Decimal128(..) | DataType::Decimal256(..),
        ) => Kind::Decimal(v),
        (Value::Text(v) | Value::Decimal(v), _) => Kind::String(v),
        (Value::Blob(v), _) => Kind::Bytes(v),
        (Value::Date(v), _) => Kind::DateDays(v),
        (Value::Timestamp(v), _) => Kind::TimestampMicros(v),
    };
    pb::Value { kind: Some(kind) }
}

/// Builds statement text for one table in the store's dialect.
struct Statements<'a> {
    table: &'a TableInfo,
    dialect: Dialect,
}

impl Statements<'_> {
    fn quote(&self, name: &str) -> String {
        self.dialect.quote_identifier(name)
    }

    fn target(&self) -> String {
        format!(
            "{}.{}",
            self.quote(&self.table.schema),
            self.quote(&self.table.name)
        )
    }

    /// The `n`th parameter (1-based): untyped, so the store types it by its column.
    fn param(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// ` RETURNING <primary key>` (text casts for keys read back as text), or nothing
    /// for tables without one.
    fn returning(&self) -> String {
        if self.table.primary_key.is_empty() {
            return String::new();
        }
        let keys: Vec<String> = self
            .key_columns()
            .map(|column| match (self.dialect, &column.data_type) {
                (Dialect::Postgres, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
                    format!("CAST({} AS TEXT)", self.quote(&column.name))
                }
                _ => self.dialect.select_column(column),
            })
            .collect();
        format!(" RETURNING {}", keys.join(", "))
    }

    fn key_columns(&self) -> impl Iterator<Item = &ColumnInfo> {
        self.table
            .primary_key
            .iter()
            .filter_map(|key| self.table.column(key))
    }

    fn insert(&self, columns: &[String], upsert: bool) -> String {
        let target = self.target();
        let returning = self.returning();
        if columns.is_empty() {
            return format!("INSERT INTO {target} DEFAULT VALUES{returning}");
        }
        let names: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        let params: Vec<String> = (1..=columns.len()).map(|n| self.param(n)).collect();
        let mut sql = format!(
            "INSERT INTO {target} ({}) VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        if upsert {
            let keys: Vec<String> = self
                .table
                .primary_key
                .iter()
                .map(|k| self.quote(k))
                .collect();
            let mut sets: Vec<String> = columns
                .iter()
                .filter(|c| !self.table.primary_key.contains(c))
                .map(|c| format!("{0} = excluded.{0}", self.quote(c)))
                .collect();
            if sets.is_empty() {
                // Still an update, so the existing row's key is returned.
                sets = keys.iter().map(|k| format!("{k} = excluded.{k}")).collect();
            }
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                keys.join(", "),
                sets.join(", ")
            ));
        }
        sql.push_str(&returning);
        sql
    }

    /// `WHERE k1 = $n AND …` over the primary key, parameters from `first`.
    fn key_condition(&self, first: usize) -> String {
        let conditions: Vec<String> = self
            .table
            .primary_key
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{} = {}", self.quote(key), self.param(first + i)))
            .collect();
        conditions.join(" AND ")
    }
}

impl MutationService {
    fn resolve_table(&self, name: &str) -> Result<Arc<TableInfo>> {
        crate::writes::resolve_table(self.writer.engine(), name)
    }

    fn column<'t>(table: &'t TableInfo, name: &str) -> Result<&'t ColumnInfo> {
        table.column(name).ok_or_else(|| {
            Error::InvalidRequest(format!("table '{}' has no column '{name}'", table.name))
        })
    }

    /// Typed rows grouped into runs of rows naming the same columns, each run one
    /// statement.
    fn typed_rows(table: &TableInfo, rows: &[pb::Row]) -> Result<Vec<RowRun>> {
        let mut runs: Vec<RowRun> = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let columns: Vec<String> = row.values.keys().cloned().collect();
            let values = row
                .values
                .iter()
                .map(|(name, value)| store_value(Self::column(table, name)?, value, index + 1))
                .collect::<Result<Vec<_>>>()?;
            match runs.last_mut() {
                Some((run_columns, run_rows)) if *run_columns == columns => run_rows.push(values),
                _ => runs.push((columns, vec![values])),
            }
        }
        Ok(runs)
    }

    /// An Arrow IPC stream as column names and rows, checked against the table.
    fn arrow_rows(table: &TableInfo, ipc: &[u8]) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        let reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(|err| {
            Error::InvalidRequest(format!("arrow_ipc is not an Arrow IPC stream: {err}"))
        })?;
        let schema = reader.schema();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = Self::column(table, field.name())?;
            if !arrow_fits(field.data_type(), &column.data_type) {
                return Err(Error::InvalidRequest(format!(
                    "column '{}': Arrow type {} does not fit {} ({})",
                    field.name(),
                    field.data_type(),
                    column.declared_type,
                    column.data_type
                )));
            }
            columns.push(field.name().clone());
        }
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|err| {
                Error::InvalidRequest(format!("arrow_ipc batch cannot be read: {err}"))
            })?;
            rows.extend(quiver_storage::value::rows_of_batch(&batch)?);
        }
        Ok((columns, rows))
    }

    fn row_count(rows: &Option<pb::Rows>) -> usize {
        rows.as_ref().map_or(0, |r| r.rows.len())
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
            let (columns, values) = Self::arrow_rows(&table, &rows.arrow_ipc)?;
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
            for (columns, values) in Self::typed_rows(&table, &rows.rows)? {
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

    /// The WHERE clause and its parameter rows for a selector; `first` is the first
    /// parameter number the clause may use.
    fn plan_selector(
        table: &TableInfo,
        selector: &Option<pb::Selector>,
        dialect: Dialect,
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
                                store_value(Self::column(table, name)?, value, index + 1)
                            })
                            .collect()
                    })
                    .collect::<Result<Vec<Vec<Value>>>>()?;
                Ok((statements.key_condition(first), rows, keys.keys.len()))
            }
            Some(selector::Target::Predicate(predicate)) => {
                let (sql, params) =
                    quiver_query::predicate::predicate_sql(table, dialect, predicate)?;
                // The predicate's placeholders are numbered from 1; shift them past
                // the parameters before it.
                let sql = shift_placeholders(&sql, dialect, first - 1);
                Ok((sql, vec![params], 0))
            }
        }
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
            .map(|(name, value)| store_value(Self::column(&table, name)?, value, 1))
            .collect::<Result<Vec<_>>>()?;
        let assignments: Vec<String> = set
            .values
            .keys()
            .enumerate()
            .map(|(i, name)| format!("{} = {}", statements.quote(name), statements.param(i + 1)))
            .collect();
        let (condition, selector_rows, _) =
            Self::plan_selector(&table, &request.r#where, dialect, set_values.len() + 1)?;
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
        let (condition, rows, _) = Self::plan_selector(&table, &request.r#where, dialect, 1)?;
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
    fn plan(
        &self,
        operations: Vec<operation::Op>,
        idempotency_key: &str,
        encoded: &[u8],
    ) -> Result<Plan> {
        let limits = self.writer.config();
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
                operation::Op::Insert(r) => Self::row_count(&r.rows),
                operation::Op::Upsert(r) => Self::row_count(&r.rows),
                operation::Op::Update(r) => key_count(&r.r#where),
                operation::Op::Delete(r) => key_count(&r.r#where),
            })
            .sum();
        check_row_limit(typed_rows, limits.max_rows)?;
        let dialect = self.writer.engine().store().dialect();
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
            request_hash: format!("{:016x}", fnv1a64(encoded)),
        })
    }

    /// Runs a validated plan in one transaction.
    async fn run(&self, plan: Plan, trace_context: Option<String>) -> Result<MutateResponse> {
        let store = self.writer.engine().store();
        let mut tx = store.begin().await?;
        if let Some(key) = &plan.idempotency_key
            && let Some(stored) = tx.stored_response(key).await?
        {
            tx.rollback().await?;
            return replay(stored, &plan.request_hash);
        }
        let results = match run_operations(&mut tx, &plan.operations).await {
            Ok(results) => results,
            Err(err) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rollback after a failed mutation failed");
                }
                return Err(err);
            }
        };
        let response = MutateResponse {
            commit_version: 0,
            affected_rows: results.iter().map(|r| r.affected_rows).sum(),
            generated_keys: results
                .iter()
                .flat_map(|r| r.generated_keys.iter().cloned())
                .collect(),
            results,
            replayed: false,
        };
        let idempotency = plan.idempotency_key.clone().map(|key| {
            let stored = response.clone();
            IdempotencyRecord {
                key,
                request_hash: plan.request_hash.clone(),
                response: Box::new(move |version| {
                    MutateResponse {
                        commit_version: version,
                        ..stored
                    }
                    .encode_to_vec()
                }),
            }
        });
        let outcome = tx
            .commit(CommitOptions {
                trace_context,
                idempotency,
            })
            .await;
        match outcome {
            Ok(outcome) => Ok(MutateResponse {
                commit_version: outcome.version,
                ..response
            }),
            // The same key committed concurrently (PostgreSQL): this attempt rolled
            // back; answer with the one that won.
            Err(err)
                if plan.idempotency_key.is_some()
                    && err.sqlstate() == Some("23505")
                    && err.to_string().contains("_quiver_idempotency") =>
            {
                let key = plan.idempotency_key.as_deref().expect("checked above");
                let mut tx = store.begin().await?;
                let stored = tx.stored_response(key).await?;
                tx.rollback().await?;
                match stored {
                    Some(stored) => replay(stored, &plan.request_hash),
                    None => Err(err.into()),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn handle(
        &self,
        operations: Vec<operation::Op>,
        idempotency_key: &str,
        encoded: Vec<u8>,
        trace_context: Option<String>,
    ) -> Result<Response<MutateResponse>, Status> {
        let plan = self.plan(operations, idempotency_key, &encoded)?;
        let response = self.run(plan, trace_context).await?;
        tracing::Span::current().record("commit_version", response.commit_version);
        Ok(Response::new(response))
    }
}

impl MutationService {
    /// Serves a one-operation request: `key` reads its idempotency key, `op` wraps it.
    async fn single<R: Message>(
        &self,
        request: Request<R>,
        key: impl Fn(&R) -> &String,
        op: impl FnOnce(R) -> operation::Op,
    ) -> Result<Response<MutateResponse>, Status> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let encoded = request.encode_to_vec();
        let key = key(&request).clone();
        self.handle(vec![op(request)], &key, encoded, trace).await
    }
}

fn trace_context<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn replay(stored: quiver_storage::StoredResponse, request_hash: &str) -> Result<MutateResponse> {
    if stored.request_hash != request_hash {
        return Err(Error::FailedPrecondition(
            "the idempotency key was already used for a different request".to_owned(),
        ));
    }
    let mut response = MutateResponse::decode(stored.response.as_slice())
        .map_err(|err| Error::Internal(format!("stored idempotent response is corrupt: {err}")))?;
    response.replayed = true;
    Ok(response)
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

/// Whether Arrow values of type `from` can be written to a column read as `to`.
fn arrow_fits(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let integer = |t: &T| t.is_integer();
    let float = |t: &T| matches!(t, T::Float16 | T::Float32 | T::Float64);
    let decimal = |t: &T| matches!(t, T::Decimal128(..) | T::Decimal256(..));
    let text = |t: &T| matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    let binary = |t: &T| matches!(t, T::Binary | T::LargeBinary | T::BinaryView);
    match to {
        _ if from.is_null() => true,
        t if integer(t) => integer(from),
        t if float(t) => integer(from) || float(from),
        t if decimal(t) => integer(from) || float(from) || decimal(from),
        t if text(t) => text(from),
        t if binary(t) => binary(from),
        T::Boolean => matches!(from, T::Boolean),
        T::Date32 | T::Date64 => matches!(from, T::Date32 | T::Date64),
        T::Timestamp(..) => matches!(from, T::Timestamp(..)),
        _ => text(from),
    }
}

/// Renumbers `$N` / `?N` placeholders in `sql` by `offset`.
fn shift_placeholders(sql: &str, dialect: Dialect, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let marker = match dialect {
        Dialect::Sqlite => '?',
        Dialect::Postgres => '$',
    };
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_string = !in_string;
        }
        if c == marker && !in_string && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut digits = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
            let n: usize = digits.parse().expect("ascii digits");
            out.push(marker);
            out.push_str(&(n + offset).to_string());
            continue;
        }
        out.push(c);
    }
    out
}

async fn run_operations(
    tx: &mut Transaction,
    operations: &[Planned],
) -> Result<Vec<OperationResult>> {
    let mut results = Vec::with_capacity(operations.len());
    for planned in operations {
        let key_columns: Vec<&ColumnInfo> = planned
            .table
            .primary_key
            .iter()
            .filter_map(|k| planned.table.column(k))
            .collect();
        let mut result = OperationResult::default();
        for step in &planned.steps {
            match step {
                Execution::Rows {
                    sql,
                    rows,
                    returns_keys,
                } => {
                    let (changed, returned) = tx.run_many(sql, rows.clone()).await?;
                    result.affected_rows += changed;
                    if *returns_keys {
                        result
                            .generated_keys
                            .extend(returned.into_iter().map(|row| {
                                pb::Row {
                                    values: key_columns
                                        .iter()
                                        .zip(row)
                                        .map(|(column, value)| {
                                            (column.name.clone(), proto_value(column, value))
                                        })
                                        .collect::<BTreeMap<_, _>>(),
                                }
                            }));
                    }
                }
                Execution::Bulk {
                    schema,
                    table,
                    columns,
                    rows,
                } => {
                    result.affected_rows +=
                        tx.bulk_insert(schema, table, columns, rows.clone()).await?;
                }
            }
        }
        results.push(result);
    }
    Ok(results)
}

#[tonic::async_trait]
impl Mutations for MutationService {
    #[tracing::instrument(name = "mutations.insert", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Insert)
            .await
    }

    #[tracing::instrument(name = "mutations.update", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Update)
            .await
    }

    #[tracing::instrument(name = "mutations.delete", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Delete)
            .await
    }

    #[tracing::instrument(name = "mutations.upsert", skip_all, fields(table = %request.get_ref().table, commit_version = tracing::field::Empty))]
    async fn upsert(
        &self,
        request: Request<UpsertRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.single(request, |r| &r.idempotency_key, operation::Op::Upsert)
            .await
    }

    #[tracing::instrument(name = "mutations.apply", skip_all, fields(operations = request.get_ref().operations.len(), commit_version = tracing::field::Empty))]
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let encoded = request.encode_to_vec();
        let operations = request
            .operations
            .into_iter()
            .enumerate()
            .map(|(index, op)| {
                op.op.ok_or_else(|| {
                    Status::invalid_argument(format!("operation {}: no operation set", index + 1))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        if operations.is_empty() {
            return Err(Status::invalid_argument("apply has no operations"));
        }
        self.handle(operations, &request.idempotency_key, encoded, trace)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_shift_outside_strings() {
        assert_eq!(
            shift_placeholders("(\"a\" = $1::int8 AND \"b\" = '$1')", Dialect::Postgres, 2),
            "(\"a\" = $3::int8 AND \"b\" = '$1')"
        );
        assert_eq!(
            shift_placeholders("\"a\" IN (?1, ?2)", Dialect::Sqlite, 1),
            "\"a\" IN (?2, ?3)"
        );
    }

    #[test]
    fn decimal_text_is_checked() {
        assert!(is_decimal_text("-12.50"));
        assert!(is_decimal_text("3"));
        assert!(!is_decimal_text("1e3"));
        assert!(!is_decimal_text("."));
    }

    #[test]
    fn arrow_types_fit_columns_by_kind() {
        assert!(arrow_fits(&DataType::Int32, &DataType::Int64));
        assert!(arrow_fits(&DataType::Int64, &DataType::Float64));
        assert!(!arrow_fits(&DataType::Utf8, &DataType::Int64));
        assert!(!arrow_fits(&DataType::Float64, &DataType::Int64));
        assert!(arrow_fits(&DataType::Null, &DataType::Utf8));
    }
}
