//! What a write transaction commits besides its rows, and what it answers: the types
//! both backends' transactions share.

/// What a commit produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The version of this commit, or the latest version when nothing changed.
    pub version: u64,
    /// Rows captured in the change log (0: nothing changed, no version taken).
    pub changes: u64,
}

/// An idempotency record stored with a commit.
pub struct IdempotencyRecord {
    /// The caller's key.
    pub key: String,
    /// A digest of the request, so reusing a key for another request is detected.
    pub request_hash: String,
    /// Encodes the response to store, given the commit version.
    pub response: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
}

impl std::fmt::Debug for IdempotencyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyRecord")
            .field("key", &self.key)
            .field("request_hash", &self.request_hash)
            .finish_non_exhaustive()
    }
}

/// What is stored with a commit besides the changes.
#[derive(Debug, Default)]
pub struct CommitOptions {
    /// The caller's W3C `traceparent`, kept for linking deliveries to the mutation.
    pub trace_context: Option<String>,
    /// The answer to keep for an idempotent request.
    pub idempotency: Option<IdempotencyRecord>,
}

/// A stored answer to an earlier request with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Digest of the request that produced it.
    pub request_hash: String,
    /// The encoded response.
    pub response: Vec<u8>,
}

/// Whether a transaction's changes go to the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capture {
    /// Every changed row is logged and the commit takes a version (every write a
    /// client makes).
    #[default]
    On,
    /// Nothing is logged (loading the demo data set).
    Off,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
