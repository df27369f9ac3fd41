//! The change log and write transactions, on every backend: versions, capture of every
//! row (cascades included), atomicity, idempotency records and concurrent writers.
//!
//! Truth comes from the tables themselves, read with plain SQL after the fact.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quiver_storage::{CommitOptions, IdempotencyRecord, Store, Value, changelog};

use crate::backend::TestBackend;
use crate::suite::count;

macro_rules! changelog_suite {
    ($backend:ident) => {
        suite_cases!($backend:
            commits_take_growing_versions_and_log_every_row,
            failed_and_abandoned_transactions_leave_nothing,
            idempotency_answers_are_stored_with_the_commit,
            bulk_inserts_use_the_fast_path_and_are_logged,
            concurrent_writers_leave_a_gap_free_ordered_log,
            retention_prunes_old_commits_and_keeps_the_clock,
            log_reads_return_whole_commits_and_announce_them,
        );
    };
}

changelog_suite!(sqlite);
changelog_suite!(postgres);

/// The demo data with the change log installed and capturing every table.
async fn logged_demo(backend: &TestBackend, tasks: u64) -> Store {
    let store = backend.demo(tasks).await;
    changelog::install(&store)
        .await
        .expect("change log installs");
    changelog::capture_tables(&store)
        .await
        .expect("capture triggers install");
    store
}

fn insert_epic_sql(store: &Store) -> &'static str {
    match store.dialect() {
        quiver_storage::Dialect::Sqlite => {
            "INSERT INTO epics (key, title, status, priority, created_at, updated_at)
             VALUES (?1, ?2, 'planned', 3, '2026-01-01 00:00:00', '2026-01-01 00:00:00') RETURNING id"
        }
        quiver_storage::Dialect::Postgres => {
            "INSERT INTO epics (key, title, status, priority, created_at, updated_at)
             VALUES ($1, $2, 'planned', 3, '2026-01-01 00:00:00', '2026-01-01 00:00:00') RETURNING id"
        }
    }
}

fn p(store: &Store, index: usize) -> String {
    match store.dialect() {
        quiver_storage::Dialect::Sqlite => format!("?{index}"),
        quiver_storage::Dialect::Postgres => format!("${index}"),
    }
}

