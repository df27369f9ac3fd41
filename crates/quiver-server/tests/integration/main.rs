//! End-to-end tests: a real server on ephemeral ports, real Flight SQL and HTTP clients,
//! and SQLite itself as the source of truth.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

/// One `#[tokio::test]` per case and store: `mod sqlite_store` and `mod postgres_store`,
/// each calling `case(TestStore::…)` (PostgreSQL cases return early, with a warning,
/// when no test server is configured).
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(quiver_server::test_utils::TestStore::Sqlite).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(quiver_server::test_utils::TestStore::Postgres).await;
                }
            )*
        }
    };
}

mod common;
mod errors;
mod flight_sql;
mod http;
mod metadata;
mod subscriptions;
mod writes;
