//! Quiver's query engine: DataFusion over the store.
//!
//! # Layout
//! - [`engine`]: [`QueryEngine`] — the session whose catalog mirrors the store; plans
//!   queries ([`PreparedQuery`]) and streams their results.
//! - [`provider`]: [`provider::StoreTable`], the table provider that pushes projection,
//!   filters and limit into SQL run on the store, and its scan operator.
//! - `pushdown`: which DataFusion filters the store evaluates identically, rendered
//!   as SQL with bound parameters.
//! - [`params`]: `?` placeholders and bound values.
//! - [`predicate`]: caller-written row predicates compiled against a table.
//! - [`normalize`]: result types every Arrow client reads.
//! - [`executor`]: the query runtime — admission, timeouts, cancellation.
//! - [`limits`]: how large and deep client SQL may be, checked before parsing.
//! - [`error`]: [`Error`] and [`Result`].

pub mod engine;
pub mod error;
pub mod executor;
pub mod limits;
pub mod normalize;
pub mod params;
pub mod predicate;
pub mod provider;
mod pushdown;
pub mod system;

pub use engine::{CATALOG_NAME, EngineConfig, PreparedQuery, QueryEngine};
pub use error::{Error, Result};
pub use executor::{ExecutorConfig, QueryControl, StoreSql};
pub use limits::StatementLimits;
pub use params::Parameter;
pub use provider::ReadThrough;
