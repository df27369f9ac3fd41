//! Storage integration tests: one suite run against every backend, plus what only
//! PostgreSQL has (its type mapping, broken connections, a database that goes away).

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

mod backend;
#[macro_use]
mod suite;
mod changelog;
mod guard;
mod postgres;
