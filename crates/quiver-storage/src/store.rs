//! The backend-independent face of the storage layer.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use futures::TryStreamExt;

use crate::catalog::{Catalog, TableInfo};
use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::pool::{PoolOptions, PoolStatus};
use crate::postgres::PostgresStore;
use crate::sqlite::{SqliteOptions, SqliteStore};
use crate::stream::BatchStream;
use crate::value::Value;

/// Everything needed to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Reader pool settings.
    pub pool: PoolOptions,
    /// SQLite connection settings (ignored by other backends).
    pub sqlite: SqliteOptions,
    /// Rows per Arrow batch when reading.
    pub batch_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool: PoolOptions::default(),
            sqlite: SqliteOptions::default(),
            batch_size: 8192,
        }
    }
}

/// Where the data lives, parsed from a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its connection URL.
    Postgres(String),
}

impl StoreLocation {
    /// Parses `sqlite://PATH` or `sqlite:PATH` (relative or absolute path).
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(Error::Config(format!("'{url}' names no database file")));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(rest)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(url.to_owned()));
        }
        Err(Error::Config(format!(
            "unsupported database URL '{url}': expected sqlite://PATH or postgres://USER@HOST/DB"
        )))
    }
}

/// The backend a store runs on.
#[derive(Debug)]
pub(crate) enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// A pooled connection to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<Backend>,
    batch_size: usize,
    /// The latest commit version this process knows of (see [`Store::commit_signal`]).
    commits: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Tries of a backup step that found the database busy or locked, 50 ms apart.
const BACKUP_ATTEMPTS: u32 = 100;

impl Store {
    /// Opens the store named by `url`: a SQLite file (created empty if missing) or a
    /// PostgreSQL database. The pool warms up in the background; a PostgreSQL server
    /// that is down now is retried until it answers (see [`Store::ping`]).
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let backend = match StoreLocation::parse(url)? {
            StoreLocation::Sqlite(path) => {
                Backend::Sqlite(SqliteStore::open(&path, &options.pool, &options.sqlite).await?)
            }
            StoreLocation::Postgres(url) => {
                Backend::Postgres(PostgresStore::open(&url, &options.pool)?)
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
            batch_size: options.batch_size.max(1),
            commits: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// Changes whenever this process learns of a new commit: at once for commits made
    /// through this store and, on PostgreSQL while [`Store::follow_commits`] runs, when
    /// another replica's commit is announced. The value is the newest version heard of
    /// (a wake-up, not the truth: read the change log for what committed).
    pub fn commit_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// The sender [`Transaction`](crate::Transaction)s announce their commits on.
    pub(crate) fn commit_sender(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        Arc::clone(&self.commits)
    }

    /// Listens for commits made through other processes on the same database and
    /// announces them on [`Store::commit_signal`]; returns only when dropped. On
    /// PostgreSQL this holds one connection outside the pool, `LISTEN`ing on the
    /// channel every commit notifies, and reconnects with backoff when it drops (each
    /// reconnection also wakes listeners, since announcements may have been missed).
    /// On SQLite there is nothing to listen to: all capture happens in this process.
    pub async fn follow_commits(&self) {
        match &*self.backend {
            Backend::Sqlite(_) => std::future::pending().await,
            Backend::Postgres(store) => store.follow_commits(&self.commits).await,
        }
    }

    /// The backend's name as OpenTelemetry's `db.system.name` spells it.
    pub fn system_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgresql",
        }
    }

