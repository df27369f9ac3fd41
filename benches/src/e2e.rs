//! Client ↔ server measurements: Flight SQL vs HTTP JSON vs SQLite read directly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

/// What one run of one path moved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
    pub(crate) elapsed: Duration,
}

/// Median of `runs` samples after one warm-up run.
pub(crate) async fn median<F, Fut>(runs: usize, mut f: F) -> Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Sample>>,
{
    f().await?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        samples.push(f().await?);
    }
    samples.sort_by_key(|s| s.elapsed);
    Ok(samples[samples.len() / 2])
}

/// A Flight SQL connection.
pub(crate) struct FlightClient {
    sql: FlightSqlServiceClient<Channel>,
    raw: FlightServiceClient<Channel>,
}

impl FlightClient {
    pub(crate) async fn connect(addr: &str) -> Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connect to Flight SQL")?;
        let raw = FlightServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let sql = FlightSqlServiceClient::new_from_inner(raw.clone());
        Ok(Self { sql, raw })
    }

    /// The schema of a query's result.
    pub(crate) async fn schema(&self, sql: &str) -> Result<SchemaRef> {
        let info = self.sql.clone().execute(sql.to_owned(), None).await?;
        Ok(Arc::new(Schema::try_from(info)?))
    }

    /// Runs `sql` and decodes every batch; `on_batch` sees each one as it arrives.
    pub(crate) async fn fetch(
        &self,
        sql: &str,
        mut on_batch: impl FnMut(&RecordBatch),
    ) -> Result<Sample> {
        let started = Instant::now();
        let info = self.sql.clone().execute(sql.to_owned(), None).await?;
        let mut rows = 0;
        let bytes = Arc::new(AtomicUsize::new(0));
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.context("ticket")?;
            let messages = self.raw.clone().do_get(ticket).await?.into_inner();
            let counter = Arc::clone(&bytes);
            let counted = messages.map_ok(move |m| {
                counter.fetch_add(m.data_body.len() + m.data_header.len(), Ordering::Relaxed);
                m
            });
            let mut batches =
                FlightRecordBatchStream::new_from_flight_data(counted.map_err(Into::into));
            while let Some(batch) = batches.try_next().await? {
                rows += batch.num_rows();
                on_batch(&batch);
            }
        }
        Ok(Sample {
            rows,
            bytes: bytes.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        })
    }
}

/// `POST /v1/query`, parsed the way JSON API clients do: into a vector of row objects.
pub(crate) async fn json_rows(http: &reqwest::Client, addr: &str, sql: &str) -> Result<Sample> {
    let started = Instant::now();
    let body = http
        .post(format!("http://{addr}/v1/query"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&body)?;
    Ok(Sample {
        rows: rows.len(),
        bytes: body.len(),
        elapsed: started.elapsed(),
    })
}

/// `POST /v1/query` as NDJSON, decoded straight into Arrow batches as it streams in
/// (the fastest JSON client there is: arrow-json's decoder with the schema known).
pub(crate) async fn json_to_arrow(
    http: &reqwest::Client,
    addr: &str,
    sql: &str,
    schema: SchemaRef,
) -> Result<Sample> {
    let started = Instant::now();
    let response = http
        .post(format!("http://{addr}/v1/query"))
        .header("accept", "application/x-ndjson")
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?
        .error_for_status()?;
    let mut decoder = arrow_json::ReaderBuilder::new(schema)
        .with_batch_size(8192)
        .build_decoder()?;
    let mut chunks = response.bytes_stream();
    let (mut rows, mut bytes) = (0, 0);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        let mut offset = 0;
        while offset < chunk.len() {
            let consumed = decoder.decode(&chunk[offset..])?;
            offset += consumed;
            if (consumed == 0 || offset < chunk.len())
                && let Some(batch) = decoder.flush()?
            {
                rows += batch.num_rows();
            }
        }
    }
    if let Some(batch) = decoder.flush()? {
        rows += batch.num_rows();
    }
    Ok(Sample {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// The same query run by SQLite on the file directly (a fresh connection, as a
/// script would), every value copied out.
pub(crate) fn sqlite_direct(db: &Path, sql: &str) -> Result<Sample> {
    let started = Instant::now();
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut sample = sqlite_direct_on(&conn, sql)?;
    sample.elapsed = started.elapsed();
    Ok(sample)
}

/// The same query on an open SQLite connection (statement cached), every value
/// copied out.
pub(crate) fn sqlite_direct_on(conn: &rusqlite::Connection, sql: &str) -> Result<Sample> {
    let started = Instant::now();
    let mut statement = conn.prepare_cached(sql)?;
    let columns = statement.column_count();
    let mut rows = statement.query([])?;
    let mut count = 0;
    let mut kept: Vec<Vec<rusqlite::types::Value>> = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns)
            .map(|i| row.get::<_, rusqlite::types::Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        kept.push(values);
        count += 1;
    }
    drop(kept);
    Ok(Sample {
        rows: count,
        bytes: 0,
        elapsed: started.elapsed(),
    })
}

/// One line of a results table.
pub(crate) fn report(rows: usize, path: &str, sample: Sample, reference: Option<Sample>) -> String {
    let seconds = sample.elapsed.as_secs_f64();
    let rate = sample.rows as f64 / seconds;
    let mb_per_s = if sample.bytes > 0 {
        format!("{:.1}", sample.bytes as f64 / seconds / 1e6)
    } else {
        "—".to_owned()
    };
    let ratio = reference.map_or("—".to_owned(), |r| {
        format!("{:.1}×", seconds / r.elapsed.as_secs_f64())
    });
    format!(
        "| {rows} | {path} | {:.1} ms | {:.0} | {mb_per_s} | {ratio} |",
        seconds * 1e3,
        rate
    )
}
