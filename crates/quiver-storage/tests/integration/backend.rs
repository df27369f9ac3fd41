//! The backends the suite runs against: a SQLite file in a temporary directory, and a
//! fresh PostgreSQL database from `QUIVER_TEST_POSTGRES_URL`.

use std::sync::Arc;

use quiver_storage::testing::PostgresTestDb;
use quiver_storage::{PoolOptions, Store, StoreOptions, demo};

/// A fresh, empty database of one backend.
pub(crate) enum TestBackend {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres(PostgresTestDb),
}

impl TestBackend {
    pub(crate) async fn sqlite() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("suite.db").display());
        Some(TestBackend::Sqlite { url, _dir: dir })
    }

    /// `None` (after a warning) when no PostgreSQL is configured and none is required.
    pub(crate) async fn postgres() -> Option<Self> {
        PostgresTestDb::create("storage")
            .await
            .map(TestBackend::Postgres)
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            TestBackend::Sqlite { url, .. } => url,
            TestBackend::Postgres(db) => db.url(),
        }
    }

    /// A store with the default options.
    pub(crate) async fn open(&self) -> Store {
        self.open_with(StoreOptions::default()).await
    }

    pub(crate) async fn open_with(&self, options: StoreOptions) -> Store {
        Store::open(self.url(), &options)
            .await
            .unwrap_or_else(|err| panic!("open {}: {err}", self.url()))
    }

    /// A store whose pool has `max_size` connections and the given acquire timeout.
    pub(crate) async fn open_pool(&self, pool: PoolOptions) -> Store {
        self.open_with(StoreOptions {
            pool,
            ..StoreOptions::default()
        })
        .await
    }

    /// A store holding the demo data with `tasks` tasks.
    pub(crate) async fn demo(&self, tasks: u64) -> Store {
        let store = self.open().await;
        demo::load(&store, tasks, false, Arc::new(|_| {}))
            .await
            .expect("demo loads");
        store
    }
}
