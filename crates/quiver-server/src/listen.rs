//! Accepting connections: TCP, and TLS (rustls) when a certificate is configured.
//!
//! One accept loop per port hands accepted connections to the gRPC or HTTP server.
//! TLS handshakes run in their own tasks, at most `MAX_HANDSHAKES` at once,
//! `MAX_HANDSHAKES_PER_CLIENT` from one address, and each within
//! `HANDSHAKE_TIMEOUT`, so clients that connect and say nothing hold up no one else. With TLS on, a plaintext client fails its handshake and is disconnected.
//!
//! The certificate and key are read again on SIGHUP and when their files change
//! (checked every few seconds); a pair that does not load is refused with a log line
//! and the previous one stays in use. With a client CA, client certificates are
//! verified against it (optional or required); a verified certificate's subject common
//! name is what the auth file maps to a principal.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Most TLS handshakes in progress per port.
const MAX_HANDSHAKES: usize = 1024;
/// Most TLS handshakes in progress from one client address (an IPv6 client: its /64),
/// so a few silent clients cannot hold every handshake slot.
const MAX_HANDSHAKES_PER_CLIENT: usize = 16;
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Where the server's certificate and key are, and how clients are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM roots client certificates are verified against (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate (with `client_ca`).
    pub client_auth_required: bool,
}

/// The server's TLS configuration, reloadable.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    config: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl Tls {
    /// Loads the files of `settings`.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>> {
        let config = build(&settings)?;
        let stamps = stamps(&settings);
        Ok(Arc::new(Self {
            settings,
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Reads the files again; on error the current configuration stays.
    pub fn reload(&self) -> Result<()> {
        let config = build(&self.settings)?;
        *self.config.write().expect("never poisoned") = Arc::new(config);
        *self.stamps.lock().expect("never poisoned") = stamps(&self.settings);
        Ok(())
    }

    /// Reloads when a file changed since the last load.
    fn reload_if_changed(&self) {
        let now = stamps(&self.settings);
        if *self.stamps.lock().expect("never poisoned") == now {
            return;
        }
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.settings.cert.display(), "TLS certificate reloaded")
            }
            Err(err) => {
                // Not retried until the files change again.
                *self.stamps.lock().expect("never poisoned") = now;
                tracing::error!(error = %err, "the new TLS certificate does not load; keeping the previous one");
            }
        }
    }

    /// Watches the files until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.reload_if_changed(),
            }
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config.read().expect("never poisoned")))
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .collect()
}

fn build(settings: &TlsSettings) -> Result<ServerConfig> {
    let bad = |path: &PathBuf, err: &dyn std::fmt::Display| {
        Error::Config(format!("TLS file {}: {err}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&settings.cert)
        .map_err(|err| bad(&settings.cert, &err))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| bad(&settings.cert, &err))?;
    if certs.is_empty() {
        return Err(bad(&settings.cert, &"no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&settings.key).map_err(|err| bad(&settings.key, &err))?;
    let provider = Arc::new(quiver_storage::tls_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Config(format!("TLS: {err}")))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|err| bad(ca, &err))? {
                roots
                    .add(cert.map_err(|err| bad(ca, &err))?)
                    .map_err(|err| bad(ca, &err))?;
            }
            if roots.is_empty() {
                return Err(bad(ca, &"no certificate in the file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_auth_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|err| bad(ca, &err))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| bad(&settings.key, &err))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    const CN: x509_cert::der::asn1::ObjectIdentifier =
        x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == CN)
        .find_map(|atv| {
            let value = &atv.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// What the server knows of a connection's other end.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The subject common name of its verified certificate (mTLS).
    pub certificate: Option<Arc<str>>,
}

/// An accepted connection, plaintext or TLS.
#[derive(Debug)]
pub enum Io {
    /// TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Accepts on `listener` until `shutdown`: the connections, with TLS when `tls` is
/// set.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<(Io, Peer)> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, a connection reset before accept: wait a
                    // little and go on.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
            let Some(tls) = &tls else {
                let peer = Peer {
                    remote: Some(remote),
                    certificate: None,
                };
                if sender.send((Io::Plain(stream), peer)).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::warn!(%remote, "too many TLS handshakes in progress; connection dropped");
                continue;
            };
            let client = crate::auth::client_key(remote.ip());
            {
                let mut counts = per_client.lock().expect("never poisoned");
                let count = counts.entry(client).or_insert(0);
                if *count >= MAX_HANDSHAKES_PER_CLIENT {
                    tracing::debug!(%remote, "too many TLS handshakes from this client; connection dropped");
                    continue;
                }
                *count += 1;
            }
            let per_client = Arc::clone(&per_client);
            let acceptor = tls.acceptor();
            let sender = sender.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                {
                    let mut counts = per_client.lock().expect("never poisoned");
                    if let Some(count) = counts.get_mut(&client) {
                        *count -= 1;
                        if *count == 0 {
                            counts.remove(&client);
                        }
                    }
                }
                match handshake {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|cert| common_name(cert))
                            .map(Arc::from);
                        let peer = Peer {
                            remote: Some(remote),
                            certificate,
                        };
                        let _ = sender.send((Io::Tls(Box::new(stream)), peer)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%remote, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    receiver
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The HTTP server's listener over [`accept`].
#[derive(Debug)]
pub struct HttpListener {
    connections: mpsc::Receiver<(Io, Peer)>,
    local: SocketAddr,
}

impl HttpListener {
    /// Serves what `connections` accepts on `local`.
    pub fn new(connections: mpsc::Receiver<(Io, Peer)>, local: SocketAddr) -> Self {
        Self { connections, local }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        match self.connections.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (shutdown): nothing more comes; graceful shutdown
            // ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            remote: Some(self.local),
            certificate: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        stream.remote_addr().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_certificate_is_a_config_error() {
        let settings = TlsSettings {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            client_ca: None,
            client_auth_required: false,
        };
        let err = Tls::load(settings).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
