//! Who is calling, and what they may do.
//!
//! Every gRPC call (except health) and every HTTP route (except `/healthz` and
//! `/readyz`) is authenticated by [`layer`] before a service sees it; the
//! [`Principal`] found is put in the request's extensions, where handlers check the
//! role their work needs with [`require`]. Credentials:
//! - the Flight SQL handshake with HTTP Basic credentials (users from the auth file,
//!   argon2 hashes) answers `authorization: Bearer <token>`: a token signed by this
//!   server (HS256; replicas sharing `token_secret_file` accept each other's);
//! - static API tokens (only their SHA-256 is configured; compared in constant time);
//! - JWTs from an identity provider (HS256, RS256 with a PEM key or a JWKS file);
//! - a verified client certificate whose common name the auth file maps to a role.
//!
//! With `--auth none` every request is the anonymous principal, with every role.
//!
//! # Layout
//! - [`file`](mod@file): the auth file.
//! - `tokens`: issued tokens, static tokens, JWTs.
//! - `password`: argon2 hashing and verification, bounded.
//! - [`layer`]: the gRPC layer and the HTTP middleware that authenticate, and the
//!   per-principal limits they apply.

pub mod file;
pub mod layer;
mod password;
mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use self::file::Credentials;
pub use self::password::{client_key, hash_password, new_token};
use crate::error::{Error, Result};

/// What a principal may do; each role can do everything the one before can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, catalog metadata, subscriptions.
    Read,
    /// And DML, ingest, Mutations, transactions.
    Write,
    /// And DDL, replacing tables by ingest.
    Admin,
}

impl Role {
    /// The role's name, as in the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// Authentication is off.
    Anonymous,
    /// A user of the auth file (password, or a token the handshake issued).
    User,
    /// A static token of the auth file.
    Token,
    /// A JWT from the configured identity provider.
    Jwt,
    /// A client certificate mapped in the auth file.
    Certificate,
}

impl PrincipalKind {
    fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Anonymous => "anonymous",
            PrincipalKind::User => "user",
            PrincipalKind::Token => "token",
            PrincipalKind::Jwt => "jwt",
            PrincipalKind::Certificate => "cert",
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// How it authenticated.
    pub kind: PrincipalKind,
    /// Its name: a user or token name, a JWT subject, a certificate's common name.
    pub name: Arc<str>,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// The principal of every request when authentication is off.
    pub fn anonymous() -> Self {
        Self {
            kind: PrincipalKind::Anonymous,
            name: Arc::from("anonymous"),
            role: Role::Admin,
        }
    }

    /// A name unique across kinds (`user:alice`, `jwt:alice`): what idempotency keys,
    /// transactions and limits are scoped by.
    pub fn scope(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name)
    }

    /// Whether authentication is off for this request.
    pub fn is_anonymous(&self) -> bool {
        self.kind == PrincipalKind::Anonymous
    }

    /// Fails with `PERMISSION_DENIED` unless the principal has `role`; `what` says
    /// what was asked (`"run DDL"`).
    pub fn require(&self, role: Role, what: &str) -> Result<()> {
        if self.role >= role {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "{} '{}' has role {} and may not {what}: that needs role {role}",
            self.kind.as_str(),
            self.name,
            self.role
        )))
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

/// The principal of a request, put there by [`layer`].
pub fn principal_of<T>(request: &tonic::Request<T>) -> Result<&Principal> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Error::Unauthenticated("the request was not authenticated".to_owned()))
}

/// Fails with `PERMISSION_DENIED` unless the request's principal has `role`.
pub fn require<T>(request: &tonic::Request<T>, role: Role, what: &str) -> Result<()> {
    principal_of(request)?.require(role, what)
}

/// Whether and how requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request is anonymous and may do anything.
    None,
    /// Every request must authenticate.
    On,
}

/// The authenticator: the auth file's credentials (reloadable) and the key of the
/// tokens this server issues.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    file: Option<PathBuf>,
    credentials: RwLock<Arc<Credentials>>,
    /// Signs issued tokens when the auth file names no secret: random per process.
    fallback_secret: Vec<u8>,
    passwords: password::Verifier,
}

impl Auth {
    /// Authentication off.
    pub fn disabled() -> Self {
        Self::new(false, None, Credentials::default())
    }

    /// Authentication on, with the credentials of the auth file at `file`.
    pub fn load(file: Option<PathBuf>) -> Result<Self> {
        let credentials = match &file {
            Some(path) => Credentials::load(path)?,
            None => Credentials::default(),
        };
        if credentials.is_empty() {
            return Err(Error::Config(
                "authentication is on but no user, token, JWT key or client certificate is \
                 configured: list them in --auth-file, or pass --auth none to serve without \
                 authentication"
                    .to_owned(),
            ));
        }
        if credentials.token_secret.is_none() && !credentials.users.is_empty() {
            tracing::warn!(
                "no token_secret_file in the auth file: tokens issued by the handshake are \
                 valid on this process only (replicas will refuse them, and a restart ends them)"
            );
        }
        Ok(Self::new(true, file, credentials))
    }

