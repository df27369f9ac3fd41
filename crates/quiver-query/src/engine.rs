//! The query engine: a DataFusion session whose catalog mirrors the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use quiver_storage::{Catalog, Store, TableInfo, TableKind};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::executor::{Executor, ExecutorConfig, QueryControl, YieldEverywhere};
use crate::limits::StatementLimits;
use crate::normalize::{client_schema, to_client_batch};
use crate::params::{Parameter, coerce_values, number_placeholders};
use crate::provider::{QuerySpan, ReadThrough, ReadsThrough, StoreTable};
use crate::system::{SYSTEM_SCHEMA, SystemTable};

/// The catalog name the store's schemas appear under.
pub const CATALOG_NAME: &str = "quiver";

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Rows per batch inside DataFusion.
    pub batch_size: usize,
    /// Parallelism of DataFusion operators.
    pub target_partitions: usize,
    /// Memory DataFusion operators may hold at once (sorts, joins, aggregates); `None`
    /// for no limit. Operators that would exceed it fail with "resources exhausted".
    pub memory_limit: Option<usize>,
    /// How large and deep client SQL may be.
    pub limits: StatementLimits,
    /// The query runtime, admission and timeouts.
    pub executor: ExecutorConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch_size: 8192,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            memory_limit: Some(1 << 30),
            limits: StatementLimits::default(),
            executor: ExecutorConfig::default(),
        }
    }
}

/// A planned query: what it returns and which parameters it takes.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    sql: String,
    plan: LogicalPlan,
    parameters: Vec<Parameter>,
    schema: SchemaRef,
}

impl PreparedQuery {
    /// The statement text after placeholder numbering.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The schema of the rows the query returns.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The placeholders, in order.
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    /// The parameters as an Arrow schema (one field per placeholder; `Null` type where
    /// the planner could not infer one).
    pub fn parameter_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.parameters
                .iter()
                .map(|p| Field::new(&p.name, p.data_type.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Plans and runs SQL queries over the store.
pub struct QueryEngine {
    store: Store,
    ctx: SessionContext,
    catalog: RwLock<Arc<Catalog>>,
    /// The system tables, registered by the server.
    system: RwLock<Vec<(String, Arc<SystemTable>)>>,
    loaded: AtomicBool,
    limits: StatementLimits,
    executor: Executor,
}

impl QueryEngine {
    /// Builds an engine over `store`, reading its catalog.
    pub async fn new(store: Store, config: EngineConfig) -> Result<Self> {
        let engine = Self::unloaded(store, config)?;
        engine.refresh_catalog().await?;
        Ok(engine)
    }

    /// Builds an engine with an empty catalog, for a store that may not be reachable
    /// yet; [`QueryEngine::refresh_catalog`] loads it later.
    pub fn unloaded(store: Store, config: EngineConfig) -> Result<Self> {
        let mut session = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, store.default_schema())
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_batch_size(config.batch_size.max(1))
            .with_target_partitions(config.target_partitions.max(1));
        session
            .options_mut()
            .sql_parser
            .map_string_types_to_utf8view = false;
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = config.memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let state = SessionStateBuilder::new_with_default_features()
            .with_config(session)
            .with_runtime_env(runtime.build_arc()?)
            .with_physical_optimizer_rule(Arc::new(YieldEverywhere))
            .build();
        let ctx = SessionContext::new_with_state(state);
        Ok(Self {
            store,
            ctx,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            system: RwLock::new(Vec::new()),
            loaded: AtomicBool::new(false),
            limits: config.limits,
            executor: Executor::new(config.executor)?,
        })
    }

    /// How large and deep client SQL may be.
    pub fn limits(&self) -> &StatementLimits {
        &self.limits
    }

    /// The query runtime (to run query-bound work, such as encoding results, off the
    /// threads that serve requests).
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Whether the store's catalog has been read at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The store the engine reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The catalog as last read from the store.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(
            &self
                .catalog
                .read()
                .expect("catalog lock is never poisoned: no panics while held"),
        )
    }

