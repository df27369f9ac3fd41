//! A bb8 connection manager for SQLite files.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// SQLite connection settings applied to every connection Quiver opens.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Page cache per connection, in KiB (`PRAGMA cache_size = -N`).
    pub cache_size_kib: u32,
    /// How long a statement waits for a lock before failing with SQLITE_BUSY.
    pub busy_timeout: Duration,
    /// Memory-mapped I/O size in bytes (`PRAGMA mmap_size`); 0 disables it.
    pub mmap_size: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            cache_size_kib: 64 * 1024,
            busy_timeout: Duration::from_secs(5),
            mmap_size: 256 * 1024 * 1024,
        }
    }
}

/// Opens a connection with Quiver's pragmas. Blocking: call from a blocking thread.
///
/// Every connection gets WAL, `synchronous=NORMAL`, `foreign_keys=ON`, the busy timeout
/// and the cache size; reader connections are additionally `query_only`, so that the
/// single writer connection is the only one that can change the file.
pub(crate) fn open_connection(
    path: &std::path::Path,
    options: &SqliteOptions,
    reader: bool,
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| Error::Connect {
        target: path.display().to_string(),
        message: err.to_string(),
    })?;
    conn.busy_timeout(options.busy_timeout)?;
    // journal_mode returns a row; the others do not.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Connect {
            target: path.display().to_string(),
            message: format!("cannot switch the journal to WAL (still '{mode}')"),
        });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -{cache};
         PRAGMA temp_store = MEMORY;
         PRAGMA mmap_size = {mmap};
         PRAGMA query_only = {query_only};",
        cache = options.cache_size_kib,
        mmap = options.mmap_size,
        query_only = if reader { "ON" } else { "OFF" },
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// bb8 manager for read connections to one SQLite file.
#[derive(Debug, Clone)]
pub(crate) struct SqliteManager {
    pub(crate) path: PathBuf,
    pub(crate) options: SqliteOptions,
}

impl bb8::ManageConnection for SqliteManager {
    type Connection = Connection;
    type Error = Error;

    async fn connect(&self) -> Result<Connection> {
        let path = self.path.clone();
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_connection(&path, &options, true)?;
            super::guard::install_reader(&mut conn)?;
            Ok(conn)
        })
        .await?
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<()> {
        // A cached no-op statement: microseconds, no I/O.
        conn.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?;
        Ok(())
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        // A connection left inside a transaction (a panic mid-statement) is not reusable.
        !conn.is_autocommit()
    }
}
