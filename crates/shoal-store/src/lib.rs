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

pub mod blobs;
pub mod channels;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "memory")]
pub mod memory;
pub mod usage;

use std::sync::Arc;

pub use blobs::{
    Applied, BitType, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, BlobStream, BlobUpload,
    Blobs, Created, FilePiece, OpSpec, Overflow,
};
pub use channels::{
    BlobWrite, ChannelInfo, ChannelMessage, ChannelRead, ChannelSettings, Channels,
    NewChannelMessage, Published,
};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shoal_types::{FailureKind, FunctionName, InvocationMode, InvocationStatus, Role};
pub use usage::{Grain, Rollup, RollupQuery, RollupRow, Usage};

pub type Result<T> = std::result::Result<T, Error>;

/// A store operation's future. Writes are already issued when it is returned.
pub type Pending<T> = BoxFuture<'static, Result<T>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not do the operation (I/O error, closed).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The write was refused because the disk under the store is full. No
    /// write acknowledged before is lost; writes succeed again once space is
    /// freed, without a restart.
    #[error("storage full: {0}")]
    Full(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The thing the operation needs (a category) does not exist. Carries
    /// its bare name.
    #[error("{0} not found")]
    NotFound(String),
}

/// Whether the store can take writes now, as far as it knows (see
/// [`Invocations::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Ok,
    /// A write failed for lack of space and the store has not seen enough
    /// free space since: writes fail with [`Error::Full`]. Carries what the
    /// adapter knows (the path, the free space).
    Full(String),
}

/// One deployed version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: FunctionName,
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
    /// The queue this function consumes, if it subscribes to one.
    #[serde(default)]
    pub subscribe: Option<SubscriptionRecord>,
    /// The shared rate limiter its invocations take tokens from.
    #[serde(default)]
    pub limiter: Option<String>,
    /// The concurrency key: at most `concurrency_per_key` queued invocations
    /// run at once per value of this event field (`tenant`, `a.b`).
    #[serde(default)]
    pub concurrency_key: Option<ConcurrencyKey>,
    /// The network its processes see.
    #[serde(default)]
    pub network: shoal_types::Network,
    /// The digest of the deployed files (`shoal_runtime::code_digest`),
    /// checked when the code is loaded. `None` for older versions.
    #[serde(default)]
    pub code_digest: Option<String>,
    /// `[env]` of `shoal.toml`: its processes' environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The secrets it gets as environment variables (names only).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Who deployed it: the deploying token's id and name. `None` for
    /// versions deployed before this was recorded.
    #[serde(default)]
    pub deployed_by: Option<DeployedBy>,
    /// `[cache]` of `shoal.toml`: the result cache of synchronous calls.
    #[serde(default)]
    pub cache: Option<CacheSettings>,
    /// `max_invocations_per_worker` of `shoal.toml`: a worker is replaced
    /// after serving this many invocations. `None`: never (and not written,
    /// so records without it are stored as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_invocations_per_worker: Option<u32>,
    /// `max_jobs_in_flight` of `shoal.toml`: at most this many of the
    /// function's jobs have their children out at once (across nodes);
    /// later ones wait, in creation order. `None`: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs_in_flight: Option<u32>,
    /// `[[route]]` of `shoal.toml`: the HTTP routes the function serves.
    /// Empty (and not written) for functions without routes, so records
    /// stored before routes existed load as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRecord>,
    /// `[[schedule]]` of `shoal.toml`: when the function runs by itself.
    /// Empty (and not written) for functions without schedules, so records
    /// stored before schedules existed load as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleRecord>,
    /// `[[trigger]]` of `shoal.toml`: what else runs the function
    /// (document changes, blob events, another function's outcome). Empty
    /// (and not written) for functions without triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerRecord>,
}

/// One `[[trigger]]` of a function: its runs are asynchronous invocations
/// with an event describing what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum TriggerRecord {
    /// Document writes and deletes in `category`, in batches of at most
    /// `batch_size` changes, waiting up to `batch_window_ms` to fill one.
    Docs {
        category: String,
        batch_size: u32,
        batch_window_ms: u64,
    },
    /// Blobs created (uploaded) or deleted under a key prefix.
    Blob {
        prefix: String,
        created: bool,
        deleted: bool,
    },
    /// The final status of asynchronous invocations of `function`
    /// (Lambda's destinations).
    Outcome { function: String, when: OutcomeWhen },
}

/// Which outcomes of its source an `outcome` trigger follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeWhen {
    /// Succeeded.
    Success,
    /// Failed or timed out (not cancelled).
    Failure,
    /// Either.
    Any,
}

/// One `[[schedule]]` of a function: at each tick an asynchronous
/// invocation of its live version, with `event`, fired once across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// `every`: the period in ms; the ticks are the multiples of it since
    /// the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// `cron`: the expression, with seconds (six fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// `timezone` of a cron schedule (an IANA name such as
    /// `Europe/Paris`); `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The event of each run, as JSON text.
    pub event: String,
    /// `missed = "catch_up"`: ticks missed while no node ran (at most the
    /// last [`MAX_CATCH_UP`] of them) fire late; otherwise they are skipped.
    #[serde(default)]
    pub catch_up: bool,
}

/// The most missed ticks of one schedule fired when catching up.
pub const MAX_CATCH_UP: usize = 10;

/// One `[[route]]` of a function: requests to `method path` outside the
/// node's reserved prefixes run the function with the request as its event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD`, `OPTIONS`, or `*`
    /// (any of them).
    pub method: String,
    /// The path pattern (matchit syntax: `/a/{id}`, `/files/{*rest}`).
    pub path: String,
    /// `auth = "public"`: anyone may call it; otherwise a token with invoke
    /// rights is needed.
    pub public: bool,
    /// The per-client-address rate limit, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRate>,
    /// The CORS settings, if cross-origin calls are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<RouteCors>,
}

