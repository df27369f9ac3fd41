//! System tables: the server's own state (query history, pools, subscriptions, …)
//! as read-only tables of the `system` schema, queried with SQL like any other.
//!
//! A system table is a schema and a function producing its rows when a query scans
//! it; the function learns who is asking ([`Viewer`]) so it can show a principal only
//! its own rows.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// The schema system tables appear under.
pub const SYSTEM_SCHEMA: &str = "system";

/// Who runs a query (a session extension): system tables show a principal its own
/// queries and sessions unless it may see everyone's.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The principal as the query history names it.
    pub principal: String,
    /// Whether every principal's rows are shown (the admin role, or no authentication).
    pub sees_all: bool,
}

/// Produces a system table's rows for a viewer (`None`: the engine's own queries).
pub type Rows = Arc<dyn Fn(Option<&Viewer>) -> Result<RecordBatch> + Send + Sync>;

/// A read-only table whose rows are produced when it is scanned.
pub struct SystemTable {
    schema: SchemaRef,
    rows: Rows,
}

impl SystemTable {
    /// A table of `schema` whose rows `rows` produces.
    pub fn new(schema: SchemaRef, rows: Rows) -> Self {
        Self { schema, rows }
    }
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let viewer = state.config().get_extension::<Viewer>();
        let batch = (self.rows)(viewer.as_deref())?;
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
