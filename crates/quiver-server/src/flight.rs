//! The Arrow Flight SQL service.
//!
//! This file is the trait and its dispatch, nothing else: every handler is a line or
//! two calling into the module that does the work. Statement tickets and
//! prepared-statement handles are [`StatementHandle`]s — self-contained, so any
//! replica serves them and nothing is kept per handle.
//!
//! # Layout
//! - `query`: planning, running and streaming queries.
//! - `update`: DML, DDL, bound parameters, ingest and transactions.
//! - [`metadata`]: catalog metadata and SqlInfo in Flight SQL's shapes.
//! - `actions`: session options, cancellation and subscriptions as Flight actions.
//! - `cancel`: the queries running here, for `CancelFlightInfo`.
//! - [`handle`]: the stateless statement handle.
//! - [`session`]: the session-option messages ADBC sends.

mod actions;
mod cancel;
pub mod handle;
pub mod metadata;
mod query;
pub mod session;
mod update;

use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult, ActionCancelQueryRequest,
    ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    ActionEndTransactionRequest, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TableExistsOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelStatus, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use futures::Stream;
use prost::Message;
use quiver_query::system::Viewer;
use quiver_query::{CATALOG_NAME, QueryEngine};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use self::cancel::Queries;
use self::handle::StatementHandle;
use self::metadata::{KeyFilter, SQL_INFO};
use crate::auth::{self, Auth, Role};
use crate::connection::connection_of;
use crate::error::{Error, Result};
use crate::history::QueryLog;
use crate::subscriptions::{self, Hub};
use crate::writes::{StatementKind, Writer, statement_kind};

/// Longest the handshake waits for the client's first message.
const HANDSHAKE_READ: std::time::Duration = std::time::Duration::from_secs(2);

/// The stream type of DoGet responses.
type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Flight SQL over the query engine.
#[derive(Debug, Clone)]
pub struct QuiverFlightSqlService {
    engine: Arc<QueryEngine>,
    writer: Arc<Writer>,
    subscriptions: Arc<Hub>,
    queries: Arc<Queries>,
    auth: Arc<Auth>,
    history: Arc<QueryLog>,
    admin: Arc<crate::admin::Admin>,
    max_flight_data_size: usize,
    max_query_parameter_rows: usize,
}

impl QuiverFlightSqlService {
    /// A service answering from `writer`'s engine and writing through `writer`; no
    /// Flight message it sends exceeds `max_flight_data_size` bytes of Arrow data
    /// (bigger batches are split), and no prepared query runs for more than
    /// `max_query_parameter_rows` bound rows.
    pub fn new(
        writer: Arc<Writer>,
        subscriptions: Arc<Hub>,
        auth: Arc<Auth>,
        history: Arc<QueryLog>,
        admin: Arc<crate::admin::Admin>,
        max_flight_data_size: usize,
        max_query_parameter_rows: usize,
    ) -> Self {
        Self {
            engine: Arc::clone(writer.engine()),
            writer,
            subscriptions,
            queries: Arc::new(Queries::default()),
            auth,
            history,
            admin,
            max_flight_data_size,
            max_query_parameter_rows,
        }
    }

    /// Describes the result of a command answered in one batch: its schema, and a
    /// ticket that is the command itself.
    fn describe(
        &self,
        schema: &Schema,
        command: impl ProstMessageExt,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = command.as_any().encode_to_vec().into();
        let info = self.flight_info(schema, ticket, request.into_inner())?;
        Ok(Response::new(info))
    }

    /// Fails unless the request's principal may run `sql` here.
    fn require_statement<T>(&self, request: &Request<T>, sql: &str) -> Result<(), Status> {
        let principal = auth::principal_of(request)?;
        Ok(require_for(principal, sql, self.engine.store().dialect())?)
    }