    /// The base table `name` names: `tasks`, or `schema.table` outside the default
    /// schema. Fails with `TableNotFound` when there is none and `NotATable` for a view.
    pub fn resolve_table(&self, name: &str) -> Result<Arc<TableInfo>> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => (self.store.default_schema(), name),
        };
        if table.is_empty() || schema.is_empty() {
            return Err(Error::InvalidTableName(name.to_owned()));
        }
        let catalog = self.catalog();
        let info = catalog
            .table(schema, table)
            .ok_or_else(|| quiver_storage::Error::TableNotFound(format!("'{name}'")))?;
        if info.kind != TableKind::Table {
            return Err(Error::NotATable(name.to_owned()));
        }
        Ok(Arc::new(info.clone()))
    }

    /// Adds a system table (`system.<name>`), queryable from now on.
    pub fn register_system_table(&self, name: &str, table: SystemTable) -> Result<()> {
        let table = Arc::new(table);
        self.system
            .write()
            .expect("never poisoned")
            .push((name.to_owned(), Arc::clone(&table)));
        if let Some(catalog) = self.ctx.catalog(CATALOG_NAME) {
            catalog.register_schema(SYSTEM_SCHEMA, self.system_schema()?)?;
        }
        Ok(())
    }

    /// The system tables, by name, with their schemas.
    pub fn system_tables(&self) -> Vec<(String, SchemaRef)> {
        self.system
            .read()
            .expect("never poisoned")
            .iter()
            .map(|(name, table)| (name.clone(), table.schema()))
            .collect()
    }

    /// The `system` schema with every registered system table.
    fn system_schema(&self) -> Result<Arc<dyn datafusion::catalog::SchemaProvider>> {
        let schema = MemorySchemaProvider::new();
        for (name, table) in self.system.read().expect("never poisoned").iter() {
            schema.register_table(name.clone(), Arc::clone(table) as Arc<dyn TableProvider>)?;
        }
        Ok(Arc::new(schema))
    }

    /// Re-reads the store's catalog and re-registers its tables (after DDL).
    pub async fn refresh_catalog(&self) -> Result<()> {
        let catalog = Arc::new(self.store.catalog().await?);
        let provider = MemoryCatalogProvider::new();
        for schema in &catalog.schemas {
            let schema_provider = MemorySchemaProvider::new();
            for table in &schema.tables {
                let table_provider = StoreTable::new(self.store.clone(), Arc::new(table.clone()));
                schema_provider.register_table(table.name.clone(), Arc::new(table_provider))?;
            }
            provider.register_schema(&schema.name, Arc::new(schema_provider))?;
        }
        if catalog.schemas.iter().any(|s| s.name == SYSTEM_SCHEMA) {
            tracing::warn!(
                "the store has a schema named {SYSTEM_SCHEMA:?}: Quiver's system tables take its place in queries"
            );
        }
        provider.register_schema(SYSTEM_SCHEMA, self.system_schema()?)?;
        self.ctx.register_catalog(CATALOG_NAME, Arc::new(provider));
        *self
            .catalog
            .write()
            .expect("catalog lock is never poisoned: no panics while held") = catalog;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Parses and plans `sql`, which must be a query. `?` placeholders are accepted.
    /// The text is checked against the statement limits first; planning runs on the
    /// query runtime.
    pub async fn prepare(&self, sql: &str) -> Result<PreparedQuery> {
        self.limits.check("statement", sql)?;
        let span = tracing::debug_span!("query.plan", db.query.text = %sql);
        let state = self.ctx.state();
        let sql = sql.to_owned();
        self.executor
            .spawn(
                async move {
                    let sql = number_placeholders(&sql)?;
                    let plan = state.create_logical_plan(&sql).await?;
                    SQLOptions::new()
                        .with_allow_ddl(false)
                        .with_allow_dml(false)
                        .with_allow_statements(false)
                        .verify_plan(&plan)
                        .map_err(|err| Error::NotAQuery(err.find_root().to_string()))?;
                    let parameters = parameters_of(&plan)?;
                    let schema = Arc::new(plan.schema().as_arrow().clone());
                    let schema = client_schema(&schema).unwrap_or(schema);
                    Ok(PreparedQuery {
                        sql,
                        plan,
                        parameters,
                        schema,
                    })
                }
                .instrument(span),
            )
            .await?
    }

    /// Runs a prepared query with `params` bound, streaming its batches.
    pub async fn execute(
        &self,
        query: &PreparedQuery,
        params: Vec<ScalarValue>,
    ) -> Result<SendableRecordBatchStream> {
        self.execute_with(query, params, QueryControl::default())
            .await
    }

    /// Runs a prepared query with `params` bound under `control`: it waits its turn
    /// among the running queries, runs on the query runtime, and stops when the
    /// returned stream is dropped, when it is cancelled, or at its timeout.
    pub async fn execute_with(
        &self,
        query: &PreparedQuery,
        params: Vec<ScalarValue>,
        control: QueryControl,
    ) -> Result<SendableRecordBatchStream> {
        self.execute_through(query, params, control, None).await
    }

    /// Runs `query` as [`QueryEngine::execute_with`] does; with `through`, its tables
    /// are read through it (a transaction's own connection, so the query sees the
    /// transaction's writes) one scan at a time, instead of from the pool.
    pub async fn execute_through(
        &self,
        query: &PreparedQuery,
        params: Vec<ScalarValue>,
        control: QueryControl,
        through: Option<Arc<dyn ReadThrough>>,
    ) -> Result<SendableRecordBatchStream> {
        let plan = if query.parameters.is_empty() && params.is_empty() {
            query.plan.clone()
        } else {
            let values = coerce_values(&query.parameters, params)?;
            query
                .plan
                .clone()
                .with_param_values(ParamValues::from(values))?
        };
        let permit = self.executor.admit().await?;
        let announced = query.schema();
        let mut state = self.ctx.state();
        let span = tracing::debug_span!("query.execute");
        if let Some(viewer) = &control.viewer {
            state.config_mut().set_extension(Arc::clone(viewer));
        }
        state
            .config_mut()
            .set_extension(Arc::new(control.store_sql.clone()));
        if !span.is_disabled() {
            // Scans run in tasks DataFusion spawns: they find their parent here.
            state
                .config_mut()
                .set_extension(Arc::new(QuerySpan(span.clone())));
        }
        if let Some(through) = through {
            // One connection serves the whole query: scans are not split.
            state
                .config_mut()
                .set_extension(Arc::new(ReadsThrough(through)));
            state.config_mut().options_mut().execution.target_partitions = 1;
        }
        let start = async move {
            let frame = DataFrame::new(state, plan);
            let task = Arc::new(frame.task_ctx());
            let physical = frame
                .create_physical_plan()
                .instrument(tracing::debug_span!("query.physical_plan"))
                .await?;
            let stream = datafusion::physical_plan::execute_stream(physical, task)?;
            Ok(as_schema(stream, announced))
        };
        self.executor
            .run(permit, control, start)
            .instrument(span)
            .await
    }

    /// Streams the rows of `table` matching `filter` (all rows without one), every
    /// column in table order, as a query of its own.
    pub async fn scan(
        &self,
        table: &quiver_storage::TableInfo,
        filter: Option<&datafusion::logical_expr::Expr>,
    ) -> Result<SendableRecordBatchStream> {
        let reference = datafusion::common::TableReference::full(
            CATALOG_NAME,
            table.schema.as_str(),
            table.name.as_str(),
        );
        let permit = self.executor.admit().await?;
        let ctx = self.ctx.clone();
        let filter = filter.cloned();
        let start = async move {
            let mut frame = ctx.table(reference).await?;
            if let Some(filter) = filter {
                frame = frame.filter(filter)?;
            }
            Ok(to_client_stream(frame.execute_stream().await?))
        };
        self.executor
            .run(permit, QueryControl::default(), start)
            .await
    }

    /// Plans and runs `sql` without parameters.
    pub async fn sql(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let query = self.prepare(sql).await?;
        self.execute(&query, Vec::new()).await
    }
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("store", &self.store.describe())
            .field("session_id", &self.ctx.session_id())
            .finish_non_exhaustive()
    }
}