async fn commits_take_growing_versions_and_log_every_row(backend: &TestBackend) {
    let store = logged_demo(backend, 400).await;
    assert_eq!(store.latest_version().await.unwrap(), 0);
    // The demo load itself is not a mutation through the log.
    assert!(store.changes_after(0, 10).await.unwrap().is_empty());

    let feature = 3i64;
    let tasks_of_feature = count(
        &store,
        &format!("SELECT count(*) FROM tasks WHERE feature_id = {feature}"),
        Vec::new(),
    )
    .await;
    let history_of_feature = count(
        &store,
        &format!("SELECT count(*) FROM task_history h JOIN tasks t ON t.id = h.task_id WHERE t.feature_id = {feature}"),
        Vec::new(),
    )
    .await;
    assert!(tasks_of_feature > 0 && history_of_feature > 0);

    let mut tx = store.begin().await.unwrap();
    let (inserted, keys) = tx
        .run_many(
            insert_epic_sql(&store),
            vec![vec![
                Value::Text("EPIC-NEW".into()),
                Value::Text("New epic".into()),
            ]],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    let new_id = match &keys[..] {
        [row] => match row[..] {
            [Value::Int(id)] => id,
            _ => panic!("generated key {row:?}"),
        },
        other => panic!("returned {other:?}"),
    };
    let updated = tx
        .execute(
            &format!(
                "UPDATE tasks SET title = 'Retitled' WHERE id = {}",
                p(&store, 1)
            ),
            vec![Value::Int(1)],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    let deleted = tx
        .execute(
            &format!("DELETE FROM features WHERE id = {}", p(&store, 1)),
            vec![Value::Int(feature)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let first = tx.commit(CommitOptions::default()).await.unwrap();
    let expected_changes = 1 + 1 + 1 + tasks_of_feature + history_of_feature;
    assert_eq!(first.version, 1);
    assert_eq!(first.changes, u64::try_from(expected_changes).unwrap());

    let changes = store.changes_after(0, 100_000).await.unwrap();
    assert_eq!(changes.len() as i64, expected_changes);
    assert!(changes.iter().all(|c| c.version == 1));
    assert_eq!(changes[0].table, "epics");
    assert_eq!(changes[0].op, "insert");
    let key: serde_json::Value = serde_json::from_str(changes[0].key.as_deref().unwrap()).unwrap();
    assert_eq!(key, serde_json::json!({ "id": new_id }));
    let after: serde_json::Value =
        serde_json::from_str(changes[0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after["title"], "New epic");
    assert_eq!(changes[1].op, "update");
    let before: serde_json::Value =
        serde_json::from_str(changes[1].before.as_deref().unwrap()).unwrap();
    let after: serde_json::Value =
        serde_json::from_str(changes[1].after.as_deref().unwrap()).unwrap();
    assert_eq!(after["title"], "Retitled");
    assert_ne!(before["title"], after["title"]);
    assert_eq!(before["status"], after["status"]);
    let deletes: Vec<_> = changes.iter().filter(|c| c.op == "delete").collect();
    let by_table = |table: &str| deletes.iter().filter(|c| c.table == table).count() as i64;
    assert_eq!(by_table("features"), 1);
    assert_eq!(by_table("tasks"), tasks_of_feature);
    assert_eq!(by_table("task_history"), history_of_feature);

    // A second commit takes the next version; an empty one takes none.
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        &format!(
            "UPDATE epics SET title = 'Renamed' WHERE id = {}",
            p(&store, 1)
        ),
        vec![Value::Int(new_id)],
    )
    .await
    .unwrap();
    assert_eq!(
        tx.commit(CommitOptions::default()).await.unwrap().version,
        2
    );
    let mut tx = store.begin().await.unwrap();
    tx.execute("UPDATE epics SET title = 'x' WHERE id < 0", Vec::new())
        .await
        .unwrap();
    let empty = tx.commit(CommitOptions::default()).await.unwrap();
    assert_eq!((empty.version, empty.changes), (2, 0));
    assert_eq!(store.latest_version().await.unwrap(), 2);
    let later = store.changes_after(1, 100).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!((later[0].version, later[0].table.as_str()), (2, "epics"));
    let versions = store.table_versions().await.unwrap();
    assert_eq!(
        versions,
        vec![
            ("epics".to_owned(), 2),
            ("features".to_owned(), 1),
            ("task_history".to_owned(), 1),
            ("tasks".to_owned(), 1),
        ]
    );
}

async fn failed_and_abandoned_transactions_leave_nothing(backend: &TestBackend) {
    let store = logged_demo(backend, 200).await;
    let epics = count(&store, "SELECT count(*) FROM epics", Vec::new()).await;
    let titles = count(
        &store,
        "SELECT count(*) FROM epics WHERE title = 'Changed'",
        Vec::new(),
    )
    .await;

    // A constraint violation after a successful statement: the caller rolls back.
    let mut tx = store.begin().await.unwrap();
    tx.execute("UPDATE epics SET title = 'Changed'", Vec::new())
        .await
        .unwrap();
    let err = tx
        .run_many(
            insert_epic_sql(&store),
            vec![
                vec![Value::Text("EPIC-A".into()), Value::Text("a".into())],
                vec![
                    Value::Text("EPIC-A".into()),
                    Value::Text("duplicate".into()),
                ],
            ],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("unique"), "{err}");
    tx.rollback().await.unwrap();

    // A transaction dropped without commit (a caller that went away).
    let mut tx = store.begin().await.unwrap();
    tx.execute("DELETE FROM task_history", Vec::new())
        .await
        .unwrap();
    drop(tx);

    // The writer is free again and nothing changed.
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "UPDATE epics SET priority = priority WHERE id = 1",
        Vec::new(),
    )
    .await
    .unwrap();
    let outcome = tx.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(outcome.version, 1, "failed transactions took no version");
    assert_eq!(
        count(&store, "SELECT count(*) FROM epics", Vec::new()).await,
        epics
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM epics WHERE title = 'Changed'",
            Vec::new()
        )
        .await,
        titles
    );
    assert!(count(&store, "SELECT count(*) FROM task_history", Vec::new()).await > 0);
    let changes = store.changes_after(0, 100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].op, "update");
}

async fn idempotency_answers_are_stored_with_the_commit(backend: &TestBackend) {
    let store = logged_demo(backend, 200).await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.stored_response("req-1").await.unwrap(), None);
    tx.execute("UPDATE epics SET priority = 1 WHERE id = 2", Vec::new())
        .await
        .unwrap();
    let outcome = tx
        .commit(CommitOptions {
            trace_context: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            idempotency: Some(IdempotencyRecord {
                key: "req-1".into(),
                request_hash: "h1".into(),
                response: Box::new(|version| format!("answer at {version}").into_bytes()),
            }),
        })
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let stored = tx.stored_response("req-1").await.unwrap().expect("stored");
    tx.rollback().await.unwrap();
    assert_eq!(stored.request_hash, "h1");
    assert_eq!(
        String::from_utf8(stored.response).unwrap(),
        format!("answer at {}", outcome.version)
    );
}