    /// Describes a statement's result: planned for a query, run for an update.
    async fn statement(
        &self,
        handle: StatementHandle,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // Size first: everything after reads the text.
        self.engine
            .limits()
            .check("statement", &handle.sql)
            .map_err(Error::from)?;
        self.require_statement(&request, &handle.sql)?;
        let owner = connection_of(&request);
        self.writer
            .check_transaction(handle.transaction_id.as_ref(), owner)?;
        crate::writes::guard::check_query(&handle.sql)?;
        let info =
            if statement_kind(&handle.sql, self.engine.store().dialect()) == StatementKind::Query {
                let sql = handle.sql.clone();
                match self.statement_info(handle, request.get_ref().clone()).await {
                    Ok(info) => info,
                    Err(status) => {
                        self.record_failure(&request, &sql, &status);
                        return Err(status);
                    }
                }
            } else {
                let principal = auth::principal_of(&request)?.clone();
                self.update_info(&handle, request.into_inner(), owner, &principal)
                    .await?
            };
        Ok(Response::new(info))
    }

    /// Records in the query history a query that failed before it ran (planning).
    fn record_failure<T>(&self, request: &Request<T>, sql: &str, status: &Status) {
        let (principal, client) = who(request);
        self.history
            .start("flight", sql, principal, client)
            .finish(status.code(), Some(status.message().to_owned()));
    }

    /// Runs a statement handle for the connection `owner` and streams its result.
    async fn run<T>(
        &self,
        handle: StatementHandle,
        request: &Request<T>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let owner = connection_of(request);
        // One of the principal's query slots, held until the stream ends.
        crate::auth::layer::hold_query(request).await?;
        let principal = auth::principal_of(request)?;
        let viewer = Arc::new(Viewer {
            principal: principal.to_string(),
            sees_all: principal.role >= auth::Role::Admin,
        });
        let (principal, client) = who(request);
        let mut tracker = self.history.start("flight", &handle.sql, principal, client);
        match self
            .run_statement(handle, owner, viewer, &mut tracker)
            .await
        {
            Ok(batches) => Ok(Response::new(self.stream(batches, Some(tracker)))),
            Err(err) => {
                tracker.finish(crate::error::code_of(&err), Some(err.to_string()));
                Err(err.into())
            }
        }
    }

    /// One metadata batch as the whole answer.
    fn answer(
        &self,
        batch: Result<arrow::array::RecordBatch>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(self.stream_batch(batch?)))
    }
}

/// The principal and client address of a request, as the query history names them.
fn who<T>(request: &Request<T>) -> (String, String) {
    let principal = auth::principal_of(request)
        .map(ToString::to_string)
        .unwrap_or_default();
    (
        principal,
        crate::connection::client_address(request.extensions()),
    )
}

fn schema_bytes(schema: &Schema) -> Result<Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into()?;
    Ok(bytes)
}

/// Fails unless `principal` may run `sql` on a store of `dialect`: queries need
/// `read`, DML `write`, DDL `admin`. Checked where a statement runs, not only where a
/// handle is made: handles come back from clients.
pub(crate) fn require_for(
    principal: &auth::Principal,
    sql: &str,
    dialect: quiver_storage::Dialect,
) -> Result<()> {
    let (role, what) = match statement_kind(sql, dialect) {
        StatementKind::Query => (Role::Read, "run queries"),
        StatementKind::Update => (Role::Write, "change rows"),
        StatementKind::Ddl => (Role::Admin, "change the schema (DDL)"),
    };
    principal.require(role, what)
}

fn decode_handle(bytes: &[u8]) -> Result<StatementHandle, Status> {
    StatementHandle::decode(bytes).map_err(Status::from)
}

#[tonic::async_trait]
impl FlightSqlService for QuiverFlightSqlService {
    type FlightService = QuiverFlightSqlService;

