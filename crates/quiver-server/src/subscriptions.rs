//! Subscriptions: the change log as filtered, ordered, resumable streams, over gRPC
//! (`quiver.v1.Subscriptions`) and Flight (`subscribe` action, then `DoGet`).
//!
//! # One tail, many subscribers
//! The [`Hub`] runs one task per server that follows the change log: woken by each
//! commit made through this server, by PostgreSQL `NOTIFY` for commits made through
//! other replicas, and by a slow fallback timer, it reads the new commits once,
//! decodes them once (a `decode::Page`) and broadcasts the page to every subscriber.
//! The database is read once per wake-up, whatever the number of subscribers.
//!
//! # Delivery
//! Each subscriber keeps the version it has delivered up to. Pages at or below it are
//! skipped; a page that starts beyond the next version (the subscriber joined while the
//! tail was ahead, or fell behind) is preceded by a catch-up read of the missing
//! commits from the log. Versions are consecutive, so a gap is always seen, and the
//! seam between catch-up and the live tail neither repeats nor loses a change.
//!
//! # Slow subscribers
//! Writers never wait for subscribers. A subscriber's outgoing queue is bounded
//! (`subscription_buffer` messages); while it is full the subscriber stops taking
//! pages, the shared tail keeps only its most recent pages for it, and once those
//! are overwritten the subscriber reads what it missed from the change log itself,
//! then rejoins the tail. A subscriber whose next change is older than the log's
//! retention is ended with `RESOURCE_EXHAUSTED` naming the version to resume from.

//!
//! # Layout
//! - `spec`: the request and its compiled form.
//! - `hub`: the shared tail and the registry of subscriptions.
//! - `delivery`: one subscriber's stream.
//! - `metrics`: the counters behind `/metrics`.
//! - [`decode`]: change-log rows as typed events and Arrow images.
//! - `grpc`, `flight`: the two surfaces.

pub mod decode;
mod delivery;
mod flight;
mod grpc;
mod hub;
mod metrics;
mod spec;

pub use self::flight::{SUBSCRIBE_ACTION, SUBSCRIBE_TICKET_TYPE, subscribe, subscribe_ticket};
pub use self::grpc::SubscriptionService;
pub use self::hub::Hub;
pub use self::spec::{Request, Start};
