//! The embedded SQLite backend: a pool of reader connections and one writer.
//!
//! Readers come from a pool of `query_only` connections; all writes go through a
//! single writer connection behind an async mutex, which is SQLite's own concurrency
//! model (one writer, many readers under WAL) made explicit. Every SQLite call runs on
//! tokio's blocking threads, never on the async workers.

mod guard;
mod introspect;
mod pool;
mod read;
pub(crate) mod transaction;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rusqlite::Connection;
use tokio::sync::{Mutex, mpsc};
use tracing::Instrument;

pub use pool::SqliteOptions;

use self::guard::Trust;
use self::pool::{SqliteManager, open_connection};
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::pool::{Lease, Pool, PoolOptions, PoolStatus};
use crate::stream::BatchStream;
use crate::value::Value;

/// SQLite VM instructions between two checks whether the reader went away.
const PROGRESS_CHECK_INSTRUCTIONS: i32 = 10_000;

/// A SQLite database file served through a reader pool and a single writer.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    readers: Pool<SqliteManager>,
    writer: Arc<Mutex<Connection>>,
    /// Whether the writer runs Quiver's own statements now (see [`guard`]).
    trust: Trust,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and warms the reader pool.
    pub(crate) async fn open(
        path: &Path,
        pool_options: &PoolOptions,
        options: &SqliteOptions,
    ) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await?;
        }
        let trust = Trust::default();
        let writer = {
            let path = path.to_owned();
            let options = options.clone();
            let trust = trust.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = open_connection(&path, &options, false)?;
                conn.execute_batch(crate::capture::SQLITE_WRITER_SQL)?;
                guard::install_writer(&mut conn, &trust)?;
                Ok::<_, Error>(conn)
            })
            .await??
        };
        let manager = SqliteManager {
            path: path.to_owned(),
            options: options.clone(),
        };
        let readers = Pool::new(manager, pool_options);
        Ok(Self {
            path: path.to_owned(),
            readers,
            writer: Arc::new(Mutex::new(writer)),
            trust,
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    async fn reader(&self) -> Result<Lease<SqliteManager>> {
        self.readers.get().await
    }

    /// Runs `f` on a pooled reader connection on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let mut conn = self.reader().await?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&mut conn))).await?
    }

    /// Runs Quiver's own statements `f` on the writer connection on a blocking thread;
    /// writes are serialized.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let mut conn = Arc::clone(&self.writer).lock_owned().await;
        let span = tracing::Span::current();
        let trust = self.trust.clone();
        tokio::task::spawn_blocking(move || {
            let _trusted = trust.scope(true);
            if !conn.is_autocommit() {
                // A transaction abandoned by a cancelled caller.
                conn.execute_batch("ROLLBACK")?;
            }
            span.in_scope(|| f(&mut conn))
        })
        .await?
    }

    /// The writer's trust flag, for transactions holding the writer.
    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Locks the writer connection (waits for the transaction holding it).
    pub(crate) async fn writer_guard(&self) -> tokio::sync::OwnedMutexGuard<Connection> {
        Arc::clone(&self.writer).lock_owned().await
    }

    /// How long a caller waits for a connection, the writer included.
    pub(crate) fn acquire_timeout(&self) -> std::time::Duration {
        self.readers.options().acquire_timeout
    }

    /// Streams the rows of `sql` as batches shaped like `schema`.
    ///
    /// The rows are read on a blocking thread into a channel of two batches, so memory
    /// stays bounded however large the result. Dropping the stream interrupts the
    /// statement at its next progress check.
    pub(crate) async fn query(
        &self,
        sql: String,
        params: Vec<Value>,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<BatchStream> {
        let mut conn = self.reader().await?;
        let (sender, receiver) = mpsc::channel::<Result<RecordBatch>>(2);
        let span = crate::statement_span("sqlite", &sql);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let watcher = sender.clone();
            let mut rows = 0usize;
            let outcome = conn
                .progress_handler(
                    PROGRESS_CHECK_INSTRUCTIONS,
                    Some(move || watcher.is_closed()),
                )
                .map_err(Error::from)
                .and_then(|()| {
                    read::read_batches(&conn, &sql, &params, &schema, batch_size, |batch| {
                        rows += batch.num_rows();
                        sender.blocking_send(Ok(batch)).is_ok()
                    })
                });
            let outcome = outcome.and(
                conn.progress_handler(0, None::<fn() -> bool>)
                    .map_err(Error::from),
            );
            span.record("rows", rows as i64);
            if let Err(err) = outcome {
                // An interrupt because the reader left is not an error anyone can see.
                if !sender.is_closed() {
                    let _ = sender.blocking_send(Err(err));
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    /// Reads the catalog.
    pub(crate) async fn catalog(&self) -> Result<Catalog> {
        self.read(|conn| introspect::read_catalog(conn))
            .instrument(tracing::debug_span!("storage.sqlite.catalog"))
            .await
    }

    /// Takes a reader connection and returns it.
    pub(crate) async fn checkout(&self) -> Result<()> {
        self.reader().await.map(drop)
    }

    /// Checks that a reader connection answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.checkout().await
    }

    /// Current pool occupancy.
    pub(crate) fn pool_status(&self) -> PoolStatus {
        self.readers.status()
    }
}
