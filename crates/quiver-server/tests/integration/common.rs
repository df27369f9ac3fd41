//! Helpers: fetching results over Flight SQL, truth from SQLite.

use arrow::array::RecordBatch;
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use quiver_server::test_utils::TestServer;
use quiver_storage::testing::canonical_batch;
use tonic::transport::Channel;

/// Fetches every endpoint of `info`, checking that endpoints carry no bogus locations.
pub(crate) async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        assert!(
            endpoint.location.is_empty(),
            "no bogus locations: {:?}",
            endpoint.location
        );
        let ticket = endpoint.ticket.expect("endpoint has a ticket");
        let stream = client.do_get(ticket).await.expect("do_get");
        let mut part: Vec<RecordBatch> = stream.try_collect().await.expect("stream");
        batches.append(&mut part);
    }
    batches
}

/// Runs `sql` through Flight SQL and returns its rows as canonical text.
pub(crate) async fn flight_rows(server: &TestServer, sql: &str) -> Vec<String> {
    let mut client = server.flight_sql_client().await;
    let info = client
        .execute(sql.to_owned(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    fetch(&mut client, info)
        .await
        .iter()
        .flat_map(canonical_batch)
        .collect()
}

/// Runs `sql` with SQLite itself on the server's database file.
pub(crate) fn sqlite_rows(server: &TestServer, sql: &str) -> Vec<String> {
    quiver_storage::testing::sqlite_rows(&server.db_path, sql)
}

/// Sorted, for comparing results whose order the query does not define.
pub(crate) fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}
