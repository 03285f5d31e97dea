//! A scripted [`Runtime`] for fast tests of the engine and the server
//! (cargo feature `fake`): no processes, no Python, no real time.
//!
//! A test says, per function *name* (`Request::function`), what its
//! invocations do with a [`Script`]: succeed with a JSON value, fail with a
//! [`FailureKind`], take some time (`tokio::time::sleep`, so under tokio's
//! paused time it costs nothing), block on a [`Latch`] until the test
//! releases it, make host calls through `Request::host`, or fail on the
//! platform. [`FakeRuntime::script_with`] picks a script per request.
//! Functions without a script succeed at once with their event as output.
//!
//! Like the real runtime, an invocation awaits `Request::gate` (a rate
//! limiter's token) right before it starts, and one that runs past its
//! deployment's timeout fails with `timed_out`. Unlike it, the fake does
//! not cap calls at the deployment's concurrency unless asked
//! ([`FakeRuntime::limit_workers`]), so a test sees the engine's own limits.
//!
//! Queries: `map` gives each document's id (a JSON string) and fails on a
//! document whose JSON holds `"fail": true`; a function marked with
//! [`FakeRuntime::query_reduce`] has a `reduce` that concatenates (its
//! partials are JSON arrays of ids, in document order, so an answer shows
//! both which documents counted and in which order).
//! [`FakeRuntime::query_delay`] makes each shard take some time. Every
//! shard a query ran is recorded ([`FakeRuntime::queried`]).
//!
//! Every call is recorded as a [`Call`] (function, version, attempt, event,
//! when it was invoked, started and ended, its outcome and host answers),
//! and the peak number of calls running at once is kept per function. The
//! `wait_*` methods resolve when the calls reach a state, without timers;
//! wrap them in `tokio::time::timeout` so a test that waits for something
//! that never happens fails (at once, with paused time) instead of hanging.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use shoal_types::{Failure, FailureKind, Outcome};

use crate::{
    Check, Deployment, Error, HostCall, HostError, PoolStats, Prepared, QueryOutcome, QueryRequest,
    Request, Response, Result, Runtime, ShardPart,
};

/// What one invocation does: its steps, in the order they were added, then
/// its end (a result, a failure or a platform error).
///
/// ```ignore
/// // Sleeps 3 s (of tokio time), fans out, then returns the map's answer.
/// Script::host_answer()
///     .sleep(Duration::from_secs(3))
///     .host(HostCall::Map(args));
/// ```
#[derive(Clone, Debug)]
pub struct Script {
    steps: Vec<Step>,
    end: End,
}

#[derive(Clone, Debug)]
enum Step {
    Sleep(Duration),
    Wait(Latch),
    /// A host call as its operation and arguments (JSON text), decoded
    /// again for each call, since a `HostCall` is used up by the host.
    Host {
        op: &'static str,
        args: String,
    },
    Log(Vec<u8>),
}

#[derive(Clone, Debug)]
enum End {
    Succeed(String),
    Echo,
    HostAnswer,
    Fail(Failure),
    Platform(String),
}

impl Script {
    fn ending(end: End) -> Script {
        Script {
            steps: Vec::new(),
            end,
        }
    }

    /// Succeeds with `value` as the result.
    pub fn ok(value: serde_json::Value) -> Script {
        Script::ending(End::Succeed(value.to_string()))
    }

    /// Succeeds with `json` (JSON text, passed on as it is) as the result.
    pub fn ok_raw(json: impl Into<String>) -> Script {
        Script::ending(End::Succeed(json.into()))
    }

    /// Succeeds with the event as the result.
    pub fn echo() -> Script {
        Script::ending(End::Echo)
    }

    /// Succeeds with the answer of the last host call as the result
    /// (`null` when none was made), e.g. `{"job": id}` after a map.
    pub fn host_answer() -> Script {
        Script::ending(End::HostAnswer)
    }

    /// Fails with `kind`; the message is `scripted <kind>`.
    pub fn fail(kind: FailureKind) -> Script {
        Script::failure(Failure::new(kind, format!("scripted {kind}")))
    }

