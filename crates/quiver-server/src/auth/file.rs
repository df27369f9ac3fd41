//! The auth file: users, static tokens, JWT keys and client-certificate mappings.
//!
//! ```toml
//! token_ttl_s = 43200                  # life of tokens issued by the handshake
//! token_secret_file = "/etc/quiver/token-secret"   # shared by replicas (optional)
//!
//! [[users]]
//! name = "alice"
//! role = "read"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # quiver auth hash-password
//!
//! [[tokens]]
//! name = "ingest-service"
//! role = "write"
//! sha256 = "…"                         # quiver auth new-token
//!
//! [jwt]
//! algorithm = "RS256"                  # or HS256
//! public_key_file = "/etc/quiver/jwt.pem"   # or jwks_file, or secret_file (HS256)
//! issuer = "https://idp.example.com/"
//! audience = "quiver"
//!
//! [[certificates]]
//! common_name = "reporting-service"
//! role = "read"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use argon2::PasswordHash;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Role;
use crate::error::{Error, Result};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    token_ttl_s: Option<u64>,
    token_secret_file: Option<PathBuf>,
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    jwt: Option<JwtEntry>,
    #[serde(default)]
    certificates: Vec<CertificateEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    role: Role,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtEntry {
    algorithm: String,
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    role_claim: Option<String>,
    leeway_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    common_name: String,
    role: Role,
}

/// A user who logs in with a password.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) role: Role,
    /// The PHC string, checked to parse when the file was read.
    pub(crate) password_hash: String,
}

/// A static token: only its SHA-256 is known.
#[derive(Debug, Clone)]
pub(crate) struct StaticToken {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) sha256: [u8; 32],
}

/// How signed tokens from an identity provider are checked.
#[derive(Clone)]
pub(crate) struct JwtSettings {
    pub(crate) keys: JwtKeys,
    pub(crate) validation: Validation,
    pub(crate) role_claim: String,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("algorithms", &self.validation.algorithms)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

/// One key, or a key set chosen from by the token's `kid`.
#[derive(Clone)]
pub(crate) enum JwtKeys {
    One(DecodingKey),
    Set(JwkSet),
}

/// Everything the auth file says, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) users: HashMap<String, User>,
    pub(crate) tokens: Vec<StaticToken>,
    pub(crate) jwt: Option<JwtSettings>,
    pub(crate) certificates: HashMap<String, Role>,
    pub(crate) token_ttl: Duration,
    /// The key of issued tokens, when the file names one.
    pub(crate) token_secret: Option<Vec<u8>>,
}

impl Credentials {
    /// Whether anything can authenticate.
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.tokens.is_empty()
            && self.jwt.is_none()
            && self.certificates.is_empty()
    }

    /// Reads and checks the auth file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let bad =
            |message: String| Error::Config(format!("auth file {}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|err| bad(err.to_string()))?;
        let file: AuthFile = toml::from_str(&text).map_err(|err| bad(err.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut users = HashMap::new();
        for user in file.users {
            check_name("user", &user.name).map_err(&bad)?;
            PasswordHash::new(&user.password_hash).map_err(|err| {
                bad(format!(
                    "user '{}': password_hash is not a PHC string (make one with \
                     `quiver auth hash-password`): {err}",
                    user.name
                ))
            })?;
            let name = user.name.clone();
            if users
                .insert(
                    user.name,
                    User {
                        role: user.role,
                        password_hash: user.password_hash,
                    },
                )
                .is_some()
            {
                return Err(bad(format!("user '{name}' is listed twice")));
            }
        }
        let mut tokens = Vec::new();
        for token in file.tokens {
            check_name("token", &token.name).map_err(&bad)?;
            let sha256 = parse_sha256(&token.sha256).ok_or_else(|| {
                bad(format!(
                    "token '{}': sha256 must be 64 hex digits (make one with `quiver auth \
                     new-token`)",
                    token.name
                ))
            })?;
            if tokens.iter().any(|t: &StaticToken| t.name == token.name) {
                return Err(bad(format!("token '{}' is listed twice", token.name)));
            }
            tokens.push(StaticToken {
                name: token.name,
                role: token.role,
                sha256,
            });
        }
        let jwt_secret_file = file.jwt.as_ref().and_then(|jwt| jwt.secret_file.clone());
        if file.jwt.as_ref().is_some_and(|jwt| jwt.audience.is_none()) {
            tracing::warn!(
                "auth file {}: [jwt] has no audience: tokens the identity provider issued \
                 for other services are accepted too",
                path.display()
            );
        }
        let jwt = file
            .jwt
            .map(|jwt| jwt_settings(jwt, base))
            .transpose()
            .map_err(&bad)?;
        let mut certificates = HashMap::new();
        for cert in file.certificates {
            check_name("certificate", &cert.common_name).map_err(&bad)?;
            certificates.insert(cert.common_name, cert.role);
        }
        let token_secret = match file.token_secret_file {
            Some(secret) => {
                let secret = read_secret(&base.join(secret)).map_err(&bad)?;
                if secret.len() < 32 {
                    return Err(bad(
                        "token_secret_file must hold at least 32 bytes".to_owned()
                    ));
                }
                // The identity provider holding this key could issue any user's token.
                if let Some(jwt_secret) = &jwt_secret_file
                    && read_secret(&base.join(jwt_secret)).is_ok_and(|s| s == secret)
                {
                    return Err(bad(
                        "token_secret_file and jwt.secret_file hold the same key: give each its own"
                            .to_owned(),
                    ));
                }
                Some(secret)
            }
            None => None,
        };
        let token_ttl = Duration::from_secs(file.token_ttl_s.unwrap_or(12 * 3600));
        if token_ttl.is_zero() || token_ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(bad(
                "token_ttl_s must be between 1 and 2592000 (30 days)".to_owned()
            ));
        }
        Ok(Self {
            users,
            tokens,
            jwt,
            certificates,
            token_ttl,
            token_secret,
        })
    }
}

/// Names appear in logs, spans and scopes: printable, short, no separators.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ' '));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name '{name}' must be 1 to 128 letters, digits, spaces or . _ - @"
        ))
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A key file's bytes, a trailing newline dropped.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

