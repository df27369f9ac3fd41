//! The write path end to end, on both backends: the generated tonic client against
//! `quiver.v1.Mutations`, and the Flight SQL client's updates, ingest and
//! transactions. Truth is the store read with plain SQL and the change log itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::{
    CommandStatementIngest, EndTransaction, TableDefinitionOptions, TableExistsOption,
    TableNotExistOption,
};
use futures::TryStreamExt;
use quiver_proto::v1::mutations_client::MutationsClient;
use quiver_proto::v1::{
    self as pb, DeleteRequest, InsertRequest, KeyList, Row, Rows, Selector, UpdateRequest,
    selector, value::Kind,
};
use quiver_server::config::ServeArgs;
use quiver_server::test_utils::{TestServer, TestStore};
use quiver_storage::Store;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::flight_rows;

on_both_stores!(
    mutations_round_trip_with_growing_commit_versions,
    bad_mutations_get_precise_codes_and_change_nothing,
    idempotent_retries_apply_once,
    flight_sql_updates_ddl_ingest_and_transactions,
    concurrent_writers_leave_a_complete_ordered_log,
);

fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::Int64(v)),
    }
}

fn text(v: &str) -> pb::Value {
    pb::Value {
        kind: Some(Kind::String(v.to_owned())),
    }
}

fn ts(micros: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::TimestampMicros(micros)),
    }
}