/// `rate_limit = { per_second, burst }` of a route: GCRA per client
/// address, kept in memory by each node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteRate {
    pub per_second: f64,
    pub burst: u32,
}

/// `cors = { ... }` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCors {
    /// Allowed origins (`https://example.com`), or `*` for any.
    pub origins: Vec<String>,
    /// Methods a preflight allows, uppercase.
    pub methods: Vec<String>,
    /// Request headers a preflight allows, lowercase.
    pub headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (cookies, auth headers).
    pub credentials: bool,
    /// How long a browser may cache a preflight's answer, in seconds.
    pub max_age_s: u32,
}

/// A function's result cache (`[cache]` of `shoal.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSettings {
    /// How long a result is served, in milliseconds.
    pub ttl_ms: u64,
    /// The most bytes of cached results on one node.
    pub max_bytes: u64,
}

/// The token that deployed a function version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedBy {
    pub token_id: String,
    pub token_name: String,
    /// The user the token belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A function's named references to its versions: which version is live
/// when it is not the latest (after a rollback), and its aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRefs {
    pub name: FunctionName,
    /// The live version chosen by a rollback, while the latest version is
    /// still the one it was chosen over; a later deploy makes the new
    /// version live whatever this says.
    #[serde(default)]
    pub pinned: Option<PinnedLive>,
    /// Alias → version.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, u64>,
}

/// A live version chosen over the latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedLive {
    pub version: u64,
    /// The latest version when it was chosen: the pin holds only while
    /// this is still the latest.
    pub latest: u64,
}

impl FunctionRefs {
    /// The live version, given the latest one.
    pub fn live(&self, latest: u64) -> u64 {
        match self.pinned {
            Some(p) if p.latest == latest => p.version,
            _ => latest,
        }
    }
}

/// `concurrency_key` / `concurrency_per_key` of `shoal.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyKey {
    /// A top-level event field, or a dotted path into nested objects.
    pub field: String,
    pub per_key: u32,
}

/// A function's subscription to a queue (`[subscribe]` in `shoal.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub queue: String,
    /// Messages per invocation; above 1 the event is a list of bodies.
    pub batch_size: u32,
    /// Invocations from this queue at once.
    pub concurrency: u32,
}

/// An API token. Only the sha256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: Role,
    pub name: String,
    pub created_at_ms: u64,
    /// Channel scopes (`subscribe:board.*`, `publish:chat`): a token with
    /// any is limited to those channel actions and refused everywhere else.
    /// Empty (and not written) for ordinary tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// The user this token belongs to; `None` for a token of no user (the
    /// node's first admin token, tokens made before users existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Resource scopes (`function:resize-*`, `category:photos`,
    /// `queue:jobs.*`): with any (or any channel scope) the token may act
    /// only on the resources they name. Empty (and not written) for
    /// ordinary tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A named user: a role, and the tokens that name it (`TokenRecord::user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// The highest role any of its tokens may have.
    pub role: Role,
    pub created_at_ms: u64,
}

/// A failure of user code, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub kind: FailureKind,
    pub exception: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

/// One invocation's record. Upserted as it moves through its states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub function: FunctionName,
    pub version: u64,
    pub mode: InvocationMode,
    pub status: InvocationStatus,
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
    /// The job slot this invocation fills (a child of `ctx.map`, or the
    /// `then` of a nested job that finishes its parent's slot).
    #[serde(default)]
    pub job: Option<JobSlot>,
    /// A job this invocation created with `ctx.map` and handed its own job
    /// slot to: when it succeeds, the slot is filled by that job's fan-in
    /// instead, so a parent's fan-in waits for the whole tree.
    #[serde(default)]
    pub handed_to: Option<String>,
    /// Answered from the function's result cache (`[cache]`) without
    /// running it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The id of the token that started it (a child, retry, fan-in or
    /// trigger inherits its origin's); None for the node's own work
    /// (schedules) and records written before round 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The user that token belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Child `index` of job `job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSlot {
    pub job: String,
    pub index: u64,
}

/// The asynchronous invocation a job starts, in the same write as its last
/// child's result, when every child has finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThenPlan {
    pub record: InvocationRecord,
    pub queue: String,
    /// The queue message (its id is the invocation's id).
    pub body: String,
}

/// A fan-out: `total` children of one function, with an optional fan-in.
/// Immutable once created; its progress is a `JobProgress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The children's function.
    pub function: FunctionName,
    /// The fan-in function, if any.
    pub then: Option<FunctionName>,
    pub total: u64,
    /// The invocation whose `ctx.map` created the job, if any.
    pub invocation: Option<String>,
    /// The job of that invocation, if it was itself a job's child: the tree.
    pub parent: Option<String>,
    /// The parent's slot this job fills when it completes (through its
    /// `then` invocation, which carries the slot, or, without one, by itself
    /// with the output `{"job": id, "count": total}`).
    pub continues: Option<JobSlot>,
    pub created_at_ms: u64,
    /// Written when the last child finishes, unless the job was cancelled.
    pub then_plan: Option<ThenPlan>,
}

/// Where a job stands. Counts only final children; `total` minus their sum
/// are queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobProgress {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub finished_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
}

impl JobProgress {
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// One child's final outcome, kept in the job (the fan-in reads them in
/// pages rather than getting them in its event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: u64,
    pub invocation: String,
    /// A final status.
    pub status: InvocationStatus,
    /// The result as JSON text, when succeeded.
    pub output: Option<String>,
    pub error: Option<ErrorRecord>,
    pub finished_at_ms: u64,
}

/// What `finish_child` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChildFinished {
    /// False when the slot already had a result (a redelivery): nothing changed.
    pub recorded: bool,
    /// Jobs this write completed (the job, and parents whose slot it filled).
    pub completed: Vec<String>,
    /// Queues that received a `then` message in this write.
    pub sent_to: Vec<String>,
}

