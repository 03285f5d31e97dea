//! The Python runtime: warm worker pools forked from one template process per
//! deployment, the runner package (`src/_shoal_runner/`) embedded, virtualenvs
//! built from `requirements.txt`.
//!
//! Queries (`map`/`map_batch` and `reduce` over a category's shards) run on
//! query workers of their own, forked from the same template, which keep the
//! decoded documents of their shards resident within a runtime-wide memory
//! budget: see `query.rs` (scheduling, protocol, failures) and `cache.rs`
//! (the budget).
//!
//! Handlers call back into the node (`ctx.call`, `ctx.spawn`, `ctx.map`,
//! `ctx.send`) over their worker's socket while they run: `worker.rs` hands
//! each call to the request's `Host` and writes the answer back, inside the
//! invocation's timeout; `protocol.rs` has the frames, the runner's `host.py`
//! the Python side, and `python/shoal/context.py` (embedded as the runner's
//! `context.py`) the API handlers see (`Context`, `ctx.HostError`). Calls are
//! decoded into `shoal_runtime::HostCall`s here, before the `Host` sees them.
//! Query workers have no context, so no calls.
//!
//! Invariant: a misbehaving function (raises, loops, exhausts memory, crashes,
//! forks, floods its output) fails its own invocation or query; its pool heals
//! and other deployments never notice. All Python specifics live in this crate.

mod cache;
mod cgroup;
mod pool;
mod protocol;
mod query;
mod sandbox;
mod template;
mod tree;
mod venv;
mod watchdog;
mod worker;

pub use sandbox::Sandbox;
pub use tree::TreeLimitMode;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use shoal_runtime::{
    Check, Deployment, Error, PoolStats, Prepared, QueryOutcome, QueryRequest, Request, Response,
    Result, Runtime,
};

use crate::cache::Cache;
use crate::pool::Pool;
use crate::venv::Venvs;

/// The runner package `_shoal_runner`, file by file, written by
/// `PythonRuntime::new` to `work_dir/runner-<hash of the files>/_shoal_runner/`
/// (a directory per content, so bytecode Python caches there is never stale).
/// Its `context.py`, `blobs.py` and `response.py` are the client package's: one
/// definition of the API handlers see.
const RUNNER_FILES: &[(&str, &str)] = &[
    ("__init__.py", include_str!("_shoal_runner/__init__.py")),
    ("__main__.py", include_str!("_shoal_runner/__main__.py")),
    ("blobs.py", include_str!("../../../python/shoal/blobs.py")),
    ("capture.py", include_str!("_shoal_runner/capture.py")),
    (
        "context.py",
        include_str!("../../../python/shoal/context.py"),
    ),
    ("failures.py", include_str!("_shoal_runner/failures.py")),
    ("host.py", include_str!("_shoal_runner/host.py")),
    ("process.py", include_str!("_shoal_runner/process.py")),
    ("protocol.py", include_str!("_shoal_runner/protocol.py")),
    ("query.py", include_str!("_shoal_runner/query.py")),
    (
        "response.py",
        include_str!("../../../python/shoal/response.py"),
    ),
    ("sandbox.py", include_str!("_shoal_runner/sandbox.py")),
    ("template.py", include_str!("_shoal_runner/template.py")),
    ("worker.py", include_str!("_shoal_runner/worker.py")),
];

/// How the Python runtime is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The interpreter (`python3`); looked up on `PATH` like a shell would,
    /// then resolved once to the real executable so wrappers such as pyenv
    /// shims are not paid for on every process start.
    pub python: PathBuf,
    /// Where the runner package is written (`work_dir/runner-<hash>/`) and
    /// virtualenvs live (`work_dir/venvs/<hash>`).
    pub work_dir: PathBuf,
    /// Workers idle this long are stopped; a template goes once it has had no
    /// workers for this long.
    pub idle_timeout: Duration,
    /// Logs one invocation may write; beyond it the invocation fails with
    /// `FailureKind::OutputLimit`.
    pub max_log_bytes: usize,
    /// Size of a result's JSON text; beyond it the invocation fails with
    /// `FailureKind::OutputLimit`. Also the limit of a query's reduced result
    /// and of one mapped value.
    pub max_result_bytes: usize,
    /// Memory for the decoded documents query workers keep resident between
    /// queries, across all workers of all deployments (estimated size of the
    /// Python objects). One worker holds at most `query_cache_bytes /
    /// query_workers`; its address-space limit is raised by 1.5 times that.
    pub query_cache_bytes: usize,
    /// Query workers per deployment: a query's shards are spread over
    /// `min(query_workers, shards)` processes that map in parallel.
    pub query_workers: usize,
    /// The sandbox every function runs in; `None` runs functions with the
    /// node's own rights (`--insecure-no-sandbox`).
    pub sandbox: Option<Sandbox>,
    /// How each worker's process tree is limited (with the sandbox only).
    pub tree_limits: TreeLimitMode,
}

