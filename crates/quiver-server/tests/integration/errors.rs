//! Bad input gets a precise status and the server keeps serving.

use arrow_flight::sql::{CommandPreparedStatementQuery, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, Ticket};
use prost::Message;
use quiver_server::test_utils::TestServer;
use tonic::Code;

use crate::common::flight_rows;

fn status_of(err: arrow_flight::error::FlightError) -> tonic::Status {
    match err {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn still_serving(server: &TestServer) {
    assert_eq!(
        flight_rows(server, "SELECT count(*) FROM epics").await,
        vec!["1".to_owned()]
    );
}

#[tokio::test]
async fn malformed_sql_is_invalid_argument_with_the_parser_message() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let status = status_of(
        client
            .execute("SELEC id FROM tasks".to_owned(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("Expected: an SQL statement, found: SELEC"),
        "{}",
        status.message()
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn unknown_tables_and_columns_are_named() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let status = status_of(
        client
            .execute("SELECT * FROM taskz".to_owned(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("taskz"), "{}", status.message());
    assert!(
        status.message().contains("not found"),
        "{}",
        status.message()
    );

    let status = status_of(
        client
            .execute("SELECT colour FROM tasks".to_owned(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("colour"), "{}", status.message());
    still_serving(&server).await;
}

#[tokio::test]
async fn bad_statements_are_refused_and_change_nothing() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    // Session statements are neither queries nor writes the store runs.
    let status = status_of(
        client
            .execute("SET datafusion.execution.batch_size = 1".to_owned(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("not a query"),
        "{}",
        status.message()
    );
    // DDL and DML run on the store; what the store refuses changes nothing.
    for (sql, code, says) in [
        (
            "CREATE TABLE tasks (x INT)",
            Code::InvalidArgument,
            "already exists",
        ),
        ("DELETE FROM no_such_table", Code::NotFound, "no_such_table"),
        (
            "UPDATE tasks SET no_such_column = 1",
            Code::InvalidArgument,
            "no_such_column",
        ),
    ] {
        let status = status_of(client.execute(sql.to_owned(), None).await.unwrap_err());
        assert_eq!(status.code(), code, "{sql}: {status:?}");
        assert!(
            status.message().contains(says),
            "{sql}: {}",
            status.message()
        );
    }
    assert_eq!(
        flight_rows(&server, "SELECT count(*) FROM tasks").await,
        vec!["100".to_owned()]
    );
    assert_eq!(
        server.server.engine.store().latest_version().await.unwrap(),
        0
    );
}

#[tokio::test]
async fn corrupted_handles_and_tickets_are_invalid_argument() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let prepared = client
        .prepare("SELECT id FROM tasks".to_owned(), None)
        .await
        .unwrap();
    let info = prepared.clone().execute().await.unwrap();
    let good = info.endpoint[0].ticket.clone().unwrap();

    // A corrupted prepared statement handle.
    let mut handle = TicketStatementQuery::decode(
        arrow_flight::sql::Any::decode(good.ticket.clone())
            .unwrap()
            .value,
    )
    .unwrap()
    .statement_handle
    .to_vec();
    let middle = handle.len() / 2;
    handle[middle] ^= 0xff;
    let command = CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone().into(),
    };
    let mut raw =
        arrow_flight::flight_service_client::FlightServiceClient::new(server.channel().await);
    let status = raw
        .get_flight_info(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("invalid statement handle"),
        "{}",
        status.message()
    );

    // A corrupted ticket.
    let ticket = TicketStatementQuery {
        statement_handle: handle.into(),
    };
    let err = client
        .do_get(Ticket::new(ticket.as_any().encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status_of(err).code(), Code::InvalidArgument);

    // Garbage that is not even a protobuf message.
    let err = client
        .do_get(Ticket::new(b"\xff\xfe garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status_of(err).code(), Code::InvalidArgument);

    // The genuine ticket still works.
    let rows = client.do_get(good).await.unwrap();
    let batches: Vec<_> = futures::TryStreamExt::try_collect(rows).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
}

#[tokio::test]
async fn wrong_parameter_values_are_invalid_argument() {
    let server = TestServer::demo(100).await;
    let mut client = server.flight_sql_client().await;
    let mut prepared = client
        .prepare("SELECT id FROM tasks WHERE id = ?".to_owned(), None)
        .await
        .unwrap();
    let batch = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("p", arrow::datatypes::DataType::Utf8, false),
        ])),
        vec![std::sync::Arc::new(arrow::array::StringArray::from(vec![
            "forty-two",
        ]))],
    )
    .unwrap();
    prepared.set_parameters(batch).unwrap();
    let status = status_of(prepared.execute().await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("forty-two"),
        "{}",
        status.message()
    );

    // No parameters bound at all.
    let mut unbound = client
        .prepare("SELECT id FROM tasks WHERE id = ?".to_owned(), None)
        .await
        .unwrap();
    let status = status_of(unbound.execute().await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1 parameter(s) but 0 value(s)"),
        "{}",
        status.message()
    );
    still_serving(&server).await;
}