    /// Fails with `kind` and `message`.
    pub fn fail_with(kind: FailureKind, message: impl Into<String>) -> Script {
        Script::failure(Failure::new(kind, message))
    }

    /// The handler raised `exception` with `message` (kind `raised`).
    pub fn raise(exception: &str, message: impl Into<String>) -> Script {
        Script::failure(Failure {
            kind: FailureKind::Raised,
            exception: Some(exception.to_string()),
            message: message.into(),
            traceback: None,
        })
    }

    /// Fails with `failure` as it is.
    pub fn failure(failure: Failure) -> Script {
        Script::ending(End::Fail(failure))
    }

    /// `invoke` answers `Err(Error::Platform(message))`: the platform, not
    /// the user code, failed.
    pub fn platform_error(message: impl Into<String>) -> Script {
        Script::ending(End::Platform(message.into()))
    }

    /// Adds a step: take `d` of tokio time.
    pub fn sleep(mut self, d: Duration) -> Script {
        self.steps.push(Step::Sleep(d));
        self
    }

    /// Adds a step: wait until the test lets this call pass the latch.
    pub fn wait(mut self, latch: &Latch) -> Script {
        self.steps.push(Step::Wait(latch.clone()));
        self
    }

    /// Adds a step: make a host call through `Request::host`. Its answer is
    /// recorded in [`Call::host_answers`]; an error answer ends the call as
    /// an uncaught `HostError` would (kind `raised`, exception `HostError`,
    /// message `code: message`).
    pub fn host(mut self, call: HostCall) -> Script {
        self.steps.push(Step::Host {
            op: call.op(),
            args: call.encode_args(),
        });
        self
    }

    /// Adds a step: a host call given as its operation's name and its
    /// arguments (JSON text), decoded like the Python runtime decodes them.
    pub fn host_raw(mut self, op: &str, args: impl Into<String>) -> Script {
        let op = HostCall::OPS
            .iter()
            .find(|o| **o == op)
            .copied()
            .unwrap_or_else(|| panic!("no host call named {op:?}"));
        self.steps.push(Step::Host {
            op,
            args: args.into(),
        });
        self
    }

    /// Adds a step: write `text` to the call's logs.
    pub fn log(mut self, text: &str) -> Script {
        self.steps.push(Step::Log(text.as_bytes().to_vec()));
        self
    }
}

/// A gate the test opens: each call waiting on it needs one pass.
/// [`Latch::release`] hands out passes, [`Latch::open`] lets everyone
/// through from then on. Clones are the same latch.
#[derive(Clone, Debug)]
pub struct Latch {
    passes: Arc<Semaphore>,
}

impl Default for Latch {
    fn default() -> Latch {
        Latch::new()
    }
}

impl Latch {
    /// A closed latch.
    pub fn new() -> Latch {
        Latch {
            passes: Arc::new(Semaphore::new(0)),
        }
    }

    /// Lets `n` more calls through (now or when they arrive).
    pub fn release(&self, n: usize) {
        self.passes.add_permits(n);
    }

    /// Lets every call through, now and later.
    pub fn open(&self) {
        self.passes.close();
    }

    async fn pass(&self) {
        // A closed semaphore is an open latch.
        if let Ok(permit) = self.passes.acquire().await {
            permit.forget();
        }
    }
}

/// How a function's calls pick their script.
#[derive(Clone)]
enum Plan {
    Always(Script),
    /// One script per call in order; the last one repeats.
    Sequence(VecDeque<Script>),
    With(Arc<dyn Fn(&Request) -> Script + Send + Sync>),
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub invocation_id: String,
    pub function: String,
    pub version: u64,
    /// The deployment's key (`name@version`).
    pub key: String,
    pub attempt: u32,
    /// The event, as JSON text.
    pub event: String,
    /// When `invoke` was called.
    pub invoked: Instant,
    /// When the call started: after its gate opened.
    pub started: Instant,
    /// When it ended; `None` while it runs.
    pub ended: Option<Instant>,
    /// `None` while it runs, and when it ended on a platform error or
    /// shutdown.
    pub outcome: Option<Outcome>,
    /// The answers to its host calls, in order.
    pub host_answers: Vec<std::result::Result<String, HostError>>,
    /// Order of starts and ends across all calls, for exact overlaps.
    start_seq: u64,
    end_seq: Option<u64>,
}

