//! The public HTTP contract of `/v1`: request and response bodies, error codes.
//!
//! Once a field ships it is never removed or retyped: extend, do not break.
//! Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

mod function_files;
mod job_list;
mod notifications;
mod schedules;
mod sites;
mod triggers;
mod usage;
mod users;
pub use function_files::{FunctionFileView, FunctionFilesView};
pub use job_list::{JobList, JobSummary};
pub use notifications::{
    DeliveryList, DeliveryView, NotificationList, NotificationView, PutNotification,
};
pub use schedules::{ScheduleHistory, ScheduleLastTick, ScheduleTick};
pub use sites::{SiteList, SiteVersionView, SiteVersions, SiteView};
pub use triggers::{TriggerList, TriggerView};
pub use usage::{
    BudgetPeriod, BudgetSpec, BudgetUnit, BudgetView, Estimate, EstimateBasis, EstimateCost,
    InvocationCount, Prices, Stats, StatsPoint, StoredUsage, UsageLine, UsageReport,
};
pub use users::{CreateUser, DeletedUser, PatchUser, UserList, UserView};

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `function_not_found`.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

/// Stable error codes. Documented in `docs/api.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a parameter is malformed or has the wrong type.
    InvalidInput,
    /// The function archive or its `shoal.toml` is invalid.
    InvalidFunction,
    /// A name (function, ...) does not follow the naming rule.
    InvalidName,
    FunctionNotFound,
    InvocationNotFound,
    CategoryNotFound,
    DocumentNotFound,
    QueueNotFound,
    LimiterNotFound,
    JobNotFound,
    SecretNotFound,
    /// No live entry under that key in the key-value store.
    KeyNotFound,
    /// A key-value write's condition (`nx`, `xx`, `version`) does not hold;
    /// the message names the key's current version.
    KeyConflict,
    /// `incr` of a key whose value is not an integer (or whose sum would
    /// not fit in 64 bits).
    NotAnInteger,
    /// No blob under that key.
    BlobNotFound,
    /// No static site of that name.
    SiteNotFound,
    /// The function's live version has no `[[schedule]]` at that index.
    ScheduleNotFound,
    /// Another static site is mounted on that path.
    SitePathTaken,
    /// A bit or byte operation on an uploaded blob: operations apply to
    /// blobs created with a fixed size.
    NotFixedSize,
    /// The `Range` asked for starts past the blob's end.
    RangeNotSatisfiable,
    /// A conditional request's precondition (`If-Match`, `If-None-Match: *`)
    /// does not hold.
    PreconditionFailed,
    /// The limiter is still used by functions.
    LimiterInUse,
    /// The secret is still named by functions.
    SecretInUse,
    /// The queue already feeds another function.
    QueueTaken,
    /// A function's `[[route]]` overlaps a live route of another function.
    RouteTaken,
    /// A route's per-client rate limit: call again after `Retry-After`.
    RateLimited,
    /// A route's function ran past its timeout.
    FunctionTimedOut,
    /// A category with that name exists already.
    CategoryExists,
    /// The removal would lose data (waiting messages, documents, a
    /// subscribed function); repeat it with `?force=true` (CLI: `--force`).
    ForceRequired,
    /// The last admin token cannot be revoked; create another admin token
    /// first (or recover one: `shoal tokens recover`).
    LastAdminToken,
    /// A document is larger than the node's document limit.
    DocumentTooLarge,
    /// The queue holds as many messages as the node allows; send again
    /// once it drained.
    QueueFull,
    /// The token's budget is spent and enforced: no new work until the
    /// period resets or the limit is raised (the message says which).
    BudgetExceeded,
    /// The token has no budget (`/v1/tokens/{id}/budget`).
    BudgetNotFound,
    /// The function cannot be used for a query (no `map`).
    NotAQueryFunction,
    /// A query's `map` failed on a document (see `doc_id` and `error`).
    MapFailed,
    /// A query failed outside `map` (its `reduce`, or a worker).
    QueryFailed,
    TokenNotFound,
    /// No user of that name (`/v1/users/{name}`).
    UserNotFound,
    /// A user of that name exists already.
    UserExists,
    /// No notification of that name (`/v1/notifications/{name}`).
    NotificationNotFound,
    RouteNotFound,
    MethodNotAllowed,
    /// The body is larger than the node's limit.
    PayloadTooLarge,
    UnsupportedMediaType,
    /// No token, or a token that is unknown or revoked.
    Unauthorized,
    /// The token's role does not allow this.
    Forbidden,
    /// Preparing the function failed (pip install).
    DeployFailed,
    /// The function ran and failed; see `InvocationError`.
    FunctionError,
    /// The node is shutting down or storage is unavailable; retry later.
    Unavailable,
    /// The node's disk is full: writes are refused until its operator
    /// frees space; reads still work. Retry later.
    InsufficientStorage,
    /// A fault inside the node.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    /// The code as it is on the wire (`function_not_found`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => f.write_str(&s),
            _ => write!(f, "{self:?}"),
        }
    }
}

