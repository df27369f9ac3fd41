//! Errors raised while planning and running queries.

use datafusion::error::DataFusionError;

/// A query failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning or execution failed in DataFusion (SQL errors, unknown tables, …).
    #[error("{}", describe_datafusion(.0))]
    DataFusion(#[from] DataFusionError),

    /// The store failed.
    #[error(transparent)]
    Storage(#[from] quiver_storage::Error),

    /// The statement is valid SQL but not a query (DDL, DML, `SET`, …).
    #[error("not a query: {0}")]
    NotAQuery(String),

    /// A bound parameter is missing, extra, or of a type that does not convert.
    #[error("parameter {name}: {message}")]
    Parameter {
        /// The placeholder (`$1`, …).
        name: String,
        /// What is wrong.
        message: String,
    },

    /// A row predicate is not valid for its table.
    #[error("invalid predicate '{predicate}': {message}")]
    Predicate {
        /// The predicate as written.
        predicate: String,
        /// What is wrong.
        message: String,
    },

    /// A table name that cannot name a table (an empty part).
    #[error("invalid table name '{0}'")]
    InvalidTableName(String),

    /// The name resolves to a view where a base table is needed.
    #[error("'{0}' is a view; only tables can be written or followed")]
    NotATable(String),

    /// A limit on what clients may send or run was exceeded (statement size or depth,
    /// concurrent queries).
    #[error("{0}")]
    Limit(String),

    /// The query ran out of time.
    #[error("{0}")]
    Timeout(String),

    /// The query was cancelled.
    #[error("{0}")]
    Cancelled(String),

    /// The query runtime failed (a task panicked or the runtime stopped): a bug.
    #[error("query runtime: {0}")]
    Runtime(String),

    /// The number of bound values does not match the placeholders.
    #[error("the statement has {expected} parameter(s) but {actual} value(s) were bound")]
    ParameterCount {
        /// Placeholders in the statement.
        expected: usize,
        /// Values bound.
        actual: usize,
    },
}

/// The innermost DataFusion message, without the `Error during planning:` chains that
/// wrapping adds, so clients see what the parser or planner said.
fn describe_datafusion(err: &DataFusionError) -> String {
    match err.find_root() {
        DataFusionError::External(inner) => inner.to_string(),
        root => root.to_string(),
    }
}

impl Error {
    /// The storage error at the root of this error, if the store caused it.
    pub fn storage_cause(&self) -> Option<&quiver_storage::Error> {
        match self {
            Error::Storage(err) => Some(err),
            Error::DataFusion(err) => match err.find_root() {
                DataFusionError::External(inner) => inner.downcast_ref::<quiver_storage::Error>(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Result type of the query engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
