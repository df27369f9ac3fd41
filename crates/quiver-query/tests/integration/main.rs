//! Integration tests of the query engine against real SQLite files.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

mod common;
mod pushdown;
mod sqlite_truth;
