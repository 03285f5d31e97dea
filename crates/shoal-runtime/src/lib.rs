//! The runtime port: how the engine runs user code without knowing the language.
//!
//! A runtime keeps warm workers per deployed function version. `invoke`
//! returns `Ok(Response)` for every outcome of *user* code, including crashes
//! and timeouts (`Outcome::Failed`); `Err` means the platform itself failed
//! (could not spawn a process, the runtime is shutting down).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;

use shoal_types::{Limits, Outcome};

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
}

/// One call of a handler.
#[derive(Debug, Clone)]
pub struct Request {
    pub invocation_id: String,
    pub function: String,
    pub version: u64,
    pub attempt: u32,
    /// The event, as JSON text.
    pub event: String,
}

/// What an invocation produced.
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

pub trait Runtime: Send + Sync + 'static {
    /// Builds what a deployment needs before it can run (a virtualenv from
    /// `requirements.txt`), reusing an identical earlier one.
    fn prepare(&self, code_dir: PathBuf) -> BoxFuture<'static, Result<Prepared>>;

    /// Runs one invocation on a warm worker, starting one if none is free and
    /// the deployment's concurrency allows; otherwise waits for a free one.
    fn invoke(
        &self,
        deployment: &Deployment,
        request: Request,
    ) -> BoxFuture<'static, Result<Response>>;

    /// Stops the workers of a deployment that was removed or replaced.
    fn retire(&self, key: &str);

    /// Current pool sizes, for metrics.
    fn stats(&self) -> Vec<PoolStats>;

    /// Kills every worker. Called after in-flight work had its chance to finish.
    fn shutdown(&self);
}
