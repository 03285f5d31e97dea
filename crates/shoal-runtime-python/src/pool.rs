//! The warm pool of one deployment: its template, idle workers, the
//! concurrency limit, and idle reaping.
//!
//! At most `limits.concurrency` workers exist; an invocation takes the most
//! recently used idle worker, forks a new one when under the limit, or waits.
//! Only healthy workers return to the idle list. With
//! `max_invocations_per_worker`, a worker that has served that many is
//! retired once its invocation has finished (gracefully: it exits at the
//! end of its socket) instead, and the next invocation forks a fresh one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::sync::Semaphore;

use shoal_runtime::{Check, Deployment, Error, PoolStats, Request, Response, Result};
use shoal_types::{Failure, FailureKind, Limits, Outcome};

use crate::query::{QuerySet, QueryWorker};
use crate::template::{self, ForkError, Started, Template};
use crate::worker::{Caps, RunError, Worker};
use crate::{Config, lock, protocol};

/// The least time a template gets to import the function, whatever the timeout.
const MIN_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Workers that die before an invocation reaches them are replaced this often.
const ATTEMPTS: usize = 3;
/// How long a retired worker gets to exit on its own before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct Pool {
    key: String,
    deployment: Deployment,
    limits: Limits,
    /// Invocations after which a worker is replaced.
    recycle_after: Option<std::num::NonZeroU32>,
    caps: Caps,
    config: Arc<Config>,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    /// Serializes template starts, so concurrent first calls share one.
    starting: tokio::sync::Mutex<()>,
    /// The query workers. Held for the whole of a query: queries of one
    /// deployment run one after another (each uses every query worker).
    pub(crate) query_set: Arc<tokio::sync::Mutex<QuerySet>>,
}

#[derive(Default)]
struct State {
    /// Oldest first; invocations take from the end.
    idle: Vec<Worker>,
    busy: Vec<Pid>,
    /// Workers retired after `max_invocations_per_worker`, exiting on
    /// their own; dropped (killed) once they have, or after
    /// `RETIRE_GRACE`.
    retiring: Vec<Worker>,
    template: Option<Arc<Template>>,
    retired: bool,
    /// Since when the pool has had no workers (template reaping).
    empty_since: Option<Instant>,
    /// Pids of live query workers (for `shutdown`, which may not wait for
    /// the query set's lock).
    query_pids: Vec<Pid>,
}

enum Spawned {
    Worker(Worker),
    LoadFailed(Response),
}

/// Marks a worker busy for as long as it lives.
struct Busy<'a> {
    pool: &'a Pool,
    pid: Pid,
}

impl Pool {
    pub(crate) fn new(deployment: &Deployment, config: Arc<Config>) -> Pool {
        let limits = deployment.limits;
        let concurrency = limits.concurrency.max(1) as usize;
        Pool {
            key: deployment.key.clone(),
            deployment: deployment.clone(),
            limits,
            recycle_after: deployment.max_invocations_per_worker,
            caps: Caps {
                max_log_bytes: config.max_log_bytes,
                max_result_bytes: config.max_result_bytes,
                memory_mb: limits.memory_mb,
            },
            config,
            permits: Arc::new(Semaphore::new(concurrency)),
            state: Mutex::new(State::default()),
            starting: tokio::sync::Mutex::new(()),
            query_set: Arc::new(tokio::sync::Mutex::new(QuerySet::default())),
        }
    }

    pub(crate) fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    pub(crate) fn caps(&self) -> &Caps {
        &self.caps
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) async fn invoke(self: Arc<Self>, request: Request) -> Result<Response> {
        let queued_at = Instant::now();
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let frame = protocol::invoke_frame(&request, self.limits.timeout);
        let mut gate = request.gate.clone();
        let mut cold_start = false;
        for _ in 0..ATTEMPTS {
            let mut worker = match self.take_idle() {
                Some(worker) => worker,
                None => match self.spawn_worker(&mut cold_start, queued_at).await? {
                    Spawned::Worker(worker) => worker,
                    Spawned::LoadFailed(response) => return Ok(response),
                },
            };
            // The gate (a rate limiter's token) opens on a ready worker, so
            // what it admits is the real start of the call.
            if let Some(gate) = gate.take() {
                gate.wait().await;
            }
            let busy = Busy::new(&self, worker.pid());
            let queued = queued_at.elapsed();
            let ran = worker
                .run(
                    &frame,
                    request.host.as_ref(),
                    self.limits.timeout,
                    &self.caps,
                )
                .await;
            drop(busy);
            match ran {
                Ok(ran) => {
                    worker.served = worker.served.saturating_add(1);
                    let worn_out = self.recycle_after.is_some_and(|n| worker.served >= n.get());
                    if ran.reusable && worn_out {
                        let pid = worker.pid().as_raw_nonzero().get();
                        tracing::debug!(
                            deployment = %self.key, pid, served = worker.served,
                            "Retiring a worker that served its invocations."
                        );
                        worker.close_input();
                        self.retiring(worker);
                    } else if ran.reusable {
                        self.put_back(worker);
                    } else {
                        drop(worker);
                        if self.config.is_closed() {
                            return Err(Error::ShuttingDown);
                        }
                    }
                    return Ok(Response {
                        outcome: ran.outcome,
                        logs: ran.logs,
                        cold_start,
                        duration: ran.duration,
                        queued,
                    });
                }
                Err(RunError::Stale) => continue,
                Err(RunError::Rejected(message)) => {
                    self.put_back(worker);
                    return Err(Error::Platform(message));
                }
                Err(RunError::Broken(message)) => return Err(Error::Platform(message)),
            }
        }
        Err(Error::Platform(
            "workers kept dying before the invocation reached them".into(),
        ))
    }