/// A message to put on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique within the queue; sending an id that is already queued is a no-op.
    pub id: String,
    pub body: Vec<u8>,
    /// Not delivered before this time.
    pub due_ms: u64,
    /// When it was sent (for the oldest message's age).
    pub sent_ms: u64,
    /// Deduplication: a message whose `(key, until_ms)` key was sent to the
    /// same queue before, with that earlier `until_ms` still in the future
    /// (compared with `sent_ms`), is dropped. Survives acks, purges and
    /// restarts. A dropped message (or one whose id is queued) neither
    /// counts as sent nor takes the key; an accepted one takes the key
    /// until its own `until_ms`.
    pub dedup: Option<(String, u64)>,
    /// A concurrency key (a tenant id, say): `lease_keyed` hands out at most
    /// so many messages of one key at once. Kept through retries, dead
    /// letters and redrives.
    pub key: Option<String>,
}

/// A message handed out by `lease`. It is invisible to other leases until
/// `lease_until_ms`, then becomes deliverable again unless acked or extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
    /// Times the message was released with `nack` before this delivery.
    pub failures: u32,
    /// Attempts begun on the message before this delivery (counted by
    /// `started`): higher than `failures` when an attempt was cut short (the
    /// node died while it ran).
    pub starts: u32,
    pub lease_until_ms: u64,
    /// The message's concurrency key.
    pub key: Option<String>,
}

/// Which keyed messages a lease may take: at most `per_key` of one key are
/// out at once, counting `running` (messages of the key the caller still
/// works on) and those taken by this lease. Messages without a key are not
/// limited. A key that carries its own limit (see [`own_key_limit`]) is
/// limited by that instead of `per_key`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyLimit {
    pub per_key: u32,
    pub running: std::collections::HashMap<String, u32>,
}

impl KeyLimit {
    /// How many messages of `key` may be out at once under this limit.
    pub fn of(&self, key: &str) -> u32 {
        own_key_limit(key).unwrap_or(self.per_key)
    }
}

/// The limit a concurrency key carries itself: a key of the form
/// `"\0" <decimal 1..=u32::MAX> "\0" <anything>` (a job's children under
/// `max_in_flight`) is limited by that number whatever `per_key` a lease
/// gives. The engine never makes another key start with a NUL byte.
/// (The Redis store checks the same pattern in Lua.)
pub fn own_key_limit(key: &str) -> Option<u32> {
    let rest = key.strip_prefix('\0')?;
    let (digits, _) = rest.split_once('\0')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
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
    /// In the dead-letter list.
    pub dead: u64,
    /// `sent_ms` of the oldest message that is waiting or in flight.
    pub oldest_sent_ms: Option<u64>,
}

/// Monotonic totals of a queue since it first saw a message, for rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounters {
    /// Messages accepted by `send` (deduplicated ones not counted).
    pub sent: u64,
    pub acked: u64,
    /// Releases by `nack` (failed attempts that will be retried).
    pub nacked: u64,
    /// Messages moved to the dead-letter list.
    pub dead_lettered: u64,
}

/// A message that failed too often, kept for inspection and redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub body: Vec<u8>,
    pub failures: u32,
    pub sent_ms: u64,
    pub dead_at_ms: u64,
    /// Why it was dead-lettered (the last error), as given by the engine.
    pub reason: String,
}

/// One sample of a queue's state, for charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSample {
    pub at_ms: u64,
    pub depth: QueueDepth,
    pub counters: QueueCounters,
}

/// A named queue's settings (user queues; asynchronous invocations use
/// internal queues without a record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub name: String,
    /// Deliveries before a message is dead-lettered (1 = no retries).
    pub max_attempts: u32,
    /// How long a delivery is invisible to others; extended while the
    /// handler runs.
    pub visibility_ms: u64,
    /// First retry delay; doubled each retry, with jitter.
    pub retry_delay_ms: u64,
    /// How long a deduplication id is remembered.
    pub dedup_window_ms: u64,
    pub created_at_ms: u64,
}

/// A named rate limiter shared by functions: `per_second` tokens per second,
/// bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimiterRecord {
    pub name: String,
    pub per_second: f64,
    pub burst: u32,
    pub updated_at_ms: u64,
}

/// A category of JSON documents, split into shards placed on shard slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRecord {
    pub name: String,
    /// The shard level k: documents are spread over shards `0..k`.
    pub shards: u32,
    /// `slots[i]` is the shard slot shard `i` lives on, assigned round-robin
    /// across categories from a global counter (a later multi-node backend
    /// gives each node a set of slots).
    pub slots: Vec<u32>,
    pub created_at_ms: u64,
}

/// One document to write. The engine chooses the shard (a hash of the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocWrite {
    pub shard: u32,
    pub id: String,
    /// The document as compact JSON text.
    pub body: Vec<u8>,
}

/// One stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    pub id: String,
    pub body: Vec<u8>,
}

/// Counts of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStats {
    pub docs: u64,
    /// Sum of the documents' JSON sizes.
    pub bytes: u64,
    /// Bumped by every committed write that changes the shard (put, delete),
    /// so a cache of the shard's documents knows when it is stale. Never
    /// reused under the same category name, not even by a category created
    /// again after a delete. 0 for a shard never written.
    pub version: u64,
}

