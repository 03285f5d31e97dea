//! The runtime port: how the engine runs user code without knowing the language.
//!
//! A runtime keeps warm workers per deployed function version. `invoke`
//! returns `Ok(Response)` for every outcome of *user* code, including crashes
//! and timeouts (`Outcome::Failed`); `Err` means the platform itself failed
//! (could not spawn a process, the runtime is shutting down).
//!
//! Running user code calls back into the node through [`Host`] with a
//! [`HostCall`]: the host-call protocol is defined here, once, for every
//! runtime (see [`host`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use shoal_types::{Failure, Limits, Outcome};

mod digest;
#[cfg(feature = "fake")]
pub mod fake;
pub mod host;
pub mod response;

pub use digest::{code_digest, code_digest_of_dir};
pub use host::{
    DocArg, GetDocArgs, HOST_PROTOCOL_VERSION, Host, HostCall, HostError, JobArgs, JobResultsArgs,
    KvDeleteArgs, KvGetArgs, KvIncrArgs, KvListArgs, KvSetArgs, MapArgs, PutDocsArgs, SendArgs,
    SpawnArgs,
};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Preparing a deployment failed (for Python: pip could not install the
    /// requirements); the message is the tool's own output.
    #[error("{0}")]
    Prepare(String),
    /// The runtime is shutting down and takes no new work.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The platform could not run the code (spawn failed, pipe broke...).
    #[error("runtime failure: {0}")]
    Platform(String),
}

/// One deployed function version, as the runtime sees it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Unique per function version, e.g. `hello@3`. Pools are keyed by it.
    pub key: String,
    /// The unpacked function directory (holds `shoal.toml` and the code).
    pub code_dir: PathBuf,
    /// `module:function`, e.g. `main:handler`.
    pub handler: String,
    /// The environment built by `prepare`, if the function has requirements.
    pub env_dir: Option<PathBuf>,
    pub limits: Limits,
    /// The network its processes see.
    pub network: shoal_types::Network,
    /// The digest of the code as deployed (`code_digest`); the runtime
    /// refuses to load code whose digest on disk differs. `None` for
    /// versions deployed before digests were recorded.
    pub code_digest: Option<String>,
    /// Environment variables of its processes (`[env]`), beside the few
    /// the node sets.
    pub env: std::collections::BTreeMap<String, String>,
    /// A worker that has served this many invocations is retired after
    /// its last one (never during it) and a fresh one takes its place, so
    /// whatever a handler leaks goes with it. `None`: workers serve until
    /// they go idle or fail.
    pub max_invocations_per_worker: Option<std::num::NonZeroU32>,
}

/// Awaited by the runtime right before a handler starts on a ready worker:
/// after any wait for a free worker or a cold start, so that what the gate
/// admits (e.g. a rate limiter's token) is when the call really begins.
pub trait Gate: Send + Sync + 'static {
    fn wait(&self) -> BoxFuture<'static, ()>;
}

/// One call of a handler.
#[derive(Clone)]
pub struct Request {
    pub invocation_id: String,
    pub function: String,
    pub version: u64,
    pub attempt: u32,
    /// The event, as JSON text.
    pub event: String,
    /// Where the handler's host calls go; `None` answers every host call
    /// with an error.
    pub host: Option<Arc<dyn Host>>,
    /// Passed before the handler starts; `None` starts at once.
    pub gate: Option<Arc<dyn Gate>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("invocation_id", &self.invocation_id)
            .field("function", &self.function)
            .field("version", &self.version)
            .field("attempt", &self.attempt)
            .field("event", &self.event)
            .field("host", &self.host.is_some())
            .field("gate", &self.gate.is_some())
            .finish()
    }
}

/// What an invocation produced.
///
/// A successful outcome's result is JSON text; a handler's binary result
/// (`shoal.Response`) is the envelope of [`response`].
#[derive(Debug, Clone)]
pub struct Response {
    pub outcome: Outcome,
    /// Everything the function wrote to stdout and stderr during this call.
    pub logs: Vec<u8>,
    /// True when no warm worker was ready and one had to be started.
    pub cold_start: bool,
    /// Time spent running user code (excludes waiting for a worker).
    pub duration: Duration,
    /// Time spent waiting for a free worker or starting one.
    pub queued: Duration,
}

/// Sizes of one function version's worker pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub key: String,
    pub idle: usize,
    pub busy: usize,
}

/// Output of `prepare`.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The environment directory to pass back in `Deployment::env_dir`.
    pub env_dir: Option<PathBuf>,
    /// True when an existing environment was reused.
    pub reused: bool,
}

/// Documents of a shard as `(id, compact JSON text)`.
pub type DocBatch = Vec<(String, Vec<u8>)>;

/// Where a query's documents come from (the engine's store), shard by shard.
pub trait ShardSource: Send + Sync + 'static {
    /// Up to `limit` documents of `shard` in id order after `after`
    /// (exclusive): `(id, compact JSON text)`. An empty answer ends the shard.
    fn scan(
        &self,
        shard: u32,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'static, std::result::Result<DocBatch, String>>;
}

/// One shard to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryShard {
    pub shard: u32,
    /// The shard's version (bumped by every write): a worker's resident copy
    /// of the shard is used only when its version matches.
    pub version: u64,
    /// Documents in the shard (a hint for splitting work and for progress).
    pub docs: u64,
}

/// A map (and reduce) over a category's shards.
pub struct QueryRequest {
    pub query_id: String,
    /// Names the data set for worker caches; different for a category that
    /// was deleted and created again (e.g. `name@created_at_ms`).
    pub dataset: String,
    pub shards: Vec<QueryShard>,
    /// Count and list failing documents instead of failing the query.
    pub skip_errors: bool,
    pub source: Arc<dyn ShardSource>,
    /// Progress, and the mapped values when the module has no `reduce`.
    /// Bounded: a slow reader slows the query down (back-pressure).
    pub events: tokio::sync::mpsc::Sender<QueryEvent>,
}