impl Call {
    /// The event, parsed.
    pub fn event_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.event).unwrap_or(serde_json::Value::Null)
    }

    /// True when it ended with `Outcome::Succeeded`.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Succeeded(_)))
    }

    /// How long it ran (to now while it runs).
    pub fn duration(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now) - self.started
    }
}

/// The scripted runtime. Cheap to clone; clones are the same runtime.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Notified on every start and end of a call.
    changed: Notify,
    stop: watch::Sender<bool>,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            state: Mutex::default(),
            changed: Notify::new(),
            stop: watch::Sender::new(false),
        }
    }
}

#[derive(Default)]
struct State {
    plans: HashMap<String, Plan>,
    calls: Vec<Call>,
    seq: u64,
    running: HashMap<String, usize>,
    peak: HashMap<String, usize>,
    /// Deployments that had a call, by key (the first call is a cold start).
    warm: HashMap<String, usize>,
    /// Per deployment key, when workers are limited.
    workers: Option<HashMap<String, Arc<Semaphore>>>,
    prepared: Vec<PathBuf>,
    retired: Vec<String>,
    /// Handlers whose load fails (`check`), with the failure.
    load_failures: HashMap<String, Failure>,
    /// Keys of the deployments checked, in order.
    checked: Vec<String>,
    /// Functions whose query module has `reduce`.
    query_reduce: std::collections::HashSet<String>,
    /// Time each shard of a query takes, by function.
    query_delay: HashMap<String, Duration>,
    /// Shards queries ran, in order: `(function, shard, finished)`.
    queried: Vec<(String, u32, bool)>,
    /// `Runtime::parts_at_once`; `None`: 2.
    parts_at_once: Option<usize>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `check` of any deployment whose handler is `handler` fail with
    /// `failure` (a module that does not import, a missing handler).
    pub fn fail_load(&self, handler: &str, failure: Failure) -> &FakeRuntime {
        self.state()
            .load_failures
            .insert(handler.to_string(), failure);
        self
    }

    /// Keys of the deployments `check` was asked about, in order.
    pub fn checked(&self) -> Vec<String> {
        self.state().checked.clone()
    }

    /// Caps each deployment's running calls at its `concurrency`, as the
    /// real runtime's worker pools do (further calls wait for a worker).
    pub fn limit_workers(&self) -> &FakeRuntime {
        self.state().workers.get_or_insert_with(HashMap::new);
        self
    }

    /// Every call of `function` runs `script`.
    pub fn script(&self, function: &str, script: Script) -> &FakeRuntime {
        self.plan(function, Plan::Always(script))
    }

    /// Calls of `function` run these scripts in turn, one per call; the last
    /// one repeats.
    pub fn script_seq(
        &self,
        function: &str,
        scripts: impl IntoIterator<Item = Script>,
    ) -> &FakeRuntime {
        let scripts: VecDeque<Script> = scripts.into_iter().collect();
        assert!(!scripts.is_empty(), "script_seq needs at least one script");
        self.plan(function, Plan::Sequence(scripts))
    }

    /// Each call of `function` runs the script `pick` makes for its request.
    pub fn script_with(
        &self,
        function: &str,
        pick: impl Fn(&Request) -> Script + Send + Sync + 'static,
    ) -> &FakeRuntime {
        self.plan(function, Plan::With(Arc::new(pick)))
    }

    fn plan(&self, function: &str, plan: Plan) -> &FakeRuntime {
        self.state().plans.insert(function.to_string(), plan);
        self
    }

