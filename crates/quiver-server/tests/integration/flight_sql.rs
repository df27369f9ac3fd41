//! Statement queries and prepared statements through the Flight SQL client.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use futures::TryStreamExt;
use quiver_server::config::ServeArgs;
use quiver_server::test_utils::{TestServer, TestStore};
use quiver_storage::testing::canonical_batch;

use crate::common::{fetch, flight_rows, sorted, sqlite_rows};

#[tokio::test]
async fn statement_queries_answer_like_sqlite() {
    statement_queries_answer_like_sqlite_on(TestStore::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_queries_on_postgres_answer_like_sqlite() {
    statement_queries_answer_like_sqlite_on(TestStore::Postgres).await;
}

async fn statement_queries_answer_like_sqlite_on(store: TestStore) {
    let Some(server) = TestServer::demo_on(store, 2_000).await else {
        return;
    };
    let queries = [
        "SELECT status, count(*) FROM tasks GROUP BY status",
        "SELECT t.key, f.title FROM tasks t JOIN features f ON t.feature_id = f.id WHERE t.priority = 1 AND t.status = 'review'",
        "SELECT * FROM task_history WHERE task_id BETWEEN 10 AND 20",
        "SELECT e.key, count(t.id) FROM epics e JOIN features f ON f.epic_id = e.id JOIN tasks t ON t.feature_id = f.id GROUP BY e.key",
        "SELECT id, key, estimate_hours, created_at, completed_at FROM tasks WHERE status = 'blocked' AND priority <= 2",
        "SELECT id FROM tasks WHERE key > 'TASK-0001990' AND title LIKE 'Fix%'",
        "SELECT f.id, count(*), sum(CASE WHEN t.status = 'done' THEN 1 ELSE 0 END) FROM features f JOIN tasks t ON t.feature_id = f.id WHERE f.epic_id = 1 GROUP BY f.id",
        "SELECT * FROM tasks",
    ];
    for sql in queries {
        let ours = sorted(flight_rows(&server, sql).await);
        let truth = sorted(sqlite_rows(&server, sql));
        assert!(!truth.is_empty(), "{sql} returns rows");
        assert_eq!(ours, truth, "{sql}");
    }
}

#[tokio::test]
async fn flight_info_describes_the_result() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let info = client
        .execute(
            "SELECT id, key, created_at FROM tasks WHERE id < 10".to_owned(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.endpoint.len(), 1);
    assert_eq!(
        info.total_records, -1,
        "row count is unknown before running"
    );
    let schema = Schema::try_from(info.clone()).unwrap();
    let fields: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("id", &DataType::Int64),
            ("key", &DataType::Utf8),
            (
                "created_at",
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
            ),
        ]
    );
    let batches = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 9);
    assert_eq!(batches[0].schema().fields().len(), 3);
}

#[tokio::test]
async fn large_results_stream_in_batches_below_the_message_limit() {
    // Rows of ~4 KB in batches of 8192 rows: each batch is ~32 MB and must be split.
    let server = TestServer::demo(20_000).await;
    let sql = "SELECT id, repeat(title, 150) AS padded FROM tasks";
    let mut client = server.flight_sql_client().await;
    let info = client.execute(sql.to_owned(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    // Read raw FlightData to see the message sizes the server sends.
    let mut raw =
        FlightServiceClient::new(server.channel().await).max_decoding_message_size(4 << 20);
    let messages: Vec<arrow_flight::FlightData> = raw
        .do_get(ticket)
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    let largest = messages.iter().map(|m| m.data_body.len()).max().unwrap();
    assert!(largest <= 3 << 20, "largest message body {largest} bytes");
    assert!(messages.len() > 20, "{} messages", messages.len());
    let decoded: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
        futures::stream::iter(messages.into_iter().map(Ok)),
    )
    .try_collect()
    .await
    .unwrap();
    let rows: usize = decoded.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 20_000);
    let truth = sqlite_rows(&server, "SELECT sum(length(title) * 150) FROM tasks");
    let received: usize = decoded
        .iter()
        .map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .value_data()
                .len()
        })
        .sum();
    assert_eq!(received.to_string(), truth[0]);
}

#[tokio::test]
async fn prepared_statements_bind_execute_rebind_and_close() {
    prepared_statements_on(TestStore::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_on_postgres_bind_execute_rebind_and_close() {
    prepared_statements_on(TestStore::Postgres).await;
}

async fn prepared_statements_on(store: TestStore) {
    let Some(server) = TestServer::demo_on(store, 500).await else {
        return;
    };
    let mut client = server.flight_sql_client().await;
    let sql = "SELECT id, key, status FROM tasks WHERE id = ? OR priority = ? AND feature_id = ?";
    let mut prepared = client.prepare(sql.to_owned(), None).await.unwrap();
    let parameters = prepared.parameter_schema().unwrap().clone();
    let parameter_types: Vec<&DataType> =
        parameters.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(parameter_types, vec![&DataType::Int64; 3]);
    let dataset = prepared.dataset_schema().unwrap().clone();
    assert_eq!(dataset.fields().len(), 3);

    for (id, priority, feature) in [(42i64, 1i64, 3i64), (7, 5, 1), (499, 2, 25)] {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Int64, false),
                Field::new("$2", DataType::Int64, false),
                Field::new("$3", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![id])),
                Arc::new(Int64Array::from(vec![priority])),
                Arc::new(Int64Array::from(vec![feature])),
            ],
        )
        .unwrap();
        prepared.set_parameters(batch).unwrap();
        let info = prepared.execute().await.unwrap();
        let ours: Vec<String> = fetch(&mut client, info)
            .await
            .iter()
            .flat_map(canonical_batch)
            .collect();
        let truth = sqlite_rows(
            &server,
            &format!(
                "SELECT id, key, status FROM tasks WHERE id = {id} OR priority = {priority} AND feature_id = {feature}"
            ),
        );
        assert!(!truth.is_empty());
        assert_eq!(
            sorted(ours),
            sorted(truth),
            "id={id} priority={priority} feature={feature}"
        );
    }
    prepared.close().await.unwrap();
}

#[tokio::test]
async fn prepared_statement_parameters_are_converted_to_the_inferred_type() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let mut prepared = client
        .prepare("SELECT key FROM tasks WHERE id = ?".to_owned(), None)
        .await
        .unwrap();
    // An Int32 value for an Int64 parameter is widened.
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("p", DataType::Int32, false)])),
        vec![Arc::new(arrow::array::Int32Array::from(vec![5]))],
    )
    .unwrap();
    prepared.set_parameters(batch).unwrap();
    let info = prepared.execute().await.unwrap();
    let rows: Vec<String> = fetch(&mut client, info)
        .await
        .iter()
        .flat_map(canonical_batch)
        .collect();
    assert_eq!(rows, vec!["TASK-0000005".to_owned()]);
}

#[tokio::test]
async fn a_ticket_is_served_by_any_replica() {
    // Two servers over the same database file: a FlightInfo from one is fetched from
    // the other, because tickets carry the statement itself.
    let first = TestServer::demo(100).await;
    let second = TestServer::start(ServeArgs {
        db: Some(format!("sqlite://{}", first.db_path.display())),
        ..ServeArgs::default()
    })
    .await;
    let mut client_a = first.flight_sql_client().await;
    let mut client_b = second.flight_sql_client().await;
    let info = client_a
        .execute("SELECT count(*) FROM tasks".to_owned(), None)
        .await
        .unwrap();
    let batches = fetch(&mut client_b, info).await;
    assert_eq!(
        batches.iter().flat_map(canonical_batch).collect::<Vec<_>>(),
        vec!["100".to_owned()]
    );
}