/// A deployed function version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionView {
    pub name: String,
    pub version: u64,
    pub runtime: String,
    pub handler: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub concurrency: u32,
    pub retries: u32,
    /// sha256 of the uploaded archive.
    pub code_sha256: String,
    /// True when the function has a `requirements.txt` and its own virtualenv.
    pub has_requirements: bool,
    pub deployed_at_ms: u64,
    /// The token that deployed it; absent for versions deployed before
    /// this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_by: Option<DeployedByView>,
    /// Answer to a deploy: the live version has this very code and
    /// `shoal.toml`, so nothing changed (this is that version).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// Answer to `?dry_run=true`: the version loads, and nothing was
    /// recorded (`version` is 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Its `[[route]]`s (absent when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteView>,
}

/// One `[[route]]` of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    /// `GET`, `POST`, ... or `*` (any method).
    pub method: String,
    pub path: String,
    /// `public` or `token`.
    pub auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRateView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<RouteCorsView>,
}

/// A route's per-client rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteRateView {
    pub per_second: f64,
    pub burst: u32,
}

/// A route's CORS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteCorsView {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    pub headers: Vec<String>,
    pub credentials: bool,
    pub max_age_s: u32,
}

/// Who deployed a version: the token's id and name, and its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployedByView {
    pub token_id: String,
    pub token_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Answer to `GET /v1/functions/{name}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionVersions {
    pub name: String,
    /// The version new calls run (`NAME` without `@`).
    pub live: u64,
    /// Alias → version.
    pub aliases: std::collections::BTreeMap<String, u64>,
    /// Oldest first.
    pub versions: Vec<VersionView>,
    /// The live version's `[[route]]`s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteView>,
}

/// One version of a function, as `show` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub version: u64,
    pub deployed_at_ms: u64,
    /// sha256 of the uploaded archive.
    pub code_sha256: String,
    /// Digest of the deployed files (absent for old versions).
    pub code_digest: Option<String>,
    pub handler: String,
    pub deployed_by: Option<DeployedByView>,
    pub live: bool,
    /// Aliases pointing at this version, sorted.
    pub aliases: Vec<String>,
}

/// Body of `POST /v1/functions/{name}/rollback` (may be empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The version to make live; the one before the live one when absent.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Body of `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AliasRequest {
    pub version: u64,
}

/// An alias as set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AliasView {
    pub function: String,
    pub alias: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

/// Answer to `POST /v1/functions/{name}/invoke?mode=async`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    pub status: String,
}

/// A failure of user code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InvocationError {
    /// One of `raised`, `timed_out`, `out_of_memory`, `crashed`, `exited`,
    /// `forked`, `output_limit`, `load_failed`, `bad_result`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The Python exception's class name, when the handler raised.
    pub exception: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