fn row(values: &[(&str, pb::Value)]) -> Row {
    Row {
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn epic(key: &str) -> Row {
    row(&[
        ("key", text(key)),
        ("title", text(&format!("Epic {key}"))),
        ("status", text("planned")),
        ("priority", int(3)),
        ("created_at", ts(1_767_225_600_000_000)),
        ("updated_at", ts(1_767_225_600_000_000)),
    ])
}

fn insert(table: &str, rows: Vec<Row>) -> InsertRequest {
    InsertRequest {
        table: table.to_owned(),
        rows: Some(Rows {
            rows,
            arrow_ipc: Default::default(),
        }),
        idempotency_key: String::new(),
    }
}

fn by_keys(ids: &[i64]) -> Option<Selector> {
    Some(Selector {
        target: Some(selector::Target::Keys(KeyList {
            keys: ids.iter().map(|id| row(&[("id", int(*id))])).collect(),
        })),
    })
}

fn by_predicate(predicate: &str) -> Option<Selector> {
    Some(Selector {
        target: Some(selector::Target::Predicate(predicate.to_owned())),
    })
}

async fn mutations(server: &TestServer) -> MutationsClient<Channel> {
    MutationsClient::new(server.channel().await)
}

fn store(server: &TestServer) -> &Store {
    server.server.engine.store()
}

/// `SELECT count(*) …` on the store itself.
async fn count(server: &TestServer, sql: &str) -> i64 {
    let rows = flight_rows(server, &format!("SELECT ({sql}) AS n")).await;
    let via_flight: i64 = rows[0].parse().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let direct: Vec<RecordBatch> = store(server)
        .query(sql.to_owned(), Vec::new(), schema)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let direct = direct[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(via_flight, direct, "Flight and the store agree on {sql}");
    direct
}

fn generated_id(row: &Row) -> i64 {
    match row.values.get("id").and_then(|v| v.kind.clone()) {
        Some(Kind::Int64(id)) => id,
        other => panic!("generated key {other:?}"),
    }
}

async fn mutations_round_trip_with_growing_commit_versions(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 500).await else {
        return;
    };
    let mut client = mutations(&server).await;
    let max_id = count(&server, "SELECT max(id) FROM epics").await;

    let inserted = client
        .insert(insert("epics", vec![epic("EPIC-G1"), epic("EPIC-G2")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inserted.affected_rows, 2);
    let ids: Vec<i64> = inserted.generated_keys.iter().map(generated_id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| *id > max_id), "{ids:?} after {max_id}");
    assert_eq!(
        inserted.commit_version,
        store(&server).latest_version().await.unwrap()
    );
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM epics WHERE key IN ('EPIC-G1', 'EPIC-G2')"
        )
        .await,
        2
    );

    let blocked = count(
        &server,
        "SELECT count(*) FROM tasks WHERE status = 'blocked' AND priority <= 2",
    )
    .await;
    assert!(blocked > 0);
    let updated = client
        .update(UpdateRequest {
            table: "tasks".into(),
            r#where: by_predicate("status = 'blocked' AND priority <= 2"),
            set: Some(row(&[("status", text("review"))])),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.affected_rows as i64, blocked);
    assert!(updated.commit_version > inserted.commit_version);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM tasks WHERE status = 'blocked' AND priority <= 2"
        )
        .await,
        0
    );

    // Cascade: deleting a feature deletes its tasks and their history, in one commit.
    let tasks_of_feature = count(&server, "SELECT count(*) FROM tasks WHERE feature_id = 2").await;
    let deleted = client
        .delete(DeleteRequest {
            table: "features".into(),
            r#where: by_keys(&[2]),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.affected_rows, 1);
    assert!(deleted.commit_version > updated.commit_version);
    assert_eq!(
        count(&server, "SELECT count(*) FROM tasks WHERE feature_id = 2").await,
        0
    );
    let changes = store(&server)
        .changes_after(updated.commit_version, 100_000)
        .await
        .unwrap();
    assert!(changes.iter().all(|c| c.version == deleted.commit_version));
    assert_eq!(
        changes.iter().filter(|c| c.table == "tasks").count() as i64,
        tasks_of_feature
    );

    // Upsert: an existing key is updated, a new one inserted.
    let mut existing = epic("EPIC-G1");
    existing.values.insert("id".into(), int(ids[0]));
    existing.values.insert("title".into(), text("Renamed"));
    let mut fresh = epic("EPIC-G3");
    fresh.values.insert("id".into(), int(ids[1] + 1000));
    let upserted = client
        .upsert(pb::UpsertRequest {
            table: "epics".into(),
            rows: Some(Rows {
                rows: vec![existing, fresh],
                arrow_ipc: Default::default(),
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.affected_rows, 2);
    assert_eq!(
        upserted
            .generated_keys
            .iter()
            .map(generated_id)
            .collect::<Vec<_>>(),
        vec![ids[0], ids[1] + 1000]
    );
    assert_eq!(
        count(
            &server,
            &format!(
                "SELECT count(*) FROM epics WHERE id = {} AND title = 'Renamed'",
                ids[0]
            )
        )
        .await,
        1
    );
}

async fn bad_mutations_get_precise_codes_and_change_nothing(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let mut client = mutations(&server).await;
    let epics = count(&server, "SELECT count(*) FROM epics").await;
    let version = store(&server).latest_version().await.unwrap();

    let mut wrong_type = epic("EPIC-BAD");
    wrong_type.values.insert("priority".into(), text("high"));
    let err = client
        .insert(insert("epics", vec![epic("EPIC-OK"), wrong_type]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("row 2, column 'priority'"),
        "{}",
        err.message()
    );

    let err = client
        .insert(insert("no_such_table", vec![epic("X")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut unknown = epic("EPIC-UNKNOWN");
    unknown.values.insert("colour".into(), text("red"));
    let err = client
        .insert(insert("epics", vec![unknown]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("colour"), "{}", err.message());

    // The first row is valid and would be written; the second breaks the unique key.
    let err = client
        .insert(insert("epics", vec![epic("EPIC-DUP"), epic("EPIC-DUP")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let mut bad_priority = epic("EPIC-CHECK");
    bad_priority.values.insert("priority".into(), int(9));
    let err = client
        .insert(insert("epics", vec![bad_priority]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let err = client
        .update(UpdateRequest {
            table: "tasks".into(),
            r#where: by_predicate("lower(status) = 'blocked'"),
            set: Some(row(&[("priority", int(1))])),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("invalid predicate"),
        "{}",
        err.message()
    );

    let err = client
        .delete(DeleteRequest {
            table: "features".into(),
            r#where: None,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    assert_eq!(count(&server, "SELECT count(*) FROM epics").await, epics);
    assert_eq!(store(&server).latest_version().await.unwrap(), version);
    assert!(
        store(&server)
            .changes_after(version, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn idempotent_retries_apply_once(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let mut client = mutations(&server).await;
    let mut request = insert("epics", vec![epic("EPIC-ONCE")]);
    request.idempotency_key = "create-epic-once".into();
    let first = client.insert(request.clone()).await.unwrap().into_inner();
    let second = client.insert(request.clone()).await.unwrap().into_inner();
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.commit_version, second.commit_version);
    assert_eq!(first.generated_keys, second.generated_keys);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM epics WHERE key = 'EPIC-ONCE'"
        )
        .await,
        1
    );
    request.rows = Some(Rows {
        rows: vec![epic("EPIC-OTHER")],
        arrow_ipc: Default::default(),
    });
    let err = client.insert(request).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM epics WHERE key = 'EPIC-OTHER'"
        )
        .await,
        0
    );
}

fn notes_batch(first_id: i64, n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(first_id..first_id + n)),
            Arc::new(StringArray::from_iter_values(
                (first_id..first_id + n).map(|i| format!("note {i}")),
            )),
            Arc::new(Float64Array::from_iter_values(
                (first_id..first_id + n).map(|i| i as f64 / 2.0),
            )),
        ],
    )
    .unwrap()
}

async fn flight_sql_updates_ddl_ingest_and_transactions(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let mut client = server.flight_sql_client().await;

    // DDL is visible to queries at once.
    client
        .execute_update(
            "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL, score DOUBLE PRECISION)"
                .into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(count(&server, "SELECT count(*) FROM notes").await, 0);

    // DML returns the real row counts.
    let inserted = client
        .execute_update(
            "INSERT INTO notes (id, body, score) VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', NULL)"
                .into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(inserted, 3);
    let review = count(
        &server,
        "SELECT count(*) FROM tasks WHERE status = 'review'",
    )
    .await;
    let changed = client
        .execute_update(
            "UPDATE tasks SET status = 'done' WHERE status = 'review'".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(changed, review);

    // A prepared insert bound with many parameter rows (executemany).
    let mut prepared = client
        .prepare(
            "INSERT INTO notes (id, body, score) VALUES (?, ?, ?)".into(),
            None,
        )
        .await
        .unwrap();
    prepared.set_parameters(notes_batch(100, 250)).unwrap();
    assert_eq!(prepared.execute_update().await.unwrap(), 250);
    assert_eq!(count(&server, "SELECT count(*) FROM notes").await, 253);
    assert_eq!(
        flight_rows(&server, "SELECT body FROM notes WHERE id = 222").await,
        vec!["note 222".to_owned()]
    );

    // Ingest: create, then append.
    let command = |exists: TableExistsOption| CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create as i32,
            if_exists: exists as i32,
        }),
        table: "ingested".into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let batches = vec![Ok(notes_batch(0, 3_000)), Ok(notes_batch(3_000, 2_000))];
    let written = client
        .execute_ingest(
            command(TableExistsOption::Fail),
            futures::stream::iter(batches),
        )
        .await
        .unwrap();
    assert_eq!(written, 5_000);
    let again = client
        .execute_ingest(
            command(TableExistsOption::Append),
            futures::stream::iter(vec![Ok(notes_batch(5_000, 1_000))]),
        )
        .await
        .unwrap();
    assert_eq!(again, 1_000);
    assert_eq!(count(&server, "SELECT count(*) FROM ingested").await, 6_000);
    assert_eq!(
        flight_rows(&server, "SELECT sum(id) FROM ingested").await,
        vec![(0..6_000i64).sum::<i64>().to_string()]
    );
    let err = client
        .execute_ingest(
            command(TableExistsOption::Fail),
            futures::stream::iter(vec![Ok(notes_batch(0, 1))]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // Transactions: rollback discards, commit keeps.
    let notes = count(&server, "SELECT count(*) FROM notes").await;
    let tx = client.begin_transaction().await.unwrap();
    client
        .execute_update(
            "INSERT INTO notes (id, body) VALUES (9001, 'rolled back')".into(),
            Some(tx.clone()),
        )
        .await
        .unwrap();
    client
        .end_transaction(tx, EndTransaction::Rollback)
        .await
        .unwrap();
    assert_eq!(count(&server, "SELECT count(*) FROM notes").await, notes);
    let tx = client.begin_transaction().await.unwrap();
    client
        .execute_update(
            "INSERT INTO notes (id, body) VALUES (9002, 'committed')".into(),
            Some(tx.clone()),
        )
        .await
        .unwrap();
    let mut prepared = client
        .prepare(
            "UPDATE notes SET score = ? WHERE id = ?".into(),
            Some(tx.clone()),
        )
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("score", DataType::Float64, false),
            Field::new("id", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![42.0])),
            Arc::new(Int64Array::from(vec![9002])),
        ],
    )
    .unwrap();
    prepared.set_parameters(params).unwrap();
    assert_eq!(prepared.execute_update().await.unwrap(), 1);
    assert_eq!(
        count(&server, "SELECT count(*) FROM notes WHERE id = 9002").await,
        0,
        "uncommitted rows are not visible"
    );
    client
        .end_transaction(tx.clone(), EndTransaction::Commit)
        .await
        .unwrap();
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM notes WHERE id = 9002 AND score = 42"
        )
        .await,
        1
    );
    let err = client
        .end_transaction(tx, EndTransaction::Commit)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Every write above is in the change log, tables included that DDL created.
    let changes = store(&server).changes_after(0, 1_000_000).await.unwrap();
    let tables: BTreeSet<&str> = changes.iter().map(|c| c.table.as_str()).collect();
    assert!(
        tables.is_superset(&BTreeSet::from(["notes", "ingested", "tasks"])),
        "{tables:?}"
    );
    assert_eq!(
        changes.iter().filter(|c| c.table == "ingested").count(),
        6_000
    );
    assert_eq!(
        changes.iter().filter(|c| c.table == "notes").count() as i64,
        3 + 250 + 2
    );
}

async fn concurrent_writers_leave_a_complete_ordered_log(store_kind: TestStore) {
    const WRITERS: usize = 6;
    const CALLS: usize = 15;
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let start = store(&server).latest_version().await.unwrap();
    let channel = server.channel().await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let channel = channel.clone();
            async move {
                let mut client = MutationsClient::new(channel);
                let mut acknowledged = Vec::new();
                for call in 0..CALLS {
                    let keys = [format!("W{writer}-{call}-a"), format!("W{writer}-{call}-b")];
                    let response = client
                        .insert(insert("epics", keys.iter().map(|k| epic(k)).collect()))
                        .await
                        .unwrap()
                        .into_inner();
                    acknowledged.push((response.commit_version, keys));
                }
                acknowledged
            }
        })
        .map(tokio::spawn)
        .collect();
    let mut versions = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for writer in writers {
        for (version, written) in writer.await.unwrap() {
            assert!(
                versions.insert(version),
                "version {version} acknowledged twice"
            );
            keys.extend(written);
        }
    }
    let total = (WRITERS * CALLS) as u64;
    assert_eq!(
        versions,
        (start + 1..=start + total).collect::<BTreeSet<_>>()
    );
    let changes = store(&server).changes_after(start, 100_000).await.unwrap();
    assert_eq!(changes.len(), keys.len());
    assert!(changes.windows(2).all(|w| w[0].version <= w[1].version));
    let logged: BTreeSet<String> = changes
        .iter()
        .map(|c| {
            let after: serde_json::Value =
                serde_json::from_str(c.after.as_deref().unwrap()).unwrap();
            after["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(logged, keys);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM epics WHERE key LIKE 'W%-%-%'"
        )
        .await as usize,
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactions_are_rolled_back() {
    let server = TestServer::start(ServeArgs {
        demo: Some(true),
        demo_tasks: Some(100),
        transaction_idle_timeout_s: Some(1),
        ..ServeArgs::default()
    })
    .await;
    let mut client = server.flight_sql_client().await;
    let tx = client.begin_transaction().await.unwrap();
    client
        .execute_update(
            "UPDATE tasks SET status = 'done' WHERE id = 1".into(),
            Some(tx.clone()),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let err = client
        .end_transaction(tx, EndTransaction::Commit)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    // The writer is free again: a write outside the transaction goes through.
    let mut mutations = mutations(&server).await;
    let response = mutations
        .update(UpdateRequest {
            table: "tasks".into(),
            r#where: by_keys(&[2]),
            set: Some(row(&[("title", text("after the timeout"))])),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.affected_rows, 1);
    assert!(
        store(&server)
            .changes_after(0, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.key.as_deref() != Some("{\"id\":1}")
                && c.key.as_deref() != Some("{\"id\": 1}")),
        "the rolled-back update is not in the log"
    );
}
