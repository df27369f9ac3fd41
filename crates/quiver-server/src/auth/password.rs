//! Passwords: argon2id hashes, verified off the async threads, a few at a time.
//!
//! Each verification costs tens of milliseconds of CPU and 19 MiB of memory, so a flood
//! of logins could take the machine: at most half the CPUs verify at once, a login
//! that waits more than `LOGIN_WAIT` for its turn is refused with
//! `RESOURCE_EXHAUSTED`, and a client address with `MAX_FAILURES` failed logins in
//! `FAILURE_WINDOW` is refused before any verification until the window passes. A successful verification is remembered for
//! `REMEMBERED` (keyed by a SHA-256 of user, password and hash), so a client opening
//! many connections pays for it once.

use std::collections::HashMap;
use std::net::IpAddr;
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
/// Failed logins one client address may make per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 20;
/// The window failed logins are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses whose failures are remembered.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Verifies passwords, bounded.
#[derive(Debug)]
pub(super) struct Verifier {
    slots: Arc<Semaphore>,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    /// Failed logins by client (an IPv6 client by its /64): count, window start.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Verified against when the user does not exist, so that takes as long as a
    /// wrong password.
    /// Made at the first login of an unknown user, not at start (a server with
    /// authentication off never needs it).
    decoy: Arc<std::sync::OnceLock<String>>,
}

impl Verifier {
    pub(super) fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            slots: Arc::new(Semaphore::new((cpus / 2).max(1))),
            remembered: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            decoy: Arc::default(),
        }
    }

    /// Forgets remembered verifications (the auth file changed).
    pub(super) fn forget(&self) {
        self.remembered.lock().expect("never poisoned").clear();
    }

    /// Refuses `client` while it has too many recent failures.
    fn check_failures(&self, client: Option<IpAddr>) -> Result<()> {
        let Some(client) = client else {
            return Ok(());
        };
        let failures = self.failures.lock().expect("never poisoned");
        match failures.get(&client_key(client)) {
            Some((count, since)) if *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW => {
                let wait = (FAILURE_WINDOW - since.elapsed()).as_millis();
                Err(Error::ResourceExhausted(format!(
                    "too many failed logins from {client}; retry after {wait} ms"
                )))
            }
            _ => Ok(()),
        }
    }

    fn count_failure(&self, client: Option<IpAddr>) {
        let Some(client) = client else {
            return;
        };
        let mut failures = self.failures.lock().expect("never poisoned");
        if failures.len() >= MAX_TRACKED_CLIENTS {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED_CLIENTS {
                // Keep the most recent half: a flood of new addresses cannot reset
                // the count of one already failing.
                let mut starts: Vec<Instant> = failures.values().map(|(_, s)| *s).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                failures.retain(|_, (_, since)| *since >= cut);
            }
        }
        let entry = failures
            .entry(client_key(client))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// The user `name` if `password` is theirs; `client` is where the login comes from.
    pub(super) async fn verify(
        &self,
        credentials: &Credentials,
        name: String,
        password: String,
        client: Option<IpAddr>,
    ) -> Result<Principal> {
        let refused = || Error::Unauthenticated("invalid user name or password".to_owned());
        self.check_failures(client)?;
        if password.len() > MAX_PASSWORD || name.len() > 256 {
            self.count_failure(client);
            return Err(refused());
        }
        let user = credentials.users.get(&name);
        let hash = user.map(|u| u.password_hash.clone());
        let key: [u8; 32] = {
            let mut digest = Sha256::new();
            let stored = hash.as_deref().unwrap_or_default();
            for part in [name.as_bytes(), password.as_bytes(), stored.as_bytes()] {
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
        let decoy = Arc::clone(&self.decoy);
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // An unknown user is verified against a decoy, so it costs what a wrong
            // password costs.
            let hash = hash.unwrap_or_else(|| {
                decoy
                    .get_or_init(|| {
                        hash_password("quiver decoy password")
                            .expect("argon2 hashes with its defaults")
                    })
                    .clone()
            });
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
            _ => {
                self.count_failure(client);
                Err(refused())
            }
        }
    }
}

/// What a client address is counted as: itself, or for IPv6 its /64 (one host
/// commonly holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
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
            .verify(&credentials, "alice".into(), "s3cret".into(), None)
            .await
            .unwrap();
        assert_eq!(alice.role, Role::Read);
        // Remembered: the second login is answered without argon2.
        verifier
            .verify(&credentials, "alice".into(), "s3cret".into(), None)
            .await
            .unwrap();
        for (user, password) in [("alice", "wrong"), ("nobody", "s3cret"), ("alice", "")] {
            let err = verifier
                .verify(&credentials, user.into(), password.into(), None)
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), "invalid user name or password");
        }
        // One address failing too often is refused before any verification.
        let client = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..MAX_FAILURES {
            let err = verifier
                .verify(&credentials, "alice".into(), "guess".into(), client)
                .await
                .unwrap_err();
            assert_eq!(crate::error::code_of(&err), tonic::Code::Unauthenticated);
        }
        let err = verifier
            .verify(&credentials, "alice".into(), "s3cret".into(), client)
            .await
            .unwrap_err();
        assert_eq!(crate::error::code_of(&err), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("retry after"), "{err}");
        // Others are not.
        verifier
            .verify(
                &credentials,
                "alice".into(),
                "s3cret".into(),
                Some(IpAddr::from([10, 0, 0, 2])),
            )
            .await
            .unwrap();
        let (token, sha) = new_token();
        assert!(token.starts_with("qvr_") && sha.len() == 64);
    }
}