/// The body of a synchronous invocation whose function failed (HTTP 200 with
/// the `Shoal-Function-Error` header, as the call itself succeeded).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionFailure {
    pub invocation_id: String,
    pub error: InvocationError,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationView {
    pub id: String,
    pub function: String,
    pub version: u64,
    /// `sync` or `async`.
    pub mode: String,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or
    /// `cancelled` (a job child that never ran because its job was cancelled).
    pub status: String,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<InvocationError>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Time the function's code ran in the last attempt.
    pub duration_ms: Option<f64>,
    /// Time the last attempt waited for a free worker, including starting
    /// one (cold start or a new worker forked from the warm template).
    pub queued_ms: Option<f64>,
    /// Billed compute over all attempts: memory (GiB) × duration (s).
    pub billed_gb_seconds: f64,
    pub cold_start: bool,
    pub next_attempt_at_ms: Option<u64>,
    /// The job slot it fills, as a job's child or fan-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSlotView>,
    /// The job it created with `ctx.map` and handed its slot to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to: Option<String>,
    /// Answered from the function's result cache (`[cache]`) without
    /// running it; absent (false) otherwise, so answers about other
    /// invocations are as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The id of the token that started it (or its origin: a child, retry
    /// or fan-in carries its origin's); absent when no token did
    /// (schedules, queue messages, public routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// That token's user, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Child `index` of job `job`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobSlotView {
    pub job: String,
    pub index: u64,
}

/// `POST /v1/jobs`: one asynchronous invocation of `function` per event,
/// then `then` (if given) once every child has finished.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartJob {
    pub function: String,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    #[serde(default)]
    pub then: Option<String>,
    /// At most this many children run at once (across nodes). Not with a
    /// function that has a `concurrency_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStarted {
    pub job: String,
}

/// Children by state. `pending` ones are queued, running or waiting for a retry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    pub total: u64,
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// A job: its counts, progress, failures and the jobs its children created.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `running`, `cancelling` (cancelled, children still finishing),
    /// `finished` or `cancelled`.
    pub status: String,
    /// The children's function.
    pub function: String,
    /// The fan-in function.
    pub then: Option<String>,
    pub counts: JobCounts,
    /// Finished children over all (1.0 for a job without children).
    pub progress: f64,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
    /// The invocation whose `ctx.map` created it.
    pub invocation: Option<String>,
    /// The job of that invocation.
    pub parent: Option<String>,
    /// The parent's slot this job fills when it completes.
    pub continues: Option<JobSlotView>,
    /// The fan-in's invocation, once started.
    pub then_invocation: Option<String>,
    /// The first failed children (see `/v1/jobs/{id}/results` for all).
    pub failures: Vec<ChildResultView>,
    /// Jobs created by its children, each with its own tree.
    pub jobs: Vec<JobNodeView>,
}

/// One job of a tree.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobNodeView {
    pub id: String,
    pub status: String,
    pub function: String,
    pub counts: JobCounts,
    #[schema(no_recursion)]
    pub jobs: Vec<JobNodeView>,
}

/// A finished child's result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChildResultView {
    pub index: u64,
    pub invocation: String,
    /// `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<InvocationError>,
}

/// A page of a job's results, by child index.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobResults {
    pub results: Vec<ChildResultView>,
    /// The `offset` of the next page, when there may be one.
    pub next: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogsView {
    pub id: String,
    pub logs: String,
}

/// One invocation in a list: what tells it apart, without its event or
/// result (`GET /v1/invocations/{id}` has those).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationSummary {
    pub id: String,
    pub function: String,
    pub version: u64,
    /// `sync`, `async` or `queue`.
    pub mode: String,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub status: String,
    pub attempts: u32,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Time the function's code ran in the last attempt.
    pub duration_ms: Option<f64>,
    /// The failure kind (`raised`, `timed_out`, ...) when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The failure's message when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The token that started it (or its origin), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// That token's user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `GET /v1/invocations`: a page, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<InvocationSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// With `q`: how many records this page's scan looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned: Option<u64>,
}

