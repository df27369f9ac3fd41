//! What the store refuses from client statements: SQLite's authorizer keeps them away
//! from Quiver's own objects and its value checks keep tables readable; PostgreSQL's
//! change log lives in a schema of its own, and a log from before that moves there
//! whole.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use quiver_storage::{CommitOptions, Store, Value, changelog};

use crate::backend::TestBackend;
use crate::suite::count;

/// A SQLite demo store with the change log installed and capturing every table.
async fn logged_sqlite() -> (TestBackend, Store) {
    let backend = TestBackend::sqlite().await.expect("SQLite is always there");
    let store = backend.demo(200).await;
    changelog::install(&store).await.unwrap();
    changelog::capture_tables(&store).await.unwrap();
    (backend, store)
}

/// Inserts one epic in a transaction of its own; the commit version.
async fn insert_epic(store: &Store, key: &str) -> u64 {
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO epics (key, title, status, priority, created_at, updated_at)
         VALUES (?1, 'guarded', 'planned', 2, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        vec![Value::Text(key.to_owned())],
    )
    .await
    .unwrap();
    tx.commit(CommitOptions::default()).await.unwrap().version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_client_statements_cannot_touch_quivers_objects() {
    let (_backend, store) = logged_sqlite().await;
    let first = insert_epic(&store, "EPIC-G1").await;
    let log_before = store.changes_after(0, 1_000).await.unwrap();
    for sql in [
        "UPDATE _quiver_clock SET version = 0",
        "DELETE FROM _quiver_changes",
        "DROP TABLE _quiver_commits",
        "INSERT INTO _quiver_idempotency VALUES ('k', 'h', x'00', 0)",
        "UPDATE temp._quiver_txn SET capture = 0",
        "DROP TRIGGER temp._quiver_capture_insert_epics",
        "CREATE TEMP TABLE scratch (x)",
        "INSERT INTO epics (key, title, status, priority, created_at, updated_at)
             SELECT 'X-' || id, table_name, 'planned', 1, '2026-01-01', '2026-01-01' FROM _quiver_changes",
        "PRAGMA foreign_keys = OFF",
        "ATTACH DATABASE ':memory:' AS other",
        "COMMIT",
        "ALTER TABLE _quiver_versions ADD COLUMN x",
    ] {
        let mut tx = store.begin().await.unwrap();
        let err = tx
            .execute_script(sql)
            .await
            .expect_err(&format!("refused: {sql}"));
        assert_eq!(
            err.sqlite_code(),
            Some(rusqlite::ErrorCode::AuthorizationForStatementDenied),
            "{sql}: {err}"
        );
        tx.rollback().await.unwrap();
    }
    // Nothing changed, and capture still works with the next version.
    assert_eq!(store.changes_after(0, 1_000).await.unwrap(), log_before);
    let next = insert_epic(&store, "EPIC-G2").await;
    assert_eq!(next, first + 1);
    let logged = store.changes_after(first, 10).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].op, "insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_views_cannot_expose_quivers_tables() {
    let (backend, store) = logged_sqlite().await;
    insert_epic(&store, "EPIC-V1").await;
    // Made behind Quiver's back, straight on the file.
    let TestBackend::Sqlite { url, .. } = &backend else {
        unreachable!("a SQLite backend")
    };
    let path = url.trim_start_matches("sqlite://");
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch("CREATE VIEW peek AS SELECT table_name FROM _quiver_changes")
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "table_name",
        DataType::Utf8,
        true,
    )]));
    let read = async {
        store
            .query("SELECT table_name FROM peek", Vec::new(), schema)
            .await?
            .try_collect::<Vec<_>>()
            .await
    }
    .await;
    let err = read.expect_err("a view over the change log is not readable");
    assert_eq!(
        err.sqlite_code(),
        Some(rusqlite::ErrorCode::AuthorizationForStatementDenied),
        "{err}"
    );
    // Quiver itself still reads its log.
    assert_eq!(store.changes_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_values_the_reader_cannot_read_are_refused() {
    let (_backend, store) = logged_sqlite().await;
    let mut tx = store.begin().await.unwrap();
    tx.execute_script(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, at TIMESTAMP, day DATE, r REAL, n INTEGER, flag BOOLEAN, note TEXT)",
    )
    .await
    .unwrap();
    tx.capture_new_tables().await.unwrap();
    tx.commit(CommitOptions::default()).await.unwrap();
    let before = store.latest_version().await.unwrap();

    for (sql, column) in [
        (
            "INSERT INTO readings (at) VALUES ('99999-01-01 00:00:00')",
            "at",
        ),
        ("INSERT INTO readings (at) VALUES ('soon')", "at"),
        ("INSERT INTO readings (day) VALUES ('2026-13-45')", "day"),
        ("INSERT INTO readings (r) VALUES ('abc')", "r"),
        ("INSERT INTO readings (r) VALUES (1e999)", "r"),
        ("INSERT INTO readings (n) VALUES ('twelve')", "n"),
        ("INSERT INTO readings (flag) VALUES ('maybe')", "flag"),
        ("INSERT INTO readings (note) VALUES (x'ff00')", "note"),
    ] {
        let mut tx = store.begin().await.unwrap();
        let err = tx.execute_script(sql).await.expect_err(sql).to_string();
        assert!(
            err.contains(&format!("column '{column}'")) && err.contains("readings"),
            "{sql}: {err}"
        );
        tx.rollback().await.unwrap();
    }
    // An update is checked the same way.
    let mut tx = store.begin().await.unwrap();
    tx.execute_script("INSERT INTO readings (id, at, r) VALUES (1, '2026-01-01 10:00:00', 1.5)")
        .await
        .unwrap();
    tx.commit(CommitOptions::default()).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let err = tx
        .execute_script("UPDATE readings SET at = 'later' WHERE id = 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("column 'at'"), "{err}");
    tx.rollback().await.unwrap();

    // Only the good row is there, and the whole table reads.
    assert_eq!(store.latest_version().await.unwrap(), before + 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM readings", Vec::new()).await,
        1
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "at",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("r", DataType::Float64, true),
    ]));
    let batches: Vec<_> = store
        .query("SELECT at, r FROM readings", Vec::new(), schema)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_log_from_before_its_schema_moves_there_whole() {
    let Some(backend) = TestBackend::postgres().await else {
        return;
    };
    let store = backend.demo(100).await;
    changelog::install(&store).await.unwrap();
    changelog::capture_tables(&store).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO epics (key, title, status, priority, created_at, updated_at)
         VALUES ($1, 'before', 'planned', 2, '2026-01-01', '2026-01-01')",
        vec![Value::Text("EPIC-OLD".to_owned())],
    )
    .await
    .unwrap();
    let old = tx.commit(CommitOptions::default()).await.unwrap().version;
    // The layout of earlier releases: everything in `public`.
    let mut downgrade = String::from("BEGIN;");
    for table in [
        "_quiver_changes",
        "_quiver_commits",
        "_quiver_clock",
        "_quiver_versions",
        "_quiver_idempotency",
    ] {
        downgrade.push_str(&format!("ALTER TABLE _quiver.{table} SET SCHEMA public;"));
    }
    for function in [
        "_quiver_key(jsonb, text[])",
        "_quiver_table_name(text, text)",
        "_quiver_capture_insert()",
        "_quiver_capture_delete()",
        "_quiver_capture_update()",
        "_quiver_capture_truncate()",
    ] {
        downgrade.push_str(&format!(
            "ALTER FUNCTION _quiver.{function} SET SCHEMA public;"
        ));
    }
    downgrade.push_str("DROP SCHEMA _quiver; COMMIT;");
    store.execute_script(downgrade).await.unwrap();

    // A new start installs the log again: the old one moves, nothing is lost.
    changelog::install(&store).await.unwrap();
    changelog::capture_tables(&store).await.unwrap();
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE '\\_quiver%'",
            Vec::new()
        )
        .await,
        0
    );
    assert_eq!(store.latest_version().await.unwrap(), old);
    assert_eq!(store.changes_after(0, 10).await.unwrap().len(), 1);
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "UPDATE epics SET title = 'after' WHERE key = $1",
        vec![Value::Text("EPIC-OLD".to_owned())],
    )
    .await
    .unwrap();
    let next = tx.commit(CommitOptions::default()).await.unwrap();
    assert_eq!((next.version, next.changes), (old + 1, 1));
    let changes = store.changes_after(old, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].op, "update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_client_ddl_on_captured_tables_still_works() {
    let (_backend, store) = logged_sqlite().await;
    for script in [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, at TIMESTAMP)",
        "CREATE INDEX notes_body ON notes (body)",
        "ALTER TABLE notes ADD COLUMN score REAL",
        "ALTER TABLE notes RENAME TO memos",
        "ALTER TABLE memos RENAME COLUMN body TO text",
        "DROP INDEX notes_body",
        "DROP TABLE memos",
        "DROP TABLE task_history",
    ] {
        let mut tx = store.begin().await.unwrap();
        tx.execute_script(script)
            .await
            .unwrap_or_else(|err| panic!("{script}: {err}"));
        tx.capture_new_tables().await.unwrap();
        tx.commit(CommitOptions::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replacing_a_captured_table_in_one_transaction_is_logged() {
    let (_backend, store) = logged_sqlite().await;
    let mut tx = store.begin().await.unwrap();
    tx.execute_script("CREATE TABLE readings (id INTEGER PRIMARY KEY, old TEXT)")
        .await
        .unwrap();
    tx.capture_new_tables().await.unwrap();
    tx.execute_script("INSERT INTO readings VALUES (1, 'a')")
        .await
        .unwrap();
    tx.commit(CommitOptions::default()).await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.execute_script("DROP TABLE \"main\".\"readings\"")
        .await
        .unwrap();
    tx.execute_script("CREATE TABLE \"main\".\"readings\" (id INTEGER, value REAL)")
        .await
        .unwrap();
    tx.log_table_event("readings", "truncate").await.unwrap();
    tx.capture_new_tables().await.unwrap();
    let columns = ["id".to_owned(), "value".to_owned()];
    tx.bulk_insert(
        "main",
        "readings",
        &columns,
        vec![vec![Value::Int(1), Value::Float(2.5)]],
    )
    .await
    .unwrap();
    let outcome = tx.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(outcome.changes, 2, "the truncate and the new row");
}
