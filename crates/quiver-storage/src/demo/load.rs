//! Loading the demo rows through the product's own bulk path
//! ([`Transaction::bulk_insert`]: one prepared statement on SQLite, `COPY` on
//! PostgreSQL), in uncaptured transactions: a demo load is not a change anyone follows.
//!
//! PostgreSQL loads everything in one transaction, after an advisory lock, so replicas
//! starting together load once and never see half a data set. SQLite commits every
//! chunk, so its write-ahead log stays small at any scale; its single writer keeps
//! other writers out of each chunk.

use super::generate::{DemoScale, PlanRow, epic, feature, history, task};
use super::schema::{DEMO_TABLES, INDEX_SQL, POSTGRES_SCHEMA_SQL, SQLITE_SCHEMA_SQL};
use super::{DemoProgress, DemoSummary};
use crate::commit::{Capture, CommitOptions};
use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::transaction::Transaction;
use crate::value::Value;

/// Rows generated and written at once (bounds the loader's memory at any scale).
const ROWS_PER_CHUNK: u64 = 25_000;

/// What to do when the demo tables exist already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    Fail,
    Replace,
    Keep,
}

/// Loads the demo at `scale`; `None` when the tables existed and `existing` is `Keep`.
pub(super) async fn load(
    store: &Store,
    scale: DemoScale,
    existing: Existing,
    progress: &(dyn Fn(DemoProgress) + Send + Sync),
) -> Result<Option<DemoSummary>> {
    let mut loader = Loader {
        store,
        dialect: store.dialect(),
        tx: Some(store.begin_with(Capture::Off).await?),
    };
    if !loader.prepare(existing).await? {
        loader.finish(false).await?;
        return Ok(None);
    }
    let summary = loader.rows(scale, progress).await?;
    progress(DemoProgress {
        table: "indexes",
        done: 0,
        total: 1,
    });
    loader.indexes(scale, summary.history).await?;
    loader.finish(true).await?;
    let analyze = match store.dialect() {
        Dialect::Sqlite => "ANALYZE".to_owned(),
        Dialect::Postgres => format!("ANALYZE {}", DEMO_TABLES.join(", ")),
    };
    store.execute_script(analyze).await?;
    progress(DemoProgress {
        table: "indexes",
        done: 1,
        total: 1,
    });
    Ok(Some(summary))
}

struct Loader<'a> {
    store: &'a Store,
    dialect: Dialect,
    /// The open transaction (`None` only between a commit and the next begin).
    tx: Option<Transaction>,
}

