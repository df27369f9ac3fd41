//! The Arrow Flight SQL service.
//!
//! Handlers are thin: they decode the command, call the query engine and stream the
//! result. Statement tickets and prepared-statement handles are [`StatementHandle`]s —
//! self-contained, so any replica serves them and nothing is kept per handle.

pub mod handle;
pub mod metadata;
pub mod session;

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionEndTransactionRequest, Any, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, EndTransaction, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage,
    SchemaAsIpc, Ticket, decode::FlightRecordBatchStream,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use quiver_query::params::coerce_values;
use quiver_query::{CATALOG_NAME, QueryEngine};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use self::handle::StatementHandle;
use self::metadata::{KeyFilter, SQL_INFO, XDBC_TYPE_INFO};
use crate::error::{Error, Result};
use crate::subscriptions::{self, Hub};
use crate::writes::{StatementKind, Writer, statement_kind};

/// The stream type of DoGet responses.
type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Batches encoded ahead of the client per stream.
const STREAM_BUFFER: usize = 2;

/// Flight SQL over the query engine.
#[derive(Debug, Clone)]
pub struct QuiverFlightSqlService {
    engine: Arc<QueryEngine>,
    writer: Arc<Writer>,
    subscriptions: Arc<Hub>,
    max_flight_data_size: usize,
}

impl QuiverFlightSqlService {
    /// A service answering from `writer`'s engine and writing through `writer`; no
    /// Flight message it sends exceeds `max_flight_data_size` bytes of Arrow data
    /// (bigger batches are split).
    pub fn new(writer: Arc<Writer>, subscriptions: Arc<Hub>, max_flight_data_size: usize) -> Self {
        Self {
            engine: Arc::clone(writer.engine()),
            writer,
            subscriptions,
            max_flight_data_size,
        }
    }

    /// Runs a data-changing statement at GetFlightInfo time (what ADBC's
    /// `cursor.execute` sends for DML and DDL) and describes an empty result whose
    /// `total_records` is the number of rows changed.
    async fn update_info(
        &self,
        handle: &StatementHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let changed = self
            .writer
            .execute_update(
                &handle.sql,
                bound_values(handle)?,
                handle.transaction_id.as_ref(),
            )
            .await?;
        Ok(FlightInfo::new()
            .try_with_schema(&Schema::empty())
            .map_err(|err| Status::internal(format!("cannot encode schema: {err}")))?
            .with_descriptor(descriptor)
            .with_total_records(i64::try_from(changed).unwrap_or(i64::MAX))
            .with_total_bytes(-1))
    }

