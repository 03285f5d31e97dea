//! Storage ports: the traits every storage backend implements.
//!
//! Writes are *issued in call order* when the method is called and the
//! returned future resolves once the write is durable in the backend's terms
//! (an fsync for the embedded store). A caller that does not need durability
//! before going on may drop the future: the write still happens, in order.
//! Reads see every write whose future has resolved.
//!
//! Records here are the persisted schema; adapters wrap them in their own
//! versioned encoding. Times are milliseconds since the Unix epoch, given by
//! the caller (the engine owns the clock).

pub mod conformance;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub type Result<T> = std::result::Result<T, Error>;

/// A store operation's future. Writes are already issued when it is returned.
pub type Pending<T> = BoxFuture<'static, Result<T>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not do the operation (disk full, I/O error, closed).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// One deployed version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: String,
    /// Assigned by `deploy_function`: 1 for the first deploy, then +1.
    pub version: u64,
    pub runtime: String,
    pub handler: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub concurrency: u32,
    pub retries: u32,
    /// First retry delay of a failed asynchronous invocation.
    #[serde(default)]
    pub retry_delay_ms: u64,
    /// Where the unpacked code lives, relative to the data directory.
    pub code_dir: String,
    /// The prepared environment (virtualenv), relative to the data directory.
    pub env_dir: Option<String>,
    /// sha256 of the uploaded code archive.
    pub code_sha256: String,
    pub deployed_at_ms: u64,
}

/// An API token. Only the sha256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: String,
    pub name: String,
    pub created_at_ms: u64,
}

/// A failure of user code, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub kind: String,
    pub exception: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

/// One invocation's record. Upserted as it moves through its states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub function: String,
    pub version: u64,
    /// `sync` or `async`.
    pub mode: String,
    /// One of `shoal_types::InvocationStatus::as_str`.
    pub status: String,
    /// The event as JSON text.
    pub input: String,
    /// The result as JSON text, once succeeded.
    pub output: Option<String>,
    pub error: Option<ErrorRecord>,
    /// Attempts started so far.
    pub attempts: u32,
    /// 1 + retries.
    pub max_attempts: u32,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Time user code ran in the last attempt, in milliseconds.
    pub duration_ms: Option<f64>,
    /// Time the last attempt waited for a worker (including starting one).
    #[serde(default)]
    pub queued_ms: Option<f64>,
    /// Billed GB-seconds over all attempts.
    pub billed_gb_s: f64,
    pub cold_start: bool,
    /// When the next attempt is due, while waiting for a retry.
    pub next_attempt_at_ms: Option<u64>,
}

/// A message to put on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique within the queue; sending an id that is already queued is a no-op.
    pub id: String,
    pub body: Vec<u8>,
    /// Not delivered before this time.
    pub due_ms: u64,
}

/// A message handed out by `lease`. It is invisible to other leases until
/// `lease_until_ms`, then becomes deliverable again unless acked or extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
    /// Times the message was released with `nack` before this delivery.
    pub failures: u32,
    pub lease_until_ms: u64,
}

/// The result of a `lease` call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leased {
    pub deliveries: Vec<Delivery>,
    /// When the earliest message that is not deliverable yet becomes due, so
    /// a consumer knows how long it may sleep.
    pub next_due_ms: Option<u64>,
}

/// Counts for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Deliverable now or later (not leased).
    pub waiting: u64,
    /// Leased and not yet acked.
    pub in_flight: u64,
}

/// Functions and tokens.
pub trait Catalog: Send + Sync + 'static {
    /// Stores a new version of a function. The record's `version` is ignored
    /// and replaced with the next one for that name, which is returned.
    fn deploy_function(&self, record: FunctionRecord) -> Pending<u64>;
    /// The latest version of a function.
    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>>;
    /// A given version of a function.
    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>>;
    /// The latest version of every function, sorted by name.
    fn functions(&self) -> Pending<Vec<FunctionRecord>>;
    /// Removes a function with all its versions. True when it existed.
    fn remove_function(&self, name: &str) -> Pending<bool>;

    fn put_token(&self, token: TokenRecord) -> Pending<()>;
    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>>;
    fn tokens(&self) -> Pending<Vec<TokenRecord>>;
    /// Deletes a token by id. True when it existed.
    fn revoke_token(&self, id: &str) -> Pending<bool>;
}

/// Invocation records and their logs.
pub trait Invocations: Send + Sync + 'static {
    /// Inserts or replaces records.
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()>;
    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>>;
    /// Replaces the logs of an invocation (the latest attempt's logs).
    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()>;
    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>>;
}

/// Durable queues with leases: at-least-once delivery.
pub trait Queues: Send + Sync + 'static {
    fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Pending<()>;
    /// Leases up to `max` messages that are due at `now_ms`, for
    /// `visibility_ms`.
    fn lease(&self, queue: &str, now_ms: u64, max: usize, visibility_ms: u64) -> Pending<Leased>;
    /// Pushes the lease of a delivered message to `lease_until_ms`.
    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> Pending<()>;
    /// Removes delivered messages for good.
    fn ack(&self, queue: &str, ids: Vec<String>) -> Pending<()>;
    /// Releases a delivered message for redelivery at `due_ms`, counting one
    /// more failure.
    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> Pending<()>;
    fn depth(&self, queue: &str) -> Pending<QueueDepth>;
}

/// Everything a node stores, bundled. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    pub catalog: Arc<dyn Catalog>,
    pub invocations: Arc<dyn Invocations>,
    pub queues: Arc<dyn Queues>,
}

impl Backend {
    /// Bundles one adapter that implements every port.
    pub fn from_adapter<A: Catalog + Invocations + Queues>(adapter: Arc<A>) -> Backend {
        Backend {
            catalog: adapter.clone(),
            invocations: adapter.clone(),
            queues: adapter,
        }
    }
}