async fn bulk_inserts_use_the_fast_path_and_are_logged(backend: &TestBackend) {
    let store = logged_demo(backend, 200).await;
    let rows: Vec<Vec<Value>> = (0..5_000i64)
        .map(|i| {
            vec![
                Value::Int(i),
                Value::Text(format!("tab\there \\ line\n{i}")),
                if i % 7 == 0 {
                    Value::Null
                } else {
                    Value::Float(i as f64 / 4.0)
                },
                Value::Blob(vec![0, 1, (i % 256) as u8]),
            ]
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let ddl = match store.dialect() {
        quiver_storage::Dialect::Sqlite => {
            "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT, score REAL, raw BLOB)"
        }
        quiver_storage::Dialect::Postgres => {
            "CREATE TABLE events (id BIGINT PRIMARY KEY, note TEXT, score DOUBLE PRECISION, raw BYTEA)"
        }
    };
    tx.execute_script(ddl).await.unwrap();
    tx.capture_new_tables().await.unwrap();
    let columns: Vec<String> = ["id", "note", "score", "raw"].map(String::from).to_vec();
    let written = tx
        .bulk_insert(store.default_schema(), "events", &columns, rows)
        .await
        .unwrap();
    assert_eq!(written, 5_000);
    let outcome = tx.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(outcome.changes, 5_000);
    assert_eq!(
        count(&store, "SELECT count(*) FROM events", Vec::new()).await,
        5_000
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM events WHERE score IS NULL",
            Vec::new()
        )
        .await,
        (0..5_000).filter(|i| i % 7 == 0).count() as i64
    );
    // Text with tabs, backslashes and newlines survives the COPY encoding.
    let note = format!("tab\there \\ line\n{}", 4321);
    assert_eq!(
        count(
            &store,
            &format!(
                "SELECT count(*) FROM events WHERE id = 4321 AND note = {}",
                p(&store, 1)
            ),
            vec![Value::Text(note)]
        )
        .await,
        1
    );
    let changes = store.changes_after(0, 10).await.unwrap();
    assert_eq!(changes[0].table, "events");
    let after: serde_json::Value =
        serde_json::from_str(changes[0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after["id"], 0);
}

async fn concurrent_writers_leave_a_gap_free_ordered_log(backend: &TestBackend) {
    const WRITERS: i64 = 6;
    const COMMITS: i64 = 20;
    let store = logged_demo(backend, 200).await;
    let done = Arc::new(AtomicBool::new(false));

    // A reader following the log while the writers run: every poll must continue
    // exactly where the last one ended — no version skipped, none out of order.
    let follower = {
        let store = store.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut polls = 0;
            loop {
                let finished = done.load(Ordering::Acquire);
                let changes = store.changes_after(last, 10_000).await.unwrap();
                for change in &changes {
                    assert!(
                        change.version == last || change.version == last + 1,
                        "version {} after {last}: a commit was missed or reordered",
                        change.version
                    );
                    last = change.version;
                }
                polls += 1;
                if finished && changes.is_empty() {
                    return (last, polls);
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for commit in 0..COMMITS {
                    let mut tx = store.begin().await.unwrap();
                    let key = |n: i64| Value::Text(format!("W{writer}-C{commit}-{n}"));
                    tx.run_many(
                        insert_epic_sql(&store),
                        vec![
                            vec![key(0), Value::Text("first".into())],
                            vec![key(1), Value::Text("second".into())],
                        ],
                    )
                    .await
                    .unwrap();
                    versions.push(tx.commit(CommitOptions::default()).await.unwrap().version);
                }
                versions
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for writer in writers {
        for version in writer.await.unwrap() {
            assert!(versions.insert(version), "version {version} given twice");
        }
    }
    done.store(true, Ordering::Release);
    let (followed_to, polls) = follower.await.unwrap();

    let total = (WRITERS * COMMITS) as u64;
    assert_eq!(versions, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(followed_to, total);
    assert!(polls > 1);
    let changes = store.changes_after(0, 100_000).await.unwrap();
    assert_eq!(changes.len() as u64, total * 2);
    for pair in changes.chunks(2) {
        assert_eq!(pair[0].version, pair[1].version);
    }
    let logged: BTreeSet<String> = changes
        .iter()
        .map(|c| {
            let after: serde_json::Value =
                serde_json::from_str(c.after.as_deref().unwrap()).unwrap();
            after["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM epics WHERE key LIKE 'W%-C%'",
            Vec::new()
        )
        .await as usize,
        logged.len()
    );
    assert_eq!(logged.len() as u64, total * 2);
}

async fn retention_prunes_old_commits_and_keeps_the_clock(backend: &TestBackend) {
    let store = logged_demo(backend, 200).await;
    for id in 1..=3 {
        let mut tx = store.begin().await.unwrap();
        tx.execute(
            &format!("UPDATE tasks SET priority = 1 WHERE id = {}", p(&store, 1)),
            vec![Value::Int(id)],
        )
        .await
        .unwrap();
        tx.commit(CommitOptions {
            trace_context: None,
            idempotency: Some(IdempotencyRecord {
                key: format!("key-{id}"),
                request_hash: "h".into(),
                response: Box::new(|_| Vec::new()),
            }),
        })
        .await
        .unwrap();
    }
    assert_eq!(store.changes_after(0, 100).await.unwrap().len(), 3);
    // Nothing is older than a cut-off in the past.
    assert_eq!(store.prune_change_log(0, 0).await.unwrap(), 0);
    assert_eq!(store.changes_after(0, 100).await.unwrap().len(), 3);
    // Everything is older than a cut-off in the future.
    let future = i64::MAX / 2;
    assert_eq!(store.prune_change_log(future, future).await.unwrap(), 3);
    assert!(store.changes_after(0, 100).await.unwrap().is_empty());
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.stored_response("key-1").await.unwrap(), None);
    tx.rollback().await.unwrap();
    // Versions continue where they were: pruning never reuses one.
    assert_eq!(store.latest_version().await.unwrap(), 3);
    let mut tx = store.begin().await.unwrap();
    tx.execute("UPDATE epics SET priority = 2 WHERE id = 1", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        tx.commit(CommitOptions::default()).await.unwrap().version,
        4
    );
}

async fn log_reads_return_whole_commits_and_announce_them(backend: &TestBackend) {
    let store = logged_demo(backend, 200).await;
    let start = store.latest_version().await.unwrap();
    let mut signal = store.commit_signal();
    signal.mark_unchanged();
    // A commit of ten rows, then one of one row.
    for (commit, rows) in [(1, 10), (2, 1)] {
        let mut tx = store.begin().await.unwrap();
        for row in 0..rows {
            tx.execute(
                insert_epic_sql(&store),
                vec![
                    Value::Text(format!("WHOLE-{commit}-{row}")),
                    Value::Text("whole commits".into()),
                ],
            )
            .await
            .unwrap();
        }
        tx.commit(CommitOptions::default()).await.unwrap();
        assert!(
            signal.has_changed().unwrap(),
            "commit {commit} is announced"
        );
        assert_eq!(*signal.borrow_and_update(), start + commit);
    }
    assert_eq!(
        store
            .oldest_version()
            .await
            .unwrap()
            .map(|v| v <= start + 1),
        Some(true)
    );
    // A limit below the first commit's size still returns that commit, whole.
    let first = store.changes_after(start, 4).await.unwrap();
    assert_eq!(first.len(), 10);
    assert!(first.iter().all(|c| c.version == start + 1));
    // A limit that would cut the second commit short stops before it.
    let cut = store.changes_after(start, 10).await.unwrap();
    assert_eq!(cut.len(), 10);
    let both = store.changes_after(start, 11).await.unwrap();
    assert_eq!(both.len(), 11);
    assert_eq!(both[10].version, start + 2);
    assert!(store.changes_after(start + 2, 4).await.unwrap().is_empty());
    // A transaction that changes nothing announces nothing.
    let tx = store.begin().await.unwrap();
    tx.commit(CommitOptions::default()).await.unwrap();
    assert!(!signal.has_changed().unwrap());
}
