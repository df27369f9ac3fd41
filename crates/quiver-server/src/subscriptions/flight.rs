//! Subscriptions over Arrow Flight: the `subscribe` action checks a request (JSON)
//! and answers with a ticket; `DoGet` on the ticket streams the changes as record
//! batches of the table's columns plus `_version`, `_op` and `_committed_at`.
//!
//! Every batch carries `app_metadata`, a JSON checkpoint `{"version": N,
//! "latest_version": M}` with the meaning of the gRPC `Progress` message; progress
//! alone travels as a batch of no rows.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_flight::sql::Any;
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use prost::Message;
use quiver_proto::v1::SubscribeRequest;
use quiver_proto::v1::subscribe_request::Start as ProtoStart;
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::Status;

use super::decode::{Op, Page};
use super::delivery::{Closed, Sink, run};
use super::grpc::request_of;
use super::hub::Hub;
use super::spec::{Follow, Spec};
use crate::error::{Error, Result};

/// The Flight action that turns a subscription request into a ticket.
pub const SUBSCRIBE_ACTION: &str = "subscribe";
/// The `Any` type of subscription tickets: a `quiver.v1.SubscribeRequest`.
pub const SUBSCRIBE_TICKET_TYPE: &str = "type.googleapis.com/quiver.v1.SubscribeRequest";
/// Rows per Flight message.
const ROWS_PER_MESSAGE: usize = 1024;

/// The body of the `subscribe` action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    #[serde(default)]
    tables: Vec<String>,
    table: Option<String>,
    filter: Option<String>,
    from_version: Option<u64>,
    latest: Option<bool>,
    snapshot: Option<bool>,
    #[serde(default)]
    columns: Vec<String>,
}

/// Checks a `subscribe` action's JSON body against the catalog and encodes it as a
/// ticket for `DoGet`.
pub fn subscribe_ticket(hub: &Hub, body: &[u8]) -> Result<Bytes> {
    let action: ActionRequest = serde_json::from_slice(body).map_err(|err| {
        Error::InvalidRequest(format!("the subscribe action takes a JSON object: {err}"))
    })?;
    let mut tables = action.tables;
    tables.extend(action.table);
    let start = match (action.from_version, action.latest, action.snapshot) {
        (Some(version), None, None) => Some(ProtoStart::FromVersion(version)),
        (None, Some(latest), None) => Some(ProtoStart::Latest(latest)),
        (None, None, Some(snapshot)) => Some(ProtoStart::Snapshot(snapshot)),
        (None, None, None) => None,
        _ => {
            return Err(Error::InvalidRequest(
                "choose one start: from_version, latest or snapshot".to_owned(),
            ));
        }
    };
    let request = SubscribeRequest {
        tables,
        filter: action.filter.unwrap_or_default(),
        start,
        columns: action.columns,
    };
    check_one_table(&request)?;
    hub.compile(&request_of(request.clone()))?;
    let ticket = Any {
        type_url: SUBSCRIBE_TICKET_TYPE.to_owned(),
        value: request.encode_to_vec().into(),
    };
    Ok(ticket.encode_to_vec().into())
}

fn check_one_table(request: &SubscribeRequest) -> Result<()> {
    if request.tables.len() == 1 {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "a Flight subscription follows exactly one table (its rows are the stream's \
             columns), not {}",
            request.tables.len()
        )))
    }
}

/// Opens the subscription a ticket describes, streaming Flight data.
pub async fn subscribe(
    hub: &Arc<Hub>,
    ticket: &[u8],
) -> Result<mpsc::Receiver<Result<FlightData, Status>>> {
    let request = SubscribeRequest::decode(ticket)
        .map_err(|err| Error::InvalidHandle(format!("not a subscription ticket: {err}")))?;
    check_one_table(&request)?;
    let spec = hub.compile(&request_of(request))?;
    let (name, follow) = spec
        .follows
        .iter()
        .next()
        .ok_or_else(|| Error::Internal("a checked subscription has a table".to_owned()))?;
    let schema = stream_schema(follow);
    let name = Arc::clone(name);
    let opened = hub.open(spec).await?;
    let (sender, receiver) = mpsc::channel(hub.config().buffer);
    let options = IpcWriteOptions::default();
    let schema_message: FlightData = SchemaAsIpc::new(&schema, &options).into();
    sender
        .send(Ok(schema_message))
        .await
        .map_err(|_| Error::Internal("the stream closed before it started".to_owned()))?;
    let sink = FlightSink {
        hub: Arc::clone(hub),
        sender,
        schema,
        table: name,
        options,
    };
    tokio::spawn(run(Arc::clone(hub), opened, sink));
    Ok(receiver)
}