    /// Basic credentials (`authorization: Basic …`, padded or not) answered with
    /// `authorization: Bearer <token>` in the response headers, which clients send on
    /// every call after; a bearer token is checked and handed back.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let answer = |payload: Bytes| {
            let output = futures::stream::iter([Ok(HandshakeResponse {
                protocol_version: 0,
                payload,
            })]);
            Response::new(Box::pin(output) as Pin<Box<dyn Stream<Item = _> + Send>>)
        };
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let remote = request.remote_addr().or_else(|| {
            request
                .extensions()
                .get::<crate::connection::ConnectInfo>()
                .and_then(|i| i.remote)
        });
        // Clients send their credentials in the headers and close their side, or send
        // one message first; what they send must at least decode. One that sends
        // nothing and keeps its side open is answered after a while all the same.
        let mut messages = request.into_inner();
        if let Ok(Err(status)) = tokio::time::timeout(HANDSHAKE_READ, messages.message()).await {
            return Err(crate::error::status(
                tonic::Code::InvalidArgument,
                format!(
                    "the handshake message does not decode: {}",
                    status.message()
                ),
            ));
        }
        if !self.auth.enabled() {
            return Ok(answer(Bytes::new()));
        }
        let (principal, token) = match self
            .auth
            .handshake(authorization.as_deref(), remote.map(|a| a.ip()))
            .await
        {
            Ok(done) => done,
            Err(err) => {
                tracing::info!(client = ?remote, error = %err, "login refused");
                return Err(crate::auth::layer::refusal(err));
            }
        };
        tracing::info!(%principal, client = ?remote, "logged in");
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Internal("an issued token is not a header value".to_owned()))?;
        let mut response = answer(Bytes::from(token));
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    #[tracing::instrument(name = "flight.get_flight_info.statement", skip_all, fields(db.query.text = %crate::telemetry::shown_sql(&query.query), rows = tracing::field::Empty))]
    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = StatementHandle::new(query.query).in_transaction(query.transaction_id);
        self.statement(handle, request).await
    }

    #[tracing::instrument(name = "flight.get_flight_info.prepared_statement", skip_all, fields(rows = tracing::field::Empty))]
    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = decode_handle(&query.prepared_statement_handle)?;
        self.statement(handle, request).await
    }

    #[tracing::instrument(name = "flight.do_get.statement", skip_all, fields(db.query.text = tracing::field::Empty))]
    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = decode_handle(&ticket.statement_handle)?;
        tracing::Span::current().record("db.query.text", crate::telemetry::shown_sql(&handle.sql));
        self.require_statement(&request, &handle.sql)?;
        self.run(handle, &request).await
    }

    #[tracing::instrument(name = "flight.do_get.prepared_statement", skip_all)]
    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = decode_handle(&query.prepared_statement_handle)?;
        self.require_statement(&request, &handle.sql)?;
        self.run(handle, &request).await
    }

    #[tracing::instrument(name = "flight.create_prepared_statement", skip_all, fields(db.query.text = %crate::telemetry::shown_sql(&query.query)))]
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.writer
            .check_transaction(query.transaction_id.as_ref(), connection_of(&request))?;
        let handle = StatementHandle::new(query.query).in_transaction(query.transaction_id);
        self.engine
            .limits()
            .check("statement", &handle.sql)
            .map_err(Error::from)?;
        self.require_statement(&request, &handle.sql)?;
        crate::writes::guard::check_query(&handle.sql)?;
        let (dataset, parameters) =
            if statement_kind(&handle.sql, self.engine.store().dialect()) == StatementKind::Query {
                let prepared = match self.engine.prepare(&handle.sql).await {
                    Ok(prepared) => prepared,
                    Err(err) => {
                        let status = Status::from(Error::from(err));
                        self.record_failure(&request, &handle.sql, &status);
                        return Err(status);
                    }
                };
                (prepared.schema(), prepared.parameter_schema())
            } else {
                // Run on the store as written; nothing to plan. The parameters take their
                // types from the bound values.
                let empty = Arc::new(Schema::empty());
                (Arc::clone(&empty), empty)
            };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode()?,
            dataset_schema: schema_bytes(&dataset)?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    #[tracing::instrument(name = "flight.bind_parameters", skip_all)]
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.bind_parameters(query, request).await
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

    #[tracing::instrument(name = "flight.statement_update", skip_all, fields(db.query.text = %crate::telemetry::shown_sql(&command.query), rows = tracing::field::Empty))]
    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        auth::require(&request, Role::Write, "change rows")?;
        self.require_statement(&request, &command.query)?;
        self.statement_update(command, request).await
    }

    #[tracing::instrument(name = "flight.prepared_statement_update", skip_all, fields(rows = tracing::field::Empty))]
    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        auth::require(&request, Role::Write, "change rows")?;
        // The statement's own role is checked where it runs (`run_update`): the handle
        // comes from the client.
        self.prepared_update(command, request).await
    }

    #[tracing::instrument(name = "flight.ingest", skip_all, fields(table = %command.table, rows = tracing::field::Empty))]
    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let replaces = command
            .table_definition_options
            .as_ref()
            .is_some_and(|o| o.if_exists == TableExistsOption::Replace as i32);
        if replaces {
            auth::require(&request, Role::Admin, "replace a table by ingest")?;
        } else {
            auth::require(&request, Role::Write, "ingest rows")?;
        }
        self.ingest(command, request).await
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        // A read-only principal may hold a transaction (ADBC's DB-API connection begins
        // one at connect); each statement in it is checked for its own role.
        auth::require(&request, Role::Read, "begin a transaction")?;
        Ok(ActionBeginTransactionResult {
            transaction_id: self.writer.begin(connection_of(&request))?,
        })
    }

    async fn do_action_end_transaction(
        &self,
        query: ActionEndTransactionRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        auth::require(&request, Role::Read, "end a transaction")?;
        self.end_transaction(
            &query.transaction_id,
            query.action(),
            connection_of(&request),
        )
        .await
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info).map_err(|err| {
            crate::error::status(
                tonic::Code::InvalidArgument,
                format!("CancelQuery carries no FlightInfo: {err}"),
            )
        })?;
        // The deprecated action's `CancelResult`: 1 is CANCELLED, 3 NOT_CANCELLABLE.
        let status = self.cancel_flight_info(&info)?;
        Ok(ActionCancelQueryResult {
            result: if status == CancelStatus::Cancelled {
                1
            } else {
                3
            },
        })
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&query.into_builder().schema(), query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(metadata::catalogs(query, CATALOG_NAME))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&query.clone().into_builder().schema(), query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(metadata::schemas(
            query,
            CATALOG_NAME,
            &self.engine.catalog(),
        ))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&query.clone().into_builder().schema(), query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(metadata::tables(
            query,
            CATALOG_NAME,
            &self.engine.catalog(),
            &self.engine.system_tables(),
        ))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&query.into_builder().schema(), query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(metadata::table_types(query))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(
            &query.clone().into_builder(&SQL_INFO).schema(),
            query,
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(query.into_builder(&SQL_INFO).build().map_err(Error::from))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(
            &query
                .into_builder(metadata::xdbc_type_info(self.engine.store().dialect()))
                .schema(),
            query,
            request,
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(
            query
                .into_builder(metadata::xdbc_type_info(self.engine.store().dialect()))
                .build()
                .map_err(Error::from),
        )
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&metadata::primary_keys_schema(), query, request)
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.answer(metadata::primary_keys(
            CATALOG_NAME,
            &self.engine.catalog(),
            query.catalog.as_deref(),
            query.db_schema.as_deref(),
            &query.table,
        ))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&metadata::foreign_keys_schema(), query, request)
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
        self.answer(metadata::foreign_keys(
            CATALOG_NAME,
            &self.engine.catalog(),
            query.catalog.as_deref(),
            filter,
        ))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&metadata::foreign_keys_schema(), query, request)
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
        self.answer(metadata::foreign_keys(
            CATALOG_NAME,
            &self.engine.catalog(),
            query.catalog.as_deref(),
            filter,
        ))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.describe(&metadata::foreign_keys_schema(), query, request)
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
        self.answer(metadata::foreign_keys(
            CATALOG_NAME,
            &self.engine.catalog(),
            catalog_filter,
            filter,
        ))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let owner = connection_of(&request);
        if let Some(operation) = request
            .get_ref()
            .r#type
            .strip_prefix(crate::admin::ACTION_PREFIX)
        {
            auth::principal_of(&request)?.require(Role::Admin, "run admin operations")?;
            let operation = operation.to_owned();
            let answer = self.admin.run(&operation, &request.get_ref().body).await?;
            let result = arrow_flight::Result {
                body: answer.to_string().into(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))));
        }
        let body = self.custom_action(request.into_inner(), owner).await?;
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(actions::custom_action_types().into_iter().map(Ok).collect())
    }

    async fn do_exchange_fallback(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<Self as FlightService>::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if message.type_url == subscriptions::SUBSCRIBE_TICKET_TYPE {
            crate::auth::layer::hold_subscription(&request)?;
            let stream = subscriptions::subscribe(&self.subscriptions, &message.value).await?;
            return Ok(Response::new(Box::pin(ReceiverStream::new(stream))));
        }
        Err(crate::error::status(
            tonic::Code::InvalidArgument,
            format!("unknown ticket type {}", message.type_url),
        ))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