impl Options {
    /// The defaults: `python3`, 5 minutes idle, 1 MiB of logs, 6 MiB of
    /// result, 2 GiB of resident query data, a query worker per CPU.
    pub fn new(work_dir: impl Into<PathBuf>) -> Options {
        Options {
            python: PathBuf::from("python3"),
            work_dir: work_dir.into(),
            idle_timeout: Duration::from_secs(5 * 60),
            max_log_bytes: 1024 * 1024,
            max_result_bytes: 6 * 1024 * 1024,
            query_cache_bytes: 2 << 30,
            query_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            sandbox: Some(Sandbox::standard()),
            tree_limits: TreeLimitMode::Auto,
        }
    }
}

/// Runs Python functions in warm worker processes. See the crate docs.
pub struct PythonRuntime {
    config: Arc<Config>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    venvs: Arc<Venvs>,
    reaper: tokio::task::JoinHandle<()>,
}

/// What every pool needs from the runtime.
pub(crate) struct Config {
    python: PathBuf,
    interpreter: tokio::sync::OnceCell<PathBuf>,
    pub(crate) runner: PathBuf,
    pub(crate) sandbox: Option<Sandbox>,
    /// Per-worker process-tree limits (cgroups, or the /proc watchdog).
    pub(crate) tree_limits: Option<Arc<tree::TreeLimits>>,
    /// Templates start as the init of a pid namespace of their own.
    pub(crate) pid_namespace: bool,
    /// Deployments' scratch directories (`work_dir/scratch/<key>`).
    pub(crate) scratch: PathBuf,
    pub(crate) max_log_bytes: usize,
    pub(crate) max_result_bytes: usize,
    pub(crate) query_workers: usize,
    /// Which query worker holds which shard, within `query_cache_bytes`.
    pub(crate) cache: Cache,
    closed: AtomicBool,
}

