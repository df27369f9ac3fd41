//! Shared fixtures: a demo database on disk and canonical result text.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver_query::{EngineConfig, QueryEngine};
use quiver_storage::testing::{canonical_batch, sqlite_rows};
use quiver_storage::{Store, StoreOptions, demo};

/// A demo database in a temporary directory and an engine over it.
pub(crate) struct Fixture {
    pub(crate) engine: QueryEngine,
    /// The SQLite file with the data: the engine's own store, or the truth copy of a
    /// PostgreSQL-backed fixture.
    pub(crate) path: PathBuf,
    _postgres: Option<quiver_storage::testing::PostgresTestDb>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn demo(tasks: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
        demo::load(&store, tasks, false, Arc::new(|_| {}))
            .await
            .unwrap();
        let engine = QueryEngine::new(store, EngineConfig::default())
            .await
            .unwrap();
        Fixture {
            engine,
            path,
            _postgres: None,
            _dir: dir,
        }
    }

    /// The demo on a fresh PostgreSQL database, with the same demo in a SQLite file as
    /// truth; `None` when no PostgreSQL is configured for tests.
    pub(crate) async fn demo_on_postgres(tasks: u64) -> Option<Self> {
        let db = quiver_storage::testing::PostgresTestDb::create("query").await?;
        let truth = Self::demo(tasks).await;
        let store = Store::open(db.url(), &StoreOptions::default())
            .await
            .unwrap();
        demo::load(&store, tasks, false, Arc::new(|_| {}))
            .await
            .unwrap();
        let engine = QueryEngine::new(store, EngineConfig::default())
            .await
            .unwrap();
        Some(Fixture {
            engine,
            path: truth.path,
            _postgres: Some(db),
            _dir: truth._dir,
        })
    }

    /// A database built by `script`, with an engine running `partitions` partitions.
    pub(crate) async fn from_script(script: &str, partitions: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(script)
            .unwrap();
        let url = format!("sqlite://{}", path.display());
        let store = Store::open(&url, &StoreOptions::default()).await.unwrap();
        let config = EngineConfig {
            target_partitions: partitions,
            ..EngineConfig::default()
        };
        let engine = QueryEngine::new(store, config).await.unwrap();
        Fixture {
            engine,
            path,
            _postgres: None,
            _dir: dir,
        }
    }

    /// Rows of `sql` through Quiver, as canonical text.
    pub(crate) async fn quiver_rows(&self, sql: &str) -> Vec<String> {
        let stream = self
            .engine
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        batches.iter().flat_map(canonical_batch).collect()
    }

    /// Rows of `sql` run by SQLite itself on the same file, as canonical text.
    pub(crate) fn sqlite_rows(&self, sql: &str) -> Vec<String> {
        sqlite_rows(&self.path, sql)
    }
}
