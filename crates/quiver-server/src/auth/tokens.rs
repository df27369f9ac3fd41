//! Bearer tokens: the ones this server issues at the handshake, static API tokens, and
//! JWTs from an identity provider.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::file::{Credentials, JwtKeys, JwtSettings};
use super::{Principal, PrincipalKind, role_named};
use crate::error::{Error, Result};

/// Issuer and audience of the tokens this server issues.
const ISSUER: &str = "quiver";

/// The claims of an issued token.
#[derive(Debug, Serialize, Deserialize)]
struct Issued {
    sub: String,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
    /// A digest of the user's password hash when the token was issued: a changed
    /// password ends the tokens issued before.
    pwd: String,
}

/// The start of a SHA-256 of a user's password hash, as issued tokens carry it.
fn password_digest(password_hash: &str) -> String {
    Sha256::digest(password_hash.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token for `principal` (a user who logged in), signed with `secret`.
pub(super) fn issue(
    principal: &Principal,
    credentials: &Credentials,
    secret: &[u8],
) -> Result<String> {
    let iat = now();
    let user = credentials
        .users
        .get(principal.name.as_ref())
        .ok_or_else(|| Error::Internal("a token for a user who does not exist".to_owned()))?;
    let claims = Issued {
        sub: principal.name.to_string(),
        iss: ISSUER.to_owned(),
        aud: ISSUER.to_owned(),
        iat,
        exp: iat + credentials.token_ttl.as_secs(),
        pwd: password_digest(&user.password_hash),
    };
    let key = EncodingKey::from_secret(secret)
        .map_err(|err| Error::Internal(format!("cannot use the token key: {err}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|err| Error::Internal(format!("cannot sign a token: {err}")))
}

/// The principal a bearer token stands for.
pub(super) fn check(token: &str, credentials: &Credentials, secret: &[u8]) -> Result<Principal> {
    if let Some(principal) = static_token(token, credentials) {
        return Ok(principal);
    }
    if token.split('.').count() != 3 {
        return Err(Error::Unauthenticated("invalid token".to_owned()));
    }
    match issued(token, credentials, secret) {
        Ok(principal) => return Ok(principal),
        Err(Refusal::Final(err)) => return Err(err),
        Err(Refusal::NotOurs) => {}
    }
    match &credentials.jwt {
        Some(jwt) => external(token, jwt),
        None => Err(Error::Unauthenticated("invalid token".to_owned())),
    }
}

/// Every configured token is compared, in constant time, with the presented one's
/// SHA-256.
fn static_token(token: &str, credentials: &Credentials) -> Option<Principal> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for configured in &credentials.tokens {
        if bool::from(configured.sha256.ct_eq(&digest)) {
            found = Some(configured);
        }
    }
    found.map(|t| Principal {
        kind: PrincipalKind::Token,
        name: Arc::from(t.name.as_str()),
        role: t.role,
    })
}

enum Refusal {
    /// Not signed by this server: maybe the identity provider's.
    NotOurs,
    /// Ours, and refused.
    Final(Error),
}

fn issued(token: &str, credentials: &Credentials, secret: &[u8]) -> Result<Principal, Refusal> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    validation.leeway = 0;
    let key = DecodingKey::from_secret(secret).map_err(|_| Refusal::NotOurs)?;
    let data = jsonwebtoken::decode::<Issued>(token, &key, &validation).map_err(|err| match err
        .kind()
    {
        ErrorKind::ExpiredSignature => Refusal::Final(expired()),
        _ => Refusal::NotOurs,
    })?;
    // The user's role as the auth file says now; a removed user's tokens end with it.
    let user = credentials.users.get(&data.claims.sub).ok_or_else(|| {
        Refusal::Final(Error::Unauthenticated(format!(
            "user '{}' no longer exists",
            data.claims.sub
        )))
    })?;
    if password_digest(&user.password_hash) != data.claims.pwd {
        return Err(Refusal::Final(Error::Unauthenticated(
            "the password changed since this token was issued: log in again".to_owned(),
        )));
    }
    Ok(Principal {
        kind: PrincipalKind::User,
        name: Arc::from(data.claims.sub.as_str()),
        role: user.role,
    })
}

fn expired() -> Error {
    Error::Unauthenticated("the token has expired: log in again".to_owned())
}

fn external(token: &str, jwt: &JwtSettings) -> Result<Principal> {
    let refused = |err: jsonwebtoken::errors::Error| match err.kind() {
        ErrorKind::ExpiredSignature => expired(),
        ErrorKind::ImmatureSignature => {
            Error::Unauthenticated("the token is not valid yet".to_owned())
        }
        ErrorKind::InvalidIssuer => {
            Error::Unauthenticated("the token's issuer is not trusted".to_owned())
        }
        ErrorKind::InvalidAudience => {
            Error::Unauthenticated("the token is not meant for this server (audience)".to_owned())
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            Error::Unauthenticated(format!("the token has no '{claim}' claim"))
        }
        _ => Error::Unauthenticated("invalid token".to_owned()),
    };
    let key = match &jwt.keys {
        JwtKeys::One(key) => key.clone(),
        JwtKeys::Set(set) => {
            let header = jsonwebtoken::decode_header(token).map_err(refused)?;
            let kid = header
                .kid
                .ok_or_else(|| Error::Unauthenticated("the token names no key (kid)".to_owned()))?;
            let jwk = set
                .find(&kid)
                .ok_or_else(|| Error::Unauthenticated(format!("no key '{kid}' in the key set")))?;
            DecodingKey::from_jwk(jwk).map_err(refused)?
        }
    };
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key,
        &jwt.validation,
    )
    .map_err(refused)?;
    let claims = data.claims;
    let subject = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
        .ok_or_else(|| {
            Error::Unauthenticated(
                "the token's 'sub' is not a short string of printable characters".to_owned(),
            )
        })?;
    let role = match claims.get(&jwt.role_claim) {
        Some(serde_json::Value::String(name)) => role_named(name),
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .filter_map(|n| n.as_str().and_then(role_named))
            .max(),
        _ => None,
    }
    .ok_or_else(|| {
        Error::PermissionDenied(format!(
            "the token's '{}' claim names no role (read, write or admin)",
            jwt.role_claim
        ))
    })?;
    Ok(Principal {
        kind: PrincipalKind::Jwt,
        name: Arc::from(subject),
        role,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::auth::Role;
    use crate::auth::file::{StaticToken, User};

    fn credentials() -> Credentials {
        Credentials {
            users: HashMap::from([(
                "alice".to_owned(),
                User {
                    role: Role::Write,
                    password_hash: String::new(),
                },
            )]),
            tokens: vec![StaticToken {
                name: "svc".to_owned(),
                role: Role::Read,
                sha256: Sha256::digest(b"qvr_secret").into(),
            }],
            token_ttl: Duration::from_secs(60),
            ..Credentials::default()
        }
    }

    #[test]
    fn issued_tokens_round_trip_and_follow_the_user() {
        let secret = [7u8; 32];
        let mut creds = credentials();
        let alice = Principal {
            kind: PrincipalKind::User,
            name: Arc::from("alice"),
            role: Role::Write,
        };
        let token = issue(&alice, &creds, &secret).unwrap();
        assert_eq!(check(&token, &creds, &secret).unwrap(), alice);
        // Another server's secret: not ours, and no JWT configured.
        let err = check(&token, &creds, &[8u8; 32]).unwrap_err();
        assert_eq!(crate::error::code_of(&err), tonic::Code::Unauthenticated);
        // The user's role is read from the file at each use; a new password or
        // removal ends the token.
        creds.users.get_mut("alice").unwrap().role = Role::Read;
        assert_eq!(check(&token, &creds, &secret).unwrap().role, Role::Read);
        creds.users.get_mut("alice").unwrap().password_hash = "new".to_owned();
        let err = check(&token, &creds, &secret).unwrap_err();
        assert!(err.to_string().contains("password changed"), "{err}");
        creds.users.clear();
        assert!(
            check(&token, &creds, &secret)
                .unwrap_err()
                .to_string()
                .contains("no longer exists")
        );
    }

    #[test]
    fn expired_tokens_say_so() {
        let secret = [7u8; 32];
        let creds = credentials();
        let claims = Issued {
            sub: "alice".to_owned(),
            iss: ISSUER.to_owned(),
            aud: ISSUER.to_owned(),
            iat: now() - 120,
            exp: now() - 60,
            pwd: password_digest(""),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        let err = check(&token, &creds, &secret).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn jwts_are_checked_against_a_key_set_by_kid() {
        // A key pair made for this test only; the set holds its public half as "k1".
        let private = include_bytes!("testdata/test-only-rsa.key");
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(include_str!("testdata/test-only-jwks.json")).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.set_audience(&["quiver"]);
        let creds = Credentials {
            jwt: Some(JwtSettings {
                keys: JwtKeys::Set(set),
                validation,
                role_claim: "role".to_owned(),
            }),
            ..credentials()
        };
        let sign = |kid: Option<&str>, claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_rsa_pem(private).unwrap(),
            )
            .unwrap()
        };
        let claims = serde_json::json!({
            "sub": "svc-7", "role": "write", "aud": "quiver", "exp": now() + 60
        });
        let principal = check(&sign(Some("k1"), claims.clone()), &creds, &[0; 32]).unwrap();
        assert_eq!(
            (principal.kind, principal.name.as_ref(), principal.role),
            (PrincipalKind::Jwt, "svc-7", Role::Write)
        );
        for (kid, claims, says) in [
            (Some("k2"), claims.clone(), "no key 'k2'"),
            (None, claims.clone(), "names no key"),
            (
                Some("k1"),
                serde_json::json!({"sub": "svc-7", "role": "write", "aud": "quiver", "exp": now() - 600}),
                "expired",
            ),
            (
                Some("k1"),
                serde_json::json!({"sub": "svc-7", "role": "write", "aud": "other", "exp": now() + 60}),
                "audience",
            ),
        ] {
            let err = check(&sign(kid, claims), &creds, &[0; 32]).unwrap_err();
            assert_eq!(crate::error::code_of(&err), tonic::Code::Unauthenticated);
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn static_tokens_are_found_by_their_hash() {
        let creds = credentials();
        let principal = check("qvr_secret", &creds, &[0; 32]).unwrap();
        assert_eq!(
            (principal.kind, principal.role),
            (PrincipalKind::Token, Role::Read)
        );
        assert!(check("qvr_other", &creds, &[0; 32]).is_err());
        let highest = ["read", "admin", "bogus"]
            .iter()
            .filter_map(|n| role_named(n))
            .max();
        assert_eq!(highest, Some(Role::Admin));
    }
}