impl PythonRuntime {
    /// Writes the runner package into `options.work_dir` and starts the idle
    /// reaper.
    /// Must be called inside a (multi-thread) tokio runtime.
    pub fn new(options: Options) -> Result<Arc<PythonRuntime>> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Platform("the Python runtime needs a tokio runtime".into()))?;
        let work_dir = options.work_dir.clone();
        std::fs::create_dir_all(work_dir.join("venvs"))
            .map_err(|e| Error::Platform(format!("cannot create {}: {e}", work_dir.display())))?;
        let runner = write_runner(&work_dir)?;
        // Scratch left by a previous run is nobody's now.
        let scratch = work_dir.join("scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Error::Platform(format!("cannot create {}: {e}", scratch.display())))?;
        let config = Arc::new(Config {
            python: options.python.clone(),
            interpreter: tokio::sync::OnceCell::new(),
            runner,
            tree_limits: options
                .sandbox
                .as_ref()
                .and_then(|_| tree::TreeLimits::detect(options.tree_limits))
                .map(Arc::new),
            pid_namespace: options.sandbox.is_some() && template::pid_namespaces_work(),
            sandbox: options.sandbox.clone(),
            scratch,
            max_log_bytes: options.max_log_bytes,
            max_result_bytes: options.max_result_bytes,
            query_workers: options.query_workers.max(1),
            cache: Cache::new(
                u64::try_from(options.query_cache_bytes).unwrap_or(u64::MAX),
                options.query_workers.max(1),
            ),
            closed: AtomicBool::new(false),
        });
        // Resolve the interpreter now, off the path of the first invocation.
        let resolving = config.clone();
        handle.spawn(async move { resolving.interpreter().await });
        let idle_timeout = options.idle_timeout;
        Ok(Arc::new_cyclic(|weak: &Weak<PythonRuntime>| {
            let reaper = handle.spawn(reap_idle(weak.clone(), idle_timeout));
            PythonRuntime {
                config,
                pools: Mutex::new(HashMap::new()),
                venvs: Arc::new(Venvs::new(work_dir.join("venvs"))),
                reaper,
            }
        }))
    }

    /// How each worker's process tree is limited (`None`: it is not).
    pub fn tree_limits_by(&self) -> Option<&'static str> {
        self.config
            .tree_limits
            .as_deref()
            .map(tree::TreeLimits::describe)
    }

    /// True where each worker's process tree is limited.
    pub fn tree_limits(&self) -> bool {
        self.config.tree_limits.is_some()
    }

    /// True where templates run as the init of a pid namespace of their
    /// own, so nothing they start outlives them.
    pub fn pid_namespace(&self) -> bool {
        self.config.pid_namespace
    }

    /// The Landlock ABI version of this kernel, as the runner sees it; an
    /// error says why functions cannot be sandboxed here.
    pub async fn sandbox_support(&self) -> Result<u32> {
        let python = self.config.interpreter().await;
        let package_parent = self
            .config
            .runner
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::Platform("the runner has no directory".into()))?;
        let out = tokio::process::Command::new(&python)
            .arg("-c")
            .arg("from _shoal_runner import sandbox; print(sandbox.landlock_abi())")
            .env_clear()
            .env("PYTHONPATH", package_parent)
            .output()
            .await
            .map_err(|e| Error::Platform(format!("running {}: {e}", python.display())))?;
        let abi: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                Error::Platform(format!(
                    "probing the sandbox failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            })?;
        if abi == 0 {
            return Err(Error::Platform(
                "this kernel has no Landlock (Linux 5.13+ with landlock among its LSMs), so functions cannot be sandboxed".into(),
            ));
        }
        Ok(abi)
    }

    fn pool(&self, deployment: &Deployment) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(&deployment.key) {
            return pool.clone();
        }
        let pool = Arc::new(Pool::new(deployment, self.config.clone()));
        pools.insert(deployment.key.clone(), pool.clone());
        pool
    }
}

impl Runtime for PythonRuntime {
    fn prepare(&self, code_dir: PathBuf) -> BoxFuture<'static, Result<Prepared>> {
        let venvs = self.venvs.clone();
        let config = self.config.clone();
        Box::pin(async move {
            if config.is_closed() {
                return Err(Error::ShuttingDown);
            }
            let python = config.interpreter().await;
            venvs.prepare(&python, &code_dir).await
        })
    }

    fn check(&self, deployment: &Deployment) -> BoxFuture<'static, Result<Check>> {
        if self.config.is_closed() {
            return Box::pin(async { Err(Error::ShuttingDown) });
        }
        // A pool of its own, never registered: no call can reach it, and
        // dropping it leaves nothing behind.
        let pool = Pool::new(deployment, self.config.clone());
        Box::pin(async move { pool.check().await })
    }

    fn invoke(
        &self,
        deployment: &Deployment,
        request: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        if self.config.is_closed() {
            return Box::pin(async { Err(Error::ShuttingDown) });
        }
        let pool = self.pool(deployment);
        Box::pin(pool.invoke(request))
    }

    fn query(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<QueryOutcome>> {
        if self.config.is_closed() {
            return Box::pin(async { Err(Error::ShuttingDown) });
        }
        let pool = self.pool(deployment);
        Box::pin(query::run(pool, request))
    }

    fn parts_at_once(&self) -> usize {
        self.config.query_workers
    }

    fn query_parts(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<Vec<shoal_runtime::ShardPart>>> {
        if self.config.is_closed() {
            return Box::pin(async { Err(Error::ShuttingDown) });
        }
        let pool = self.pool(deployment);
        Box::pin(query::run_parts(pool, request))
    }

    fn combine(
        &self,
        deployment: &Deployment,
        partials: Vec<String>,
    ) -> BoxFuture<'static, Result<std::result::Result<String, shoal_types::Failure>>> {
        if self.config.is_closed() {
            return Box::pin(async { Err(Error::ShuttingDown) });
        }
        let pool = self.pool(deployment);
        Box::pin(query::combine_parts(pool, partials))
    }

    fn retire(&self, key: &str) {
        let pool = lock(&self.pools).remove(key);
        if let Some(pool) = pool {
            pool.retire();
        }
    }

    fn stats(&self) -> Vec<PoolStats> {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        let mut stats: Vec<PoolStats> = pools.iter().map(|p| p.stats()).collect();
        stats.sort_by(|a, b| a.key.cmp(&b.key));
        stats
    }

    fn shutdown(&self) {
        self.config.closed.store(true, Ordering::SeqCst);
        let pools: Vec<Arc<Pool>> = lock(&self.pools).drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.shutdown();
        }
    }
}