/// One finished attempt's logs, in `GET /v1/functions/{name}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationLogs {
    pub id: String,
    pub function: String,
    pub version: u64,
    pub status: String,
    /// When the attempt finished (or the record was created, for one that
    /// has not run).
    pub at_ms: u64,
    /// When the next attempt is due: this attempt failed and the
    /// invocation is retried (its `status` is `queued` again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    pub logs: String,
}

/// `GET /v1/functions/{name}/logs` without `follow`: the latest
/// invocations' logs, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionLogs {
    pub entries: Vec<InvocationLogs>,
}

/// `event: lagged` of a followed log stream: this many finished attempts
/// were dropped because the reader fell behind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogsLagged {
    pub missed: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStats {
    /// Bytes of every file under the node's data directory.
    pub data_dir_bytes: u64,
    /// Invocation records stored (retention drops old ones).
    pub invocations: u64,
    /// How long finished invocations are kept, in seconds; absent when
    /// they are kept forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_seconds: Option<u64>,
}

/// `GET /v1/nodes`: the nodes sharing this node's store, this one first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// One node, from its latest heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Chosen by the node when it starts (a new one at each start).
    pub id: String,
    /// Where its HTTP API listens (`--advertise`, else the address it
    /// listens on).
    pub address: String,
    /// Its Shoal version.
    pub version: String,
    pub started_at_ms: u64,
    /// Its latest heartbeat (for the node answering: now).
    pub last_seen_ms: u64,
    /// Invocations running on it.
    pub running: u64,
    /// Its worker processes, warm and busy.
    pub workers: u64,
    /// Its one-minute load average; null when its system does not say.
    pub load: Option<f64>,
    /// The node that answered this request.
    pub this: bool,
    /// `alive`, or `lost` when it has missed three heartbeats (its leased
    /// work goes to the others once the leases lapse).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `reader`, `invoker`, `developer` or `admin`.
    pub role: String,
    /// A label to recognise the token by.
    #[serde(default)]
    pub name: Option<String>,
    /// Channel scopes (`subscribe:board.*`, `publish:chat`); the older
    /// field, the same as giving them in `scopes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// The user the token belongs to (see `/v1/users`); its role may be at
    /// most the user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Scopes: `function:PATTERN`, `category:PATTERN`, `queue:PATTERN`,
    /// `channel:subscribe:PATTERN`, `channel:publish:PATTERN` (PATTERN a
    /// name or a prefix ending in `*`). With any, the token may act only
    /// on the resources they name; see docs/users.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub role: String,
    pub name: String,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Resource scopes (`function:`, `category:`, `queue:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub role: String,
    pub name: String,
    /// The bearer secret. Store it now: the node keeps only its hash.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// How functions are isolated: `on: ...` with the layers in use, or
    /// `off: ...` when the node runs them without a sandbox.
    #[serde(default)]
    pub sandbox: String,
}

/// Header carrying the invocation id on invoke answers.
pub const INVOCATION_ID_HEADER: &str = "shoal-invocation-id";
/// Header present on a synchronous invoke answer when the function failed; its
/// value is the error type.
pub const FUNCTION_ERROR_HEADER: &str = "shoal-function-error";
/// Header present, with the value `response`, on a synchronous invoke answer
/// that is a `shoal.Response` the function returned: the body, status,
/// content type and headers are the function's own, not JSON.
pub const RESULT_HEADER: &str = "shoal-result";
/// Content type of a function upload: a tar archive of the function directory.
pub const ARCHIVE_CONTENT_TYPE: &str = "application/x-tar";

// ---- categories (documents and queries) ----

/// `POST /v1/categories`: create a category explicitly (writes create one
/// with the node's default shard level when it does not exist).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    pub name: String,
    /// The shard level k (1 to 1024); the node's default when absent.
    #[serde(default)]
    pub shards: Option<u32>,
}

/// One shard of a category.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShardView {
    pub shard: u32,
    /// The shard slot it is placed on.
    pub slot: u32,
    pub docs: u64,
    pub bytes: u64,
}

/// A category with its statistics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryView {
    pub name: String,
    /// The shard level k.
    pub shards: u32,
    pub docs: u64,
    /// Sum of the documents' JSON sizes.
    pub bytes: u64,
    pub created_at_ms: u64,
    pub shard_stats: Vec<ShardView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryList {
    pub categories: Vec<CategoryView>,
}

/// Answer to a document write.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Written {
    /// Documents written (all of the request's, or none on error).
    pub written: u64,
    /// The documents' ids in request order (given or generated); omitted
    /// with `?return_ids=false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// One document in a scan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocEntry {
    pub id: String,
    #[schema(value_type = Object)]
    pub doc: Value,
}

