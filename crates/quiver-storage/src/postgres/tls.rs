//! TLS to PostgreSQL with rustls, as libpq's `sslmode` and `sslrootcert` ask.
//!
//! The URL's `sslmode` takes libpq's values:
//! - `disable`: plaintext only.
//! - `prefer` (the default): TLS when the server offers it, plaintext otherwise; the
//!   certificate is not checked (as libpq).
//! - `require`: TLS or no connection; the certificate is not checked unless
//!   `sslrootcert` is given, which makes it `verify-ca` (as libpq).
//! - `verify-ca`: TLS, the certificate chains to a trusted root.
//! - `verify-full`: `verify-ca`, and the certificate names the host connected to.
//!
//! Trusted roots come from `sslrootcert` (a PEM file); `verify-full` without it uses
//! the Mozilla root set (`webpki-roots`), `verify-ca` refuses to start without it (any
//! public certificate for any name would pass). No OpenSSL anywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when offered, unchecked.
    Prefer,
    /// TLS, unchecked.
    Require,
    /// TLS, chained to a trusted root.
    VerifyCa,
    /// TLS, chained to a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" | "allow" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "sslmode '{other}' is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )));
            }
        })
    }
}

/// The TLS settings of a PostgreSQL URL, and the URL without them (tokio-postgres
/// knows neither `sslrootcert` nor the `verify-*` modes).
#[derive(Debug)]
pub(crate) struct TlsUrl {
    /// The URL with `sslmode` and `sslrootcert` removed.
    pub(crate) url: String,
    /// The mode asked for (`prefer` when unset).
    pub(crate) mode: SslMode,
    /// The trusted roots' PEM file.
    pub(crate) root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of `url`'s query string.
pub(crate) fn split_url(url: &str) -> Result<TlsUrl> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(SslMode::parse(&percent_decode(value)?)?),
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value)?)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsUrl {
        url,
        mode: mode.unwrap_or(SslMode::Prefer),
        root_cert,
    })
}

fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| Error::Config(format!("bad percent escape in '{value}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("'{value}' is not UTF-8")))
}

/// Sets `config`'s mode and builds the connector for `tls`.
pub(crate) fn connector(tls: &TlsUrl, config: &mut tokio_postgres::Config) -> Result<Connector> {
    let mode = match (tls.mode, &tls.root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        // Any publicly trusted certificate for any name would pass: not a check.
        (SslMode::VerifyCa, None) => {
            return Err(Error::Config(
                "sslmode=verify-ca needs sslrootcert (the CA that signed the server's \
                 certificate); verify-full may use the public roots"
                    .to_owned(),
            ));
        }
        (mode, _) => mode,
    };
    config.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Config(format!("TLS to PostgreSQL: {err}")))?;
    let client = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(tls.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|err| Error::Config(format!("TLS to PostgreSQL: {err}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                Arc::new(AnyName { inner: webpki })
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(Connector(MakeRustlsConnect::new(client)))
}

/// The TLS connector of a store's connections (and their cancel requests).
#[derive(Clone)]
pub(crate) struct Connector(pub(crate) MakeRustlsConnect);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// rustls over *ring*: no C toolchain beyond what *ring* needs, no second crypto
/// library in the build. (rustls marks the *ring* provider deprecated only for its
/// lack of post-quantum key exchange.)
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The roots in `path`, or the Mozilla set.
fn roots(path: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let Some(path) = path else {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    };
    let bad = |err: &dyn std::fmt::Display| {
        Error::Config(format!("sslrootcert {}: {err}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| bad(&err))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| bad(&err))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    for cert in certs {
        store.add(cert).map_err(|err| bad(&err))?;
    }
    Ok(store)
}

/// `prefer` and `require`: encryption without checking who answers (libpq's
/// behaviour); the handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_the_url() {
        let tls = split_url(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(tls.url, "postgres://u@h/db?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        let plain = split_url("postgres://u@h/db").unwrap();
        assert_eq!(plain.url, "postgres://u@h/db");
        assert_eq!(plain.mode, SslMode::Prefer);
        assert!(split_url("postgres://u@h/db?sslmode=maybe").is_err());
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let missing = TlsUrl {
            url: String::new(),
            mode: SslMode::Require,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
        };
        let mut config = tokio_postgres::Config::new();
        // The file is read: require + sslrootcert is verify-ca, as in libpq.
        assert!(connector(&missing, &mut config).is_err());
        let no_roots = TlsUrl {
            url: String::new(),
            mode: SslMode::VerifyCa,
            root_cert: None,
        };
        let err = connector(&no_roots, &mut config).unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
}
