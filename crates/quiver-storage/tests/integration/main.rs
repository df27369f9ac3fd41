//! Storage integration tests: one suite run against every backend, plus what only
//! PostgreSQL has (its type mapping, broken connections, a database that goes away).

mod backend;
mod postgres;
mod suite;
