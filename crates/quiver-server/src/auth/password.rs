//! Passwords: argon2id hashes, verified off the async threads, a few at a time.
//!
//! Each verification costs tens of milliseconds of CPU and 19 MiB of memory, so a flood
//! of logins could take the machine: at most one verification per CPU runs at once,
//! and a login that waits more than [`LOGIN_WAIT`] for its turn is refused with
//! `RESOURCE_EXHAUSTED`. A successful verification is remembered for
//! [`REMEMBERED`] (keyed by a SHA-256 of user, password and hash), so a client opening
//! many connections pays for it once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::file::Credentials;
use super::{Principal, PrincipalKind};
use crate::error::{Error, Result};

/// Longest a login waits for a verification slot.
const LOGIN_WAIT: Duration = Duration::from_secs(5);
/// How long a verified password is remembered.
const REMEMBERED: Duration = Duration::from_secs(300);
/// Most remembered verifications.
const MAX_REMEMBERED: usize = 10_000;
/// Longest password verified (argon2 takes any length; nothing needs more).
const MAX_PASSWORD: usize = 1024;

/// Verifies passwords, bounded.
#[derive(Debug)]
pub(super) struct Verifier {
    slots: Arc<Semaphore>,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    /// Verified against when the user does not exist, so that takes as long as a
    /// wrong password.
    decoy: String,
}

impl Verifier {
    pub(super) fn new() -> Self {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            remembered: Mutex::new(HashMap::new()),
            decoy: hash_password("quiver decoy password").expect("argon2 hashes with its defaults"),
        }
    }

    /// Forgets remembered verifications (the auth file changed).
    pub(super) fn forget(&self) {
        self.remembered.lock().expect("never poisoned").clear();
    }

    /// The user `name` if `password` is theirs.
    pub(super) async fn verify(
        &self,
        credentials: &Credentials,
        name: String,
        password: String,
    ) -> Result<Principal> {
        let refused = || Error::Unauthenticated("invalid user name or password".to_owned());
        if password.len() > MAX_PASSWORD || name.len() > 256 {
            return Err(refused());
        }
        let user = credentials.users.get(&name);
        let hash = user.map_or(self.decoy.clone(), |u| u.password_hash.clone());
        let key: [u8; 32] = {
            let mut digest = Sha256::new();
            for part in [name.as_bytes(), password.as_bytes(), hash.as_bytes()] {
                digest.update((part.len() as u64).to_le_bytes());
                digest.update(part);
            }
            digest.finalize().into()
        };
        let principal = |role| Principal {
            kind: PrincipalKind::User,
            name: Arc::from(name.as_str()),
            role,
        };
        if let Some(user) = user
            && self
                .remembered
                .lock()
                .expect("never poisoned")
                .get(&key)
                .is_some_and(|at| at.elapsed() < REMEMBERED)
        {
            return Ok(principal(user.role));
        }
        let permit = tokio::time::timeout(LOGIN_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| {
                Error::ResourceExhausted("too many logins at once; retry after 1000 ms".to_owned())
            })?
            .map_err(|_| Error::Unavailable("the server is stopping".to_owned()))?;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .map_err(|err| Error::Internal(format!("password verification failed: {err}")))?;
        match user {
            Some(user) if ok => {
                let mut remembered = self.remembered.lock().expect("never poisoned");
                if remembered.len() >= MAX_REMEMBERED {
                    remembered.retain(|_, at| at.elapsed() < REMEMBERED);
                    if remembered.len() >= MAX_REMEMBERED {
                        remembered.clear();
                    }
                }
                remembered.insert(key, Instant::now());
                Ok(principal(user.role))
            }
            _ => Err(refused()),
        }
    }
}

/// The argon2id PHC string of `password`, with a random salt and the default cost.
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| Error::Internal(format!("cannot hash the password: {err}")))
}

/// A new random API token and the SHA-256 (hex) to put in the auth file.
pub fn new_token() -> (String, String) {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has a random source");
    let token = format!(
        "qvr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = Sha256::digest(token.as_bytes());
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    (token, hex)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::auth::Role;
    use crate::auth::file::User;

    #[tokio::test]
    async fn passwords_verify_against_their_hash() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let credentials = Credentials {
            users: HashMap::from([(
                "alice".to_owned(),
                User {
                    role: Role::Read,
                    password_hash: hash,
                },
            )]),
            ..Credentials::default()
        };
        let verifier = Verifier::new();
        let alice = verifier
            .verify(&credentials, "alice".into(), "s3cret".into())
            .await
            .unwrap();
        assert_eq!(alice.role, Role::Read);
        // Remembered: the second login is answered without argon2.
        verifier
            .verify(&credentials, "alice".into(), "s3cret".into())
            .await
            .unwrap();
        for (user, password) in [("alice", "wrong"), ("nobody", "s3cret"), ("alice", "")] {
            let err = verifier
                .verify(&credentials, user.into(), password.into())
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), "invalid user name or password");
        }
        let (token, sha) = new_token();
        assert!(token.starts_with("qvr_") && sha.len() == 64);
    }
}
