//! Flight actions beyond the Flight SQL commands: session options (ADBC's current
//! catalog and schema), closing a session (which rolls back its open transactions),
//! cancelling a query, and subscribing to changes.

use arrow_flight::sql::{Any, TicketStatementQuery};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightInfo,
};
use prost::Message;
use quiver_query::CATALOG_NAME;
use tonic::{Code, Status};

use super::cancel::Cancelled;
use super::handle::StatementHandle;
use super::{QuiverFlightSqlService, session};
use crate::connection::ConnectionId;
use crate::error::status;
use crate::subscriptions;

/// The Flight action that cancels the queries of a `FlightInfo`.
pub(super) const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

impl QuiverFlightSqlService {
    /// Cancels the queries of `info`'s tickets that run (or would run) on this replica.
    pub(super) fn cancel_flight_info(&self, info: &FlightInfo) -> Result<CancelStatus, Status> {
        let mut found = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let handle = Any::decode(ticket.ticket.clone())
                .ok()
                .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
                .and_then(|ticket| StatementHandle::decode(&ticket.statement_handle).ok());
            let Some(id) = handle.and_then(|h| h.query_id) else {
                return Err(status(
                    Code::InvalidArgument,
                    "the FlightInfo holds a ticket that is not a cancellable Quiver query",
                ));
            };
            found = true;
            if self.queries.cancel(id) == Cancelled::Running {
                tracing::info!("query cancelled by the client");
            }
        }
        if !found {
            return Err(status(
                Code::InvalidArgument,
                "the FlightInfo holds no ticket to cancel",
            ));
        }
        Ok(CancelStatus::Cancelled)
    }

    /// Answers an action by its type: the body of its one result.
    pub(super) async fn custom_action(
        &self,
        action: Action,
        owner: Option<ConnectionId>,
    ) -> Result<Vec<u8>, Status> {
        let default_schema = self.engine.store().default_schema();
        Ok(match action.r#type.as_str() {
            session::GET_SESSION_OPTIONS => {
                session::current_options(CATALOG_NAME, default_schema).encode_to_vec()
            }
            session::SET_SESSION_OPTIONS => {
                let set =
                    session::SetSessionOptionsRequest::decode(action.body).map_err(|err| {
                        status(
                            Code::InvalidArgument,
                            format!("invalid SetSessionOptionsRequest: {err}"),
                        )
                    })?;
                let catalog = self.engine.catalog();
                if let Some(missing) = session::missing_target(&set, CATALOG_NAME, |name| {
                    catalog.schemas.iter().any(|s| s.name == name)
                }) {
                    return Err(status(Code::NotFound, missing));
                }
                session::set_options(&set, CATALOG_NAME, default_schema).encode_to_vec()
            }
            session::CLOSE_SESSION => {
                // A closed session's open transactions end with it, rolled back.
                if let Some(owner) = owner {
                    self.writer.end_connection(owner).await;
                }
                session::CloseSessionResult { status: 1 }.encode_to_vec()
            }
            CANCEL_FLIGHT_INFO => {
                let request = CancelFlightInfoRequest::decode(action.body).map_err(|err| {
                    status(
                        Code::InvalidArgument,
                        format!("invalid CancelFlightInfoRequest: {err}"),
                    )
                })?;
                let info = request.info.ok_or_else(|| {
                    status(
                        Code::InvalidArgument,
                        "CancelFlightInfo carries no FlightInfo",
                    )
                })?;
                let outcome = self.cancel_flight_info(&info)?;
                CancelFlightInfoResult {
                    status: outcome as i32,
                }
                .encode_to_vec()
            }
            subscriptions::SUBSCRIBE_ACTION => {
                subscriptions::subscribe_ticket(&self.subscriptions, &action.body)?.to_vec()
            }
            other => {
                return Err(status(
                    Code::InvalidArgument,
                    format!("unknown action type '{other}'"),
                ));
            }
        })
    }
}

/// The actions [`QuiverFlightSqlService::custom_action`] answers, as `ListActions`
/// describes them.
pub(super) fn custom_action_types() -> Vec<ActionType> {
    let describe = |name: &str, description: &str| ActionType {
        r#type: name.to_owned(),
        description: description.to_owned(),
    };
    vec![
        describe(
            session::SET_SESSION_OPTIONS,
            "Set session options (catalog, schema).",
        ),
        describe(
            session::GET_SESSION_OPTIONS,
            "Get session options (catalog, schema).",
        ),
        describe(
            session::CLOSE_SESSION,
            "Close the session, rolling back its open transactions.",
        ),
        describe(
            CANCEL_FLIGHT_INFO,
            "Cancel the queries of a FlightInfo (a CancelFlightInfoRequest).",
        ),
        describe(
            subscriptions::SUBSCRIBE_ACTION,
            "Follow a table's changes: a JSON body {\"tables\": [..], \"filter\", \
             \"from_version\" | \"latest\" | \"snapshot\", \"columns\"} answers with a ticket \
             for DoGet.",
        ),
    ]
    .into_iter()
    .chain(
        crate::admin::OPERATIONS
            .iter()
            .map(|(operation, description)| {
                describe(
                    &format!("{}{operation}", crate::admin::ACTION_PREFIX),
                    &format!("Admin: {description}. Answers JSON."),
                )
            }),
    )
    .collect()
}
