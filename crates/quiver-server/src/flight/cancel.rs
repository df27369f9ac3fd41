//! `CancelFlightInfo`: the queries this replica runs, found by the id their ticket
//! carries.
//!
//! Every `FlightInfo` of a query gets a random query id inside its ticket. While its
//! `DoGet` streams, the id maps to the query's cancellation token; a cancel request
//! for a ticket that has not started yet is remembered for a while, so its `DoGet`
//! is refused when it comes. A replica cancels only what runs on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_query::QueryControl;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How long a cancel request waits for its query to start.
const REMEMBER_CANCELLED: Duration = Duration::from_secs(600);
/// Most cancelled-before-started queries remembered.
const MAX_REMEMBERED: usize = 10_000;

/// A query id, as tickets carry it.
pub(crate) type QueryId = [u8; 16];

/// The queries running on this replica, by id.
#[derive(Debug, Default)]
pub(crate) struct Queries {
    running: Mutex<HashMap<QueryId, CancellationToken>>,
    cancelled: Mutex<HashMap<QueryId, Instant>>,
}

/// Keeps a query registered while it streams.
#[derive(Debug)]
pub(crate) struct Running {
    queries: Arc<Queries>,
    id: QueryId,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut running) = self.queries.running.lock() {
            running.remove(&self.id);
        }
    }
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// A running query was told to stop.
    Running,
    /// The query had not started (or has finished); it will not run.
    NotRunning,
}

impl Queries {
    /// A fresh random query id.
    pub(crate) fn new_id() -> Result<QueryId> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|err| Error::Internal(format!("no randomness for a query id: {err}")))?;
        Ok(id)
    }

    /// Registers the query `id` as it starts: its control, and what keeps it
    /// registered. Fails when it was cancelled before it started.
    pub(crate) fn start(self: &Arc<Self>, id: QueryId) -> Result<(QueryControl, Running)> {
        if self
            .cancelled
            .lock()
            .is_ok_and(|cancelled| cancelled.contains_key(&id))
        {
            return Err(Error::Query(quiver_query::Error::Cancelled(
                "the query was cancelled before it started".to_owned(),
            )));
        }
        let control = QueryControl::default();
        self.running
            .lock()
            .expect("never poisoned")
            .insert(id, control.cancel.clone());
        Ok((
            control,
            Running {
                queries: Arc::clone(self),
                id,
            },
        ))
    }

    /// Cancels the query `id`: stops it if it runs, refuses it if it starts later.
    pub(crate) fn cancel(&self, id: QueryId) -> Cancelled {
        if let Some(token) = self.running.lock().expect("never poisoned").get(&id) {
            token.cancel();
            return Cancelled::Running;
        }
        let mut cancelled = self.cancelled.lock().expect("never poisoned");
        let now = Instant::now();
        cancelled.retain(|_, at| now.duration_since(*at) < REMEMBER_CANCELLED);
        if cancelled.len() < MAX_REMEMBERED {
            cancelled.insert(id, now);
        }
        Cancelled::NotRunning
    }
}
