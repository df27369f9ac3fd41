//! Integration tests of the query engine against real SQLite files.

mod common;
mod pushdown;
mod sqlite_truth;
