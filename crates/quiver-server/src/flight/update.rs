//! Writes through Flight SQL: statements run at `GetFlightInfo` (ADBC's
//! `cursor.execute` of DML and DDL), `DoPut` updates, bound parameters, bulk ingest and
//! transactions — all through the shared write path.

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
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
use crate::auth::{self, Principal};
use crate::connection::{ConnectionId, connection_of};
use crate::error::{Error, Result};
use crate::writes::{StatementKind, statement_kind};

impl QuiverFlightSqlService {
    /// Runs a data-changing statement at GetFlightInfo time (what ADBC's
    /// `cursor.execute` sends for DML and DDL) and describes an empty result whose
    /// `total_records` is the number of rows changed.
    pub(super) async fn update_info(
        &self,
        handle: &StatementHandle,
        descriptor: FlightDescriptor,
        owner: Option<ConnectionId>,
        principal: &Principal,
    ) -> Result<FlightInfo, Status> {
        let changed = self.run_update(handle, owner, principal).await?;
        Ok(FlightInfo::new()
            .try_with_schema(&Schema::empty())
            .map_err(|err| {
                crate::error::status(
                    tonic::Code::Internal,
                    format!("cannot encode schema: {err}"),
                )
            })?
            .with_descriptor(descriptor)
            .with_total_records(changed)
            .with_total_bytes(-1))
    }

    /// Runs the statement of `handle` once per bound parameter row, when `principal`
    /// may (every update goes through here); the rows changed.
    async fn run_update(
        &self,
        handle: &StatementHandle,
        owner: Option<ConnectionId>,
        principal: &Principal,
    ) -> Result<i64> {
        super::require_for(principal, &handle.sql, self.engine.store().dialect())?;
        let max_rows = self.writer.config().max_rows;
        if handle
            .params
            .as_ref()
            .is_some_and(|p| p.num_rows() > max_rows)
        {
            return Err(Error::ResourceExhausted(format!(
                "more than {max_rows} parameter rows are bound (max_mutation_rows)"
            )));
        }
        if let Some(params) = &handle.params {
            // The handle comes back from the client: bounded again where it is used.
            crate::ipc::check_materialised(
                [params],
                self.writer.config().max_request_bytes,
                "parameter values",
                "max_mutation_size_mb",
            )?;
        }
        let changed = self
            .writer
            .execute_update(
                &handle.sql,
                bound_values(handle)?,
                handle.transaction_id.as_ref(),
                owner,
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
        let (max_rows, limit) =
            if statement_kind(&handle.sql, self.engine.store().dialect()) == StatementKind::Query {
                (self.max_query_parameter_rows, "max_query_parameter_rows")
            } else {
                (self.writer.config().max_rows, "max_mutation_rows")
            };
        let max_bytes = self.writer.config().max_request_bytes;
        let batches =
            read_put_stream(request, "parameter batches", (max_rows, limit), max_bytes).await?;
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
        let owner = connection_of(&request);
        let principal = auth::principal_of(&request)?.clone();
        let mut stream = request.into_inner();
        while let Some(message) = stream.next().await {
            message.map_err(put_status)?;
        }
        let handle = StatementHandle::new(command.query).in_transaction(command.transaction_id);
        Ok(self.run_update(&handle, owner, &principal).await?)
    }

    /// `CommandPreparedStatementUpdate`: the prepared statement once per parameter row
    /// sent with it (`executemany`).
    pub(super) async fn prepared_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let mut handle = decode_handle(&command.prepared_statement_handle)?;
        let owner = connection_of(&request);
        let principal = auth::principal_of(&request)?.clone();
        super::require_for(&principal, &handle.sql, self.engine.store().dialect())?;
        let max_rows = self.writer.config().max_rows;
        let max_bytes = self.writer.config().max_request_bytes;
        let batches = read_put_stream(
            request,
            "parameter batches",
            (max_rows, "max_mutation_rows"),
            max_bytes,
        )
        .await?;
        if let Some(params) = concat(batches)? {
            handle.params = Some(params);
        }
        Ok(self.run_update(&handle, owner, &principal).await?)
    }

