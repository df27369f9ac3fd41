//! Writes through Flight SQL: statements run at `GetFlightInfo` (ADBC's
//! `cursor.execute` of DML and DDL), `DoPut` updates, bound parameters, bulk ingest and
//! transactions — all through the shared write path.

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementUpdate, DoPutPreparedStatementResult, EndTransaction,
};
use arrow_flight::{FlightDescriptor, FlightInfo};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Status};

use super::handle::StatementHandle;
use super::{QuiverFlightSqlService, decode_handle};
use crate::error::Result;

impl QuiverFlightSqlService {
    /// Runs a data-changing statement at GetFlightInfo time (what ADBC's
    /// `cursor.execute` sends for DML and DDL) and describes an empty result whose
    /// `total_records` is the number of rows changed.
    pub(super) async fn update_info(
        &self,
        handle: &StatementHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let changed = self.run_update(handle).await?;
        Ok(FlightInfo::new()
            .try_with_schema(&Schema::empty())
            .map_err(|err| Status::internal(format!("cannot encode schema: {err}")))?
            .with_descriptor(descriptor)
            .with_total_records(changed)
            .with_total_bytes(-1))
    }

    /// Runs the statement of `handle` once per bound parameter row; the rows changed.
    async fn run_update(&self, handle: &StatementHandle) -> Result<i64> {
        let changed = self
            .writer
            .execute_update(
                &handle.sql,
                bound_values(handle)?,
                handle.transaction_id.as_ref(),
            )
            .await?;
        tracing::Span::current().record("rows", changed);
        Ok(i64::try_from(changed).unwrap_or(i64::MAX))
    }

    /// Binds the parameter batches of a `DoPut` to a prepared statement: the answer is
    /// a new handle carrying them.
    pub(super) async fn bind_parameters(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = decode_handle(&query.prepared_statement_handle)?;
        let (_, batches) = read_put_stream(request, "parameter batches").await?;
        handle.params = concat(batches)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()?),
        })
    }

    /// `CommandStatementUpdate`: the statement as written, no parameters.
    pub(super) async fn statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        // Read the stream to its end even though a plain update carries no data (only
        // the descriptor, which is not an Arrow message).
        let mut stream = request.into_inner();
        while let Some(message) = stream.next().await {
            message?;
        }
        let handle = StatementHandle::new(command.query).in_transaction(command.transaction_id);
        Ok(self.run_update(&handle).await?)
    }

    /// `CommandPreparedStatementUpdate`: the prepared statement once per parameter row
    /// sent with it (`executemany`).
    pub(super) async fn prepared_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let mut handle = decode_handle(&command.prepared_statement_handle)?;
        let (_, batches) = read_put_stream(request, "parameter batches").await?;
        if let Some(params) = concat(batches)? {
            handle.params = Some(params);
        }
        Ok(self.run_update(&handle).await?)
    }

    /// `CommandStatementIngest`: the batches of the stream into a table.
    pub(super) async fn ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (schema, batches) = read_put_stream(request, "ingest data").await?;
        let schema = schema
            .or_else(|| batches.first().map(|b| b.schema()))
            .ok_or_else(|| Status::invalid_argument("ingest stream carries no schema"))?;
        let written = self.writer.ingest(&command, &schema, batches).await?;
        tracing::Span::current().record("rows", written);
        Ok(i64::try_from(written).unwrap_or(i64::MAX))
    }

    /// Ends a Flight SQL transaction as `action` says.
    pub(super) async fn end_transaction(
        &self,
        id: &Bytes,
        action: EndTransaction,
    ) -> Result<(), Status> {
        let commit = match action {
            EndTransaction::Commit => true,
            EndTransaction::Rollback => false,
            EndTransaction::Unspecified => {
                return Err(Status::invalid_argument(
                    "EndTransaction needs an action: commit or rollback",
                ));
            }
        };
        self.writer.end(id, commit).await?;
        Ok(())
    }
}

/// The parameter rows bound to `handle` as store values (one empty row when none are
/// bound).
fn bound_values(handle: &StatementHandle) -> Result<Vec<Vec<quiver_storage::Value>>> {
    match &handle.params {
        None => Ok(vec![Vec::new()]),
        Some(batch) => Ok(quiver_storage::value::rows_of_batch(batch)?),
    }
}

/// The batches of a DoPut as one batch (`None` when there were none).
fn concat(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match batches.first() {
        None => Ok(None),
        Some(first) => Ok(Some(arrow::compute::concat_batches(
            &first.schema(),
            &batches,
        )?)),
    }
}

/// Reads a DoPut stream to its end: its schema and batches.
async fn read_put_stream(
    request: Request<PeekableFlightDataStream>,
    what: &str,
) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status> {
    // A descriptor-only message (no Arrow header) carries no data: skip it.
    let messages = request
        .into_inner()
        .try_filter(|message| std::future::ready(!message.data_header.is_empty()))
        .map_err(FlightError::from);
    let mut stream = FlightRecordBatchStream::new_from_flight_data(messages);
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(
            batch.map_err(|err| Status::invalid_argument(format!("cannot read {what}: {err}")))?,
        );
    }
    Ok((stream.schema().cloned(), batches))
}
