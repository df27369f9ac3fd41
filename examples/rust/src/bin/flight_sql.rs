//! A Flight SQL client in Rust: a prepared statement with a bound parameter, its
//! result fetched from every endpoint and printed as a table, and the server's tables
//! from the catalog metadata.
//!
//! ```sh
//! cargo run -p quiver-server -- serve --demo        # in one shell
//! cargo run -p quiver-examples --bin flight_sql     # in another
//! ```
//!
//! `QUIVER_GRPC=host:port` points it at another server (default `127.0.0.1:50051`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::FlightInfo;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

/// Every batch of every endpoint of `info`.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

#[tokio::main]
async fn main() -> Result<()> {
    let address = std::env::var("QUIVER_GRPC").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = FlightSqlServiceClient::new(channel);

    // A prepared statement: `?` placeholders, values bound as an Arrow batch.
    let mut statement = client
        .prepare(
            "SELECT status, count(*) AS tasks FROM tasks WHERE priority <= ? \
             GROUP BY status ORDER BY status"
                .to_owned(),
            None,
        )
        .await?;
    let parameters = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
    statement.set_parameters(RecordBatch::try_new(
        parameters,
        vec![Arc::new(Int64Array::from(vec![2]))],
    )?)?;
    let info = statement.execute().await?;
    let batches = fetch(&mut client, info).await?;
    println!("tasks with priority <= 2, by status:");
    println!("{}", pretty_format_batches(&batches)?);
    statement.close().await?;

    // Catalog metadata: the tables the server serves.
    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec!["TABLE".to_owned()],
            include_schema: false,
        })
        .await?;
    let mut tables = Vec::new();
    for batch in fetch(&mut client, info).await? {
        let names = batch
            .column_by_name("table_name")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .context("GetTables without table_name")?;
        tables.extend(names.iter().flatten().map(str::to_owned));
    }
    println!("tables: {}", tables.join(", "));
    Ok(())
}
