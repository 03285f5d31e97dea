//! `Engine` and its cheap-clone `Handle`: what the HTTP layer calls.
//!
//! The engine owns the function registry, token checks, and the background
//! consumers that run asynchronous invocations. It knows no HTTP and names no
//! concrete storage or runtime adapter.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use shoal_runtime::{PoolStats, Runtime};
use shoal_store::{
    Backend, ChildResult, FunctionRecord, InvocationRecord, LimiterRecord, QueueDepth, TokenRecord,
};
use shoal_types::Role;

use crate::auth::{self, Token, TokenCache};
use crate::categories::{self, Category, CategoryOptions, NewDoc, RunningQuery};
use crate::clock::Clock;
use crate::dispatch::{self, Consumer};
use crate::error::{Error, Result};
use crate::functions::{self, Deployed, Registry};
use crate::jobs::{self, JobSpec, JobView};
use crate::limits::Limiters;
use crate::queues::{self, OutMessage, QueueInfo, QueueSettings};

/// How the engine runs. Built by the binary from node configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where function code is unpacked (`functions/...`).
    pub data_dir: PathBuf,
    /// Extra lease time an asynchronous invocation gets beyond its timeout.
    pub lease_margin: Duration,
    pub categories: CategoryOptions,
    /// How often queue statistics are sampled for their history.
    pub sample_interval: Duration,
}

impl Options {
    pub fn new(data_dir: PathBuf) -> Options {
        Options {
            data_dir,
            lease_margin: Duration::from_secs(60),
            categories: CategoryOptions::default(),
            sample_interval: Duration::from_secs(5),
        }
    }
}

/// The engine's shared state. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Handle {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) opts: Options,
    pub(crate) backend: Backend,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) registry: Registry,
    pub(crate) tokens: TokenCache,
    /// Invocation records whose latest state is not durable yet (running, or
    /// finished with the write still in flight). Reads look here first, so a
    /// client always sees its own invocation.
    pub(crate) live: Mutex<HashMap<String, Arc<dispatch::LiveEntry>>>,
    pub(crate) consumers: Mutex<HashMap<String, Arc<Consumer>>>,
    pub(crate) limiters: Limiters,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// Starts the engine: loads deployed functions and starts the consumers of