    fn new(enabled: bool, file: Option<PathBuf>, credentials: Credentials) -> Self {
        let mut fallback_secret = vec![0u8; 32];
        getrandom::fill(&mut fallback_secret).expect("the OS has a random source");
        Self {
            enabled,
            file,
            credentials: RwLock::new(Arc::new(credentials)),
            fallback_secret,
            passwords: password::Verifier::new(),
        }
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the auth file again; on error the current credentials stay.
    pub fn reload(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let credentials = Credentials::load(path)?;
        if credentials.is_empty() {
            return Err(Error::Config(format!(
                "auth file {}: no credential left; keeping the previous file",
                path.display()
            )));
        }
        *self.credentials.write().expect("never poisoned") = Arc::new(credentials);
        self.passwords.forget();
        Ok(())
    }

    fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.credentials.read().expect("never poisoned"))
    }

    /// Authenticates a request from its `authorization` header and, failing that, the
    /// client certificate's common name.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Principal> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        let credentials = self.credentials();
        match authorization {
            Some(header) => match parse_authorization(header)? {
                Authorization::Bearer(token) => self.bearer(&credentials, token),
                Authorization::Basic(user, password) => {
                    self.passwords
                        .verify(&credentials, user, password, client)
                        .await
                }
            },
            None => match certificate
                .and_then(|cn| credentials.certificates.get(cn).map(|r| (cn, *r)))
            {
                Some((name, role)) => Ok(Principal {
                    kind: PrincipalKind::Certificate,
                    name: Arc::from(name),
                    role,
                }),
                None => Err(Error::Unauthenticated(
                    "no credentials: send `authorization: Bearer <token>` (or log in with the \
                     Flight SQL handshake)"
                        .to_owned(),
                )),
            },
        }
    }

    /// The Flight SQL handshake: Basic credentials get a new token; a bearer token is
    /// checked and handed back.
    pub async fn handshake(
        &self,
        authorization: Option<&[u8]>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(Principal, String)> {
        let credentials = self.credentials();
        let Some(header) = authorization else {
            return Err(Error::Unauthenticated(
                "the handshake carries no `authorization` header (Basic credentials or a \
                 Bearer token)"
                    .to_owned(),
            ));
        };
        match parse_authorization(header)? {
            Authorization::Bearer(token) => {
                let principal = self.bearer(&credentials, token)?;
                Ok((principal, token.to_owned()))
            }
            Authorization::Basic(user, password) => {
                let principal = self
                    .passwords
                    .verify(&credentials, user, password, client)
                    .await?;
                let token = tokens::issue(&principal, &credentials, self.secret(&credentials))?;
                Ok((principal, token))
            }
        }
    }

    fn secret<'a>(&'a self, credentials: &'a Credentials) -> &'a [u8] {
        credentials
            .token_secret
            .as_deref()
            .unwrap_or(&self.fallback_secret)
    }

    fn bearer(&self, credentials: &Credentials, token: &str) -> Result<Principal> {
        tokens::check(token, credentials, self.secret(credentials))
    }
}

enum Authorization<'a> {
    Bearer(&'a str),
    Basic(String, String),
}

/// Longest `authorization` header read: a JWT with many claims fits; nothing needs more.
const MAX_AUTHORIZATION: usize = 16 * 1024;

fn parse_authorization(header: &[u8]) -> Result<Authorization<'_>> {
    use base64::Engine as _;
    let invalid =
        |why: &str| Error::Unauthenticated(format!("invalid authorization header: {why}"));
    if header.len() > MAX_AUTHORIZATION {
        return Err(invalid("longer than 16 KiB"));
    }
    let text = std::str::from_utf8(header).map_err(|_| invalid("not text"))?;
    let (scheme, rest) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| invalid("no scheme"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(invalid("empty token"));
        }
        return Ok(Authorization::Bearer(rest));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // The ADBC Go driver sends base64 without padding.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(rest)
            .map_err(|_| invalid("Basic credentials are not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| invalid("Basic credentials are not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("Basic credentials are not user:password"))?;
        return Ok(Authorization::Basic(user.to_owned(), password.to_owned()));
    }
    Err(invalid("the scheme is neither Bearer nor Basic"))
}

/// Whether a role name is known (for JWT claims).
fn role_named(name: &str) -> Option<Role> {
    Role::parse(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        let reader = Principal {
            kind: PrincipalKind::User,
            name: Arc::from("alice"),
            role: Role::Read,
        };
        assert!(reader.require(Role::Read, "query").is_ok());
        let err = reader.require(Role::Write, "insert rows").unwrap_err();
        assert_eq!(crate::error::code_of(&err), tonic::Code::PermissionDenied);
        assert!(err.to_string().contains("needs role write"), "{err}");
        assert!(
            Principal::anonymous()
                .require(Role::Admin, "run DDL")
                .is_ok()
        );
    }

    #[test]
    fn basic_credentials_decode_with_or_without_padding() {
        for header in [
            "Basic YWxpY2U6cHc=",
            "Basic YWxpY2U6cHc",
            "basic  YWxpY2U6cHc= ",
        ] {
            match parse_authorization(header.as_bytes()).unwrap() {
                Authorization::Basic(user, password) => {
                    assert_eq!((user.as_str(), password.as_str()), ("alice", "pw"));
                }
                Authorization::Bearer(_) => panic!("not bearer"),
            }
        }
        assert!(matches!(
            parse_authorization(b"Bearer abc").unwrap(),
            Authorization::Bearer("abc")
        ));
        for bad in [
            &b"Token abc"[..],
            b"Bearer ",
            b"Basic !!!",
            b"Basic YWxpY2U",
            b"\xff\xfe",
        ] {
            let err = parse_authorization(bad).err().expect("refused");
            assert_eq!(crate::error::code_of(&err), tonic::Code::Unauthenticated);
        }
        assert!(parse_authorization(&vec![b'a'; MAX_AUTHORIZATION + 1]).is_err());
    }
}