/// Documents in categories.
///
/// Every operation on a category that does not exist fails with `NotFound`,
/// except `create_category`, `category` (`None`), `categories` and
/// `delete_category` (`false`).
pub trait Docs: Send + Sync + 'static {
    /// Creates the category unless it exists; returns the stored record and
    /// whether it was created now. Placement takes the next `shards` slots
    /// (modulo `slot_count`) from a global round-robin counter.
    fn create_category(
        &self,
        name: &str,
        shards: u32,
        slot_count: u32,
        now_ms: u64,
    ) -> Pending<(CategoryRecord, bool)>;
    fn category(&self, name: &str) -> Pending<Option<CategoryRecord>>;
    /// Every category, sorted by name.
    fn categories(&self) -> Pending<Vec<CategoryRecord>>;
    /// Deletes a category with all its documents. True when it existed.
    /// The category is gone at once; its documents may be removed in the
    /// background, but are never visible again (a category created again
    /// under the name starts empty).
    fn delete_category(&self, name: &str) -> Pending<bool>;
    /// Deletes the category only while it holds no documents, checked and
    /// done in one step (a write cannot land in between and be lost).
    /// Returns how many documents it holds: 0 means it was deleted. Fails
    /// with `NotFound` when it does not exist.
    fn delete_category_if_empty(&self, name: &str) -> Pending<u64>;
    /// Writes documents atomically: all of them or none. An id that exists is
    /// replaced; of equal ids in one call the last wins. Fails with
    /// `NotFound`, writing nothing, when the category does not exist or a
    /// shard is not below its `shards`.
    fn put_docs(&self, category: &str, docs: Vec<DocWrite>) -> Pending<()>;
    fn get_doc(&self, category: &str, shard: u32, id: &str) -> Pending<Option<Vec<u8>>>;
    /// Deletes documents; returns how many existed. A shard out of range
    /// holds nothing.
    fn delete_docs(&self, category: &str, docs: Vec<(u32, String)>) -> Pending<u64>;
    /// Documents of one shard in id order (bytes of the id), after `after`
    /// (exclusive), at most `limit` of them.
    fn scan_shard(
        &self,
        category: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<StoredDoc>>;
    /// Per-shard counts and versions, indexed by shard.
    fn shard_stats(&self, category: &str) -> Pending<Vec<ShardStats>>;

    // ---- partial results of queries spread over the nodes sharing the store ----

    /// True when the store keeps the partial results of queries whose
    /// shards run on several nodes (`put_query_part` and the rest). False
    /// (the default, a store only one node uses): a query runs wholly on the
    /// node that received it, and the other methods fail.
    fn shares_queries(&self) -> bool {
        false
    }
    /// Stores the partial result of one shard of a query unless one is
    /// stored for that shard already: the first write wins, so a shard run
    /// twice (a node's lease lapsed while it ran) counts once. True when
    /// this write was the one stored. The query's partials expire `ttl_ms`
    /// after this write (a store may keep them longer), so an origin that
    /// died leaves nothing behind for good.
    fn put_query_part(
        &self,
        query_id: &str,
        shard: u32,
        part: Vec<u8>,
        ttl_ms: u64,
    ) -> Pending<bool> {
        let _ = (query_id, shard, part, ttl_ms);
        Box::pin(std::future::ready(Err(no_shared_queries())))
    }
    /// The stored partials of `shards`, in the order asked; `None` for a
    /// shard without one yet.
    fn query_parts(&self, query_id: &str, shards: Vec<u32>) -> Pending<Vec<Option<Vec<u8>>>> {
        let _ = (query_id, shards);
        Box::pin(std::future::ready(Err(no_shared_queries())))
    }
    /// Removes every partial of the query (none stored: a no-op).
    fn drop_query_parts(&self, query_id: &str) -> Pending<()> {
        let _ = query_id;
        Box::pin(std::future::ready(Err(no_shared_queries())))
    }
}

