//! End-to-end tests: a real server on ephemeral ports, real Flight SQL and HTTP clients,
//! and SQLite itself as the source of truth.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

mod common;
mod errors;
mod flight_sql;
mod http;
mod metadata;
mod subscriptions;
mod writes;