/// The positional placeholders of `plan` in order, with their inferred types.
fn parameters_of(plan: &LogicalPlan) -> Result<Vec<Parameter>> {
    let types: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
    let mut numbered = Vec::with_capacity(types.len());
    for (name, data_type) in types {
        let index: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::Parameter {
                name: name.clone(),
                message: "named placeholders are not supported; use ? or $1, $2, …".to_owned(),
            })?;
        numbered.push((index, Parameter { name, data_type }));
    }
    numbered.sort_by_key(|(index, _)| *index);
    for (position, (index, parameter)) in numbered.iter().enumerate() {
        if *index != position + 1 {
            return Err(Error::Parameter {
                name: parameter.name.clone(),
                message: format!("placeholder ${} is missing", position + 1),
            });
        }
    }
    Ok(numbered.into_iter().map(|(_, p)| p).collect())
}

/// Casts view types in the stream's batches to the types clients read.
fn to_client_stream(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let Some(schema) = client_schema(&stream.schema()) else {
        return stream;
    };
    as_schema(stream, schema)
}

/// `stream` sent as `schema`: the same columns, cast where a type differs, and each
/// field's nullability as `schema` says (what a client was told when the query was
/// planned; drivers refuse batches that disagree with it).
fn as_schema(stream: SendableRecordBatchStream, schema: SchemaRef) -> SendableRecordBatchStream {
    if stream.schema() == schema {
        return stream;
    }
    let target = Arc::clone(&schema);
    let converted = stream.map(move |batch| batch.and_then(|b| to_client_batch(&b, &target)));
    Box::pin(RecordBatchStreamAdapter::new(schema, converted))
}