fn no_shared_queries() -> Error {
    Error::Unavailable("this store does not share queries between nodes".into())
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
    /// Removes a function with all its versions (and its refs). True when
    /// it existed.
    fn remove_function(&self, name: &str) -> Pending<bool>;
    /// Every stored version of a function, oldest first.
    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>>;
    /// Creates or replaces a function's refs (live pin and aliases).
    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()>;
    /// The refs of every function that has any, sorted by name.
    fn function_refs(&self) -> Pending<Vec<FunctionRefs>>;

    fn put_token(&self, token: TokenRecord) -> Pending<()>;
    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>>;
    fn tokens(&self) -> Pending<Vec<TokenRecord>>;
    /// Deletes a token by id. True when it existed.
    fn revoke_token(&self, id: &str) -> Pending<bool>;

    /// Creates or replaces a user (by name). Bumps the catalog generation.
    /// The default (a store that keeps no users) refuses.
    fn put_user(&self, user: UserRecord) -> Pending<()> {
        let _ = user;
        Box::pin(std::future::ready(Err(Error::Unavailable(
            "this store keeps no users".into(),
        ))))
    }

    /// A user by name.
    fn user(&self, name: &str) -> Pending<Option<UserRecord>> {
        let _ = name;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Every user, sorted by name.
    fn users(&self) -> Pending<Vec<UserRecord>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Deletes a user by name (not its tokens: the engine revokes them).
    /// True when it existed. Bumps the catalog generation.
    fn delete_user(&self, name: &str) -> Pending<bool> {
        let _ = name;
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Creates or replaces a queue's settings.
    fn put_queue(&self, queue: QueueRecord) -> Pending<()>;
    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>>;
    /// Every queue, sorted by name.
    fn queues(&self) -> Pending<Vec<QueueRecord>>;
    /// Removes a queue's settings. True when it existed. (Its messages are
    /// removed with `Queues::purge` and `purge_dead`.)
    fn remove_queue(&self, name: &str) -> Pending<bool>;

    /// Creates or replaces a rate limiter.
    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()>;
    /// Every limiter, sorted by name.
    fn limiters(&self) -> Pending<Vec<LimiterRecord>>;
    /// Removes a limiter. True when it existed.
    fn remove_limiter(&self, name: &str) -> Pending<bool>;

    /// Stores a function's code archive under its SHA-256, so every node
    /// sharing the store can fetch the code of any version it runs. A store
    /// only one node uses need not keep it (the code is on that node's
    /// disk): the default keeps nothing.
    fn put_code(&self, sha256: &str, archive: Vec<u8>) -> Pending<()> {
        let _ = (sha256, archive);
        Box::pin(std::future::ready(Ok(())))
    }

    /// A code archive stored with `put_code`.
    fn code(&self, sha256: &str) -> Pending<Option<Vec<u8>>> {
        let _ = sha256;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The secrets every node sharing the store uses, sealed by the engine
    /// (the store sees only ciphertext, never a name or a value). `None`
    /// when the store keeps no secrets, the default: a store only one node
    /// uses leaves them to that node (a file in its data directory).
    /// Before the first [`put_secrets`](Self::put_secrets) a store that
    /// keeps them answers version 0 with nothing sealed.
    fn secrets(&self) -> Pending<Option<SealedSecrets>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Replaces the sealed secrets, if their version is still `expected`
    /// (a compare-and-set: nodes read, change and write the whole map, and
    /// a write based on a stale read must not undo another node's). Bumps
    /// the catalog generation in the same step, so the other nodes reload
    /// them. Returns the new version, or `None` when the version moved
    /// (read again and retry). Only called on a store whose
    /// [`secrets`](Self::secrets) answers `Some`; the default refuses.
    fn put_secrets(&self, expected: u64, sealed: Vec<u8>) -> Pending<Option<u64>> {
        let _ = (expected, sealed);
        Box::pin(std::future::ready(Err(Error::Unavailable(
            "this store keeps no secrets".into(),
        ))))
    }

    /// A number that changes with every write above (functions, refs,
    /// tokens, queue and limiter records), so nodes sharing the store
    /// notice what other nodes changed. A store only one node uses may
    /// answer 0 always (the default).
    fn catalog_generation(&self) -> Pending<u64> {
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Creates or replaces a node's heartbeat record. A store only one node
    /// uses need not keep them (the default keeps nothing; the node knows
    /// itself).
    fn put_node(&self, node: NodeRecord) -> Pending<()> {
        let _ = node;
        Box::pin(std::future::ready(Ok(())))
    }

    /// Every node record, sorted by id.
    fn nodes(&self) -> Pending<Vec<NodeRecord>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Removes a node's record. True when it existed.
    fn remove_node(&self, id: &str) -> Pending<bool> {
        let _ = id;
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Takes up to `want` tokens of a rate limiter whose state the store
    /// keeps, so every node sharing the store draws from one bucket (GCRA
    /// on the store's own clock: one token every `interval_ms`, bursts up
    /// to `window_ms / interval_ms + 1`); with `peek`, only counts them.
    /// `None` when the store keeps no limiter state (a store one node uses:
    /// the engine keeps it in memory), the default.
    fn take_tokens(
        &self,
        limiter: &str,
        rate: TokenRate,
        want: u32,
        peek: bool,
    ) -> Pending<Option<Tokens>> {
        let _ = (limiter, rate, want, peek);
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// The secrets as a store keeps them for every node sharing it
/// ([`Catalog::secrets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSecrets {
    /// 0 until the first [`Catalog::put_secrets`]; one more with each.
    pub version: u64,
    /// Opaque to the store (the engine's format); empty at version 0.
    pub sealed: Vec<u8>,
}

/// A rate limiter's pace, for [`Catalog::take_tokens`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenRate {
    /// Milliseconds between tokens.
    pub interval_ms: f64,
    /// How far the limiter may run ahead of now: (burst - 1) intervals.
    pub window_ms: f64,
}

/// What [`Catalog::take_tokens`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Tokens taken (or, when peeking, available).
    pub granted: u32,
    /// When none was: how long until one is, in milliseconds.
    pub wait_ms: u64,
}

/// A node of a cluster, as its heartbeat last recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Chosen by the node when it starts (a new one each start).
    pub id: String,
    /// Where its HTTP API listens, as it was told (`--listen`).
    pub address: String,
    /// Shoal's version.
    pub version: String,
    pub started_at_ms: u64,
    pub last_seen_ms: u64,
    /// Invocations running on it now.
    pub running: u64,
    /// Worker processes it has (warm and busy).
    pub workers: u64,
    /// Its one-minute load average, when the system tells it.
    pub load: Option<f64>,
}

/// What one step of [`Invocations::purge_invocations`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Purged {
    /// Records deleted (with their logs).
    pub deleted: u64,
    /// The last id looked at, to pass as `after` to the next step; `None`
    /// once the step reached the last record.
    pub next: Option<String>,
}

/// Which invocations [`Invocations::list_invocations`] returns: every field
/// that is set narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvocationFilter {
    pub function: Option<FunctionName>,
    /// The record's current status (it moves as the invocation runs).
    pub status: Option<InvocationStatus>,
    pub mode: Option<InvocationMode>,
    /// Created at or after this time.
    pub since_ms: Option<u64>,
    /// Created before this time.
    pub until_ms: Option<u64>,
}

/// A place in the newest-first order of invocations: `(created_at_ms, id)`.
/// A page after it holds the records strictly older in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InvocationCursor {
    pub created_at_ms: u64,
    pub id: String,
}

impl InvocationCursor {
    /// The cursor just past `record`.
    pub fn after(record: &InvocationRecord) -> InvocationCursor {
        InvocationCursor {
            created_at_ms: record.created_at_ms,
            id: record.id.clone(),
        }
    }
}

/// One page of [`Invocations::list_invocations`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InvocationPage {
    /// Newest first: by `created_at_ms`, then id, both descending.
    pub records: Vec<InvocationRecord>,
    /// Where the next page starts; `None` when no record follows.
    pub next: Option<InvocationCursor>,
}

