//! Which client connection a request came on, and when a connection goes away.
//!
//! Every accepted gRPC connection gets an id, carried to each request it makes (the
//! connection's `ConnectInfo`, in the request's extensions). State that belongs to a
//! client — its Flight SQL transactions — is kept under that id: no other connection
//! can use or end it, and when the connection closes it is ended (the ADBC driver
//! closes a connection without rolling back an open transaction).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::listen::{Io, Peer};

/// The id of one client connection, unique within the process, and of the principal
/// a request on it authenticated as: what a client's transactions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    connection: u64,
    /// A keyed hash of the principal's scope; 0 for the connection as a whole.
    principal: u64,
}

impl ConnectionId {
    /// Whether what belongs to `other` ends when `self` ends: the same connection, and
    /// the same principal unless `self` is the whole connection (it closed).
    pub fn covers(&self, other: &ConnectionId) -> bool {
        self.connection == other.connection
            && (self.principal == 0 || self.principal == other.principal)
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.connection)
    }
}

/// A keyed hash of `principal`: equal for the same principal, unpredictable to
/// clients, never 0.
fn principal_tag(principal: &crate::auth::Principal) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
        .hash_one(principal.scope())
        .max(1)
}

/// What a request knows of its connection.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The connection's id.
    pub id: ConnectionId,
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The common name of the client's verified certificate (mTLS).
    pub certificate: Option<Arc<str>>,
}

/// The client's IP address as text, from a request's extensions (empty when unknown).
pub fn client_address(extensions: &http::Extensions) -> String {
    extensions
        .get::<ConnectInfo>()
        .and_then(|info| info.remote)
        .map(|addr| addr.ip().to_string())
        .unwrap_or_default()
}

/// The connection a request came on, when it came over the network, and the principal
/// it authenticated as.
pub fn connection_of<T>(request: &tonic::Request<T>) -> Option<ConnectionId> {
    let principal = request
        .extensions()
        .get::<crate::auth::Principal>()
        .map_or(0, principal_tag);
    request
        .extensions()
        .get::<ConnectInfo>()
        .map(|info| ConnectionId {
            connection: info.id.connection,
            principal,
        })
}

/// Numbers accepted connections and reports the ones that close.
#[derive(Debug)]
pub struct Connections {
    next: AtomicU64,
    closed: mpsc::UnboundedSender<ConnectionId>,
}

impl Connections {
    /// A tracker, and the receiver of the ids of closed connections.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ConnectionId>) {
        let (closed, receiver) = mpsc::unbounded_channel();
        (
            Self {
                next: AtomicU64::new(1),
                closed,
            },
            receiver,
        )
    }

    /// Wraps an accepted stream: its requests carry its id, and its id is reported
    /// when it is dropped (the connection closed).
    pub fn track(&self, stream: Io, peer: Peer) -> TrackedStream {
        let id = ConnectionId {
            connection: self.next.fetch_add(1, Ordering::Relaxed),
            principal: 0,
        };
        let info = ConnectInfo {
            id,
            remote: peer.remote,
            certificate: peer.certificate,
        };
        TrackedStream {
            inner: stream,
            info,
            closed: self.closed.clone(),
        }
    }
}

/// An accepted connection that knows its id.
#[derive(Debug)]
pub struct TrackedStream {
    inner: Io,
    info: ConnectInfo,
    closed: mpsc::UnboundedSender<ConnectionId>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        // No receiver: the server is stopping, and nothing is left to end.
        let _ = self.closed.send(self.info.id);
    }
}

impl tonic::transport::server::Connected for TrackedStream {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