impl Drop for PythonRuntime {
    fn drop(&mut self) {
        self.reaper.abort();
        self.shutdown();
    }
}

impl Config {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The real interpreter behind `Options::python`, asked once from Python
    /// itself (`sys.executable`); falls back to the configured name.
    pub(crate) async fn interpreter(&self) -> PathBuf {
        self.interpreter
            .get_or_init(|| async {
                let output = tokio::process::Command::new(&self.python)
                    .args(["-c", "import sys; print(sys.executable)"])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await;
                match output {
                    Ok(out) if out.status.success() => {
                        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        if path.is_empty() {
                            self.python.clone()
                        } else {
                            PathBuf::from(path)
                        }
                    }
                    _ => self.python.clone(),
                }
            })
            .await
            .clone()
    }
}

/// Stops idle workers and unused templates, every quarter of the idle timeout.
async fn reap_idle(runtime: Weak<PythonRuntime>, idle_timeout: Duration) {
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(15));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        let pools: Vec<Arc<Pool>> = lock(&runtime.pools).values().cloned().collect();
        let now = Instant::now();
        for pool in pools {
            pool.reap(now, idle_timeout);
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the
/// data consistent, so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes the runner package under `work_dir` and returns the path of its
/// `__main__.py`. Runner directories of other versions are removed.
fn write_runner(work_dir: &Path) -> Result<PathBuf> {
    let mut hash = Sha256::new();
    for (name, text) in RUNNER_FILES {
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    }
    let dir_name = format!("runner-{}", &hex::encode(hash.finalize())[..16]);
    let package = work_dir.join(&dir_name).join("_shoal_runner");
    let failed = |path: &Path, e: std::io::Error| {
        Error::Platform(format!("cannot write {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&package).map_err(|e| failed(&package, e))?;
    for (name, text) in RUNNER_FILES {
        let path = package.join(name);
        write_atomically(&path, text.as_bytes()).map_err(|e| failed(&path, e))?;
    }
    // Left by earlier versions: a runner script, runner directories.
    let _ = std::fs::remove_file(work_dir.join("runner.py"));
    if let Ok(entries) = std::fs::read_dir(work_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("runner-") && name != dir_name {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(package.join("__main__.py"))
}

/// Writes a file through a temporary name, so a concurrent reader never sees
/// half of it.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runner_module_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/_shoal_runner");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".py"))
            .collect();
        // The API modules are the client package's files.
        on_disk.push("blobs.py".into());
        on_disk.push("context.py".into());
        on_disk.push("response.py".into());
        on_disk.sort();
        let embedded: Vec<&str> = RUNNER_FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_runner_is_written_once_per_content() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("runner.py"), "old").unwrap();
        std::fs::create_dir_all(tmp.path().join("runner-0000000000000000/_shoal_runner")).unwrap();
        let main = write_runner(tmp.path()).unwrap();
        assert!(main.ends_with("_shoal_runner/__main__.py"), "{main:?}");
        let package = main.parent().unwrap();
        for (name, text) in RUNNER_FILES {
            assert_eq!(std::fs::read_to_string(package.join(name)).unwrap(), *text);
        }
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let dir = package.parent().unwrap().file_name().unwrap();
        assert_eq!(left, [dir.to_string_lossy().into_owned()]);
        assert_eq!(write_runner(tmp.path()).unwrap(), main);
    }
}