/// Invocation records and their logs.
pub trait Invocations: Send + Sync + 'static {
    /// Inserts or replaces records.
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()>;
    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>>;
    /// Up to `limit` records that match `filter`, newest first, strictly
    /// after `after` in that order (from the newest when `None`). Indexed:
    /// a page costs about `limit` record reads whatever the store holds,
    /// except that `mode` is checked on the entries of the index the other
    /// fields choose: a store may bound how many entries one call reads
    /// (redb: 10,000), so with a `mode` a page may hold fewer than `limit`
    /// records while `next` is set. Records written by jobs (children,
    /// fan-ins) are listed like any other; a record whose status changed is
    /// found under its new status only.
    fn list_invocations(
        &self,
        filter: &InvocationFilter,
        after: Option<&InvocationCursor>,
        limit: usize,
    ) -> Pending<InvocationPage>;
    /// How many invocation records are stored (cheap: no scan).
    fn count_invocations(&self) -> Pending<u64>;
    /// One step of the retention sweep: looks at up to `scan` records in
    /// id order after `after` (from the first when `None`) and deletes,
    /// with their logs, those whose status is final and that finished
    /// before `before_ms`. Records still queued or running are never
    /// deleted, however old.
    fn purge_invocations(
        &self,
        before_ms: u64,
        after: Option<&str>,
        scan: usize,
    ) -> Pending<Purged>;
    /// Replaces the logs of an invocation (the latest attempt's logs).
    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()>;
    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>>;
    /// Whether the whole store (every port) takes writes now: a cheap flag,
    /// no I/O. Writes issued while it says `Full` fail with `Error::Full`.
    /// The engine checks it where it answers before a write is durable (a
    /// synchronous invocation), and `/healthz` reports it.
    fn health(&self) -> StoreHealth;
}

/// Durable queues with leases: at-least-once delivery.
pub trait Queues: Send + Sync + 'static {
    /// Stores new messages. Answers, per message in order, `None` when it
    /// was stored (or its id was queued already: a repeated send), or
    /// `Some(id)` of the message holding its deduplication key, when it was
    /// dropped as a duplicate (`Some("")` when that id is not known: a key
    /// stored before ids were kept).
    fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Pending<Vec<Option<String>>>;
    /// Leases up to `max` messages that are due at `now_ms`, for
    /// `visibility_ms`: expired leases first, then in due order (send order
    /// for equal due times).
    fn lease(&self, queue: &str, now_ms: u64, max: usize, visibility_ms: u64) -> Pending<Leased> {
        self.lease_keyed(queue, now_ms, max, visibility_ms, None)
    }
    /// Like `lease`, passing over messages whose key is at its limit, so
    /// that one busy key never holds back the others (they are taken in
    /// due order among the keys that have room). A key's skipped messages
    /// stay where they are: no write, no reordering.
    fn lease_keyed(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Pending<Leased>;
    /// Pushes the lease of a delivered message to `lease_until_ms`.
    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> Pending<()>;
    /// Removes messages for good: delivered ones, and also waiting ones
    /// (taking work off a queue before anyone leased it). Unknown ids are
    /// ignored.
    fn ack(&self, queue: &str, ids: Vec<String>) -> Pending<()>;
    /// Releases a delivered message for redelivery at `due_ms`, counting one
    /// more failure.
    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> Pending<()>;
    /// Counts, durably, that an attempt on these delivered messages begins:
    /// the next delivery of each shows one more `starts`, even when this
    /// one ends in no ack or nack (the node died). Unknown ids are ignored.
    fn started(&self, queue: &str, ids: Vec<String>) -> Pending<()>;
    fn depth(&self, queue: &str) -> Pending<QueueDepth>;
    /// The queue's totals, durable, changed in the same write as the
    /// operations they count. Zero for a queue never written.
    fn counters(&self, queue: &str) -> Pending<QueueCounters>;
    /// Moves a message (leased or waiting), with its body, failures and
    /// `sent_ms`, to the queue's dead-letter list in one step. An id not
    /// queued is a no-op; an id already dead-lettered is replaced.
    fn dead_letter(&self, queue: &str, id: &str, reason: String, now_ms: u64) -> Pending<()>;
    /// Dead letters in id order after `after` (exclusive), at most `limit`.
    fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<DeadLetter>>;
    /// Puts dead letters back on the queue, due at `now_ms` with their
    /// failures reset and their `sent_ms` kept (all of them when `ids` is
    /// `None`); returns how many. Unknown ids are skipped, and so is a dead
    /// letter whose id is queued again (it stays a dead letter).
    fn redrive(&self, queue: &str, ids: Option<Vec<String>>, now_ms: u64) -> Pending<u64>;
    /// Deletes dead letters (all when `ids` is `None`); returns how many.
    fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Pending<u64>;
    /// Deletes every waiting message of a queue (not leased ones, not dead
    /// letters); returns how many.
    fn purge(&self, queue: &str) -> Pending<u64>;
    /// Stores samples (one per queue per tick; an equal `(queue, at_ms)`
    /// replaces) and drops every queue's samples older than `keep_after_ms`.
    fn record_samples(
        &self,
        samples: Vec<(String, QueueSample)>,
        keep_after_ms: u64,
    ) -> Pending<()>;
    /// Samples of a queue at or after `since_ms`, oldest first.
    fn samples(&self, queue: &str, since_ms: u64) -> Pending<Vec<QueueSample>>;

    /// [`Backend::put_and_send`] in one step, for a store where one call
    /// costs less than three (Redis: one script instead of a depth read, a
    /// records write and a send). `None`, the default: the store has no
    /// such step, and the backend makes the separate calls.
    fn put_and_send(
        &self,
        records: &[InvocationRecord],
        queue: &str,
        messages: &[NewMessage],
        cap: u64,
    ) -> Option<Pending<Admitted>> {
        let _ = (records, queue, messages, cap);
        None
    }

    /// `lease_keyed`, answering with each delivery (in the same order) the
    /// invocation record whose id is the message's id, or `None` where
    /// there is none: for the queues of asynchronous invocations, whose
    /// consumer reads each record right after the lease. One step where
    /// the store has one; `None` (the default): it has not, and the
    /// consumer reads the records itself.
    #[allow(clippy::type_complexity)]
    fn lease_with_records(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Option<Pending<(Leased, Vec<Option<InvocationRecord>>)>> {
        let _ = (queue, now_ms, max, visibility_ms, limit);
        None
    }

    /// [`Backend::put_and_ack`] in one step; `None` (the default) as above.
    fn put_and_ack(
        &self,
        records: &[InvocationRecord],
        queue: &str,
        ids: &[String],
    ) -> Option<Pending<()>> {
        let _ = (records, queue, ids);
        None
    }
}

/// What [`Backend::put_and_send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Stored: the records, then the messages (answers as `Queues::send`).
    Sent(Vec<Option<String>>),
    /// Nothing written: the queue holds `held` messages waiting or in
    /// flight, and the new ones would take it past the cap.
    Full { held: u64 },
}

