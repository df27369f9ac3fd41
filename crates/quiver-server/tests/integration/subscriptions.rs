//! Subscriptions end to end, on both backends, with the generated tonic clients:
//! filtered streams against the same predicate run as SQL on the store, the change
//! log's retention, and shutdown. (The Python suite covers resume, restarts, replicas,
//! slow consumers and Flight.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use quiver_proto::v1::mutations_client::MutationsClient;
use quiver_proto::v1::subscriptions_client::SubscriptionsClient;
use quiver_proto::v1::{
    self as pb, InsertRequest, Row, Rows, SubscribeRequest, SubscribeResponse, UpdateRequest,
    selector, subscribe_request::Start, subscribe_response::Event, value::Kind,
};
use quiver_server::config::ServeArgs;
use quiver_server::test_utils::{TestServer, TestStore};
use tonic::Code;

on_both_stores!(
    filtered_stream_equals_the_predicate_run_as_sql,
    resume_points_the_log_no_longer_holds_are_refused,
    shutdown_ends_streams_and_the_server_stops,
);

const FILTER: &str = "status = 'active' AND priority <= 2";
const WAIT: Duration = Duration::from_secs(30);

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn epic(key: &str, status: &str, priority: i64) -> Row {
    let values = [
        ("key", value(Kind::String(key.to_owned()))),
        ("title", value(Kind::String(format!("epic {key}")))),
        ("status", value(Kind::String(status.to_owned()))),
        ("priority", value(Kind::Int64(priority))),
        (
            "created_at",
            value(Kind::TimestampMicros(1_700_000_000_000_000)),
        ),
        (
            "updated_at",
            value(Kind::TimestampMicros(1_700_000_000_000_000)),
        ),
    ];
    Row {
        values: values
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn text_of(row: Option<&Row>, column: &str) -> String {
    match row
        .and_then(|r| r.values.get(column))
        .and_then(|v| v.kind.clone())
    {
        Some(Kind::String(text)) => text,
        other => panic!("column {column} is not text: {other:?}"),
    }
}

async fn subscribe(
    server: &TestServer,
    request: SubscribeRequest,
) -> Result<tonic::Streaming<SubscribeResponse>, tonic::Status> {
    SubscriptionsClient::new(server.channel().await)
        .subscribe(request)
        .await
        .map(tonic::Response::into_inner)
}

fn epics_from(version: u64, filter: &str) -> SubscribeRequest {
    SubscribeRequest {
        tables: vec!["epics".to_owned()],
        filter: filter.to_owned(),
        start: Some(Start::FromVersion(version)),
        columns: Vec::new(),
    }
}

/// Reads the stream until a progress message reaches `version`; returns the changes.
async fn changes_until(
    stream: &mut tonic::Streaming<SubscribeResponse>,
    version: u64,
) -> Vec<pb::ChangeEvent> {
    let mut changes = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a message within the deadline")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        match message.event {
            Some(Event::Change(change)) => changes.push(change),
            Some(Event::Progress(progress)) if progress.version >= version => return changes,
            _ => {}
        }
    }
}