    /// `CommandStatementIngest`: the batches of the stream into a table.
    pub(super) async fn ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let owner = connection_of(&request);
        let mut stream = put_batches(request, self.writer.config().max_request_bytes);
        // The schema comes with the first message; the batches follow as they arrive.
        let first = stream
            .next()
            .await
            .transpose()
            .map_err(|err| put_error(err, "ingest data"))?;
        let schema = stream
            .schema()
            .cloned()
            .or_else(|| first.as_ref().map(|b| b.schema()))
            .ok_or_else(|| {
                Error::InvalidRequest("the ingest stream carries no schema".to_owned())
            })?;
        let rest = stream.map(|batch| batch.map_err(|err| put_error(err, "ingest data")));
        let batches = futures::stream::iter(first.map(Ok)).chain(rest);
        let written = self
            .writer
            .ingest(&command, &schema, batches, owner)
            .await?;
        tracing::Span::current().record("rows", written);
        Ok(i64::try_from(written).unwrap_or(i64::MAX))
    }

    /// Ends a Flight SQL transaction as `action` says.
    pub(super) async fn end_transaction(
        &self,
        id: &Bytes,
        action: EndTransaction,
        owner: Option<ConnectionId>,
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
        self.writer.end(id, commit, owner).await?;
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

/// The Arrow batches of a DoPut stream, decoded one message at a time; messages with
/// no Arrow header (the descriptor alone) are skipped.
///
/// Each message's metadata is checked against its body before Arrow decodes it, and a
/// batch whose `Utf8View` columns name more than `max_view_bytes` is refused before
/// Arrow checks every viewed value (see [`crate::ipc::string_view_bytes`]).
fn put_batches(
    request: Request<PeekableFlightDataStream>,
    max_view_bytes: usize,
) -> FlightRecordBatchStream {
    let refuse =
        |code, message: String| FlightError::Tonic(Box::new(crate::error::status(code, message)));
    let mut schema: Option<arrow::datatypes::Schema> = None;
    let messages = request
        .into_inner()
        .try_filter(|message| std::future::ready(!message.data_header.is_empty()))
        .map_err(FlightError::from)
        .and_then(move |message| {
            let checked = crate::ipc::check_message(&message.data_header, message.data_body.len())
                .map_err(|problem| {
                    refuse(
                        tonic::Code::InvalidArgument,
                        format!("an Arrow message that cannot be read: {problem}"),
                    )
                })
                .and_then(|()| {
                    if schema.is_none() {
                        schema = crate::ipc::flight_schema(&message).map_err(|problem| {
                            refuse(
                                tonic::Code::InvalidArgument,
                                format!("an Arrow message that cannot be read: {problem}"),
                            )
                        })?;
                    }
                    let Some(schema) = &schema else {
                        return Ok(message);
                    };
                    let viewed = crate::ipc::string_view_bytes(
                        schema,
                        &message.data_header,
                        &message.data_body,
                    )
                    .map_err(|problem| {
                        refuse(
                            tonic::Code::InvalidArgument,
                            format!("an Arrow message that cannot be read: {problem}"),
                        )
                    })?;
                    if viewed > max_view_bytes {
                        return Err(refuse(
                            tonic::Code::ResourceExhausted,
                            format!(
                                "a batch's Utf8View columns name {viewed} bytes; at most \
                                 {max_view_bytes} (max_mutation_size_mb)"
                            ),
                        ));
                    }
                    Ok(message)
                });
            std::future::ready(checked)
        });
    FlightRecordBatchStream::new_from_flight_data(messages)
}

/// A DoPut stream's failure as the client's error: tonic's codes for an oversize
/// (`OUT_OF_RANGE`) or undecodable (`INTERNAL`) message become the documented ones.
fn put_status(status: Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange => {
            crate::error::status(tonic::Code::ResourceExhausted, status.message())
        }
        tonic::Code::Internal if status.message().starts_with("failed to decode") => {
            crate::error::status(tonic::Code::InvalidArgument, status.message())
        }
        _ => status,
    }
}

fn put_error(err: FlightError, what: &str) -> Error {
    match err {
        FlightError::Tonic(status) => {
            let status = put_status(*status);
            match status.code() {
                tonic::Code::ResourceExhausted => {
                    Error::ResourceExhausted(status.message().to_owned())
                }
                tonic::Code::Cancelled | tonic::Code::Unavailable => {
                    Error::Unavailable(format!("the {what} stream ended: {}", status.message()))
                }
                _ => Error::InvalidRequest(format!("cannot read {what}: {}", status.message())),
            }
        }
        other => Error::InvalidRequest(format!("cannot read {what}: {other}")),
    }
}

/// Reads a DoPut stream to its end: its batches, refusing more than `max_rows` rows in
/// all before another batch is kept.
async fn read_put_stream(
    request: Request<PeekableFlightDataStream>,
    what: &str,
    (max_rows, limit): (usize, &str),
    max_bytes: usize,
) -> Result<Vec<RecordBatch>> {
    let mut stream = put_batches(request, max_bytes);
    let mut batches = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|err| put_error(err, what))?;
        rows = rows.saturating_add(batch.num_rows());
        if rows > max_rows {
            return Err(Error::ResourceExhausted(format!(
                "the {what} hold more than {max_rows} rows ({limit})"
            )));
        }
        // Held until the statement runs: bounded in bytes as well as rows.
        bytes = bytes.saturating_add(crate::ipc::materialised_bytes(&batch));
        if bytes > max_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the {what} take more than {max_bytes} bytes once read (max_mutation_size_mb)"
            )));
        }
        batches.push(batch);
    }
    Ok(batches)
}