/// Fan-out jobs and their children's results. A job's writes touch
/// invocations and queues too, atomically: a job never exists without its
/// children, and its fan-in starts exactly once, in the write that records
/// its last child.
pub trait Jobs: Send + Sync + 'static {
    /// Writes the job, its children's invocation records and their messages
    /// on `queue` in one atomic write. Also files the job under its parent.
    fn create_job(
        &self,
        job: JobRecord,
        children: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Pending<()>;
    fn job(&self, id: &str) -> Pending<Option<(JobRecord, JobProgress)>>;
    /// Jobs newest first (job ids are UUIDv7: id order is creation order),
    /// strictly older than `after` when given, at most `limit`. Sub-jobs are
    /// listed too. Redis lists only jobs created since it kept the index.
    fn list_jobs(&self, after: Option<&str>, limit: usize) -> Pending<Vec<JobRecord>>;
    /// Records a child's final outcome. The first result for an index
    /// counts; later ones change nothing (`recorded` false). An unknown job
    /// or an index out of range fails with `NotFound`. When the result
    /// completes the job, in the same write: `finished_at_ms` is set; unless
    /// the job was cancelled, its `then_plan` is written (the record, and the
    /// message on its queue); a job without a plan that `continues` a parent
    /// slot fills it (output `{"job": id, "count": total}`, or `cancelled`),
    /// which may complete the parent in turn.
    fn finish_child(&self, job: &str, result: ChildResult, now_ms: u64) -> Pending<ChildFinished>;
    /// Results by index from `from_index`, at most `limit`; indexes without a
    /// result yet are skipped.
    fn child_results(&self, job: &str, from_index: u64, limit: usize) -> Pending<Vec<ChildResult>>;
    /// Failed (not cancelled) children by index after `after`, at most `limit`.
    fn child_failures(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Pending<Vec<ChildResult>>;
    /// Jobs created by the job's children, in creation order (id order).
    fn sub_jobs(&self, job: &str) -> Pending<Vec<String>>;
    /// Marks the job and every job below it cancelled (once; the first time
    /// is kept; jobs that have finished stay as they are). Children that have not run are then recorded as cancelled by
    /// the engine; running ones finish. False when the job does not exist.
    fn cancel_job(&self, id: &str, now_ms: u64) -> Pending<bool>;
}

/// One entry of the key-value store ([`Kv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    /// The value as given to `kv_set` (JSON text, by the engine's rule; the
    /// store keeps the bytes as they are, except `kv_incr`, which writes the
    /// decimal integer it computed).
    pub value: Vec<u8>,
    /// Given by the write that stored this value: taken from one store-wide
    /// counter, so it grows with every write of the key (`kv_set`,
    /// `kv_incr`) and is never given twice, not even to a key deleted (or
    /// expired) and written again. Always at least 1.
    pub version: u64,
    /// When the entry expires (caller's clock): it is absent for every
    /// call whose `now_ms` is at or past this time, whether or not it has
    /// been swept. `None`: it never expires.
    pub expires_at_ms: Option<u64>,
    /// The `now_ms` of the write that stored this value.
    pub updated_at_ms: u64,
}

impl KvEntry {
    /// Whether the entry is still there at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// When [`Kv::kv_set`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCondition {
    /// Whatever is stored.
    Always,
    /// Only when the key is absent (or expired): `nx`.
    Absent,
    /// Only when the key is present (and not expired): `xx`.
    Present,
    /// Only when the key is present with exactly this version:
    /// compare-and-set.
    Version(u64),
}

/// What [`Kv::kv_set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvSet {
    /// The value was stored: the new entry.
    Written(KvEntry),
    /// The condition did not hold; nothing was written. `current` is the
    /// entry as it stands (`None` when absent or expired), so a caller can
    /// retry a compare-and-set on its version.
    Refused { current: Option<KvEntry> },
}

/// What [`Kv::kv_incr`] did. Only `Written` wrote anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvIncr {
    /// The new entry (its value the decimal integer, a new version).
    Written(KvEntry),
    /// The stored value is not a JSON integer in the range of an `i64`
    /// (see [`kv_integer`]).
    NotInteger { current: KvEntry },
    /// The sum would not fit in an `i64`.
    Overflow { current: KvEntry },
}

/// One page of [`Kv::kv_list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvPage {
    /// Live entries in key order (byte order of the keys).
    pub entries: Vec<KvEntry>,
    /// The last key the call looked at, to pass as `after` for the next
    /// page, when more keys with the prefix may follow; `None` once the
    /// listing reached the end of the prefix.
    pub next: Option<String>,
}