    fn flight_info(
        &self,
        schema: &Schema,
        ticket: Bytes,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|err| Status::internal(format!("cannot encode schema: {err}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1))
    }

    /// Plans `handle`, checks its bound parameters and describes its result.
    async fn statement_info(
        &self,
        handle: StatementHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let query = self
            .engine
            .prepare(&handle.sql)
            .await
            .map_err(Error::from)?;
        for row in bound_rows(&handle)? {
            coerce_values(query.parameters(), row).map_err(Error::from)?;
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode()?,
        }
        .as_any()
        .encode_to_vec();
        self.flight_info(&query.schema(), ticket.into(), descriptor)
    }

    /// Plans and runs the statement of `handle` once per bound parameter row.
    async fn run_statement(&self, handle: StatementHandle) -> Result<SendableRecordBatchStream> {
        let query = self.engine.prepare(&handle.sql).await?;
        let rows = bound_rows(&handle)?;
        if rows.len() == 1 {
            let params = rows.into_iter().next().expect("one row");
            return Ok(self.engine.execute(&query, params).await?);
        }
        // Several parameter rows: the results of each execution, one after another.
        let schema = query.schema();
        let engine = Arc::clone(&self.engine);
        let streams = futures::stream::iter(rows)
            .then(move |params| {
                let engine = Arc::clone(&engine);
                let query = query.clone();
                async move {
                    engine
                        .execute(&query, params)
                        .await
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
                }
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, streams)))
    }

    /// Encodes batches as Flight data on a task of their own, a few batches ahead.
    fn stream(&self, batches: SendableRecordBatchStream) -> DoGetStream {
        let schema = batches.schema();
        let source = batches
            .map_err(|err| FlightError::Tonic(Box::new(Status::from(Error::Query(err.into())))));
        let mut encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(self.max_flight_data_size)
            .build(source);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let span = tracing::debug_span!("flight.stream", messages = tracing::field::Empty);
        tokio::spawn(
            async move {
                let mut messages = 0u64;
                while let Some(item) = encoded.next().await {
                    let item = item.map_err(|err| match err {
                        FlightError::Tonic(status) => *status,
                        other => Status::internal(other.to_string()),
                    });
                    let failed = item.is_err();
                    if sender.send(item).await.is_err() || failed {
                        break;
                    }
                    messages += 1;
                }
                tracing::Span::current().record("messages", messages);
            }
            .instrument(span),
        );
        Box::pin(ReceiverStream::new(receiver))
    }

    fn stream_batch(&self, batch: RecordBatch) -> DoGetStream {
        let schema = batch.schema();
        let batches = futures::stream::iter([Ok(batch)]);
        self.stream(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// The foreign keys matching `filter`, as the one batch of a metadata stream.
    fn foreign_keys(
        &self,
        catalog: Option<&str>,
        filter: KeyFilter<'_>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = metadata::foreign_keys(CATALOG_NAME, &self.engine.catalog(), catalog, filter)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    fn default_schema(&self) -> &'static str {
        self.engine.store().default_schema()
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

/// Reads a DoPut stream to its end: its schema and batches.
async fn read_put_stream(
    request: Request<PeekableFlightDataStream>,
    what: &str,
) -> Result<(Option<arrow::datatypes::SchemaRef>, Vec<RecordBatch>), Status> {
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

/// The parameter values bound to `handle`, one list per row (one empty list when none
/// are bound).
fn bound_rows(handle: &StatementHandle) -> Result<Vec<Vec<ScalarValue>>> {
    let Some(batch) = &handle.params else {
        return Ok(vec![Vec::new()]);
    };
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

fn schema_bytes(schema: &Schema) -> Result<Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into()?;
    Ok(bytes)
}

fn decode_handle(bytes: &[u8]) -> Result<StatementHandle, Status> {
    StatementHandle::decode(bytes).map_err(Status::from)
}

#[tonic::async_trait]
impl FlightSqlService for QuiverFlightSqlService {
    type FlightService = QuiverFlightSqlService;

    #[tracing::instrument(name = "flight.get_flight_info.statement", skip_all, fields(db.query.text = %query.query))]
    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.writer
            .check_transaction(query.transaction_id.as_ref())?;
        let handle = StatementHandle::new(query.query).in_transaction(query.transaction_id);
        let info = if statement_kind(&handle.sql) == StatementKind::Query {
            self.statement_info(handle, request.into_inner()).await?
        } else {
            self.update_info(&handle, request.into_inner()).await?
        };
        Ok(Response::new(info))
    }

    #[tracing::instrument(name = "flight.get_flight_info.prepared_statement", skip_all)]
    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = decode_handle(&query.prepared_statement_handle)?;
        let info = if statement_kind(&handle.sql) == StatementKind::Query {
            self.statement_info(handle, request.into_inner()).await?
        } else {
            self.update_info(&handle, request.into_inner()).await?
        };
        Ok(Response::new(info))
    }

    #[tracing::instrument(name = "flight.do_get.statement", skip_all, fields(db.query.text = tracing::field::Empty))]
    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = decode_handle(&ticket.statement_handle)?;
        tracing::Span::current().record("db.query.text", handle.sql.as_str());
        let batches = self.run_statement(handle).await?;
        Ok(Response::new(self.stream(batches)))
    }

    #[tracing::instrument(name = "flight.do_get.prepared_statement", skip_all)]
    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = decode_handle(&query.prepared_statement_handle)?;
        let batches = self.run_statement(handle).await?;
        Ok(Response::new(self.stream(batches)))
    }

    #[tracing::instrument(name = "flight.create_prepared_statement", skip_all, fields(db.query.text = %query.query))]
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.writer
            .check_transaction(query.transaction_id.as_ref())?;
        let handle = StatementHandle::new(query.query).in_transaction(query.transaction_id);
        if statement_kind(&handle.sql) != StatementKind::Query {
            // Run on the store as written; nothing to plan. The parameters take their
            // types from the bound values.
            return Ok(ActionCreatePreparedStatementResult {
                prepared_statement_handle: handle.encode()?,
                dataset_schema: schema_bytes(&Schema::empty())?,
                parameter_schema: schema_bytes(&Schema::empty())?,
            });
        }
        let prepared = self
            .engine
            .prepare(&handle.sql)
            .await
            .map_err(Error::from)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode()?,
            dataset_schema: schema_bytes(&prepared.schema())?,
            parameter_schema: schema_bytes(&prepared.parameter_schema())?,
        })
    }

