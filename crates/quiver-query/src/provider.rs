//! A DataFusion table backed by a table of the store.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, StatisticsArgs,
};
use futures::{StreamExt, TryStreamExt};
use quiver_storage::{Store, TableInfo, TableKind, Value};

use crate::pushdown::{FilterRenderer, classify};

/// A store table as a DataFusion [`TableProvider`]: projection, supported filters and
/// limit become the SQL run on the store.
#[derive(Debug)]
pub struct StoreTable {
    store: Store,
    info: Arc<TableInfo>,
    schema: SchemaRef,
}

impl StoreTable {
    /// Wraps the table `info` of `store`.
    pub fn new(store: Store, info: Arc<TableInfo>) -> Self {
        let schema = info.arrow_schema();
        Self {
            store,
            info,
            schema,
        }
    }

    /// The SQL and parameters that read `projection` of this table under `filters`.
    fn scan_sql(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<(String, Vec<Value>, SchemaRef)> {
        let dialect = self.store.dialect();
        let schema = match projection {
            Some(indices) => Arc::new(self.schema.project(indices)?),
            None => Arc::clone(&self.schema),
        };
        let select = if schema.fields().is_empty() {
            // Only the row count is needed (`count(*)`).
            "NULL".to_owned()
        } else {
            schema
                .fields()
                .iter()
                .map(|f| dialect.quote_identifier(f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!(
            "SELECT {select} FROM {}.{}",
            dialect.quote_identifier(&self.info.schema),
            dialect.quote_identifier(&self.info.name)
        );
        let mut renderer = FilterRenderer::new(&self.info, dialect);
        let mut conditions = Vec::with_capacity(filters.len());
        for filter in filters {
            let rendered = renderer.render(filter).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "filter {filter} was accepted for pushdown but cannot be rendered"
                ))
            })?;
            conditions.push(rendered);
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        Ok((sql, renderer.params, schema))
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        match self.info.kind {
            TableKind::Table => TableType::Base,
            TableKind::View => TableType::View,
        }
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let (sql, params, schema) = self.scan_sql(projection, filters, limit)?;
        let estimated_rows = match (self.info.estimated_rows, limit) {
            (Some(rows), Some(limit)) => Some(rows.min(limit as u64)),
            (rows, _) => rows,
        };
        Ok(Arc::new(StoreScanExec::new(
            self.store.clone(),
            self.info.name.clone(),
            sql,
            params,
            schema,
            estimated_rows,
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        let dialect = self.store.dialect();
        Ok(filters
            .iter()
            .map(|f| classify(&self.info, dialect, f))
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        let rows = self.info.estimated_rows?;
        Some(Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(rows as usize)))
    }
}

/// Streams the rows of one SQL statement from the store.
#[derive(Debug)]
pub struct StoreScanExec {
    store: Store,
    table: String,
    sql: String,
    params: Vec<Value>,
    schema: SchemaRef,
    estimated_rows: Option<u64>,
    properties: Arc<PlanProperties>,
}

impl StoreScanExec {
    fn new(
        store: Store,
        table: String,
        sql: String,
        params: Vec<Value>,
        schema: SchemaRef,
        estimated_rows: Option<u64>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            store,
            table,
            sql,
            params,
            schema,
            estimated_rows,
            properties,
        }
    }

    /// The SQL this scan runs on the store.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl DisplayAs for StoreScanExec {
    fn fmt_as(&self, format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match format {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "StoreScanExec: table={}, sql={}", self.table, self.sql)?;
                if !self.params.is_empty() {
                    let params: Vec<String> = self.params.iter().map(ToString::to_string).collect();
                    write!(f, ", params=[{}]", params.join(", "))?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "table={}\nsql={}", self.table, self.sql),
        }
    }
}

impl ExecutionPlan for StoreScanExec {
    fn name(&self) -> &str {
        "StoreScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "StoreScanExec has one partition, asked for {partition}"
            )));
        }
        let store = self.store.clone();
        let sql = self.sql.clone();
        let params = self.params.clone();
        let schema = Arc::clone(&self.schema);
        let batches = futures::stream::once(async move { store.query(sql, params, schema).await })
            .try_flatten()
            .map(|item| item.map_err(|err| DataFusionError::External(Box::new(err))));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        )))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> datafusion::common::Result<Arc<Statistics>> {
        let mut statistics = Statistics::new_unknown(&self.schema);
        if let Some(rows) = self.estimated_rows {
            statistics = statistics.with_num_rows(Precision::Inexact(rows as usize));
        }
        Ok(Arc::new(statistics))
    }
}
