//! Errors raised by the storage layer.

use std::time::Duration;

/// A storage failure, classified so that callers can map it to a precise status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL or a storage option is not acceptable.
    #[error("invalid storage configuration: {0}")]
    Config(String),

    /// The store could not be reached or a connection could not be opened.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// Redacted description of what was being connected to.
        target: String,
        /// What went wrong.
        message: String,
    },

    /// No pooled connection became free within the acquire timeout.
    #[error("no database connection available within {timeout:?} (pool of {max_size} exhausted)")]
    PoolTimeout {
        /// The configured acquire timeout.
        timeout: Duration,
        /// The configured maximum pool size.
        max_size: u32,
    },

    /// The single SQLite writer stayed busy (another transaction held it) too long.
    #[error("the database writer stayed busy for {0:?} (another write transaction holds it)")]
    WriterBusy(Duration),

    /// The store is down; the pool keeps trying to reconnect in the background.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    /// A table named by the caller does not exist.
    #[error("table not found: {0}")]
    TableNotFound(String),

    /// A value read from the store does not fit the Arrow type of its column.
    #[error("column '{column}': cannot read {value} as {target}")]
    Conversion {
        /// The column being read.
        column: String,
        /// Short description of the offending value.
        value: String,
        /// The Arrow type the column maps to.
        target: String,
    },

    /// A value the store cannot hold, or not as written (out of its range, NaN on
    /// SQLite, malformed decimal text).
    #[error("{0}")]
    Value(String),

    /// A bound parameter has a type the store cannot take.
    #[error("parameter {index}: {message}")]
    Parameter {
        /// One-based parameter position.
        index: usize,
        /// What is wrong with it.
        message: String,
    },

    /// A transaction can no longer be used: one of its statements was interrupted
    /// (the caller went away or timed out). It can only be rolled back.
    #[error("{0}")]
    TooLarge(String),

    /// The transaction can only be rolled back.
    #[error("transaction aborted: {0}")]
    TransactionAborted(String),

    /// The statement was cancelled by the caller or hit its deadline.
    #[error("statement cancelled: {0}")]
    Cancelled(String),

    /// An error reported by SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// An error reported by PostgreSQL or its client.
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),

    /// Arrow could not build a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Filesystem failure (creating the data directory, for example).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// A blocking task panicked or was aborted: a bug.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The SQLite primary result code, when this error came from SQLite.
    pub fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => Some(failure.code),
            _ => None,
        }
    }
}

/// PostgreSQL's message with its detail and hint, without the `db error:` prefix; a
/// value that could not be bound is described as such.
fn postgres_message(err: &tokio_postgres::Error) -> String {
    if let Some(bind) = bind_error_of(err) {
        return format!("invalid parameter value: {bind}");
    }
    match err.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!("; hint: {hint}"));
            }
            message
        }
        None => err.to_string(),
    }
}

/// A value that cannot be bound to a parameter of the type PostgreSQL asked for: the
/// caller's error, recognised as such when it comes back inside the driver's error.
#[derive(Debug)]
pub(crate) struct BindError(pub(crate) String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

/// The caller's value behind a driver error, when binding it failed.
fn bind_error_of(err: &tokio_postgres::Error) -> Option<&BindError> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(bind) = cause.downcast_ref::<BindError>() {
            return Some(bind);
        }
        source = cause.source();
    }
    None
}

impl Error {
    /// Whether a value the caller sent could not be bound to its parameter (the
    /// caller's error, not the store's).
    pub fn is_bad_parameter(&self) -> bool {
        match self {
            Error::Postgres(err) => bind_error_of(err).is_some(),
            _ => false,
        }
    }

    /// The five-character SQLSTATE of an error the database reported.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(err) => err.code().map(|code| code.code()),
            _ => None,
        }
    }

    /// Whether this is the unique-key violation of two requests committing the same
    /// idempotency key at once (PostgreSQL; SQLite's single writer orders them).
    pub fn is_idempotency_conflict(&self) -> bool {
        match self {
            Error::Postgres(err) => err.as_db_error().is_some_and(|db| {
                db.code().code() == "23505" && db.table() == Some("_quiver_idempotency")
            }),
            _ => false,
        }
    }

    /// Whether PostgreSQL refused a prepared statement because the schema changed
    /// under it (`cached plan must not change result type`).
    pub fn is_stale_plan(&self) -> bool {
        matches!(self, Error::Postgres(err) if err.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
            && err.as_db_error().is_some_and(|db| db.message().contains("cached plan")))
    }

    /// Whether the connection went away underneath (closed socket, server shutdown or
    /// restart, `pg_terminate_backend`): the statement never ran, a retry on another
    /// connection may succeed.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Error::Postgres(err) => {
                err.is_closed()
                    || self.sqlstate().is_some_and(|code| {
                        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
                    })
            }
            _ => false,
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Error::Internal(format!("blocking storage task failed: {err}"))
    }
}

/// Result type of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