impl Loader<'_> {
    fn tx(&mut self) -> Result<&mut Transaction> {
        self.tx
            .as_mut()
            .ok_or_else(|| Error::Internal("the demo loader has no open transaction".to_owned()))
    }

    /// Checks for existing demo tables (under the load lock) and creates the schema;
    /// `false` when the tables are there and are to be kept.
    async fn prepare(&mut self, existing: Existing) -> Result<bool> {
        let names = DEMO_TABLES
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let count = match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name IN ({names})"
            ),
            Dialect::Postgres => {
                // One loader at a time per database; the check happens under the lock.
                self.tx()?
                    .execute_script("SELECT pg_advisory_xact_lock(hashtext('quiver.demo.load'))")
                    .await?;
                format!(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename IN ({names})"
                )
            }
        };
        let (_, rows) = self.tx()?.run_many(&count, vec![Vec::new()]).await?;
        let found =
            matches!(rows.first().and_then(|row| row.first()), Some(Value::Int(n)) if *n > 0);
        if found {
            match existing {
                Existing::Fail => {
                    return Err(Error::Config(
                        "demo tables already exist (use --replace to drop and reload them)"
                            .to_owned(),
                    ));
                }
                Existing::Keep => return Ok(false),
                Existing::Replace => {
                    let drop = match self.dialect {
                        Dialect::Sqlite => DEMO_TABLES
                            .iter()
                            .rev()
                            .map(|name| format!("DROP TABLE IF EXISTS {name};"))
                            .collect::<String>(),
                        Dialect::Postgres => {
                            format!("DROP TABLE IF EXISTS {} CASCADE", DEMO_TABLES.join(", "))
                        }
                    };
                    self.tx()?.execute_script(&drop).await?;
                }
            }
        }
        let schema = match self.dialect {
            Dialect::Sqlite => SQLITE_SCHEMA_SQL,
            Dialect::Postgres => POSTGRES_SCHEMA_SQL,
        };
        self.tx()?.execute_script(schema).await?;
        Ok(true)
    }

    /// Writes `rows` into `table` by the bulk path.
    async fn write(&mut self, table: &str, columns: &[&str], rows: Vec<Vec<Value>>) -> Result<()> {
        let schema = self.dialect.default_schema();
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        self.tx()?
            .bulk_insert(schema, table, &columns, rows)
            .await
            .map(drop)
    }

    /// Ends a chunk: on SQLite commits it and begins the next transaction.
    async fn end_chunk(&mut self) -> Result<()> {
        if self.dialect == Dialect::Sqlite {
            if let Some(tx) = self.tx.take() {
                tx.commit(CommitOptions::default()).await?;
            }
            self.tx = Some(self.store.begin_with(Capture::Off).await?);
        }
        Ok(())
    }

    async fn finish(&mut self, commit: bool) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if commit {
            tx.commit(CommitOptions::default()).await.map(drop)
        } else {
            tx.rollback().await
        }
    }

    async fn rows(
        &mut self,
        scale: DemoScale,
        progress: &(dyn Fn(DemoProgress) + Send + Sync),
    ) -> Result<DemoSummary> {
        for (table, total) in [("epics", scale.epics), ("features", scale.features)] {
            let mut done = 0;
            while done < total {
                let end = (done + ROWS_PER_CHUNK).min(total);
                let rows = (done + 1..=end)
                    .map(|id| {
                        if table == "epics" {
                            plan_values(&epic(id))
                        } else {
                            plan_values(&feature(id))
                        }
                    })
                    .collect();
                let columns: &[&str] = if table == "epics" {
                    &PLAN_COLUMNS[..8]
                } else {
                    &PLAN_COLUMNS
                };
                self.write(table, columns, rows).await?;
                self.end_chunk().await?;
                done = end;
                progress(DemoProgress { table, done, total });
            }
        }
        let mut history_id = 0u64;
        let mut done = 0;
        while done < scale.tasks {
            let end = (done + ROWS_PER_CHUNK).min(scale.tasks);
            let mut task_rows = Vec::new();
            let mut history_rows = Vec::new();
            for id in done + 1..=end {
                let row = task(id);
                for change in history(&row) {
                    history_id += 1;
                    history_rows.push(vec![
                        id_value(history_id),
                        id_value(change.task_id),
                        Value::Text(change.old_status.to_owned()),
                        Value::Text(change.new_status.to_owned()),
                        optional_text(change.agent),
                        Value::Timestamp(change.changed_at),
                    ]);
                }
                task_rows.push(vec![
                    id_value(row.id),
                    id_value(row.feature_id),
                    Value::Text(row.key),
                    Value::Text(row.title),
                    row.description.map_or(Value::Null, Value::Text),
                    Value::Text(row.status.to_owned()),
                    Value::Int(row.priority),
                    optional_text(row.agent_type),
                    row.estimate_hours.map_or(Value::Null, Value::Float),
                    Value::Timestamp(row.created_at),
                    Value::Timestamp(row.updated_at),
                    row.completed_at.map_or(Value::Null, Value::Timestamp),
                ]);
            }
            self.write("tasks", &TASK_COLUMNS, task_rows).await?;
            self.write("task_history", &HISTORY_COLUMNS, history_rows)
                .await?;
            self.end_chunk().await?;
            done = end;
            progress(DemoProgress {
                table: "tasks",
                done,
                total: scale.tasks,
            });
        }
        Ok(DemoSummary {
            epics: scale.epics,
            features: scale.features,
            tasks: scale.tasks,
            history: history_id,
        })
    }

    /// Secondary indexes; on PostgreSQL identities continue after the loaded keys.
    async fn indexes(&mut self, scale: DemoScale, history: u64) -> Result<()> {
        self.tx()?.execute_script(INDEX_SQL).await?;
        if self.dialect == Dialect::Postgres {
            let mut restart = String::new();
            for (table, last) in [
                ("epics", scale.epics),
                ("features", scale.features),
                ("tasks", scale.tasks),
                ("task_history", history),
            ] {
                restart.push_str(&format!(
                    "ALTER TABLE {table} ALTER COLUMN id RESTART WITH {};",
                    last + 1
                ));
            }
            self.tx()?.execute_script(&restart).await?;
        }
        Ok(())
    }
}

const PLAN_COLUMNS: [&str; 9] = [
    "id",
    "key",
    "title",
    "description",
    "status",
    "priority",
    "created_at",
    "updated_at",
    "epic_id",
];

const TASK_COLUMNS: [&str; 12] = [
    "id",
    "feature_id",
    "key",
    "title",
    "description",
    "status",
    "priority",
    "agent_type",
    "estimate_hours",
    "created_at",
    "updated_at",
    "completed_at",
];

const HISTORY_COLUMNS: [&str; 6] = [
    "id",
    "task_id",
    "old_status",
    "new_status",
    "agent",
    "changed_at",
];

fn id_value(id: u64) -> Value {
    Value::Int(i64::try_from(id).unwrap_or(i64::MAX))
}

fn optional_text(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |t| Value::Text(t.to_owned()))
}

/// An epic's or feature's values in [`PLAN_COLUMNS`] order (`epic_id` last, features
/// only).
fn plan_values(row: &PlanRow) -> Vec<Value> {
    let mut values = vec![
        id_value(row.id),
        Value::Text(row.key.clone()),
        Value::Text(row.title.clone()),
        Value::Text(row.description.clone()),
        Value::Text(row.status.to_owned()),
        Value::Int(row.priority),
        Value::Timestamp(row.created_at),
        Value::Timestamp(row.updated_at),
    ];
    values.extend(row.epic_id.map(id_value));
    values
}
