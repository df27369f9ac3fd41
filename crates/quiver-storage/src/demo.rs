//! The demo data set: a task-management schema at any scale, deterministic.
//!
//! `epics` (one per 1,000 tasks) → `features` (one per 20 tasks, 50 per epic) →
//! `tasks` → `task_history`, with foreign keys, `ON DELETE CASCADE` and an index on
//! every key, foreign key and filtered column.
//!
//! # Layout
//! - [`generate`]: the rows, each a pure function of its id.
//! - [`schema`]: the tables and indexes in each backend's dialect.
//! - `load`: writing them through the product's bulk path.

pub mod generate;
mod load;
pub mod schema;

use std::sync::Arc;

pub use self::generate::{
    AGENT_TYPES, DemoScale, FEATURES_PER_EPIC, HistoryRow, PlanRow, TASK_STATUSES,
    TASKS_PER_FEATURE, TaskRow, epic, feature, history, task,
};
use self::load::Existing;
pub use self::schema::DEMO_TABLES;
use crate::error::{Error, Result};
use crate::store::Store;

/// Progress of a load, reported after every transaction.
#[derive(Debug, Clone, Copy)]
pub struct DemoProgress {
    /// Table being loaded.
    pub table: &'static str,
    /// Rows of that table written so far.
    pub done: u64,
    /// Rows of that table in all.
    pub total: u64,
}

/// What a load wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemoSummary {
    /// Epics written.
    pub epics: u64,
    /// Features written.
    pub features: u64,
    /// Tasks written.
    pub tasks: u64,
    /// History rows written.
    pub history: u64,
}

/// Callback receiving load progress.
pub type ProgressFn = Arc<dyn Fn(DemoProgress) + Send + Sync>;

/// Whether the demo tables exist in the store.
pub async fn is_loaded(store: &Store) -> Result<bool> {
    let catalog = store.catalog().await?;
    Ok(DEMO_TABLES
        .iter()
        .all(|name| catalog.table(store.default_schema(), name).is_some()))
}

/// Creates the demo schema and loads `tasks` tasks with their epics, features and
/// history. With `replace`, existing demo tables are dropped first; without it, existing
/// demo tables are an error.
pub async fn load(
    store: &Store,
    tasks: u64,
    replace: bool,
    progress: ProgressFn,
) -> Result<DemoSummary> {
    let existing = if replace {
        Existing::Replace
    } else {
        Existing::Fail
    };
    let summary = load::load(store, DemoScale::new(tasks), existing, &*progress).await?;
    summary.ok_or_else(|| Error::Internal("demo load skipped unexpectedly".to_owned()))
}

/// Loads the demo unless its tables exist; `None` when they did. Safe when several
/// servers start at once on one database: the check and the load happen under one
/// lock (the writer on SQLite, an advisory lock on PostgreSQL).
pub async fn load_if_missing(
    store: &Store,
    tasks: u64,
    progress: ProgressFn,
) -> Result<Option<DemoSummary>> {
    load::load(store, DemoScale::new(tasks), Existing::Keep, &*progress).await
}
