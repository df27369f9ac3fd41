//! Server errors and the one place they become gRPC statuses.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::{Code, Status};

/// A failure while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning or running a query failed.
    #[error(transparent)]
    Query(#[from] quiver_query::Error),

    /// The store failed outside a query.
    #[error(transparent)]
    Storage(#[from] quiver_storage::Error),

    /// A statement handle or ticket is not one this server issued.
    #[error("invalid statement handle: {0}")]
    InvalidHandle(String),

    /// The request is malformed or asks for something that does not exist.
    #[error("{0}")]
    InvalidRequest(String),

    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The object to create exists already.
    #[error("{0}")]
    AlreadyExists(String),

    /// The request cannot apply in the current state (an idempotency key reused for a
    /// different request, for example).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The service cannot answer now (shutting down); the call can be retried.
    #[error("{0}")]
    Unavailable(String),

    /// The request is larger than the server's limits allow.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The request may not do what it asks (touch Quiver's own objects, another
    /// client's transaction).
    #[error("{0}")]
    PermissionDenied(String),

    /// The request carries no credentials, or credentials that are wrong or expired.
    #[error("{0}")]
    Unauthenticated(String),

    /// Arrow data sent by the client could not be decoded.
    #[error("invalid Arrow data: {0}")]
    Arrow(#[from] ArrowError),

    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A socket or file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// Building a Flight SQL metadata response failed: a bug.
    #[error("cannot build metadata response: {0}")]
    Metadata(#[from] arrow_flight::error::FlightError),

    /// A request this process made to a Quiver server failed (command-line client).
    #[error("{0}")]
    Client(String),

    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result type of the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most bytes of a status message: default clients cannot receive much more in
/// their headers, and no message needs to echo more of its input.
pub const MAX_STATUS_MESSAGE: usize = 1024;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = code_of(&err);
        if code == Code::Internal {
            tracing::error!(error = %causes(&err), "internal error");
        }
        status(code, err.to_string())
    }
}

/// A status with its message cut to [`MAX_STATUS_MESSAGE`] bytes.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status::new(code, bounded(message.into()))
}

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary, saying how
/// much was left out.
pub fn bounded(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_STATUS_MESSAGE - 40;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… ({} more bytes)", total - cut));
    message
}

/// An error and its causes, one after another.
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The gRPC code for an error: an exhaustive match, so every new variant is classified.
pub fn code_of(err: &Error) -> Code {
    match err {
        Error::Query(err) => query_code(err),
        Error::Storage(err) => storage_code(err),
        Error::InvalidHandle(_) | Error::InvalidRequest(_) | Error::Arrow(_) => {
            Code::InvalidArgument
        }
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::Config(_) => Code::FailedPrecondition,
        Error::Io(_) | Error::Client(_) | Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) | Error::Metadata(_) => Code::Internal,
    }
}