    fn take_idle(&self) -> Option<Worker> {
        let mut stale = Vec::new();
        let mut state = lock(&self.state);
        let found = loop {
            let Some(mut worker) = state.idle.pop() else {
                break None;
            };
            if worker.has_exited() {
                stale.push(worker);
                continue;
            }
            break Some(worker);
        };
        drop(state);
        drop(stale);
        found
    }

    /// Keeps a retired worker (its input closed) until it has exited, and
    /// lets go of those that have.
    fn retiring(&self, mut worker: Worker) {
        worker.last_used = Instant::now();
        let gone = {
            let mut state = lock(&self.state);
            let gone = take_exited(&mut state.retiring, worker.last_used);
            state.retiring.push(worker);
            gone
        };
        drop(gone);
    }

    fn put_back(&self, mut worker: Worker) {
        let mut state = lock(&self.state);
        if state.retired || self.config.is_closed() {
            drop(state);
            drop(worker);
            return;
        }
        worker.last_used = Instant::now();
        state.idle.push(worker);
    }

    async fn spawn_worker(&self, cold_start: &mut bool, queued_at: Instant) -> Result<Spawned> {
        for _ in 0..ATTEMPTS {
            let template = match self.template(cold_start).await? {
                Ok(template) => template,
                Err((failure, logs, duration)) => {
                    return Ok(Spawned::LoadFailed(Response {
                        outcome: Outcome::Failed(failure),
                        logs,
                        cold_start: true,
                        duration,
                        queued: queued_at.elapsed(),
                    }));
                }
            };
            if let Some(failure) = &template.handler_error {
                return Ok(Spawned::LoadFailed(Response {
                    outcome: Outcome::Failed(failure.clone()),
                    logs: Vec::new(),
                    cold_start: *cold_start,
                    duration: Duration::ZERO,
                    queued: queued_at.elapsed(),
                }));
            }
            match template.fork(u64::from(self.limits.memory_mb)).await {
                Ok(new) => {
                    let worker = Worker::new(new)
                        .map_err(|e| Error::Platform(format!("setting up a worker: {e}")))?;
                    return Ok(Spawned::Worker(worker));
                }
                Err(ForkError::Dead) => self.forget_template(&template),
                Err(ForkError::Failed(message)) => return Err(Error::Platform(message)),
            }
        }
        Err(Error::Platform("the template kept dying".into()))
    }

    /// Forks a query worker, with room for its share of resident documents
    /// on top of the function's memory limit. `Err` inside is a load failure.
    pub(crate) async fn spawn_query_worker(
        self: &Arc<Self>,
    ) -> Result<std::result::Result<QueryWorker, Failure>> {
        let cache_mb = self.config.cache.per_worker() * 3 / 2 / (1024 * 1024) + 64;
        let memory_mb = u64::from(self.limits.memory_mb) + cache_mb;
        let mut cold_start = false;
        for _ in 0..ATTEMPTS {
            let template = match self.template(&mut cold_start).await? {
                Ok(template) => template,
                Err((failure, _logs, _)) => return Ok(Err(failure)),
            };
            match template.fork(memory_mb).await {
                Ok(new) => {
                    let pid = new.pid;
                    let worker = Worker::new(new)
                        .map_err(|e| Error::Platform(format!("setting up a query worker: {e}")))?;
                    let worker = QueryWorker::new(worker);
                    self.config.cache.register(worker.uid, Arc::downgrade(self));
                    let mut state = lock(&self.state);
                    state.query_pids.push(pid);
                    state.empty_since = None;
                    return Ok(Ok(worker));
                }
                Err(ForkError::Dead) => self.forget_template(&template),
                Err(ForkError::Failed(message)) => return Err(Error::Platform(message)),
            }
        }
        Err(Error::Platform("the template kept dying".into()))
    }

