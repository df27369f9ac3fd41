//! Quiver's storage layer: pooled connections to the store, its catalog, and rows
//! read as Arrow record batches.
//!
//! This crate knows nothing of DataFusion or gRPC, so it builds and tests fast.
//!
//! # Layout
//! - [`store`]: [`Store`], the backend-independent handle (open by URL, query, execute,
//!   catalog, pool status).
//! - [`sqlite`]: the embedded SQLite backend — a pool of reader connections, one
//!   writer, and the SQLite→Arrow type mapping ([`sqlite::types`]).
//! - [`postgres`]: the PostgreSQL backend — pooled tokio-postgres connections, binary
//!   reads decoded into Arrow, the PostgreSQL→Arrow mapping ([`postgres::types`]).
//! - [`pool`]: the pool both share — bb8 behind a FIFO gate, metrics, leak detection,
//!   reconnect with backoff.
//! - [`catalog`]: schemas, tables, columns, keys and indexes as introspected.
//! - [`transaction`]: write transactions committed with a change-log version.
//! - [`changelog`]: the change log — tables, capture triggers, reading it back.
//! - [`value`]: parameter values bound to statements, and Arrow values read as them.
//! - [`time`]: ISO-8601 date/time text ↔ Arrow units.
//! - [`demo`]: the deterministic task-management demo data set.
//! - [`error`]: [`Error`] and [`Result`].
//! - `testing` (feature `test-utils`): canonical row text for comparing with SQLite.

pub mod catalog;
pub mod changelog;
pub mod demo;
pub mod error;
pub mod pool;
pub mod postgres;
pub mod sqlite;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod time;
pub mod transaction;
pub mod value;

pub use catalog::{
    Catalog, ColumnInfo, ForeignKey, ForeignKeyAction, IndexInfo, SchemaInfo, TableInfo, TableKind,
};
pub use changelog::Change;
pub use error::{Error, Result};
pub use pool::{PoolOptions, PoolStatus, WaitHistogram};
pub use store::{BatchStream, Dialect, Store, StoreLocation, StoreOptions};
pub use transaction::{
    CommitOptions, CommitOutcome, IdempotencyRecord, StoredResponse, Transaction,
};
pub use value::Value;