    fn pick(&self, request: &Request) -> Script {
        let plan = {
            let mut state = self.state();
            match state.plans.get_mut(&request.function) {
                None => return Script::echo(),
                Some(Plan::Sequence(scripts)) => {
                    let next = if scripts.len() > 1 {
                        scripts.pop_front()
                    } else {
                        scripts.front().cloned()
                    };
                    return next.expect("a sequence is never empty");
                }
                Some(plan) => plan.clone(),
            }
        };
        match plan {
            Plan::Always(script) => script,
            Plan::With(pick) => pick(request),
            Plan::Sequence(_) => unreachable!("handled above"),
        }
    }

    // ---- what happened ----

    /// Every call so far, in the order they started.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The calls of `function`, in the order they started.
    pub fn calls_of(&self, function: &str) -> Vec<Call> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.function == function)
            .cloned()
            .collect()
    }

    /// Calls of `function` running now.
    pub fn running(&self, function: &str) -> usize {
        self.state().running.get(function).copied().unwrap_or(0)
    }

    /// The most calls of `function` that ran at once.
    pub fn peak(&self, function: &str) -> usize {
        self.state().peak.get(function).copied().unwrap_or(0)
    }

    /// The most calls among those `which` selects that ran at once,
    /// counted in the order calls really started and ended (a call that
    /// ended at the instant another started does not overlap it).
    pub fn peak_of(&self, which: impl Fn(&Call) -> bool) -> usize {
        let state = self.state();
        let mut events: Vec<(u64, i64)> = Vec::new();
        for c in state.calls.iter().filter(|c| which(c)) {
            events.push((c.start_seq, 1));
            if let Some(end) = c.end_seq {
                events.push((end, -1));
            }
        }
        events.sort_unstable();
        let (mut now, mut peak) = (0i64, 0i64);
        for (_, delta) in events {
            now += delta;
            peak = peak.max(now);
        }
        peak as usize
    }

    /// Code directories `prepare` was called with.
    pub fn prepared(&self) -> Vec<PathBuf> {
        self.state().prepared.clone()
    }

    /// Gives `function`'s query module a `reduce` (concatenation).
    pub fn query_reduce(&self, function: &str) -> &FakeRuntime {
        self.state().query_reduce.insert(function.to_string());
        self
    }

    /// Makes each shard of a query of `function` take `delay` (tokio time).
    pub fn query_delay(&self, function: &str, delay: Duration) -> &FakeRuntime {
        self.state().query_delay.insert(function.to_string(), delay);
        self
    }

    /// Sets how many shards `query_parts` maps at once (2 by default; 0:
    /// not supported, callers query shard by shard).
    pub fn query_parts_at_once(&self, n: usize) -> &FakeRuntime {
        self.state().parts_at_once = Some(n);
        self
    }

    /// Shards queries began, in order: `(function, shard, finished)`.
    pub fn queried(&self) -> Vec<(String, u32, bool)> {
        self.state().queried.clone()
    }

    /// Deployment keys `retire` was called with.
    pub fn retired(&self) -> Vec<String> {
        self.state().retired.clone()
    }

    // ---- waiting ----

    /// Resolves once `done` holds for the calls so far (checked now and on
    /// every start and end of a call).
    pub async fn wait_until(&self, done: impl Fn(&[Call]) -> bool) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.state().calls) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once `n` calls of `function` have started.
    pub async fn wait_started(&self, function: &str, n: usize) {
        self.wait_until(|calls| calls.iter().filter(|c| c.function == function).count() >= n)
            .await
    }

    /// Resolves once `n` calls of `function` have ended.
    pub async fn wait_ended(&self, function: &str, n: usize) {
        self.wait_until(|calls| {
            calls
                .iter()
                .filter(|c| c.function == function && c.ended.is_some())
                .count()
                >= n
        })
        .await
    }

    // ---- running a call ----

    /// Records the start of a call; returns its index.
    fn start(&self, deployment: &Deployment, request: &Request, invoked: Instant) -> (usize, bool) {
        let mut state = self.state();
        state.seq += 1;
        let start_seq = state.seq;
        let calls_before = state.warm.entry(deployment.key.clone()).or_default();
        let cold_start = *calls_before == 0;
        *calls_before += 1;
        let running = state.running.entry(request.function.clone()).or_default();
        *running += 1;
        let running = *running;
        let peak = state.peak.entry(request.function.clone()).or_default();
        *peak = (*peak).max(running);
        state.calls.push(Call {
            invocation_id: request.invocation_id.clone(),
            function: request.function.clone(),
            version: request.version,
            key: deployment.key.clone(),
            attempt: request.attempt,
            event: request.event.clone(),
            invoked,
            started: Instant::now(),
            ended: None,
            outcome: None,
            host_answers: Vec::new(),
            start_seq,
            end_seq: None,
        });
        let index = state.calls.len() - 1;
        drop(state);
        self.inner.changed.notify_waiters();
        (index, cold_start)
    }

    fn host_answered(&self, index: usize, answer: std::result::Result<String, HostError>) {
        self.state().calls[index].host_answers.push(answer);
    }

    fn end(&self, index: usize, outcome: Option<Outcome>) {
        let mut state = self.state();
        state.seq += 1;
        let end_seq = state.seq;
        let call = &mut state.calls[index];
        call.ended = Some(Instant::now());
        call.end_seq = Some(end_seq);
        call.outcome = outcome;
        let function = call.function.clone();
        if let Some(n) = state.running.get_mut(&function) {
            *n -= 1;
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }

    fn worker_permits(&self, deployment: &Deployment) -> Option<Arc<Semaphore>> {
        let mut state = self.state();
        let workers = state.workers.as_mut()?;
        let permits = workers.entry(deployment.key.clone()).or_insert_with(|| {
            Arc::new(Semaphore::new(deployment.limits.concurrency.max(1) as usize))
        });
        Some(permits.clone())
    }

    async fn run(self, deployment: Deployment, request: Request) -> Result<Response> {
        let mut stop = self.inner.stop.subscribe();
        if *stop.borrow() {
            return Err(Error::ShuttingDown);
        }
        let invoked = Instant::now();
        let permits = self.worker_permits(&deployment);
        let _worker = match &permits {
            Some(p) => Some(p.acquire().await.map_err(|_| Error::ShuttingDown)?),
            None => None,
        };
        let script = self.pick(&request);
        if let Some(gate) = &request.gate {
            gate.wait().await;
        }
        let (index, cold_start) = self.start(&deployment, &request, invoked);
        let started = Instant::now();
        let timeout = deployment.limits.timeout;
        let steps = self.steps(index, &script, &request);
        let ran = tokio::select! {
            ran = tokio::time::timeout(timeout, steps) => ran,
            _ = stop.wait_for(|stopped| *stopped) => {
                self.end(index, None);
                return Err(Error::ShuttingDown);
            }
        };
        let (logs, result) = match ran {
            Ok(done) => done,
            Err(_) => (
                Vec::new(),
                Ok(Outcome::Failed(Failure::new(
                    FailureKind::TimedOut,
                    format!("the invocation ran past its timeout of {timeout:?}"),
                ))),
            ),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(message) => {
                self.end(index, None);
                return Err(Error::Platform(message));
            }
        };
        self.end(index, Some(outcome.clone()));
        Ok(Response {
            outcome,
            logs,
            cold_start,
            duration: started.elapsed(),
            queued: started - invoked,
        })
    }

    /// Runs a script's steps; returns the logs and the outcome, or the
    /// message of a platform error.
    async fn steps(
        &self,
        index: usize,
        script: &Script,
        request: &Request,
    ) -> (Vec<u8>, std::result::Result<Outcome, String>) {
        let mut logs = Vec::new();
        let mut last_answer: Option<String> = None;
        for step in &script.steps {
            match step {
                Step::Sleep(d) => tokio::time::sleep(*d).await,
                Step::Wait(latch) => latch.pass().await,
                Step::Log(text) => logs.extend_from_slice(text),
                Step::Host { op, args } => {
                    let answer = match (&request.host, HostCall::decode(op, args)) {
                        (_, Err(e)) => Err(e),
                        (None, Ok(_)) => Err(HostError::new(
                            "unavailable",
                            "this invocation has no host to call",
                        )),
                        (Some(host), Ok(call)) => host.call(call).await,
                    };
                    self.host_answered(index, answer.clone());
                    match answer {
                        Ok(a) => last_answer = Some(a),
                        Err(e) => {
                            let failure = Failure {
                                kind: FailureKind::Raised,
                                exception: Some("HostError".into()),
                                message: format!("{}: {}", e.code, e.message),
                                traceback: None,
                            };
                            return (logs, Ok(Outcome::Failed(failure)));
                        }
                    }
                }
            }
        }
        let outcome = match &script.end {
            End::Succeed(json) => Outcome::Succeeded(json.clone()),
            End::Echo => Outcome::Succeeded(request.event.clone()),
            End::HostAnswer => {
                Outcome::Succeeded(last_answer.unwrap_or_else(|| "null".to_string()))
            }
            End::Fail(f) => Outcome::Failed(f.clone()),
            End::Platform(message) => return (logs, Err(message.clone())),
        };
        (logs, Ok(outcome))
    }
}

