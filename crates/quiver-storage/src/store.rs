//! The backend-independent face of the storage layer.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::Stream;

use crate::catalog::{Catalog, TableInfo};
use crate::error::{Error, Result};
use crate::sqlite::{SqliteOptions, SqliteStore};
use crate::value::Value;

/// A stream of record batches read from the store.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// Connection pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: u32,
    /// Connections kept open when idle, opened at start (warm-up).
    pub min_idle: u32,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_idle` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long.
    pub max_lifetime: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            min_idle: 2,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
        }
    }
}

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

/// A snapshot of a connection pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Configured maximum size.
    pub max_size: u32,
    /// Connections open now.
    pub connections: u32,
    /// Of those, idle.
    pub idle: u32,
    /// Callers waiting for a connection.
    pub waiting: u64,
    /// Connections handed out since start.
    pub acquired: u64,
    /// Acquire attempts that timed out since start.
    pub acquire_timeouts: u64,
    /// Connections opened since start.
    pub connections_created: u64,
}

/// How SQL text is spelled for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: `"ident"`, `?N` placeholders.
    Sqlite,
}

impl Dialect {
    /// Quotes an identifier.
    pub fn quote_identifier(self, identifier: &str) -> String {
        format!("\"{}\"", identifier.replace('"', "\"\""))
    }

    /// The placeholder for the one-based parameter `index`.
    pub fn placeholder(self, index: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{index}"),
        }
    }
}

/// Where the data lives, parsed from a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
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
            return Err(Error::Config(
                "PostgreSQL is not available in this build yet; use a sqlite:// URL".to_owned(),
            ));
        }
        Err(Error::Config(format!(
            "unsupported database URL '{url}': expected sqlite://PATH"
        )))
    }
}

#[derive(Debug)]
enum Backend {
    Sqlite(SqliteStore),
}

/// A pooled connection to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<Backend>,
    batch_size: usize,
}

impl Store {
    /// Opens the store named by `url`, creating an empty SQLite file if needed, and warms
    /// its pool.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let backend = match StoreLocation::parse(url)? {
            StoreLocation::Sqlite(path) => {
                Backend::Sqlite(SqliteStore::open(&path, &options.pool, &options.sqlite).await?)
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
            batch_size: options.batch_size.max(1),
        })
    }

    /// The backend's name as OpenTelemetry's `db.system.name` spells it.
    pub fn system_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// A description of where the data lives, safe to log (no credentials).
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Sqlite(store) => format!("sqlite:{}", store.path().display()),
        }
    }

    /// The SQL dialect of the backend.
    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The default schema unqualified names resolve in.
    pub fn default_schema(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => crate::sqlite::SQLITE_SCHEMA,
        }
    }

    /// Rows per batch when reading.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Reads the catalog: schemas, tables, columns, keys and indexes.
    pub async fn catalog(&self) -> Result<Catalog> {
        match &*self.backend {
            Backend::Sqlite(store) => store.catalog().await,
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
        match &*self.backend {
            Backend::Sqlite(store) => {
                store
                    .query(sql.into(), params, schema, self.batch_size)
                    .await
            }
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
        match &*self.backend {
            Backend::Sqlite(store) => {
                store
                    .read(move |conn| {
                        let range: (Option<i64>, Option<i64>) = conn
                            .prepare_cached(&sql)?
                            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                        Ok(match range {
                            (Some(low), Some(high)) => Some((low, high)),
                            _ => None,
                        })
                    })
                    .await
            }
        }
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
        }
    }

    /// Executes several `;`-separated statements through the writer (DDL scripts).
    pub async fn execute_script(&self, sql: impl Into<String>) -> Result<()> {
        let sql = sql.into();
        match &*self.backend {
            Backend::Sqlite(store) => store.write(move |conn| Ok(conn.execute_batch(&sql)?)).await,
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        match &*self.backend {
            Backend::Sqlite(store) => store.ping().await,
        }
    }

    /// A snapshot of the reader pool.
    pub fn pool_status(&self) -> PoolStatus {
        match &*self.backend {
            Backend::Sqlite(store) => store.pool_status(),
        }
    }

    pub(crate) fn sqlite(&self) -> Option<&SqliteStore> {
        match &*self.backend {
            Backend::Sqlite(store) => Some(store),
        }
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
        assert!(
            StoreLocation::parse("mysql://x")
                .unwrap_err()
                .to_string()
                .contains("unsupported database URL")
        );
    }

    #[test]
    fn sqlite_placeholders_are_numbered() {
        assert_eq!(Dialect::Sqlite.placeholder(3), "?3");
        assert_eq!(Dialect::Sqlite.quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