    #[tracing::instrument(name = "flight.bind_parameters", skip_all)]
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = decode_handle(&query.prepared_statement_handle)?;
        // Read the whole stream, always: the client may send several batches.
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(|err| Status::invalid_argument(format!("cannot read parameter batches: {err}")))?;
        handle.params = match batches.first() {
            None => None,
            Some(first) => Some(
                arrow::compute::concat_batches(&first.schema(), &batches).map_err(Error::from)?,
            ),
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()?),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: there is nothing to release, but reject garbage.
        decode_handle(&query.prepared_statement_handle)?;
        Ok(())
    }

    #[tracing::instrument(name = "flight.statement_update", skip_all, fields(db.query.text = %command.query, rows = tracing::field::Empty))]
    async fn do_put_statement_update(
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
        let changed = self
            .writer
            .execute_update(
                &command.query,
                vec![Vec::new()],
                command.transaction_id.as_ref(),
            )
            .await?;
        tracing::Span::current().record("rows", changed);
        Ok(i64::try_from(changed).unwrap_or(i64::MAX))
    }

    #[tracing::instrument(name = "flight.prepared_statement_update", skip_all, fields(rows = tracing::field::Empty))]
    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let mut handle = decode_handle(&command.prepared_statement_handle)?;
        let (_, batches) = read_put_stream(request, "parameter batches").await?;
        if let Some(first) = batches.first() {
            handle.params = Some(
                arrow::compute::concat_batches(&first.schema(), &batches).map_err(Error::from)?,
            );
        }
        let changed = self
            .writer
            .execute_update(
                &handle.sql,
                bound_values(&handle)?,
                handle.transaction_id.as_ref(),
            )
            .await?;
        tracing::Span::current().record("rows", changed);
        Ok(i64::try_from(changed).unwrap_or(i64::MAX))
    }

    #[tracing::instrument(name = "flight.ingest", skip_all, fields(table = %command.table, rows = tracing::field::Empty))]
    async fn do_put_statement_ingest(
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

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Ok(ActionBeginTransactionResult {
            transaction_id: self.writer.begin(),
        })
    }

    async fn do_action_end_transaction(
        &self,
        query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        let commit = match query.action() {
            EndTransaction::Commit => true,
            EndTransaction::Rollback => false,
            EndTransaction::Unspecified => {
                return Err(Status::invalid_argument(
                    "EndTransaction needs an action: commit or rollback",
                ));
            }
        };
        self.writer.end(&query.transaction_id, commit).await?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder: GetCatalogsBuilder = query.into_builder();
        builder.append(CATALOG_NAME);
        let batch = builder.build().map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder: GetDbSchemasBuilder = query.into_builder();
        for schema in &self.engine.catalog().schemas {
            builder.append(CATALOG_NAME, &schema.name);
        }
        let batch = builder.build().map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder: GetTablesBuilder = query.into_builder();
        for table in self.engine.catalog().tables() {
            let schema = metadata::table_schema(CATALOG_NAME, table);
            builder
                .append(
                    CATALOG_NAME,
                    &table.schema,
                    &table.name,
                    table.kind.as_str(),
                    &schema,
                )
                .map_err(Error::from)?;
        }
        let batch = builder.build().map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        let batch = builder.build().map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query.into_builder(&SQL_INFO).build().map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&XDBC_TYPE_INFO).schema();
        let info = self.flight_info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&XDBC_TYPE_INFO)
            .build()
            .map_err(Error::from)?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = self.flight_info(
            &metadata::primary_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = metadata::primary_keys(
            CATALOG_NAME,
            &self.engine.catalog(),
            query.catalog.as_deref(),
            query.db_schema.as_deref(),
            &query.table,
        )?;
        Ok(Response::new(self.stream_batch(batch)))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = self.flight_info(
            &metadata::foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let filter = KeyFilter {
            fk: Some((query.db_schema.as_deref(), &query.table)),
            pk: None,
        };
        self.foreign_keys(query.catalog.as_deref(), filter)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = self.flight_info(
            &metadata::foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let filter = KeyFilter {
            fk: None,
            pk: Some((query.db_schema.as_deref(), &query.table)),
        };
        self.foreign_keys(query.catalog.as_deref(), filter)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = self.flight_info(
            &metadata::foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_cross_reference(
        &self,
        query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let catalog_filter = query.pk_catalog.as_deref().or(query.fk_catalog.as_deref());
        let filter = KeyFilter {
            fk: Some((query.fk_db_schema.as_deref(), &query.fk_table)),
            pk: Some((query.pk_db_schema.as_deref(), &query.pk_table)),
        };
        self.foreign_keys(catalog_filter, filter)
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            session::GET_SESSION_OPTIONS => {
                session::current_options(CATALOG_NAME, self.default_schema()).encode_to_vec()
            }
            session::SET_SESSION_OPTIONS => {
                let set =
                    session::SetSessionOptionsRequest::decode(action.body).map_err(|err| {
                        Status::invalid_argument(format!("invalid SetSessionOptionsRequest: {err}"))
                    })?;
                session::set_options(&set, CATALOG_NAME, self.default_schema()).encode_to_vec()
            }
            session::CLOSE_SESSION => session::CloseSessionResult { status: 1 }.encode_to_vec(),
            subscriptions::SUBSCRIBE_ACTION => {
                subscriptions::subscribe_ticket(&self.subscriptions, &action.body)?.to_vec()
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action type '{other}'"
                )));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        let describe = |name: &str, description: &str| {
            Ok(ActionType {
                r#type: name.to_owned(),
                description: description.to_owned(),
            })
        };
        Some(vec![
            describe(
                session::SET_SESSION_OPTIONS,
                "Set session options (catalog, schema).",
            ),
            describe(
                session::GET_SESSION_OPTIONS,
                "Get session options (catalog, schema).",
            ),
            describe(session::CLOSE_SESSION, "Close the session."),
            describe(
                subscriptions::SUBSCRIBE_ACTION,
                "Follow a table's changes: a JSON body {\"tables\": [..], \"filter\", \
                 \"from_version\" | \"latest\" | \"snapshot\", \"columns\"} answers with a ticket \
                 for DoGet.",
            ),
        ])
    }

    async fn do_exchange_fallback(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<Self as FlightService>::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if message.type_url == subscriptions::SUBSCRIBE_TICKET_TYPE {
            let stream = subscriptions::subscribe(&self.subscriptions, &message.value).await?;
            return Ok(Response::new(Box::pin(ReceiverStream::new(stream))));
        }
        Err(Status::invalid_argument(format!(
            "unknown ticket type {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