    /// Stops a query worker and forgets what it held.
    pub(crate) fn discard_query_worker(&self, worker: QueryWorker) {
        self.config.cache.forget(worker.uid);
        let pid = worker.worker.pid();
        lock(&self.state).query_pids.retain(|p| *p != pid);
        drop(worker);
    }

    /// Tells the query workers which resident shards the cache evicted, so
    /// that their memory is freed now rather than at their next query.
    pub(crate) async fn deliver_drops(self: Arc<Self>) {
        let mut set = self.query_set.clone().lock_owned().await;
        crate::query::deliver_drops(&self, &mut set).await;
    }

    /// Starts this (unregistered) pool's template to see whether the
    /// deployment loads, then stops it and removes its scratch directory.
    /// A module without its handler passes when it serves queries (defines
    /// `map`, `map_batch` or `reduce`).
    pub(crate) async fn check(&self) -> Result<Check> {
        let mut cold_start = false;
        let started = self.template(&mut cold_start).await;
        let check = started.map(|loaded| match loaded {
            Ok(template) => {
                let q = &template.functions;
                match &template.handler_error {
                    Some(failure) if !(q.map || q.map_batch || q.reduce) => Check::Fails {
                        failure: failure.clone(),
                        logs: Vec::new(),
                    },
                    _ => Check::Loads,
                }
            }
            Err((failure, logs, _)) => Check::Fails { failure, logs },
        });
        self.retire();
        let _ = std::fs::remove_dir_all(self.config.scratch.join(&self.key));
        check
    }

    /// The live template, starting one if needed. `Err` inside is a load
    /// failure of user code: (failure, import-time output, load time).
    pub(crate) async fn template(
        &self,
        cold_start: &mut bool,
    ) -> Result<std::result::Result<Arc<Template>, (Failure, Vec<u8>, Duration)>> {
        if let Some(template) = self.live_template() {
            return Ok(Ok(template));
        }
        let _starting = self.starting.lock().await;
        if let Some(template) = self.live_template() {
            return Ok(Ok(template));
        }
        if self.config.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let python = match &self.deployment.env_dir {
            Some(env) => env.join("bin").join("python"),
            None => self.config.interpreter().await,
        };
        let scratch = self.config.scratch.join(&self.key);
        let sandbox = self.config.sandbox.as_ref().map(|s| {
            let runner_dir = self
                .config
                .runner
                .parent()
                .and_then(std::path::Path::parent)
                .unwrap_or(&self.config.runner);
            s.for_deployment(
                runner_dir,
                &self.deployment.code_dir,
                self.deployment.env_dir.as_deref(),
                &scratch,
            )
        });
        let spec = template::Spec {
            key: self.key.clone(),
            python,
            runner: self.config.runner.clone(),
            sandbox,
            scratch,
            tree_limits: self.config.tree_limits.clone(),
            network: self.deployment.network,
            pid_namespace: self.config.pid_namespace,
            env: self.deployment.env.clone(),
            code_dir: self.deployment.code_dir.clone(),
            handler: self.deployment.handler.clone(),
            memory_mb: self.limits.memory_mb,
            max_log_bytes: self.caps.max_log_bytes,
            max_result_bytes: self.caps.max_result_bytes,
        };
        let started_at = Instant::now();
        *cold_start = true;
        if let Some(failure) = self.changed_on_disk().await {
            return Ok(Err((failure, Vec::new(), started_at.elapsed())));
        }
        match Template::start(&spec, self.limits.timeout.max(MIN_LOAD_TIMEOUT)).await? {
            Started::Ready(template) => {
                let template = Arc::new(*template);
                {
                    // A new template starts its idle clock now: the pool's
                    // quiet spell before it (which may have reaped the last
                    // one) must not reap it while its first worker forks.
                    let mut state = lock(&self.state);
                    state.template = Some(template.clone());
                    state.empty_since = None;
                }
                Ok(Ok(template))
            }
            Started::LoadFailed { failure, logs } => Ok(Err((failure, logs, started_at.elapsed()))),
        }
    }