/// The integer value of a stored value, as `kv_incr` reads it: exactly the
/// text of a JSON integer with no sign but `-`, no leading zero, no
/// whitespace, no fraction or exponent (`0`, `42`, `-7`; not `-0`, `007`,
/// `1.0`, `1e3`, ` 1`), in the range of an `i64`. Every store uses this
/// rule (the Redis store checks the same pattern in Lua).
pub fn kv_integer(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let canonical = match digits {
        [b'0'] => value.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A key-value store with expiry (`ctx.kv`, `/v1/kv/{key}`). Keys are
/// strings the engine has checked; values are bytes (JSON text). Times are
/// the caller's `now_ms`: an entry whose `expires_at_ms` is at or before
/// `now_ms` is absent for that call (reads leave it out, conditions see it
/// as absent, writes replace it as if it were not there), whatever
/// `kv_sweep` has done yet. Every write is atomic on its key.
pub trait Kv: Send + Sync + 'static {
    /// The live entry of `key` at `now_ms`.
    fn kv_get(&self, key: &str, now_ms: u64) -> Pending<Option<KvEntry>>;
    /// Stores `value` under `key` when `cond` holds, with a new version,
    /// `updated_at_ms = now_ms` and `expires_at_ms = now_ms + ttl_ms`
    /// (saturating; a `ttl_ms` of 0 stores an entry already expired).
    /// Without a `ttl_ms` the entry never expires: a ttl the key had
    /// before is cleared. When `cond` fails, nothing is written and the
    /// current entry is answered.
    fn kv_set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: KvCondition,
        now_ms: u64,
    ) -> Pending<KvSet>;
    /// Adds `by` to the integer value of `key` (see [`kv_integer`]); an
    /// absent (or expired) key counts as 0 and is created without expiry.
    /// A present key keeps its `expires_at_ms`. The result is stored as a
    /// decimal integer with a new version. A value that is not an integer,
    /// or a sum out of the range of an `i64`, writes nothing.
    fn kv_incr(&self, key: &str, by: i64, now_ms: u64) -> Pending<KvIncr>;
    /// Deletes the live entry of `key`, when `version` is `None` or equals
    /// its version. True when it deleted a live entry; false when the key
    /// was absent, expired (an expired entry may be removed all the same)
    /// or at another version.
    fn kv_delete(&self, key: &str, version: Option<u64>, now_ms: u64) -> Pending<bool>;
    /// Live entries whose key starts with `prefix` (bytes), in key order,
    /// strictly after `after` when given. Looks at no more than `limit`
    /// stored keys, expired ones included (which are left out of the
    /// page): a page may hold fewer than `limit` entries while `next` is
    /// set. A `limit` of 0 is taken as 1.
    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Pending<KvPage>;
    /// Removes up to `max` entries that are expired at `now_ms`, oldest
    /// expiry first, and answers how many it removed. For stores that keep
    /// expired entries until then (memory, redb), the engine calls it
    /// periodically; the Redis store lets Redis expire entries and only
    /// prunes its indexes here (an entry Redis already dropped counts as
    /// removed). Reads never depend on it.
    fn kv_sweep(&self, now_ms: u64, max: usize) -> Pending<u64>;
}

/// Everything a node stores, bundled. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    pub catalog: Arc<dyn Catalog>,
    pub invocations: Arc<dyn Invocations>,
    pub queues: Arc<dyn Queues>,
    pub docs: Arc<dyn Docs>,
    pub jobs: Arc<dyn Jobs>,
    pub kv: Arc<dyn Kv>,
    pub blobs: Arc<dyn Blobs>,
    pub channels: Arc<dyn Channels>,
    /// Usage rollups kept with the invocation records (`usage.rs`).
    pub usage: Arc<dyn Usage>,
}

impl Backend {
    /// Writes invocation records, then sends messages on `queue` — unless
    /// the queue's waiting and in-flight messages plus these would exceed
    /// `cap`, in which case nothing is written. In one step where the store
    /// has one ([`Queues::put_and_send`]); otherwise a depth read, then the
    /// two writes issued in that order (a concurrent send may then pass the
    /// cap by a little).
    pub fn put_and_send(
        &self,
        records: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
        cap: u64,
    ) -> Pending<Admitted> {
        if let Some(done) = self.queues.put_and_send(&records, queue, &messages, cap) {
            return done;
        }
        let backend = self.clone();
        let queue = queue.to_string();
        Box::pin(async move {
            let depth = backend.queues.depth(&queue).await?;
            let held = depth.waiting + depth.in_flight;
            if held.saturating_add(messages.len() as u64) > cap {
                return Ok(Admitted::Full { held });
            }
            let put = backend.invocations.put_invocations(records);
            let sent = backend.queues.send(&queue, messages);
            put.await?;
            Ok(Admitted::Sent(sent.await?))
        })
    }

    /// Writes invocation records, then acks messages of `queue`: in one
    /// step where the store has one ([`Queues::put_and_ack`]), else the two
    /// writes issued in that order.
    pub fn put_and_ack(
        &self,
        records: Vec<InvocationRecord>,
        queue: &str,
        ids: Vec<String>,
    ) -> Pending<()> {
        if let Some(done) = self.queues.put_and_ack(&records, queue, &ids) {
            return done;
        }
        let put = self.invocations.put_invocations(records);
        let acked = self.queues.ack(queue, ids);
        Box::pin(async move {
            put.await?;
            acked.await
        })
    }

    /// The store's write health (see [`Invocations::health`]).
    pub fn health(&self) -> StoreHealth {
        self.invocations.health()
    }

    /// Bundles one adapter that implements every port.
    pub fn from_adapter<
        A: Catalog + Invocations + Queues + Docs + Jobs + Kv + Blobs + Channels + Usage,
    >(
        adapter: Arc<A>,
    ) -> Backend {
        Backend {
            catalog: adapter.clone(),
            invocations: adapter.clone(),
            queues: adapter.clone(),
            docs: adapter.clone(),
            jobs: adapter.clone(),
            kv: adapter.clone(),
            blobs: adapter.clone(),
            channels: adapter.clone(),
            usage: adapter,
        }
    }
}
