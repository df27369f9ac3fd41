//! A DataFusion table backed by a table of the store.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::executor::StoreSql;
use datafusion::arrow::array::RecordBatch;
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
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, StatisticsArgs,
};
use futures::{StreamExt, TryStreamExt};
use quiver_storage::{Store, TableInfo, TableKind, Value};

use crate::pushdown::{FilterRenderer, classify};

/// Reads a query's tables instead of the store's pool: a Flight SQL transaction's own
/// connection, so a query inside the transaction sees its uncommitted writes.
pub trait ReadThrough: Send + Sync + fmt::Debug {
    /// The whole result of `sql` with `params`, shaped like `schema`.
    fn read(
        &self,
        sql: String,
        params: Vec<Value>,
        schema: SchemaRef,
    ) -> futures::future::BoxFuture<'static, quiver_storage::Result<Vec<RecordBatch>>>;
}

/// The span of the query a scan belongs to (a session extension): DataFusion runs
/// scans in tasks of its own, where the caller's span is not current.
#[derive(Debug, Clone)]
pub(crate) struct QuerySpan(pub(crate) tracing::Span);

/// The [`ReadThrough`] of a query, kept in its session's configuration.
#[derive(Debug)]
pub(crate) struct ReadsThrough(pub(crate) Arc<dyn ReadThrough>);

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

    /// The SQL and parameters that read `projection` of this table under `filters`,
    /// restricted to `key_range` (start inclusive, end exclusive) of the range key.
    fn scan_sql(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        key_range: Option<(i64, i64)>,
    ) -> datafusion::common::Result<ScanPartition> {
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
                .map(|f| match self.info.column(f.name()) {
                    Some(column) => dialect.select_column(column),
                    None => dialect.quote_identifier(f.name()),
                })
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
        let mut params = renderer.params;
        if let (Some((start, end)), Some(key)) = (key_range, &self.info.range_key) {
            let (start, end) = (Value::Int(start), Value::Int(end));
            let start_placeholder = dialect.placeholder(params.len() + 1, &start);
            let end_placeholder = dialect.placeholder(params.len() + 2, &end);
            params.push(start);
            params.push(end);
            let (start, end) = (start_placeholder, end_placeholder);
            conditions.push(format!("{key} >= {start} AND {key} < {end}"));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        Ok(ScanPartition {
            sql,
            params,
            schema,
        })
    }

    /// How many parallel range scans to split a scan into. Only large tables with a
    /// range key are split, and only when the scan has to read the table itself:
    /// not with a limit, not for key lookups (`id = …`, `id IN (…)`), and not when an
    /// index covers every column the scan needs (a narrow index scan beats two range
    /// scans over the full rows).
    fn partitions_for(
        &self,
        target: usize,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> usize {
        let large = self
            .info
            .estimated_rows
            .is_some_and(|rows| rows >= MIN_ROWS_PER_PARTITION * 2);
        if target < 2 || limit.is_some() || !large || self.info.range_key.is_none() {
            return 1;
        }
        let is_key = |expr: &Expr| matches!(expr, Expr::Column(c) if self.info.primary_key.contains(&c.name));
        let key_lookup = filters.iter().any(|filter| match filter {
            Expr::BinaryExpr(b) if b.op == datafusion::logical_expr::Operator::Eq => {
                is_key(&b.left) || is_key(&b.right)
            }
            Expr::InList(list) => is_key(&list.expr),
            _ => false,
        });
        if key_lookup {
            return 1;
        }
        let mut needed: HashSet<String> = match projection {
            Some(indices) => indices
                .iter()
                .map(|&i| self.schema.field(i).name().clone())
                .collect(),
            None => self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        };
        for filter in filters {
            needed.extend(filter.column_refs().into_iter().map(|c| c.name.clone()));
        }
        // Every SQLite index also holds the rowid, which an INTEGER PRIMARY KEY aliases.
        let rowid_alias = match self.info.primary_key.as_slice() {
            [only]
                if self
                    .info
                    .column(only)
                    .is_some_and(|c| c.declared_type.eq_ignore_ascii_case("INTEGER")) =>
            {
                Some(only.as_str())
            }
            _ => None,
        };
        let covered = self.info.indexes.iter().any(|index| {
            needed.iter().all(|column| {
                index.columns.contains(column) || Some(column.as_str()) == rowid_alias
            })
        });
        if covered {
            return 1;
        }
        let by_size = self.info.estimated_rows.unwrap_or(0) / MIN_ROWS_PER_PARTITION;
        target.min(by_size as usize).max(1)
    }
}

/// Fewest rows worth a partition of their own.
const MIN_ROWS_PER_PARTITION: u64 = 100_000;

/// The SQL one partition of a scan runs.
#[derive(Debug, Clone)]
struct ScanPartition {
    sql: String,
    params: Vec<Value>,
    schema: SchemaRef,
}

/// `count` half-open ranges covering `[low, high]` evenly.
fn split_range(low: i64, high: i64, count: usize) -> Vec<(i64, i64)> {
    let width = i128::from(high) - i128::from(low) + 1;
    let count = count.max(1) as i128;
    (0..count)
        .map(|i| {
            let start = i128::from(low) + width * i / count;
            let end = i128::from(low) + width * (i + 1) / count;
            (start as i64, end.min(i128::from(i64::MAX)) as i64)
        })
        .filter(|(start, end)| start < end)
        .collect()
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let target = state.config().target_partitions();
        let through = state.config().get_extension::<ReadsThrough>().is_some();
        let wanted = if through {
            1
        } else {
            self.partitions_for(target, projection, filters, limit)
        };
        let ranges = if wanted > 1 {
            let range = self
                .store
                .key_range(&self.info)
                .await
                .map_err(|err| DataFusionError::External(Box::new(err)))?;
            range
                .map(|(low, high)| split_range(low, high, wanted))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let partitions = if ranges.len() > 1 {
            let last = ranges.len() - 1;
            ranges
                .into_iter()
                .enumerate()
                .map(|(i, (start, end))| {
                    // The last range is open-ended so rows added since the bounds were
                    // read are not missed.
                    let end = if i == last { i64::MAX } else { end };
                    self.scan_sql(projection, filters, limit, Some((start, end)))
                })
                .collect::<datafusion::common::Result<Vec<_>>>()?
        } else {
            vec![self.scan_sql(projection, filters, limit, None)?]
        };
        let estimated_rows = match (self.info.estimated_rows, limit) {
            (Some(rows), Some(limit)) => Some(rows.min(limit as u64)),
            (rows, _) => rows,
        };
        Ok(Arc::new(StoreScanExec::new(
            self.store.clone(),
            self.info.name.clone(),
            partitions,
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

/// Streams rows from the store: one SQL statement per partition.
#[derive(Debug)]
pub struct StoreScanExec {
    store: Store,
    table: String,
    partitions: Vec<ScanPartition>,
    schema: SchemaRef,
    estimated_rows: Option<u64>,
    properties: Arc<PlanProperties>,
    /// Rows read and time to the first batch, per partition (`EXPLAIN ANALYZE`).
    metrics: ExecutionPlanMetricsSet,
}

impl StoreScanExec {
    fn new(
        store: Store,
        table: String,
        partitions: Vec<ScanPartition>,
        estimated_rows: Option<u64>,
    ) -> Self {
        let schema = Arc::clone(
            &partitions
                .first()
                .expect("a scan has at least one partition")
                .schema,
        );
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            store,
            table,
            partitions,
            schema,
            estimated_rows,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The SQL each partition of this scan runs on the store.
    pub fn sql(&self) -> Vec<&str> {
        self.partitions.iter().map(|p| p.sql.as_str()).collect()
    }
}

impl DisplayAs for StoreScanExec {
    fn fmt_as(&self, format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match format {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "StoreScanExec: table={}", self.table)?;
                if self.partitions.len() > 1 {
                    write!(f, ", partitions={}", self.partitions.len())?;
                }
                for partition in &self.partitions {
                    write!(f, ", sql={}", partition.sql)?;
                    if !partition.params.is_empty() {
                        let params: Vec<String> =
                            partition.params.iter().map(ToString::to_string).collect();
                        write!(f, ", params=[{}]", params.join(", "))?;
                    }
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                write!(
                    f,
                    "table={}\npartitions={}",
                    self.table,
                    self.partitions.len()
                )
            }
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let Some(scan) = self.partitions.get(partition) else {
            return Err(DataFusionError::Internal(format!(
                "StoreScanExec has {} partitions, asked for {partition}",
                self.partitions.len()
            )));
        };
        let store = self.store.clone();
        let sql = scan.sql.clone();
        let params = scan.params.clone();
        let schema = Arc::clone(&self.schema);
        let through = context.session_config().get_extension::<ReadsThrough>();
        if let Some(store_sql) = context.session_config().get_extension::<StoreSql>() {
            store_sql.push(&sql);
        }
        let parent = context
            .session_config()
            .get_extension::<QuerySpan>()
            .map_or_else(tracing::Span::none, |span| span.0.clone());
        let read = async move {
            match through {
                Some(through) => {
                    let batches = through.0.read(sql, params, schema).await?;
                    let stream: quiver_storage::BatchStream =
                        Box::pin(futures::stream::iter(batches.into_iter().map(Ok)));
                    Ok(stream)
                }
                None => store.query(sql, params, schema).await,
            }
        };
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let output_batches = MetricBuilder::new(&self.metrics).output_batches(partition);
        let batches = futures::stream::once(tracing::Instrument::instrument(read, parent))
            .try_flatten()
            .inspect_ok(move |batch| {
                output_rows.add(batch.num_rows());
                output_batches.add(1);
            })
            .map(|item| item.map_err(|err| DataFusionError::External(Box::new(err))));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        )))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> datafusion::common::Result<Arc<Statistics>> {
        let mut statistics = Statistics::new_unknown(&self.schema);
        if let Some(rows) = self.estimated_rows {
            let rows = match args.partition() {
                Some(_) => rows / self.partitions.len() as u64,
                None => rows,
            };
            statistics = statistics.with_num_rows(Precision::Inexact(rows as usize));
        }
        Ok(Arc::new(statistics))
    }
}

#[cfg(test)]
mod tests {
    use super::split_range;

    #[test]
    fn ranges_cover_the_keys_without_overlap() {
        assert_eq!(split_range(1, 10, 2), vec![(1, 6), (6, 11)]);
        assert_eq!(split_range(5, 5, 4), vec![(5, 6)]);
        let ranges = split_range(i64::MIN, i64::MAX - 1, 3);
        assert_eq!(ranges.first().unwrap().0, i64::MIN);
        assert_eq!(ranges.last().unwrap().1, i64::MAX);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
    }
}