    /// A load failure when the code on disk is not what was deployed (its
    /// digest differs): such code is never run.
    async fn changed_on_disk(&self) -> Option<Failure> {
        let expected = self.deployment.code_digest.clone()?;
        let dir = self.deployment.code_dir.clone();
        let found = tokio::task::spawn_blocking(move || shoal_runtime::code_digest_of_dir(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match found {
            Ok(found) if found == expected => None,
            Ok(found) => Some(Failure::new(
                FailureKind::LoadFailed,
                format!(
                    "the function's code on disk is not what was deployed (digest {}…, deployed {}…); it was not run — deploy it again",
                    &found[..12],
                    &expected[..12.min(expected.len())]
                ),
            )),
            Err(e) => Some(Failure::new(
                FailureKind::LoadFailed,
                format!("the function's code could not be read to check it: {e}"),
            )),
        }
    }

    fn live_template(&self) -> Option<Arc<Template>> {
        let mut state = lock(&self.state);
        match &state.template {
            Some(template) if template.is_alive() => Some(template.clone()),
            Some(_) => {
                let dead = state.template.take();
                drop(state);
                drop(dead);
                None
            }
            None => None,
        }
    }

    fn forget_template(&self, template: &Arc<Template>) {
        let mut state = lock(&self.state);
        if state
            .template
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, template))
        {
            let dead = state.template.take();
            drop(state);
            drop(dead);
        }
    }

    /// Stops workers idle for `idle_timeout`, workers that died idle, and the
    /// template once the pool has had no workers for `idle_timeout`.
    pub(crate) fn reap(&self, now: Instant, idle_timeout: Duration) {
        let mut dead: Vec<Worker> = Vec::new();
        let mut dead_template = None;
        // Query workers go together once the last query is idle_timeout ago,
        // and with them their resident documents.
        let queries_idle = match self.query_set.try_lock() {
            Ok(mut set) => {
                let expired = now.saturating_duration_since(set.last_used) >= idle_timeout;
                for slot in &mut set.slots {
                    let gone = match slot {
                        Some(worker) => expired || worker.worker.has_exited(),
                        None => false,
                    };
                    if gone && let Some(worker) = slot.take() {
                        self.discard_query_worker(worker);
                    }
                }
                set.slots.iter().all(Option::is_none)
            }
            Err(_) => false,
        };
        {
            let mut state = lock(&self.state);
            let expired = state
                .idle
                .iter()
                .position(|w| now.saturating_duration_since(w.last_used) < idle_timeout)
                .unwrap_or(state.idle.len());
            dead.extend(state.idle.drain(..expired));
            let mut i = 0;
            while i < state.idle.len() {
                if state.idle[i].has_exited() {
                    dead.push(state.idle.remove(i));
                } else {
                    i += 1;
                }
            }
            dead.extend(take_exited(&mut state.retiring, now));
            if state.idle.is_empty() && state.busy.is_empty() && queries_idle {
                let since = *state.empty_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= idle_timeout
                    || state.template.as_ref().is_some_and(|t| !t.is_alive())
                {
                    dead_template = state.template.take();
                    state.empty_since = None;
                }
            } else {
                state.empty_since = None;
            }
        }
        if !dead.is_empty() {
            tracing::debug!(deployment = %self.key, workers = dead.len(), "Stopping idle workers.");
        }
        drop(dead);
        drop(dead_template);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let state = lock(&self.state);
        PoolStats {
            key: self.key.clone(),
            idle: state.idle.len(),
            busy: state.busy.len(),
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        lock(&self.state).retired || self.config.is_closed()
    }

    /// Stops the template and idle workers; busy ones stop when they finish
    /// (query workers when their query ends).
    pub(crate) fn retire(&self) {
        let (idle, retiring, template) = {
            let mut state = lock(&self.state);
            state.retired = true;
            (
                std::mem::take(&mut state.idle),
                std::mem::take(&mut state.retiring),
                state.template.take(),
            )
        };
        drop(idle);
        drop(retiring);
        drop(template);
        if let Ok(mut set) = self.query_set.try_lock() {
            for worker in set.slots.iter_mut().filter_map(Option::take) {
                self.discard_query_worker(worker);
            }
        }
    }

    /// Stops everything now, busy workers included.
    pub(crate) fn shutdown(&self) {
        self.permits.close();
        let (busy, queries) = {
            let state = lock(&self.state);
            (state.busy.clone(), state.query_pids.clone())
        };
        for pid in busy.into_iter().chain(queries) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        self.retire();
    }
}

/// The retired workers that have exited, or have had `RETIRE_GRACE`.
fn take_exited(retiring: &mut Vec<Worker>, now: Instant) -> Vec<Worker> {
    let mut gone = Vec::new();
    let mut i = 0;
    while i < retiring.len() {
        let late = now.saturating_duration_since(retiring[i].last_used) >= RETIRE_GRACE;
        if late || retiring[i].has_exited() {
            gone.push(retiring.swap_remove(i));
        } else {
            i += 1;
        }
    }
    gone
}

impl<'a> Busy<'a> {
    fn new(pool: &'a Pool, pid: Pid) -> Busy<'a> {
        let mut state = lock(&pool.state);
        state.busy.push(pid);
        state.empty_since = None;
        Busy { pool, pid }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.pool.state);
        if let Some(i) = state.busy.iter().position(|p| *p == self.pid) {
            state.busy.swap_remove(i);
        }
    }
}
