//! Flight actions beyond the Flight SQL commands: session options (ADBC's current
//! catalog and schema), closing a session, and subscribing to changes.

use arrow_flight::{Action, ActionType};
use prost::Message;
use quiver_query::CATALOG_NAME;
use tonic::Status;

use super::{QuiverFlightSqlService, session};
use crate::subscriptions;

impl QuiverFlightSqlService {
    /// Answers an action by its type: the body of its one result.
    pub(super) async fn custom_action(&self, action: Action) -> Result<Vec<u8>, Status> {
        let default_schema = self.engine.store().default_schema();
        Ok(match action.r#type.as_str() {
            session::GET_SESSION_OPTIONS => {
                session::current_options(CATALOG_NAME, default_schema).encode_to_vec()
            }
            session::SET_SESSION_OPTIONS => {
                let set =
                    session::SetSessionOptionsRequest::decode(action.body).map_err(|err| {
                        Status::invalid_argument(format!("invalid SetSessionOptionsRequest: {err}"))
                    })?;
                session::set_options(&set, CATALOG_NAME, default_schema).encode_to_vec()
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
        describe(session::CLOSE_SESSION, "Close the session."),
        describe(
            subscriptions::SUBSCRIBE_ACTION,
            "Follow a table's changes: a JSON body {\"tables\": [..], \"filter\", \
             \"from_version\" | \"latest\" | \"snapshot\", \"columns\"} answers with a ticket \
             for DoGet.",
        ),
    ]
}