impl Runtime for FakeRuntime {
    fn prepare(&self, code_dir: PathBuf) -> BoxFuture<'static, Result<Prepared>> {
        self.state().prepared.push(code_dir);
        Box::pin(async { Ok(Prepared::default()) })
    }

    fn check(&self, deployment: &Deployment) -> BoxFuture<'static, Result<Check>> {
        let mut state = self.state();
        state.checked.push(deployment.key.clone());
        let check = match state.load_failures.get(&deployment.handler) {
            Some(failure) => Check::Fails {
                failure: failure.clone(),
                logs: Vec::new(),
            },
            None => Check::Loads,
        };
        Box::pin(async move { Ok(check) })
    }

    fn invoke(
        &self,
        deployment: &Deployment,
        request: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        Box::pin(self.clone().run(deployment.clone(), request))
    }

    fn query(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<QueryOutcome>> {
        let function = function_of(deployment);
        Box::pin(self.clone().run_query(function, request))
    }

    fn parts_at_once(&self) -> usize {
        self.state().parts_at_once.unwrap_or(2)
    }

    /// Each shard as a query of its own, all at once.
    fn query_parts(
        &self,
        deployment: &Deployment,
        request: QueryRequest,
    ) -> BoxFuture<'static, Result<Vec<ShardPart>>> {
        let function = function_of(deployment);
        let me = self.clone();
        Box::pin(async move {
            let runs = request.shards.iter().map(|shard| {
                let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                let one = QueryRequest {
                    query_id: request.query_id.clone(),
                    dataset: request.dataset.clone(),
                    shards: vec![*shard],
                    skip_errors: request.skip_errors,
                    source: request.source.clone(),
                    events: tx,
                };
                let run = me.clone().run_query(function.clone(), one);
                let events = request.events.clone();
                async move {
                    let collect = async {
                        let mut values = Vec::new();
                        while let Some(ev) = rx.recv().await {
                            match ev {
                                crate::QueryEvent::Values(v) => values.extend_from_slice(&v),
                                progress => drop(events.try_send(progress)),
                            }
                        }
                        values
                    };
                    let (out, values) = futures_util::future::join(run, collect).await;
                    out.map(|o| ShardPart {
                        shard: shard.shard,
                        result: o.result,
                        values,
                        docs: o.docs,
                        errors: o.errors,
                        failures: o.failures,
                        resident: false,
                    })
                }
            });
            futures_util::future::join_all(runs)
                .await
                .into_iter()
                .collect()
        })
    }

    fn combine(
        &self,
        _deployment: &Deployment,
        partials: Vec<String>,
    ) -> BoxFuture<'static, Result<std::result::Result<String, Failure>>> {
        let joined = concat_arrays(&partials);
        Box::pin(async move {
            match joined {
                Some(j) => Ok(Ok(j)),
                None => Ok(Err(Failure::new(
                    FailureKind::Raised,
                    "reduce got a partial that is not an array",
                ))),
            }
        })
    }

    fn retire(&self, key: &str) {
        self.state().retired.push(key.to_string());
    }

    fn stats(&self) -> Vec<PoolStats> {
        let state = self.state();
        let mut busy: HashMap<&str, usize> = HashMap::new();
        for c in state.calls.iter().filter(|c| c.ended.is_none()) {
            *busy.entry(c.key.as_str()).or_default() += 1;
        }
        let mut out: Vec<PoolStats> = state
            .warm
            .keys()
            .filter(|k| !state.retired.contains(k))
            .map(|k| PoolStats {
                key: k.clone(),
                idle: 0,
                busy: busy.get(k.as_str()).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Ends every running call with `Err(ShuttingDown)`; later calls get
    /// the same at once.
    fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }
}

/// The function a deployment key (`name@version`) belongs to.
fn function_of(deployment: &Deployment) -> String {
    let key = &deployment.key;
    key.split('@').next().unwrap_or(key).to_string()
}

/// The fake `reduce`: JSON arrays, concatenated in order.
fn concat_arrays(partials: &[String]) -> Option<String> {
    let mut all = Vec::new();
    for p in partials {
        match serde_json::from_str::<serde_json::Value>(p).ok()? {
            serde_json::Value::Array(items) => all.extend(items),
            _ => return None,
        }
    }
    Some(serde_json::Value::Array(all).to_string())
}

impl FakeRuntime {
    async fn run_query(self, function: String, request: QueryRequest) -> Result<QueryOutcome> {
        let (reduce, delay) = {
            let state = self.state();
            (
                state.query_reduce.contains(&function),
                state.query_delay.get(&function).copied(),
            )
        };
        let mut stop = self.inner.stop.subscribe();
        if *stop.borrow() {
            return Err(Error::ShuttingDown);
        }
        let mut out = QueryOutcome {
            result: crate::QueryResult::Mapped,
            docs: 0,
            errors: 0,
            failures: Vec::new(),
            cached_shards: 0,
        };
        let mut partials = Vec::new();
        for shard in &request.shards {
            let n = {
                let mut state = self.state();
                state.queried.push((function.clone(), shard.shard, false));
                state.queried.len() - 1
            };
            if let Some(delay) = delay {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return Err(Error::ShuttingDown),
                }
            }
            let mut ids = Vec::new();
            let mut after = None;
            let mut docs = 0;
            loop {
                let batch = request
                    .source
                    .scan(shard.shard, after.clone(), 100)
                    .await
                    .map_err(Error::Platform)?;
                let Some((last, _)) = batch.last() else {
                    break;
                };
                after = Some(last.clone());
                for (id, body) in batch {
                    docs += 1;
                    let fails = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("fail").and_then(serde_json::Value::as_bool))
                        .unwrap_or(false);
                    if !fails {
                        ids.push(serde_json::Value::String(id));
                        continue;
                    }
                    let failure = Failure::new(FailureKind::Raised, format!("map failed on {id}"));
                    if !request.skip_errors {
                        out.docs += docs;
                        out.result = crate::QueryResult::Failed {
                            doc_id: Some(id),
                            failure,
                        };
                        return Ok(out);
                    }
                    out.errors += 1;
                    if out.failures.len() < 100 {
                        out.failures.push(crate::DocFailure { id, failure });
                    }
                }
            }
            out.docs += docs;
            let _ = request.events.try_send(crate::QueryEvent::Progress {
                shard: shard.shard,
                docs,
            });
            if reduce {
                if !ids.is_empty() {
                    partials.push(serde_json::Value::Array(ids).to_string());
                }
            } else if !ids.is_empty() {
                let mut lines = Vec::new();
                for id in ids {
                    lines.extend_from_slice(id.to_string().as_bytes());
                    lines.push(b'\n');
                }
                if request
                    .events
                    .send(crate::QueryEvent::Values(lines))
                    .await
                    .is_err()
                {
                    return Err(Error::Platform(
                        "the receiver of the query's values went away".into(),
                    ));
                }
            }
            self.state().queried[n].2 = true;
        }
        if reduce {
            let combined = if partials.is_empty() {
                None
            } else {
                concat_arrays(&partials)
            };
            out.result = crate::QueryResult::Reduced(combined);
        }
        Ok(out)
    }
}