fn query_code(err: &quiver_query::Error) -> Code {
    match err {
        quiver_query::Error::DataFusion(err) => datafusion_code(err),
        quiver_query::Error::Storage(err) => storage_code(err),
        quiver_query::Error::NotAQuery(_)
        | quiver_query::Error::Predicate { .. }
        | quiver_query::Error::Parameter { .. }
        | quiver_query::Error::ParameterCount { .. }
        | quiver_query::Error::InvalidTableName(_)
        | quiver_query::Error::NotATable(_) => Code::InvalidArgument,
        quiver_query::Error::Limit(_) => Code::ResourceExhausted,
        quiver_query::Error::Timeout(_) => Code::DeadlineExceeded,
        quiver_query::Error::Cancelled(_) => Code::Cancelled,
        quiver_query::Error::Runtime(_) => Code::Internal,
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as HTTP error bodies spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Classifies a DataFusion error by its root cause.
pub fn datafusion_code(err: &DataFusionError) -> Code {
    match err.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::Substrait(_) => Code::InvalidArgument,
        // What DataFusion does not implement is a client statement Quiver does not take.
        DataFusionError::NotImplemented(_) => Code::InvalidArgument,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        DataFusionError::ArrowError(err, _) => arrow_code(err),
        // Runtime failures on the data, such as a failed cast of a value.
        DataFusionError::Execution(_) => Code::InvalidArgument,
        DataFusionError::External(inner) => external_code(inner.as_ref()),
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => Code::Unavailable,
        DataFusionError::Collection(errors) => {
            errors.first().map_or(Code::Internal, datafusion_code)
        }
        DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Ffi(_)
        | DataFusionError::Context(..)
        | DataFusionError::Diagnostic(..)
        | DataFusionError::Shared(_) => Code::Internal,
    }
}

fn arrow_code(err: &ArrowError) -> Code {
    match err {
        ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::DivideByZero
        | ArrowError::ArithmeticOverflow(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::SchemaError(_)
        | ArrowError::ComputeError(_) => Code::InvalidArgument,
        ArrowError::NotYetImplemented(_) => Code::Unimplemented,
        ArrowError::MemoryError(_) => Code::ResourceExhausted,
        ArrowError::ExternalError(inner) => external_code(inner.as_ref()),
        ArrowError::CsvError(_)
        | ArrowError::JsonError(_)
        | ArrowError::AvroError(_)
        | ArrowError::IoError(..)
        | ArrowError::IpcError(_)
        | ArrowError::ParquetError(_)
        | ArrowError::CDataInterface(_)
        | ArrowError::DictionaryKeyOverflowError
        | ArrowError::RunEndIndexOverflowError
        | ArrowError::OffsetOverflowError(_) => Code::Internal,
    }
}

/// Classifies an error DataFusion or Arrow carried from Quiver's own code.
fn external_code(inner: &(dyn std::error::Error + Send + Sync + 'static)) -> Code {
    if let Some(storage) = inner.downcast_ref::<quiver_storage::Error>() {
        storage_code(storage)
    } else if let Some(query) = inner.downcast_ref::<quiver_query::Error>() {
        query_code(query)
    } else {
        Code::Internal
    }
}

/// Classifies a storage error.
pub fn storage_code(err: &quiver_storage::Error) -> Code {
    use quiver_storage::Error as S;
    match err {
        S::Config(_) | S::Parameter { .. } | S::Value(_) => Code::InvalidArgument,
        S::TransactionAborted(_) => Code::Aborted,
        S::TooLarge(_) => Code::ResourceExhausted,
        S::Connect { .. }
        | S::PoolTimeout { .. }
        | S::WriterBusy(_)
        | S::Unavailable(_)
        | S::Io(_) => Code::Unavailable,
        S::Postgres(_) => postgres_code(err),
        S::TableNotFound(_) => Code::NotFound,
        S::Conversion { .. } => Code::FailedPrecondition,
        S::Cancelled(_) => Code::Cancelled,
        S::Sqlite(err) => sqlite_code(err),
        S::Arrow(_) | S::Internal(_) => Code::Internal,
    }
}

/// Classifies a PostgreSQL error by its SQLSTATE class.
fn postgres_code(err: &quiver_storage::Error) -> Code {
    if err.is_connection_lost() {
        return Code::Unavailable;
    }
    if err.is_bad_parameter() {
        return Code::InvalidArgument;
    }
    let Some(state) = err.sqlstate() else {
        return Code::Internal;
    };
    match state {
        "42P01" | "42883" | "3F000" | "3D000" => Code::NotFound,
        "23505" => Code::AlreadyExists,
        "57014" => Code::Cancelled,
        "40001" | "40P01" => Code::Aborted,
        "42501" | "28000" | "28P01" => Code::PermissionDenied,
        _ => match &state[..2] {
            // Syntax, undefined objects, data exceptions.
            "42" | "22" | "0A" => Code::InvalidArgument,
            // Integrity constraints.
            "23" => Code::FailedPrecondition,
            "53" | "54" => Code::ResourceExhausted,
            "08" | "57" => Code::Unavailable,
            _ => Code::Internal,
        },
    }
}

fn sqlite_code(err: &rusqlite::Error) -> Code {
    use rusqlite::ErrorCode as C;
    match err {
        rusqlite::Error::SqliteFailure(failure, message) => match failure.code {
            C::ConstraintViolation => {
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                {
                    Code::AlreadyExists
                } else {
                    Code::FailedPrecondition
                }
            }
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::CannotOpen
            | C::SystemIoFailure
            | C::DiskFull => Code::Unavailable,
            C::OperationInterrupted => Code::Cancelled,
            C::ReadOnly | C::TypeMismatch => Code::FailedPrecondition,
            C::TooBig => Code::ResourceExhausted,
            C::OutOfMemory => Code::ResourceExhausted,
            C::PermissionDenied | C::AuthorizationForStatementDenied => Code::PermissionDenied,
            C::Unknown
                if message.as_deref().is_some_and(|m| {
                    m.starts_with("no such table") || m.starts_with("no such index")
                }) =>
            {
                Code::NotFound
            }
            C::Unknown => Code::InvalidArgument,
            _ => Code::Internal,
        },
        rusqlite::Error::SqlInputError { .. }
        | rusqlite::Error::InvalidParameterCount(..)
        | rusqlite::Error::InvalidParameterName(_)
        | rusqlite::Error::MultipleStatement
        | rusqlite::Error::ExecuteReturnedResults
        | rusqlite::Error::NulError(_)
        | rusqlite::Error::ToSqlConversionFailure(_)
        | rusqlite::Error::UserFunctionError(_) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planner_and_parser_errors_are_invalid_argument() {
        let plan = DataFusionError::Context(
            "while planning".into(),
            Box::new(DataFusionError::Plan("table 'x' not found".into())),
        );
        assert_eq!(datafusion_code(&plan), Code::InvalidArgument);
        let exhausted = DataFusionError::ResourcesExhausted("memory".into());
        assert_eq!(datafusion_code(&exhausted), Code::ResourceExhausted);
        let storage = DataFusionError::External(Box::new(quiver_storage::Error::PoolTimeout {
            timeout: std::time::Duration::from_secs(1),
            max_size: 4,
        }));
        assert_eq!(datafusion_code(&storage), Code::Unavailable);
        assert_eq!(
            datafusion_code(&DataFusionError::Internal("bug".into())),
            Code::Internal
        );
    }

    #[test]
    fn sqlite_constraint_errors_name_the_right_code() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE); INSERT INTO t VALUES (1, 'a');")
            .unwrap();
        let unique = conn
            .execute("INSERT INTO t VALUES (2, 'a')", [])
            .unwrap_err();
        assert_eq!(sqlite_code(&unique), Code::AlreadyExists);
        let not_null = conn
            .execute("INSERT INTO t VALUES (3, NULL)", [])
            .unwrap_err();
        assert_eq!(sqlite_code(&not_null), Code::FailedPrecondition);
    }
}