/// A page of `GET /v1/categories/{cat}/docs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocPage {
    pub docs: Vec<DocEntry>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// `POST /v1/categories/{cat}/query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// A deployed function whose module defines `map` (or `map_batch`) and
    /// optionally `reduce`.
    pub function: String,
    /// Count and list documents whose `map` fails instead of failing the query.
    #[serde(default)]
    pub skip_errors: bool,
}

/// A document whose `map` failed (with `skip_errors`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DocError {
    pub id: String,
    pub error: InvocationError,
}

/// The last line of a successful query's NDJSON answer: `{"done": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryDone {
    /// Documents processed.
    pub docs: u64,
    /// True when the module defines `reduce` and `result` holds the reduced value.
    pub reduced: bool,
    /// The reduced value (`null` when no document produced one).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Mapped values sent before this line (modules without `reduce`).
    pub values: u64,
    /// Documents whose `map` failed (with `skip_errors`).
    pub errors: u64,
    /// The first failures (at most 100).
    pub failures: Vec<DocError>,
    /// Shards served from workers' resident copies.
    pub cached_shards: u32,
    pub shards: u32,
    pub duration_ms: f64,
}

/// The last line of a failed query: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryFailed {
    /// `map_failed` when `map` failed on a document, `query_failed` when
    /// user code failed elsewhere, else why the query could not run.
    pub code: ErrorCode,
    pub message: String,
    /// The document whose `map` failed.
    pub doc_id: Option<String>,
    pub error: Option<InvocationError>,
}

/// One line of a query's NDJSON answer. Values come first (modules without
/// `reduce`), then exactly one `done` or `error` line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryLine {
    Value(Value),
    Done(QueryDone),
    Error(QueryFailed),
}

/// A progress event of a query followed over SSE.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryProgress {
    pub docs_done: u64,
    pub docs_total: u64,
    pub shards: u32,
}

/// Content type of newline-delimited JSON (document writes, query answers).
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";

// ---- queues ----

/// `PUT /v1/queues/{name}`: create a queue or change its settings (all
/// optional; unchanged when absent). Durations are strings such as `"30s"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQueue {
    /// Deliveries before a message is dead-lettered (1 to 101; default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long a delivered message stays invisible (default `"30s"`); extended while its handler runs.
    #[serde(default)]
    pub visibility_timeout: Option<String>,
    /// First retry delay, doubled each retry, with jitter (default `"1s"`).
    #[serde(default)]
    pub retry_delay: Option<String>,
    /// How long a deduplication id is remembered (default `"5m"`).
    #[serde(default)]
    pub dedup_window: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq, Default)]
pub struct QueueDepthView {
    /// Messages waiting (due now or later).
    pub waiting: u64,
    /// Messages delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Messages in the dead-letter queue.
    pub dead: u64,
    /// Age of the oldest waiting or in-flight message.
    pub oldest_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq, Default)]