/// `_version`, `_op`, `_committed_at`, then the table's (projected) columns, all
/// nullable: deletes carry the row before, truncates no row.
fn stream_schema(follow: &Follow) -> SchemaRef {
    let mut fields = vec![
        Field::new("_version", DataType::Int64, false),
        Field::new("_op", DataType::Utf8, false),
        Field::new(
            "_committed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ];
    fields.extend(
        projection(follow)
            .into_iter()
            .map(|position| &follow.table.columns[position])
            .map(|column| Field::new(&column.name, column.data_type.clone(), true)),
    );
    Arc::new(Schema::new(fields))
}

/// The table columns a subscription's rows carry, by position.
fn projection(follow: &Follow) -> Vec<usize> {
    follow
        .columns
        .clone()
        .unwrap_or_else(|| (0..follow.table.columns.len()).collect())
}

struct FlightSink {
    hub: Arc<Hub>,
    sender: mpsc::Sender<Result<FlightData, Status>>,
    schema: SchemaRef,
    table: Arc<str>,
    options: IpcWriteOptions,
}

impl FlightSink {
    /// Sends `batch` (of the stream's schema) in messages of bounded rows, the last
    /// carrying the checkpoint.
    async fn send(&mut self, batch: RecordBatch, version: u64) -> Result<(), Closed> {
        let metadata = Bytes::from(
            serde_json::json!({
                "version": version,
                "latest_version": self.hub.latest().max(version),
            })
            .to_string(),
        );
        let mut offset = 0;
        loop {
            let length = (batch.num_rows() - offset).min(ROWS_PER_MESSAGE);
            let chunk = batch.slice(offset, length);
            offset += length;
            let last = offset >= batch.num_rows();
            let mut data = self.encode(&chunk).map_err(|err| {
                tracing::error!(error = %err, "cannot encode a subscription batch");
                Closed
            })?;
            if last {
                data.app_metadata = metadata.clone();
            }
            self.sender.send(Ok(data)).await.map_err(|_| Closed)?;
            if last {
                return Ok(());
            }
        }
    }

    fn encode(&self, batch: &RecordBatch) -> Result<FlightData, arrow::error::ArrowError> {
        let generator = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(false);
        let mut context = IpcWriteContext::default();
        let (_, encoded) = generator.encode(batch, &mut tracker, &self.options, &mut context)?;
        Ok(encoded.into())
    }

    fn batch(
        &self,
        versions: Vec<i64>,
        ops: Vec<&str>,
        committed: Vec<Option<i64>>,
        columns: Vec<ArrayRef>,
    ) -> Result<RecordBatch, Closed> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(versions)),
            Arc::new(StringArray::from(ops)),
            Arc::new(TimestampMicrosecondArray::from(committed).with_timezone("UTC")),
        ];
        for (column, field) in columns.into_iter().zip(self.schema.fields().iter().skip(3)) {
            let column = if column.data_type() == field.data_type() {
                column
            } else {
                arrow::compute::cast(&column, field.data_type()).map_err(|err| {
                    tracing::error!(error = %err, "cannot convert a subscription column");
                    Closed
                })?
            };
            arrays.push(column);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), arrays).map_err(|err| {
            tracing::error!(error = %err, "cannot build a subscription batch");
            Closed
        })
    }
}

impl Sink for FlightSink {
    async fn deliver(
        &mut self,
        spec: &Spec,
        page: &Page,
        selected: &[usize],
        position: u64,
    ) -> Result<(), Closed> {
        if selected.is_empty() {
            return Ok(());
        }
        let Some(follow) = spec.follows.get(&self.table) else {
            return Ok(());
        };
        let events: Vec<_> = selected.iter().map(|&i| &page.events[i]).collect();
        let rows: UInt32Array = events
            .iter()
            .map(|e| e.row.and_then(|r| u32::try_from(r).ok()))
            .collect();
        let images = page.tables.get(&self.table);
        let columns = projection(follow)
            .into_iter()
            .map(|position| {
                let data_type = &follow.table.columns[position].data_type;
                match images {
                    Some(images) => {
                        arrow::compute::take(images.current.column(position), &rows, None)
                            .unwrap_or_else(|_| new_null_array(data_type, rows.len()))
                    }
                    None => new_null_array(data_type, rows.len()),
                }
            })
            .collect();
        let batch = self.batch(
            events
                .iter()
                .map(|e| i64::try_from(e.version).unwrap_or(i64::MAX))
                .collect(),
            events.iter().map(|e| e.op.as_str()).collect(),
            events.iter().map(|e| Some(e.committed_at_micros)).collect(),
            columns,
        )?;
        self.send(batch, position).await
    }

    async fn snapshot(
        &mut self,
        follow: &Follow,
        version: u64,
        rows: RecordBatch,
    ) -> Result<(), Closed> {
        let count = rows.num_rows();
        let columns = projection(follow)
            .into_iter()
            .map(|position| Arc::clone(rows.column(position)))
            .collect();
        let batch = self.batch(
            vec![i64::try_from(version).unwrap_or(i64::MAX); count],
            vec![Op::Snapshot.as_str(); count],
            vec![None; count],
            columns,
        )?;
        self.send(batch, version).await
    }

    async fn progress(&mut self, version: u64, _latest: u64) -> Result<(), Closed> {
        let empty = RecordBatch::new_empty(Arc::clone(&self.schema));
        self.send(empty, version).await
    }

    async fn fail(&mut self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }

    async fn closed(&self) {
        self.sender.closed().await;
    }
}
