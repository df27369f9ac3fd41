//! Queries: planning a statement handle and describing its result, running it with
//! its bound parameters, and streaming the batches as Flight data.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use quiver_query::QueryControl;
use quiver_query::params::coerce_values;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use std::sync::atomic::{AtomicU64, Ordering};

use quiver_query::system::Viewer;

use super::cancel::{Queries, Running};
use super::handle::StatementHandle;
use super::{DoGetStream, QuiverFlightSqlService};
use crate::connection::ConnectionId;
use crate::error::{Error, Result};
use crate::history::Tracker;

/// Batches encoded ahead of the client per stream.
const STREAM_BUFFER: usize = 2;

impl QuiverFlightSqlService {
    /// A `FlightInfo` for a result of `schema` fetched with `ticket`.
    pub(super) fn flight_info(
        &self,
        schema: &Schema,
        ticket: Bytes,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|err| {
                crate::error::status(
                    tonic::Code::Internal,
                    format!("cannot encode schema: {err}"),
                )
            })?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1))
    }

    /// Plans `handle`, checks its bound parameters and describes its result; the
    /// ticket carries a fresh query id (for `CancelFlightInfo`).
    pub(super) async fn statement_info(
        &self,
        mut handle: StatementHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let query = self
            .engine
            .prepare(&handle.sql)
            .await
            .map_err(Error::from)?;
        for row in self.bound_rows(&handle)? {
            coerce_values(query.parameters(), row).map_err(Error::from)?;
        }
        handle.query_id = Some(Queries::new_id()?);
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode()?,
        }
        .as_any()
        .encode_to_vec();
        self.flight_info(&query.schema(), ticket.into(), descriptor)
    }

    /// Plans and runs the statement of `handle` once per bound parameter row; a
    /// ticket's query id makes it cancellable while it runs. Inside a transaction of
    /// `owner`, the query reads on the transaction's connection and sees its writes.
    pub(super) async fn run_statement(
        &self,
        handle: StatementHandle,
        owner: Option<ConnectionId>,
        viewer: Arc<Viewer>,
        tracker: &mut Tracker,
    ) -> Result<SendableRecordBatchStream> {
        let through = self
            .writer
            .reads_through(handle.transaction_id.as_ref(), owner)
            .await?;
        let (mut control, running) = match handle.query_id {
            Some(id) => {
                let (control, running) = self.queries.start(id)?;
                (control, Some(running))
            }
            None => (QueryControl::default(), None),
        };
        control.viewer = Some(viewer);
        control.store_sql = tracker.store_sql();
        let query = self.engine.prepare(&handle.sql).await?;
        tracker.planned();
        let rows = self.bound_rows(&handle)?;
        if rows.len() == 1 {
            let params = rows.into_iter().next().expect("one row");
            let batches = self
                .engine
                .execute_through(&query, params, control, through)
                .await?;
            return Ok(holding(batches, running));
        }
        // Several parameter rows: the results of each execution, one after another.
        let schema = query.schema();
        let engine = Arc::clone(&self.engine);
        let streams = futures::stream::iter(rows)
            .then(move |params| {
                let engine = Arc::clone(&engine);
                let query = query.clone();
                let control = control.clone();
                let through = through.clone();
                async move {
                    engine
                        .execute_through(&query, params, control, through)
                        .await
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
                }
            })
            .try_flatten();
        Ok(holding(
            Box::pin(RecordBatchStreamAdapter::new(schema, streams)),
            running,
        ))
    }

    /// The parameter values bound to `handle`, one list per row (one empty list when
    /// none are bound); more rows than `max_query_parameter_rows` are refused before
    /// any is read.
    fn bound_rows(&self, handle: &StatementHandle) -> Result<Vec<Vec<ScalarValue>>> {
        let Some(batch) = &handle.params else {
            return Ok(vec![Vec::new()]);
        };
        if batch.num_rows() > self.max_query_parameter_rows {
            return Err(Error::ResourceExhausted(format!(
                "{} parameter rows are bound to the query; the limit is {} \
                 (max_query_parameter_rows)",
                batch.num_rows(),
                self.max_query_parameter_rows
            )));
        }
        crate::ipc::check_materialised(
            [batch],
            self.writer.config().max_request_bytes,
            "parameter values",
            "max_mutation_size_mb",
        )?;
        (0..batch.num_rows())
            .map(|row| {
                batch
                    .columns()
                    .iter()
                    .map(|column| {
                        ScalarValue::try_from_array(column, row).map_err(|err| {
                            Error::InvalidRequest(format!("cannot read parameter value: {err}"))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Encodes batches as Flight data on a task of their own, a few batches ahead;
    /// a query's `tracker` learns the rows and bytes sent and how the stream ended.
    pub(super) fn stream(
        &self,
        batches: SendableRecordBatchStream,
        mut tracker: Option<Tracker>,
    ) -> DoGetStream {
        let schema = batches.schema();
        let rows = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&rows);
        let source = batches
            .inspect_ok(move |batch| {
                counted.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            })
            .map_err(|err| FlightError::Tonic(Box::new(Status::from(Error::Query(err.into())))));
        let mut encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.max_flight_data_size)
            .build(source);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let span = tracing::debug_span!("flight.stream", messages = tracing::field::Empty);
        // Encoding is CPU work: it runs on the query runtime. It stops as soon as the
        // client is gone, even while the query has not produced its first batch.
        let encoding = async move {
            let mut messages = 0u64;
            loop {
                let item = tokio::select! {
                    biased;
                    () = sender.closed() => break,
                    item = encoded.next() => item,
                };
                let Some(item) = item else {
                    break;
                };
                let item = item.map_err(|err| match err {
                    FlightError::Tonic(status) => *status,
                    other => crate::error::status(tonic::Code::Internal, other.to_string()),
                });
                match (&item, tracker.as_mut()) {
                    (Ok(data), Some(tracker)) => tracker.sent(
                        rows.swap(0, Ordering::Relaxed),
                        (data.data_header.len() + data.data_body.len()) as u64,
                    ),
                    (Err(status), Some(_)) => {
                        if let Some(tracker) = tracker.take() {
                            tracker.finish(status.code(), Some(status.message().to_owned()));
                        }
                    }
                    (_, None) => {}
                }
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    break;
                }
                messages += 1;
            }
            if let Some(tracker) = tracker
                && !sender.is_closed()
            {
                tracker.finish(tonic::Code::Ok, None);
            }
            tracing::Span::current().record("messages", messages);
        };
        self.engine
            .executor()
            .spawn_detached(encoding.instrument(span));
        Box::pin(ReceiverStream::new(receiver))
    }

    /// One batch as a whole DoGet stream (metadata answers).
    pub(super) fn stream_batch(&self, batch: RecordBatch) -> DoGetStream {
        let schema = batch.schema();
        let batches = futures::stream::iter([Ok(batch)]);
        self.stream(
            Box::pin(RecordBatchStreamAdapter::new(schema, batches)),
            None,
        )
    }
}

/// `batches`, keeping `running` (the query's registration) until they are dropped.
fn holding(
    batches: SendableRecordBatchStream,
    running: Option<Running>,
) -> SendableRecordBatchStream {
    let schema = batches.schema();
    let kept = batches.map(move |batch| {
        let _registered = &running;
        batch
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, kept))
}