fn jwt_settings(jwt: JwtEntry, base: &Path) -> Result<JwtSettings, String> {
    let algorithm = match jwt.algorithm.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        other => return Err(format!("jwt.algorithm '{other}' is not HS256 or RS256")),
    };
    let keys = match (
        algorithm,
        jwt.secret_file,
        jwt.public_key_file,
        jwt.jwks_file,
    ) {
        (Algorithm::HS256, Some(secret), None, None) => {
            let secret = read_secret(&base.join(secret))?;
            if secret.len() < 32 {
                return Err("jwt.secret_file must hold at least 32 bytes".to_owned());
            }
            JwtKeys::One(DecodingKey::from_secret(&secret).map_err(|err| err.to_string())?)
        }
        (Algorithm::RS256, None, Some(public), None) => {
            let path = base.join(public);
            let pem = std::fs::read(&path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            JwtKeys::One(
                DecodingKey::from_rsa_pem(&pem)
                    .map_err(|err| format!("jwt.public_key_file {}: {err}", path.display()))?,
            )
        }
        (Algorithm::RS256, None, None, Some(jwks)) => {
            let path = base.join(jwks);
            let text = std::fs::read_to_string(&path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|err| format!("jwt.jwks_file {}: {err}", path.display()))?;
            for key in &set.keys {
                DecodingKey::from_jwk(key)
                    .map_err(|err| format!("jwt.jwks_file {}: {err}", path.display()))?;
            }
            JwtKeys::Set(set)
        }
        (Algorithm::HS256, ..) => {
            return Err("jwt: HS256 takes secret_file (and nothing else)".to_owned());
        }
        _ => {
            return Err("jwt: RS256 takes exactly one of public_key_file and jwks_file".to_owned());
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = jwt.leeway_s.unwrap_or(30);
    match &jwt.issuer {
        Some(issuer) => validation.set_issuer(&[issuer]),
        None => validation.iss = None,
    }
    match &jwt.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    Ok(JwtSettings {
        keys,
        validation,
        role_claim: jwt.role_claim.unwrap_or_else(|| "role".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_names_are_checked() {
        assert_eq!(parse_sha256(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
        assert!(check_name("user", "alice.smith@example.com").is_ok());
        assert!(check_name("user", "a:b").is_err());
        assert!(check_name("user", "").is_err());
        assert!(check_name("user", &"a".repeat(129)).is_err());
    }

    #[test]
    fn the_example_file_has_the_documented_shape() {
        let file: AuthFile = toml::from_str(include_str!("../../../../deploy/auth.example.toml"))
            .expect("deploy/auth.example.toml parses");
        assert_eq!(file.users.len(), 2);
        assert_eq!(file.tokens[0].role, Role::Write);
        assert!(file.jwt.is_some() && !file.certificates.is_empty());
    }

    #[test]
    fn a_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY$7sP0mHA1ASyVl9y5yL8NBwU5b8y1uXkKxvW7BqJlQ0k";
        std::fs::write(
            &path,
            format!(
                "[[users]]\nname = \"alice\"\nrole = \"read\"\npassword_hash = \"{hash}\"\n\
                 [[tokens]]\nname = \"svc\"\nrole = \"write\"\nsha256 = \"{}\"\n",
                "00".repeat(32)
            ),
        )
        .unwrap();
        let credentials = Credentials::load(&path).unwrap();
        assert_eq!(credentials.users["alice"].role, Role::Read);
        assert_eq!(credentials.tokens[0].role, Role::Write);
        assert!(!credentials.is_empty());

        std::fs::write(
            &path,
            "[[users]]\nname = \"bob\"\nrole = \"read\"\npassword_hash = \"secret\"\n",
        )
        .unwrap();
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(err.contains("PHC"), "{err}");
        std::fs::write(
            &path,
            "[[users]]\nname = \"bob\"\nrole = \"root\"\npassword_hash = \"x\"\n",
        )
        .unwrap();
        assert!(Credentials::load(&path).is_err());
        std::fs::write(&path, "").unwrap();
        assert!(Credentials::load(&path).unwrap().is_empty());
    }
}