/// What a running query reports.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryEvent {
    /// Mapped values (module without `reduce`), as NDJSON: one compact JSON
    /// value per line. Sent in *document order*: shard 0 first, then shard
    /// 1, ...; within a shard in id order. `None` results are left out.
    Values(Vec<u8>),
    /// `docs` more documents of `shard` were processed.
    Progress { shard: u32, docs: u64 },
}

/// A document whose `map` failed, when `skip_errors` was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFailure {
    pub id: String,
    pub failure: Failure,
}

/// How a query ended.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// The module defines `reduce`: partial results were reduced inside each
    /// worker and then across shards. `None` when no document gave a value.
    Reduced(Option<String>),
    /// No `reduce`: the values went out as `QueryEvent::Values`.
    Mapped,
    /// `map` (or `map_batch`/`reduce`) failed and `skip_errors` was off, or
    /// the module could not be used for a query (no `map`). `doc_id` names the
    /// document when one is to blame.
    Failed {
        doc_id: Option<String>,
        failure: Failure,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutcome {
    pub result: QueryResult,
    /// Documents processed.
    pub docs: u64,
    /// Documents whose `map` failed (with `skip_errors`).
    pub errors: u64,
    /// The first failures (at most 100), with `skip_errors`.
    pub failures: Vec<DocFailure>,
    /// Shards served from workers' resident copies, of all shards.
    pub cached_shards: u32,
}

/// What one shard of a query gave, for a caller that puts the shards
/// together itself ([`Runtime::query_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPart {
    pub shard: u32,
    /// With `reduce`: `Reduced` with the shard's partial (`None`: no
    /// value). Without: `Mapped`, the values in `values`. Or `Failed`.
    pub result: QueryResult,
    /// The shard's mapped values, NDJSON, in document order.
    pub values: Vec<u8>,
    /// Documents processed.
    pub docs: u64,
    /// Documents whose `map` failed (with `skip_errors`).
    pub errors: u64,
    /// The first failures (at most 100), with `skip_errors`.
    pub failures: Vec<DocFailure>,
    /// Served from a worker's resident copy.
    pub resident: bool,
}

/// What [`Runtime::check`] found when it loaded a deployment.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The module imports, and its handler (or, for a query-only module,
    /// one of `map`, `map_batch`, `reduce`) exists.
    Loads,
    /// It does not load: the user's error (kind `load_failed`, with the
    /// user's own traceback) and what the code printed while loading.
    Fails { failure: Failure, logs: Vec<u8> },
}

pub trait Runtime: Send + Sync + 'static {
    /// Builds what a deployment needs before it can run (a virtualenv from
    /// `requirements.txt`), reusing an identical earlier one.
    fn prepare(&self, code_dir: PathBuf) -> BoxFuture<'static, Result<Prepared>>;

    /// Loads a deployment as its first worker would (starts its template
    /// and imports the module), reports whether it can serve, and stops
    /// what it started. Nothing of it stays running or cached; the
    /// deployment's key need not be the one it will later run under.
    fn check(&self, deployment: &Deployment) -> BoxFuture<'static, Result<Check>>;

    /// Runs one invocation on a warm worker, starting one if none is free and
    /// the deployment's concurrency allows; otherwise waits for a free one.
    fn invoke(
        &self,
        deployment: &Deployment,
        request: Request,
    ) -> BoxFuture<'static, Result<Response>>;

    /// Maps the deployment's module over the shards on warm workers that keep
    /// the decoded documents of "their" shards resident between queries
    /// (within the runtime's memory budget). `Err` is a platform failure.
    fn query(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<QueryOutcome>>;

    /// How many shards of one query `query_parts` maps at once on this node
    /// (its query workers); 0, the default: `query_parts` is not supported,
    /// and a caller spreading shards over nodes queries them one by one.
    fn parts_at_once(&self) -> usize {
        0
    }

    /// Like `query`, but without putting the shards together: every shard's
    /// own result, in the order of `request.shards` (for a caller that
    /// spreads a query's shards over nodes). `request.events` gets progress
    /// only. A failure without `skip_errors` stops the query: every shard
    /// that had not finished gets that failure as its result.
    fn query_parts(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<Vec<ShardPart>>> {
        let _ = (deployment, request);
        Box::pin(async {
            Err(Error::Platform(
                "this runtime does not query by parts".into(),
            ))
        })
    }

    /// Reduces partial results (JSON texts, in document order) with the
    /// deployment's `reduce` on one of its query workers, within its
    /// timeout: the last step of a query whose shards ran on several nodes
    /// (each a `query` of one shard). `Ok(Err(_))` is a failure of user
    /// code (its `reduce`, or loading the module). Fewer than two partials
    /// are returned as they are (`null` for none). The default: not
    /// supported (a platform error).
    fn combine(
        &self,
        deployment: &Deployment,
        partials: Vec<String>,
    ) -> BoxFuture<'static, Result<std::result::Result<String, Failure>>> {
        let _ = (deployment, partials);
        Box::pin(async {
            Err(Error::Platform(
                "this runtime does not combine partial results".into(),
            ))
        })
    }

    /// Stops the workers of a deployment that was removed or replaced.
    fn retire(&self, key: &str);

    /// Current pool sizes, for metrics.
    fn stats(&self) -> Vec<PoolStats>;

    /// Kills every worker. Called after in-flight work had its chance to finish.
    fn shutdown(&self);
}