pub struct QueueCountersView {
    pub sent: u64,
    pub acked: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    pub max_attempts: u32,
    pub visibility_timeout_ms: u64,
    pub retry_delay_ms: u64,
    pub dedup_window_ms: u64,
    pub created_at_ms: u64,
    /// The function subscribed to the queue, if any.
    pub subscriber: Option<String>,
    pub depth: QueueDepthView,
    pub counters: QueueCountersView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// One message to send.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The message body (any JSON); the subscribed function gets it as its event.
    #[schema(value_type = Object)]
    pub body: Value,
    /// Deliver no sooner than this from now (`"10s"`, at most `"15m"`).
    #[serde(default)]
    pub delay: Option<String>,
    /// Messages with the same id within the queue's dedup window are sent once.
    #[serde(default)]
    pub dedup_id: Option<String>,
}

/// `POST /v1/queues/{name}/messages`: one message, or a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SendRequest {
    Batch { messages: Vec<SendMessage> },
    One(SendMessage),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sent {
    /// The messages' ids, in order; a duplicate's is the id of the message
    /// it duplicates.
    pub ids: Vec<String>,
    /// True when a message was dropped as a duplicate: its `dedup_id` was
    /// taken within the queue's deduplication window. Nothing was sent
    /// again for it.
    #[serde(default)]
    pub duplicate: bool,
    /// The positions (from 0) of the duplicates in a batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    #[schema(value_type = Object)]
    pub body: Value,
    /// Deliveries that failed.
    pub attempts: u32,
    pub sent_at_ms: u64,
    pub dead_at_ms: u64,
    /// The last error.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

/// Which dead letters (or all when `ids` is absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSelection {
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Count {
    pub count: u64,
}

/// One point of a queue's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueSampleView {
    pub at_ms: u64,
    pub depth: QueueDepthView,
    pub counters: QueueCountersView,
    /// Rates since the previous sample, per second.
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub failed_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueStats {
    pub name: String,
    pub samples: Vec<QueueSampleView>,
}

// ---- rate limiters ----

/// `PUT /v1/limiters/{name}`: create or change a shared rate limiter.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLimiter {
    /// Tokens per second (above 0).
    pub per_second: f64,
    /// Tokens that may be taken at once after a quiet spell (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimiterView {
    pub name: String,
    pub per_second: f64,
    pub burst: u32,
    pub updated_at_ms: u64,
}

/// One entry of the key-value store (`GET`/`PUT /v1/kv/{key}`, `POST
/// /v1/kv/{key}/incr`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvEntryView {
    pub key: String,
    /// The stored JSON value.
    #[schema(value_type = Object)]
    pub value: Value,
    /// Grows with every write of any key; pass it as `version` to write or
    /// delete only if the key has not changed since.
    pub version: u64,
    /// When the entry expires (ms since the epoch); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// A page of `GET /v1/kv`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvList {
    /// Live entries in key order (a page may be short while `next` is set).
    pub entries: Vec<KvEntryView>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next: Option<String>,
}

/// A blob's metadata (`PUT`/`GET /v1/blobs/{key}`, listings). The same
/// fields come as headers on `GET`/`HEAD` (`ETag`, `Content-Length`,
/// `Content-Type`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlobView {
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of an uploaded blob; absent for a fixed-size
    /// blob (its bytes change in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The entity tag (unquoted): the SHA-256 of an uploaded blob,
    /// `v<version>` of a fixed-size one.
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Grows with every write of any blob; each content has its own.
    pub version: u64,
    /// Created with a fixed size: bit and byte operations apply to it.
    pub fixed_size: bool,
    pub created_at_ms: u64,
}

/// A page of `GET /v1/blobs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlobList {
    /// Blobs in key order.
    pub blobs: Vec<BlobView>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next: Option<String>,
}

