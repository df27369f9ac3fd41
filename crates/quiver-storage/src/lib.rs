//! Quiver's storage layer: pooled connections to the store, its catalog, and rows
//! read as Arrow record batches.
//!
//! This crate knows nothing of DataFusion or gRPC, so it builds and tests fast.
//!
//! # Layout
//! - [`store`]: [`Store`], the backend-independent handle (open by URL, query, execute,
//!   catalog, pool status).
//! - [`sqlite`]: the embedded SQLite backend — a pool of reader connections, one
//!   writer, its write transactions, and the SQLite→Arrow type mapping
//!   ([`sqlite::types`]).
//! - [`postgres`]: the PostgreSQL backend — pooled tokio-postgres connections, binary
//!   reads decoded into Arrow, its write transactions, the PostgreSQL→Arrow mapping
//!   ([`postgres::types`]).
//! - [`pool`]: the pool both share — bb8 behind a FIFO gate, metrics, leak detection,
//!   reconnect with backoff.
//! - [`transaction`]: [`Transaction`], the one face of both backends' write
//!   transactions; [`commit`]: what a commit records and answers.
//! - [`changelog`]: the change log — installing it, reading it back, retention;
//!   [`capture`]: its tables and capture triggers as SQL.
//! - [`catalog`]: schemas, tables, columns, keys and indexes as introspected.
//! - [`dialect`]: quoting, placeholders, reserved names and `COPY` text per backend.
//! - [`value`]: parameter values bound to statements, and Arrow values read as them.
//! - [`stream`]: batch streams read from the store.
//! - [`time`]: ISO-8601 date/time text ↔ Arrow units.
//! - [`demo`]: the deterministic task-management demo data set.
//! - [`error`]: [`Error`] and [`Result`].
//! - `testing` (feature `test-utils`): canonical row text for comparing with SQLite.

pub mod capture;
pub mod catalog;
pub mod changelog;
pub mod commit;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod pool;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod stream;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod time;
pub mod transaction;
pub mod value;

pub use catalog::{
    Catalog, ColumnInfo, ForeignKey, ForeignKeyAction, IndexInfo, SchemaInfo, TableInfo, TableKind,
};
pub use changelog::Change;
pub use commit::{Capture, CommitOptions, CommitOutcome, IdempotencyRecord, StoredResponse};
pub use dialect::Dialect;
pub use error::{Error, Result};
pub use pool::{PoolOptions, PoolStatus, WaitHistogram};
pub use postgres::tls::provider as tls_provider;
pub use store::{Store, StoreLocation, StoreOptions};
pub use stream::BatchStream;
pub use transaction::Transaction;
pub use value::Value;

/// The span of one statement read from the store (an OpenTelemetry client span with
/// the `db.*` attributes), a child of the current span; none outside any (the
/// change-log tail's polls are not traced).
pub(crate) fn statement_span(system: &'static str, sql: &str) -> tracing::Span {
    let current = tracing::Span::current();
    if current.is_none() || current.is_disabled() {
        return tracing::Span::none();
    }
    let operation = sql
        .split_whitespace()
        .next()
        .filter(|word| word.len() <= 16 && word.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| system.to_owned());
    tracing::debug_span!(
        "storage.read",
        otel.name = %operation,
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = %operation,
        db.query.text = %sql,
        rows = tracing::field::Empty,
    )
}