/// their asynchronous invocations. Work stops when `shutdown` is cancelled;
/// then call [`Handle::drain`].
pub async fn start(
    opts: Options,
    backend: Backend,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<Handle> {
    let handle = Handle {
        inner: Arc::new(Inner {
            opts,
            backend,
            runtime,
            clock,
            registry: Registry::default(),
            tokens: TokenCache::default(),
            live: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            limiters: Limiters::default(),
            tasks: TaskTracker::new(),
            shutdown,
        }),
    };
    for limiter in handle.inner.backend.catalog.limiters().await? {
        handle.inner.limiters.set(&limiter);
    }
    let records = handle.inner.backend.catalog.functions().await?;
    for record in records {
        let d = Arc::new(Deployed::from_record(&handle.inner.opts.data_dir, record));
        handle.inner.registry.insert_latest(d.clone());
        dispatch::ensure_consumer(&handle.inner, &d);
        queues::subscribe(&handle.inner, &d);
    }
    let inner = handle.inner.clone();
    let interval = handle.inner.opts.sample_interval;
    handle
        .inner
        .tasks
        .spawn(async move { queues::sample_loop(inner, interval).await });
    Ok(handle)
}

impl Handle {
    // ---- tokens ----

    /// The role of a bearer secret, or `None` when it is unknown or revoked.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Role>> {
        auth::verify(&self.inner.tokens, &*self.inner.backend.catalog, secret).await
    }

    /// Creates a token; returns it with its secret (shown once).
    pub async fn create_token(&self, role: Role, name: &str) -> Result<(Token, String)> {
        let (id, secret) = auth::new_secret();
        let record = TokenRecord {
            id: id.clone(),
            secret_sha256: auth::hash_secret(&secret),
            role: role.as_str().to_string(),
            name: name.to_string(),
            created_at_ms: self.inner.clock.now_ms(),
        };
        self.inner.backend.catalog.put_token(record.clone()).await?;
        let token = auth::to_token(&record).expect("role was just written");
        Ok((token, secret))
    }

    pub async fn tokens(&self) -> Result<Vec<Token>> {
        let records = self.inner.backend.catalog.tokens().await?;
        Ok(records.iter().filter_map(auth::to_token).collect())
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let existed = self.inner.backend.catalog.revoke_token(id).await?;
        self.inner.tokens.clear();
        if existed {
            Ok(())
        } else {
            Err(Error::not_found("token", id))
        }
    }

    // ---- functions ----

    /// Deploys a function archive (tar of a directory with `shoal.toml`) as
    /// a new version.
    pub async fn deploy(&self, archive: Vec<u8>) -> Result<FunctionRecord> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the node is shutting down".into()));
        }
        let data_dir = self.inner.opts.data_dir.clone();
        let unpacked = tokio::task::spawn_blocking(move || functions::unpack(&data_dir, &archive))
            .await
            .map_err(|e| Error::Unavailable(format!("unpacking failed: {e}")))??;
        let code_dir = self.inner.opts.data_dir.join(&unpacked.code_dir);
        let prepared = self.inner.runtime.prepare(code_dir).await?;
        let env_dir = prepared.env_dir.map(|p| {
            p.strip_prefix(&self.inner.opts.data_dir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.to_string_lossy().into_owned())
        });
        let m = &unpacked.manifest;
        let mut record = FunctionRecord {
            name: m.name.to_string(),
            version: 0,
            runtime: m.runtime.clone(),
            handler: m.handler.clone(),
            timeout_ms: m.limits.timeout.as_millis() as u64,
            memory_mb: m.limits.memory_mb,
            concurrency: m.limits.concurrency,
            retries: m.retries,
            retry_delay_ms: m.retry_delay.as_millis() as u64,
            code_dir: unpacked.code_dir.clone(),
            env_dir,
            code_sha256: unpacked.sha256.clone(),
            deployed_at_ms: self.inner.clock.now_ms(),
            limiter: m.limiter.clone(),
            concurrency_key: m.concurrency_key.as_ref().map(|(field, per_key)| {
                shoal_store::ConcurrencyKey {
                    field: field.clone(),
                    per_key: *per_key,
                }
            }),
            subscribe: m
                .subscribe
                .as_ref()
                .map(|s| shoal_store::SubscriptionRecord {
                    queue: s.queue.clone(),
                    batch_size: s.batch_size,
                    concurrency: s.concurrency,
                }),
        };
        if let Some(l) = &record.limiter
            && !self
                .inner
                .backend
                .catalog
                .limiters()
                .await?
                .iter()
                .any(|x| &x.name == l)
        {
            return Err(Error::InvalidFunction(format!(
                "shoal.toml names limiter `{l}`, which does not exist; create it first with `shoal limiters set {l} --per-second N`"
            )));
        }
        if let Some(sub) = &record.subscribe {
            let taken = self.inner.registry.names().into_iter().find(|other| {
                other != &record.name
                    && self
                        .inner
                        .registry
                        .latest(other)
                        .and_then(|d| d.record.subscribe.clone())
                        .is_some_and(|s| s.queue == sub.queue)
            });
            if let Some(other) = taken {
                return Err(Error::QueueTaken(format!(
                    "queue `{}` already has a subscriber, function `{other}`; a queue feeds one function",
                    sub.queue
                )));
            }
        }
        record.version = self
            .inner
            .backend
            .catalog
            .deploy_function(record.clone())
            .await?;
        let d = Arc::new(Deployed::from_record(
            &self.inner.opts.data_dir,
            record.clone(),
        ));
        let previous = {
            let _guard = self.inner.consumers.lock().unwrap();
            let previous = self.inner.registry.latest(&record.name);
            self.inner.registry.insert_latest(d.clone());
            previous
        };
        dispatch::ensure_consumer(&self.inner, &d);
        queues::ensure_for_subscriber(&self.inner, &d).await?;
        queues::subscribe(&self.inner, &d);
        // The previous version's warm workers are no longer needed for new
        // calls; queued async invocations of it start a pool again if needed.
        if let Some(prev) = previous {
            self.inner.runtime.retire(&prev.deployment.key);
        }
        info!(function = %record.name, version = record.version, "Function deployed.");
        Ok(record)
    }

    pub async fn functions(&self) -> Result<Vec<FunctionRecord>> {
        Ok(self.inner.backend.catalog.functions().await?)
    }

    pub async fn function(&self, name: &str) -> Result<FunctionRecord> {
        let name = functions::parse_name(name)?;
        self.inner
            .backend
            .catalog
            .function(name.as_str())
            .await?
            .ok_or_else(|| Error::not_found("function", name.as_str()))
    }

    /// Removes a function and all its versions. Its queued asynchronous
    /// invocations fail with `load_failed`.
    pub async fn remove_function(&self, name: &str) -> Result<()> {
        let name = functions::parse_name(name)?;
        let existed = self
            .inner
            .backend
            .catalog
            .remove_function(name.as_str())
            .await?;
        let removed = {
            let _guard = self.inner.consumers.lock().unwrap();
            self.inner.registry.remove(name.as_str())
        };
        for d in removed {
            self.inner.runtime.retire(&d.deployment.key);
        }
        dispatch::wake(&self.inner, &dispatch::queue_name(name.as_str()));
        if existed {
            info!(function = %name, "Function removed.");
            Ok(())
        } else {
            Err(Error::not_found("function", name.as_str()))
        }
    }

    // ---- invocations ----

    /// Runs a function and waits for its outcome. `event` must be JSON text.
    pub async fn invoke(&self, name: &str, event: String) -> Result<dispatch::Completed> {
        dispatch::invoke_sync(&self.inner, name, event).await
    }

    /// Queues an invocation durably and returns its id.
    pub async fn invoke_async(&self, name: &str, event: String) -> Result<String> {
        dispatch::invoke_async(&self.inner, name, event).await
    }

    pub async fn invocation(&self, id: &str) -> Result<InvocationRecord> {
        if let Some(entry) = self.inner.live.lock().unwrap().get(id) {
            return Ok(entry.record.clone());
        }
        self.inner
            .backend
            .invocations
            .invocation(id)
            .await?
            .ok_or_else(|| Error::not_found("invocation", id))
    }

    /// The logs of an invocation's latest attempt (empty when it printed
    /// nothing).
    pub async fn logs(&self, id: &str) -> Result<Vec<u8>> {
        let live = self.inner.live.lock().unwrap().get(id).cloned();
        if let Some(logs) = live.as_ref().and_then(|e| e.logs.as_ref()) {
            return Ok(logs.clone());
        }
        // The record decides existence; logs may be absent.
        self.invocation(id).await?;
        Ok(self
            .inner
            .backend
            .invocations
            .logs(id)
            .await?
            .unwrap_or_default())
    }

    // ---- categories ----

    /// Creates a category with a shard level (the default when `None`).
    pub async fn create_category(&self, name: &str, shards: Option<u32>) -> Result<Category> {
        categories::create(&self.inner, name, shards).await
    }

    pub async fn category(&self, name: &str) -> Result<Category> {
        categories::get(&self.inner, name).await
    }

    pub async fn categories(&self) -> Result<Vec<Category>> {
        categories::list(&self.inner).await
    }

    pub async fn delete_category(&self, name: &str) -> Result<()> {
        categories::delete(&self.inner, name).await
    }

    /// Writes documents atomically (creating the category if needed) and
    /// returns their ids in order.
    pub async fn write_docs(&self, category: &str, docs: Vec<NewDoc>) -> Result<Vec<String>> {
        categories::write(&self.inner, category, docs).await
    }

    pub async fn doc(&self, category: &str, id: &str) -> Result<Vec<u8>> {
        categories::get_doc(&self.inner, category, id).await
    }

    pub async fn delete_doc(&self, category: &str, id: &str) -> Result<()> {
        categories::delete_doc(&self.inner, category, id).await
    }

    /// A page of documents and the cursor of the next page.
    pub async fn scan(
        &self,
        category: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<shoal_store::StoredDoc>, Option<String>)> {
        categories::scan(&self.inner, category, cursor, limit).await
    }

    /// Starts a map (and reduce) of `function` over a category.
    pub async fn query(
        &self,
        category: &str,
        function: &str,
        skip_errors: bool,
    ) -> Result<RunningQuery> {
        categories::query(&self.inner, category, function, skip_errors).await
    }

    pub fn category_options(&self) -> CategoryOptions {
        self.inner.opts.categories
    }

    // ---- queues ----

    /// Creates a queue or changes its settings.
    pub async fn put_queue(&self, name: &str, settings: QueueSettings) -> Result<QueueInfo> {
        let record = queues::put(&self.inner, name, settings).await?;
        queues::info(&self.inner, &record.name).await
    }

    pub async fn queue(&self, name: &str) -> Result<QueueInfo> {
        queues::info(&self.inner, name).await
    }

    pub async fn queues(&self) -> Result<Vec<QueueInfo>> {
        queues::list(&self.inner).await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        queues::delete(&self.inner, name).await
    }

    /// Sends messages durably; returns their ids.
    /// Starts a job: one asynchronous invocation of `spec.function` per
    /// event, then `spec.then` once all have finished. Returns its id.
    pub async fn start_job(&self, spec: JobSpec) -> Result<String> {
        jobs::start(&self.inner, spec, None).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView> {
        jobs::view(&self.inner, id).await
    }

    /// Children's results by index from `offset`, at most `limit`.
    pub async fn job_results(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ChildResult>> {
        jobs::results(&self.inner, id, offset, limit).await
    }

    /// Cancels a job and the jobs below it.
    pub async fn cancel_job(&self, id: &str) -> Result<()> {
        jobs::cancel(&self.inner, id).await
    }

    pub async fn send(&self, queue: &str, messages: Vec<OutMessage>) -> Result<Vec<String>> {
        queues::send(&self.inner, queue, messages).await
    }

    pub async fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<shoal_store::DeadLetter>> {
        queues::dead_letters(&self.inner, queue, after, limit).await
    }

    pub async fn redrive(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        queues::redrive(&self.inner, queue, ids).await
    }

    pub async fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        queues::purge_dead(&self.inner, queue, ids).await
    }

    pub async fn purge_queue(&self, queue: &str) -> Result<u64> {
        queues::purge(&self.inner, queue).await
    }

    pub async fn queue_samples(
        &self,
        queue: &str,
        since_ms: u64,
    ) -> Result<Vec<shoal_store::QueueSample>> {
        queues::samples(&self.inner, queue, since_ms).await
    }

    /// Creates or changes a shared rate limiter (takes effect at once).
    pub async fn put_limiter(
        &self,
        name: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<LimiterRecord> {
        shoal_types::validate_name("limiter name", name)?;
        if !(per_second > 0.0 && per_second <= 1_000_000.0) {
            return Err(Error::Invalid(shoal_types::Invalid {
                field: "per_second",
                reason: "must be above 0 and at most 1,000,000".into(),
            }));
        }
        if !(1..=1_000_000).contains(&burst) {
            return Err(Error::Invalid(shoal_types::Invalid {
                field: "burst",
                reason: "must be between 1 and 1,000,000".into(),
            }));
        }
        let record = LimiterRecord {
            name: name.to_string(),
            per_second,
            burst,
            updated_at_ms: self.inner.clock.now_ms(),
        };
        self.inner
            .backend
            .catalog
            .put_limiter(record.clone())
            .await?;
        self.inner.limiters.set(&record);
        Ok(record)
    }

    pub async fn limiters(&self) -> Result<Vec<LimiterRecord>> {
        Ok(self.inner.backend.catalog.limiters().await?)
    }

    /// Removes a limiter that no function uses.
    pub async fn remove_limiter(&self, name: &str) -> Result<()> {
        shoal_types::validate_name("limiter name", name)?;
        let users: Vec<String> = self
            .inner
            .registry
            .names()
            .into_iter()
            .filter(|f| {
                self.inner
                    .registry
                    .latest(f)
                    .is_some_and(|d| d.record.limiter.as_deref() == Some(name))
            })
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse(format!(
                "limiter `{name}` is used by {}; change their shoal.toml first",
                users.join(", ")
            )));
        }
        if !self.inner.backend.catalog.remove_limiter(name).await? {
            return Err(Error::not_found("limiter", name));
        }
        self.inner.limiters.remove(name);
        Ok(())
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    // ---- observability ----

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.inner.runtime.stats()
    }

    /// Depth of each function's asynchronous invocation queue.
    pub async fn queue_depths(&self) -> Result<Vec<(String, QueueDepth)>> {
        let mut names = self.inner.registry.names();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let depth = self
                .inner
                .backend
                .queues
                .depth(&dispatch::queue_name(&name))
                .await?;
            out.push((name, depth));
        }
        Ok(out)
    }

    /// Waits (up to `deadline`) for in-flight asynchronous invocations after
    /// the shutdown token was cancelled, then stops every worker.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(deadline, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "Shutdown deadline passed; killing workers."
            );
        }
        self.inner.runtime.shutdown();
    }
}