/// The `key` column of `sql`'s rows, read from the store directly.
async fn keys_in_store(server: &TestServer, sql: &str) -> BTreeSet<String> {
    let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
    let batches: Vec<RecordBatch> = server
        .server
        .engine
        .store()
        .query(sql.to_owned(), Vec::new(), schema)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let keys = b.column(0).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| keys.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn filtered_stream_equals_the_predicate_run_as_sql(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let start = server.server.engine.store().latest_version().await.unwrap();
    let mut stream = subscribe(&server, epics_from(start, FILTER)).await.unwrap();
    // Three writers insert epics of every status and priority at once.
    let channel = server.channel().await;
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let mut client = MutationsClient::new(channel.clone());
            tokio::spawn(async move {
                let mut last = 0;
                for i in 0..12 {
                    let status = ["planned", "active", "done"][i % 3];
                    let priority = (i % 4 + 1) as i64;
                    let key = format!("F{writer}-{i}");
                    let rows = Rows {
                        rows: vec![epic(&key, status, priority)],
                        arrow_ipc: Default::default(),
                    };
                    let response = client
                        .insert(InsertRequest {
                            table: "epics".to_owned(),
                            rows: Some(rows),
                            idempotency_key: String::new(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    last = last.max(response.commit_version);
                }
                last
            })
        })
        .collect();
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await.unwrap());
    }
    // The truth: the same predicate run as SQL on the store.
    let expected = keys_in_store(
        &server,
        &format!("SELECT key FROM epics WHERE key LIKE 'F%' AND ({FILTER})"),
    )
    .await;
    assert!(!expected.is_empty());
    // Then one update moves every matching row out of the filter: each is delivered
    // (its row before matched), and no other row is.
    let moved = MutationsClient::new(channel.clone())
        .update(UpdateRequest {
            table: "epics".to_owned(),
            r#where: Some(pb::Selector {
                target: Some(selector::Target::Predicate(format!(
                    "key >= 'F' AND key < 'G' AND {FILTER}"
                ))),
            }),
            set: Some(Row {
                values: [("status".to_owned(), value(Kind::String("done".to_owned())))]
                    .into_iter()
                    .collect(),
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let changes = changes_until(&mut stream, moved.commit_version).await;

    let inserted: Vec<&pb::ChangeEvent> = changes
        .iter()
        .filter(|c| c.op == pb::Op::Insert as i32)
        .collect();
    let delivered: BTreeSet<String> = inserted
        .iter()
        .map(|c| text_of(c.after.as_ref(), "key"))
        .collect();
    assert_eq!(
        delivered.len(),
        inserted.len(),
        "no insert is delivered twice"
    );
    assert_eq!(delivered, expected);
    assert!(
        inserted
            .iter()
            .all(|c| c.version > start && c.version <= last)
    );
    assert!(
        inserted.windows(2).all(|w| w[0].version < w[1].version),
        "one insert per commit, in version order"
    );
    assert!(changes.windows(2).all(|w| w[0].version <= w[1].version));
    let updates: BTreeSet<String> = changes
        .iter()
        .filter(|c| c.op == pb::Op::Update as i32)
        .inspect(|c| {
            assert_eq!(c.version, moved.commit_version);
            assert_eq!(text_of(c.before.as_ref(), "status"), "active");
            assert_eq!(text_of(c.after.as_ref(), "status"), "done");
        })
        .map(|c| text_of(c.after.as_ref(), "key"))
        .collect();
    assert_eq!(updates, expected);
    assert_eq!(moved.affected_rows as usize, expected.len());
    server.stop().await;
}

async fn resume_points_the_log_no_longer_holds_are_refused(store_kind: TestStore) {
    let Some(server) = TestServer::demo_on(store_kind, 200).await else {
        return;
    };
    let store = server.server.engine.store().clone();
    let mut client = MutationsClient::new(server.channel().await);
    let mut last = 0;
    // The resume point is the first commit (version 0 would mean "whatever the log
    // holds"); three more follow it.
    let mut start = 0;
    for i in 0..4 {
        let rows = Rows {
            rows: vec![epic(&format!("R-{i}"), "planned", 3)],
            arrow_ipc: Default::default(),
        };
        last = client
            .insert(InsertRequest {
                table: "epics".to_owned(),
                rows: Some(rows),
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .commit_version;
        if i == 0 {
            start = last;
        }
    }
    assert!(start >= 1 && last == start + 3);
    // Everything committed so far leaves the log.
    let future = i64::MAX / 2;
    assert!(store.prune_change_log(future, 0).await.unwrap() >= last - start);
    let refused = subscribe(&server, epics_from(start, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("resume_version={start}")),
        "{refused:?}"
    );
    // From the latest version, and from "whatever the log holds", nothing is missing.
    let mut latest = subscribe(&server, epics_from(last, "")).await.unwrap();
    let mut whole = subscribe(&server, epics_from(0, "")).await.unwrap();
    let ahead = subscribe(&server, epics_from(last + 10, ""))
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::InvalidArgument, "{ahead:?}");
    let next = client
        .insert(InsertRequest {
            table: "epics".to_owned(),
            rows: Some(Rows {
                rows: vec![epic("R-after", "planned", 3)],
                arrow_ipc: Default::default(),
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .commit_version;
    for stream in [&mut latest, &mut whole] {
        let changes = changes_until(stream, next).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].version, next);
        assert_eq!(text_of(changes[0].after.as_ref(), "key"), "R-after");
    }
    server.stop().await;
}

async fn shutdown_ends_streams_and_the_server_stops(store_kind: TestStore) {
    let server = match store_kind {
        TestStore::Sqlite => {
            TestServer::start(ServeArgs {
                demo: Some(true),
                demo_tasks: Some(100),
                subscription_progress_interval_ms: Some(50),
                ..ServeArgs::default()
            })
            .await
        }
        TestStore::Postgres => match TestServer::demo_on(store_kind, 100).await {
            Some(server) => server,
            None => return,
        },
    };
    let mut stream = subscribe(
        &server,
        SubscribeRequest {
            tables: vec!["epics".to_owned(), "tasks".to_owned()],
            start: Some(Start::Latest(true)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Progress(_))), "{first:?}");
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("the server stops although a subscription is open");
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    if let Some(status) = ended {
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{status:?}"
        );
    }
}