/// One operation of `POST /v1/blobs/{key}/bitfield`, like one of Redis
/// `BITFIELD`: `{"op": "set", "type": "u4", "offset": "#12", "value": 7}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BitfieldOp {
    /// `get`, `set`, `incrby` or `write_at`.
    pub op: String,
    /// `u1`..`u32` or `i1`..`i32` (not for `write_at`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// A bit offset (a number), or `"#N"`: the N-th field of this type's
    /// width (`"#12"` of `u4` is bit 48). For `write_at`: a byte offset.
    #[schema(value_type = Object)]
    pub offset: Value,
    /// `set`: the value to store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// `incrby`: what to add (may be negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<i64>,
    /// `set`/`incrby`: `wrap` (default), `sat` or `fail` (leave the field
    /// and answer `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// `write_at`: the bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// `POST /v1/blobs/{key}/bitfield`: a batch applied all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BitfieldRequest {
    pub ops: Vec<BitfieldOp>,
}

/// The answer of a bitfield batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BitfieldResponse {
    /// One per operation: `get` the value, `set` the old value, `incrby`
    /// the new value; `null` for `write_at` and for an operation stopped
    /// by `overflow: fail`.
    pub results: Vec<Option<i64>>,
    /// The blob's version and entity tag after the batch.
    pub version: u64,
    pub etag: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimiterList {
    pub limiters: Vec<LimiterView>,
}

/// `PUT /v1/secrets/{name}`: set a secret (functions naming it in
/// `secrets = [...]` get it as an environment variable).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value, 1 byte to 64 KiB. Never shown again.
    pub value: String,
}

/// A secret as listed: its name, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretView {
    pub name: String,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
}

/// `PUT /v1/channels/{name}`: a channel's settings (every field optional;
/// an absent one keeps its default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettingsBody {
    /// Subscribing needs no token (publishing always does). Default false.
    #[serde(default)]
    pub public: Option<bool>,
    /// Messages kept for resuming subscribers (1 to 1,000,000; default 10,000).
    #[serde(default)]
    pub history_len: Option<u64>,
    /// Messages older than this many seconds leave the history (0: no age
    /// bound; default 86,400).
    #[serde(default)]
    pub history_age_s: Option<u64>,
    /// Gather deliveries into one frame per this many milliseconds (0 to
    /// 10,000; default 0: each message at once).
    #[serde(default)]
    pub coalesce_ms: Option<u32>,
}

/// A channel: settings, position and presence.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfoView {
    pub name: String,
    pub public: bool,
    pub history_len: u64,
    pub history_age_s: u64,
    pub coalesce_ms: u32,
    /// The history's epoch (empty before the first message).
    pub epoch: String,
    /// The offset of the last message (0: none yet).
    pub offset: u64,
    /// Subscribers connected on every node.
    pub presence: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelInfoView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Answer to a publish: where the message is in the channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishedView {
    pub epoch: String,
    pub offset: u64,
}

/// `GET /v1/schedules`: the schedules of every live version, by function
/// and index, each with its next fire times.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

/// One `[[schedule]]` of a live version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub function: String,
    /// The live version declaring it.
    pub version: u64,
    /// Its place among the function's `[[schedule]]` entries, from 0.
    pub index: u64,
    /// `every`, in ms (absent for a cron schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// `cron`, with seconds (absent for an `every` schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The time zone of `cron` (an IANA name), `UTC` by default.
    pub timezone: String,
    /// The event of each run.
    #[schema(value_type = Object)]
    pub event: Value,
    /// `skip` or `catch_up`.
    pub missed: String,
    /// The next fire times, in ms since the epoch (the next five).
    pub next_ms: Vec<u64>,
    /// Paused (`POST /v1/schedules/{function}/{index}/pause`): its ticks
    /// are skipped on every node.
    #[serde(default)]
    pub paused: bool,
    /// The last tick that fired, while the store remembers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ScheduleLastTick>,
}