    /// A description of where the data lives, safe to log (no credentials).
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Sqlite(store) => format!("sqlite:{}", store.path().display()),
            Backend::Postgres(store) => store.target().to_owned(),
        }
    }

    /// The SQL dialect of the backend.
    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The default schema unqualified names resolve in.
    pub fn default_schema(&self) -> &'static str {
        self.dialect().default_schema()
    }

    /// Rows per batch when reading.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Reads the catalog: schemas, tables, columns, keys and indexes.
    pub async fn catalog(&self) -> Result<Catalog> {
        match &*self.backend {
            Backend::Sqlite(store) => store.catalog().await,
            Backend::Postgres(store) => store.catalog().await,
        }
    }

    /// Streams the result of a query as Arrow batches shaped like `schema`.
    ///
    /// `schema` has one field per result column (or none, to only count rows).
    pub async fn query(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
        schema: SchemaRef,
    ) -> Result<BatchStream> {
        let sql = sql.into();
        match &*self.backend {
            Backend::Sqlite(store) => store.query(sql, params, schema, self.batch_size).await,
            Backend::Postgres(store) => store.query(sql, params, schema, self.batch_size).await,
        }
    }

    /// The smallest and largest value of `table`'s range key, or `None` when the table
    /// has no range key or no rows.
    pub async fn key_range(&self, table: &TableInfo) -> Result<Option<(i64, i64)>> {
        let Some(key) = table.range_key.clone() else {
            return Ok(None);
        };
        let dialect = self.dialect();
        let sql = format!(
            "SELECT min({key}), max({key}) FROM {}.{}",
            dialect.quote_identifier(&table.schema),
            dialect.quote_identifier(&table.name)
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("low", DataType::Int64, true),
            Field::new("high", DataType::Int64, true),
        ]));
        let batches: Vec<_> = self
            .query(sql, Vec::new(), schema)
            .await?
            .try_collect()
            .await?;
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        let (low, high) = (
            batch.column(0).as_primitive::<Int64Type>(),
            batch.column(1).as_primitive::<Int64Type>(),
        );
        Ok((low.is_valid(0) && high.is_valid(0)).then(|| (low.value(0), high.value(0))))
    }

    /// Executes one statement through the writer and returns the rows it changed.
    pub async fn execute(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<u64> {
        let sql = sql.into();
        match &*self.backend {
            Backend::Sqlite(store) => {
                store
                    .write(move |conn| {
                        let mut statement = conn.prepare_cached(&sql)?;
                        for (index, param) in params.iter().enumerate() {
                            statement.raw_bind_parameter(index + 1, param)?;
                        }
                        Ok(statement.raw_execute()? as u64)
                    })
                    .await
            }
            Backend::Postgres(store) => store.execute(&sql, &params).await,
        }
    }

    /// Executes several `;`-separated statements through the writer (DDL scripts).
    pub async fn execute_script(&self, sql: impl Into<String>) -> Result<()> {
        let sql = sql.into();
        match &*self.backend {
            Backend::Sqlite(store) => store.write(move |conn| Ok(conn.execute_batch(&sql)?)).await,
            Backend::Postgres(store) => store.execute_script(&sql).await,
        }
    }

    /// Copies a SQLite database into `path` (an empty file the caller created) with the
    /// online backup API (readers and the
    /// writer go on meanwhile), then checks the copy: its `integrity_check` answer and
    /// page count. `None` for a store that is not SQLite.
    pub async fn backup_sqlite(&self, path: PathBuf) -> Result<Option<(String, i64)>> {
        let Backend::Sqlite(store) = &*self.backend else {
            return Ok(None);
        };
        store
            .read(move |conn| {
                let mut target = rusqlite::Connection::open(&path)?;
                {
                    // All pages in one step: a snapshot (a copy in small steps starts
                    // over at every commit of the writer and may never end).
                    let backup = rusqlite::backup::Backup::new(conn, &mut target)?;
                    let mut attempts = 0;
                    loop {
                        match backup.step(-1)? {
                            rusqlite::backup::StepResult::Done => break,
                            _ if attempts < BACKUP_ATTEMPTS => {
                                attempts += 1;
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                            _ => {
                                return Err(Error::Unavailable(
                                    "the database stayed locked during the backup".to_owned(),
                                ));
                            }
                        }
                    }
                }
                drop(target);
                let copy = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                let check: String =
                    copy.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
                let pages: i64 = copy.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                Ok(Some((check, pages)))
            })
            .await
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        match &*self.backend {
            Backend::Sqlite(store) => store.ping().await,
            Backend::Postgres(store) => store.ping().await,
        }
    }

    /// Takes a pooled connection and gives it back without running anything: what a
    /// query pays for its connection (benchmarks).
    pub async fn checkout(&self) -> Result<()> {
        match &*self.backend {
            Backend::Sqlite(store) => store.checkout().await,
            Backend::Postgres(store) => store.connection().await.map(drop),
        }
    }

    /// A snapshot of the reader pool.
    pub fn pool_status(&self) -> PoolStatus {
        match &*self.backend {
            Backend::Sqlite(store) => store.pool_status(),
            Backend::Postgres(store) => store.pool_status(),
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        assert_eq!(
            StoreLocation::parse("sqlite://./quiver-data/quiver.db").unwrap(),
            StoreLocation::Sqlite(PathBuf::from("./quiver-data/quiver.db"))
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///var/lib/quiver.db").unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/var/lib/quiver.db"))
        );
        assert_eq!(
            StoreLocation::parse("sqlite:data.db").unwrap(),
            StoreLocation::Sqlite(PathBuf::from("data.db"))
        );
        assert!(StoreLocation::parse("sqlite://").is_err());
        assert_eq!(
            StoreLocation::parse("postgres://quiver@db:5432/app").unwrap(),
            StoreLocation::Postgres("postgres://quiver@db:5432/app".to_owned())
        );
        assert!(
            StoreLocation::parse("mysql://x")
                .unwrap_err()
                .to_string()
                .contains("unsupported database URL")
        );
    }
}
