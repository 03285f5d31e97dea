//! Queries: `map` (or `map_batch`) and `reduce` over a category's shards, on
//! query workers that keep the decoded documents of their shards resident.
//!
//! **Affinity and balance.** Each deployment has query workers indexed `0..W`
//! (forked from its template, apart from the invocation workers),
//! `W = min(query_workers, shards)`. A shard already resident on one of them
//! goes there, so a repeated query finds each shard where it is; the other
//! shards go, biggest first, to the worker with the fewest documents so far,
//! so uneven shards still spread the work evenly (`place`). Every worker
//! handles its shards one after another; the workers run in parallel.
//!
//! **Resident shards.** The runtime-wide [`Cache`] says which worker holds
//! which shard at which version. A hit costs one small `run` frame and one
//! `done` frame: no storage read, no transfer, no JSON decoding. A miss
//! streams the shard from the [`ShardSource`] in batches of a few hundred KB
//! (`[[ids],[docs]]`, one `json.loads` per batch), with up to two batches in
//! the worker (one mapped, one waiting) and the next one fetched meanwhile;
//! the worker keeps the documents if the cache made room for them.
//!
//! **Results.** With `reduce`, each worker reduces each of its shards and
//! reports the partial result; the partials are reduced in shard order by one
//! worker at the end (`combine`), so an associative but non-commutative
//! reduce still sees document order. Without `reduce`, values come back as
//! JSON arrays, become NDJSON here, and go out in document order: a worker
//! ahead of the shard being emitted has its values buffered up to
//! `AHEAD_BYTES`, then is no longer read (it blocks writing; back-pressure).
//!
//! **Time limit.** The function's timeout bounds how long a worker with work
//! may stay silent. Workers report progress at least every quarter of it,
//! between steps of a few milliseconds, so in effect no single `map` (or
//! `reduce`) call, or `map_batch` call on one step's documents, may run
//! longer than the timeout.
//!
//! **Stopping.** On a failure (without `skip_errors`) or when the query's
//! future is dropped, the other workers get SIGINT and an `abort` frame: they
//! stop their step and stay usable, resident shards intact. A worker that
//! does not answer within `ABORT_GRACE` is killed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, join, join_all};
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use shoal_runtime::{
    DocBatch, DocFailure, Error, QueryEvent, QueryOutcome, QueryRequest, QueryResult, QueryShard,
    Result, ShardPart,
};
use shoal_types::{Failure, FailureKind};

use crate::cache::Cache;
use crate::lock;
use crate::pool::Pool;
use crate::protocol::{self, QueryReply, ShardKey};
use crate::worker::{Incoming, Worker, human};

/// Frames a worker may have outstanding: one it maps, one waiting behind it.
const PIPELINE: usize = 2;
/// Values of later shards buffered per worker before it is no longer read.
const AHEAD_BYTES: usize = 16 << 20;
/// Raw JSON per batch streamed from storage (the batch size adapts to it).
const BATCH_BYTES: usize = 256 << 10;
const FIRST_BATCH_DOCS: usize = 256;
const MAX_BATCH_DOCS: usize = 8192;
/// Failed documents listed with `skip_errors`.
const MAX_FAILURES: usize = 100;
/// How long an aborted worker gets to stop before it is killed.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Frame room beyond the result limit (failure lists, tracebacks).
const FRAME_SLACK: usize = 8 << 20;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A deployment's query workers, by index.
pub(crate) struct QuerySet {
    pub(crate) slots: Vec<Option<QueryWorker>>,
    /// When the last query ended (idle reaping).
    pub(crate) last_used: Instant,
}

impl Default for QuerySet {
    fn default() -> QuerySet {
        QuerySet {
            slots: Vec::new(),
            last_used: Instant::now(),
        }
    }
}

pub(crate) struct QueryWorker {
    pub(crate) worker: Worker,
    /// Names the worker in the cache (pids are reused).
    pub(crate) uid: u64,
    /// Frames sent whose final reply has not been read.
    outstanding: usize,
    /// A frame is partly written: the stream is unusable.
    torn: bool,
}

impl QueryWorker {
    pub(crate) fn new(worker: Worker) -> QueryWorker {
        QueryWorker {
            worker,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            outstanding: 0,
            torn: false,
        }
    }

    async fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.torn = true;
        self.worker.send_frame(frame).await?;
        self.torn = false;
        Ok(())
    }
}

/// Runs a query on the deployment's query workers.
pub(crate) async fn run(pool: Arc<Pool>, request: QueryRequest) -> Result<QueryOutcome> {
    let set = pool.query_set.clone().lock_owned().await;
    let mut session = Session {
        pool: pool.clone(),
        set: Some(set),
    };
    let result = session.run(&request, false).await.map(|(out, _)| out);
    if let Some(set) = session.set.take() {
        // In a task of its own: the cleanup completes even if the caller
        // stops waiting now.
        let pool = pool.clone();
        // Awaited right here; a task only so that it is not dropped with us.
        #[allow(clippy::disallowed_methods)]
        let _ = tokio::spawn(async move { recover(&pool, set).await }).await;
    }
    result
}

/// Runs a query without putting its shards together: each shard's own
/// result (`Runtime::query_parts`).
pub(crate) async fn run_parts(pool: Arc<Pool>, request: QueryRequest) -> Result<Vec<ShardPart>> {
    let set = pool.query_set.clone().lock_owned().await;
    let mut session = Session {
        pool: pool.clone(),
        set: Some(set),
    };
    let result = session.run(&request, true).await;
    if let Some(set) = session.set.take() {
        let pool = pool.clone();
        // Awaited right here; a task only so that it is not dropped with us.
        #[allow(clippy::disallowed_methods)]
        let _ = tokio::spawn(async move { recover(&pool, set).await }).await;
    }
    let (out, parts) = result?;
    Ok(match (parts, out.result) {
        (Some(parts), _) => parts,
        // Stopped before any shard ran (the module does not load...).
        (None, failed @ QueryResult::Failed { .. }) => request
            .shards
            .iter()
            .map(|s| ShardPart {
                shard: s.shard,
                result: failed.clone(),
                values: Vec::new(),
                docs: 0,
                errors: 0,
                failures: Vec::new(),
                resident: false,
            })
            .collect(),
        (None, _) => Vec::new(),
    })
}

/// Holds the query set for one query. Dropped before its end (the caller
/// went away), it leaves the cleanup to a task: workers in the middle of a
/// step are aborted and stay usable.
struct Session {
    pool: Arc<Pool>,
    set: Option<OwnedMutexGuard<QuerySet>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(set) = self.set.take() else {
            return;
        };
        let pool = self.pool.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { recover(&pool, set).await });
            }
            Err(_) => {
                let mut set = set;
                for worker in set.slots.iter_mut().filter_map(Option::take) {
                    pool.discard_query_worker(worker);
                }
            }
        }
    }
}

/// One shard of the query.
struct Unit {
    index: usize,
    shard: QueryShard,
    slot: usize,
    key: ShardKey,
    resident: bool,
}

/// Why the query stopped early.
enum Stop {
    Failed {
        doc_id: Option<String>,
        failure: Failure,
    },
    Platform(String),
    /// The events receiver is gone: nobody takes the values.
    Gone,
}

/// How a worker's part of the query ended early.
enum Fault {
    /// Another worker stopped the query.
    Stopped,
    Stop(Stop),
    /// The worker is dead or must not be used again.
    Lost(Stop),
}

/// What one shard produced.
#[derive(Default)]
struct UnitDone {
    errors: u64,
    failures: Vec<DocFailure>,
    partial: Option<String>,
    resident: bool,
}

/// State shared by the workers' drivers and the emitter of one query.
struct Ctx<'a> {
    pool: &'a Pool,
    request: &'a QueryRequest,
    cache: &'a Cache,
    reduce: bool,
    timeout: Duration,
    frame_max: usize,
    stop: CancellationToken,
    stopped: Mutex<Option<Stop>>,
    docs: AtomicU64,
    /// Progress not sent yet, by unit (the events channel was full).
    progress: Mutex<Vec<u64>>,
    done: Mutex<Vec<Option<UnitDone>>>,
    order: Option<Order>,
    /// Documents processed, by unit.
    unit_docs: Vec<AtomicU64>,
    /// By parts without `reduce`: each unit's values, kept instead of sent.
    collect: Option<Mutex<Vec<Vec<u8>>>>,
}

/// Mapped values waiting for their turn (no `reduce`).
struct Order {
    state: Mutex<OrderState>,
    /// Wakes the emitter: values or a shard's end arrived.
    wake: Notify,
    /// Wakes a worker's driver: the emitter took some of its values.
    drained: Vec<Notify>,
}

struct OrderState {
    queues: Vec<VecDeque<Vec<u8>>>,
    finished: Vec<bool>,
    /// Buffered bytes by worker slot.
    buffered: Vec<usize>,
}

impl Session {
    /// The query's outcome; `by_parts`: each shard's own result too (then
    /// the outcome's result is not put together), unless it stopped before
    /// the shards ran.
    async fn run(
        &mut self,
        request: &QueryRequest,
        by_parts: bool,
    ) -> Result<(QueryOutcome, Option<Vec<ShardPart>>)> {
        let pool = self.pool.clone();
        let Some(set) = self.set.as_mut() else {
            return Err(Error::Platform("the query set is gone".into()));
        };
        let config = pool.config();
        if config.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let mut cold = false;
        let template = match pool.template(&mut cold).await? {
            Ok(template) => template,
            Err((failure, _logs, _)) => return Ok((failed(None, failure), None)),
        };
        let functions = template.functions;
        drop(template);
        if !functions.map && !functions.map_batch {
            let handler = &pool.deployment().handler;
            let module = handler.split(':').next().unwrap_or(handler);
            let message = format!(
                "module {module} defines neither map(doc) nor map_batch(docs); a query needs one of them"
            );
            return Ok((
                failed(None, Failure::new(FailureKind::LoadFailed, message)),
                None,
            ));
        }
        let reduce = functions.reduce;
        let n = request.shards.len();
        if n == 0 {
            return Ok((outcome(empty_result(reduce), 0, Vec::new()), None));
        }

        // The workers: 0..W, forked as needed.
        let w = config.query_workers.clamp(1, n);
        if let Err(failure) = prepare_workers(&pool, set, w).await? {
            return Ok((failed(None, failure), None));
        }
        let uids: Vec<u64> = set.slots[..w]
            .iter()
            .map(|s| s.as_ref().map_or(0, |qw| qw.uid))
            .collect();

        // The plan: which worker maps which shard, and which are resident.
        let cache = &config.cache;
        let slots = place(request, &uids, cache);
        let units: Vec<Unit> = request
            .shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                let slot = slots[index];
                let key = (request.dataset.clone(), shard.shard);
                let resident = cache.lookup(uids[slot], &key, shard.version);
                Unit {
                    index,
                    shard: *shard,
                    slot,
                    key,
                    resident,
                }
            })
            .collect();

        let timeout = pool.deployment().limits.timeout;
        let report = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let ctx = Ctx {
            pool: &pool,
            request,
            cache,
            reduce,
            timeout,
            frame_max: config.max_result_bytes + FRAME_SLACK,
            stop: CancellationToken::new(),
            stopped: Mutex::new(None),
            docs: AtomicU64::new(0),
            progress: Mutex::new(vec![0; n]),
            done: Mutex::new((0..n).map(|_| None).collect()),
            order: (!reduce).then(|| Order {
                state: Mutex::new(OrderState {
                    queues: (0..n).map(|_| VecDeque::new()).collect(),
                    finished: vec![false; n],
                    buffered: vec![0; w],
                }),
                wake: Notify::new(),
                drained: (0..w).map(|_| Notify::new()).collect(),
            }),
            unit_docs: (0..n).map(|_| AtomicU64::new(0)).collect(),
            collect: (by_parts && !reduce).then(|| Mutex::new(vec![Vec::new(); n])),
        };

        let mut per_slot: Vec<Vec<&Unit>> = (0..w).map(|_| Vec::new()).collect();
        for unit in &units {
            per_slot[unit.slot].push(unit);
        }
        let drivers = set.slots[..w]
            .iter_mut()
            .zip(per_slot)
            .map(|(slot, units)| drive(slot, units, &ctx, report));
        join(join_all(drivers), emit(&ctx, &units)).await;

        let stopped = lock(&ctx.stopped).take();
        let done: Vec<Option<UnitDone>> = std::mem::take(&mut *lock(&ctx.done));
        let docs = ctx.docs.load(Ordering::Relaxed);
        // Progress held back while the channel was full: one last try.
        // Never waited for: a caller may read events only after the outcome.
        for (i, docs) in lock(&ctx.progress).iter().enumerate() {
            if *docs > 0 {
                let shard = units[i].shard.shard;
                let _ = request
                    .events
                    .try_send(QueryEvent::Progress { shard, docs: *docs });
            }
        }
        if by_parts {
            let failed = stopped.map(stopped_result).transpose()?;
            let mut values = ctx
                .collect
                .map(|c| {
                    c.into_inner()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .unwrap_or_default();
            let mut parts = Vec::with_capacity(n);
            for (i, (unit, done)) in units.iter().zip(done).enumerate() {
                let docs = ctx.unit_docs[i].load(Ordering::Relaxed);
                let part = match (done, &failed) {
                    (Some(done), _) => ShardPart {
                        shard: unit.shard.shard,
                        result: if reduce {
                            QueryResult::Reduced(done.partial)
                        } else {
                            QueryResult::Mapped
                        },
                        values: values.get_mut(i).map(std::mem::take).unwrap_or_default(),
                        docs,
                        errors: done.errors,
                        failures: done.failures,
                        resident: done.resident,
                    },
                    (None, Some(failed)) => ShardPart {
                        shard: unit.shard.shard,
                        result: failed.clone(),
                        values: Vec::new(),
                        docs,
                        errors: 0,
                        failures: Vec::new(),
                        resident: false,
                    },
                    (None, None) => {
                        return Err(Error::Platform(format!(
                            "shard {} of the query did not finish",
                            unit.shard.shard
                        )));
                    }
                };
                parts.push(part);
            }
            return Ok((outcome(QueryResult::Mapped, docs, Vec::new()), Some(parts)));
        }
        let done: Vec<UnitDone> = done.into_iter().map(Option::unwrap_or_default).collect();
        let result = match stopped {
            Some(stop) => stopped_result(stop)?,
            None if !reduce => QueryResult::Mapped,
            None => {
                let partials: Vec<String> = done.iter().filter_map(|d| d.partial.clone()).collect();
                if partials.len() < 2 {
                    QueryResult::Reduced(partials.into_iter().next())
                } else {
                    let live = set.slots[..w].iter().position(Option::is_some);
                    let Some(qw) = live.and_then(|i| set.slots[i].as_mut()) else {
                        return Err(Error::Platform("no query worker left".into()));
                    };
                    let combined = combine(qw, &partials, &pool, ctx.timeout, ctx.frame_max).await;
                    if matches!(combined, Err(Fault::Lost(_)))
                        && let Some(qw) = live.and_then(|i| set.slots[i].take())
                    {
                        pool.discard_query_worker(qw);
                    }
                    match combined {
                        Ok(result) => QueryResult::Reduced(Some(result)),
                        Err(Fault::Stop(stop) | Fault::Lost(stop)) => stopped_result(stop)?,
                        Err(Fault::Stopped) => {
                            return Err(Error::Platform("the reduce step was stopped".into()));
                        }
                    }
                }
            }
        };
        Ok((outcome(result, docs, done), None))
    }
}

/// Reduces partial results (in document order) on the deployment's first
/// query worker: the last step of a query whose shards ran on several nodes.
/// `Ok(Err(_))`: the module failed (its `reduce`, or loading it).
pub(crate) async fn combine_parts(
    pool: Arc<Pool>,
    partials: Vec<String>,
) -> Result<std::result::Result<String, Failure>> {
    let set = pool.query_set.clone().lock_owned().await;
    let mut session = Session {
        pool: pool.clone(),
        set: Some(set),
    };
    let result = session.combine(partials).await;
    if let Some(set) = session.set.take() {
        let pool = pool.clone();
        // Awaited right here; a task only so that it is not dropped with us.
        #[allow(clippy::disallowed_methods)]
        let _ = tokio::spawn(async move { recover(&pool, set).await }).await;
    }
    result
}

impl Session {
    async fn combine(
        &mut self,
        partials: Vec<String>,
    ) -> Result<std::result::Result<String, Failure>> {
        let pool = self.pool.clone();
        let Some(set) = self.set.as_mut() else {
            return Err(Error::Platform("the query set is gone".into()));
        };
        let config = pool.config();
        if config.is_closed() {
            return Err(Error::ShuttingDown);
        }
        if partials.len() < 2 {
            return Ok(Ok(partials
                .into_iter()
                .next()
                .unwrap_or_else(|| "null".into())));
        }
        let mut cold = false;
        if let Err((failure, _logs, _)) = pool.template(&mut cold).await? {
            return Ok(Err(failure));
        }
        if let Err(failure) = prepare_workers(&pool, set, 1).await? {
            return Ok(Err(failure));
        }
        let Some(qw) = set.slots[0].as_mut() else {
            return Err(Error::Platform("no query worker left".into()));
        };
        let timeout = pool.deployment().limits.timeout;
        let frame_max = config.max_result_bytes + FRAME_SLACK;
        let combined = combine(qw, &partials, &pool, timeout, frame_max).await;
        if matches!(combined, Err(Fault::Lost(_)))
            && let Some(qw) = set.slots[0].take()
        {
            pool.discard_query_worker(qw);
        }
        match combined {
            Ok(result) => Ok(Ok(result)),
            Err(Fault::Stop(stop) | Fault::Lost(stop)) => match stopped_result(stop)? {
                QueryResult::Failed { failure, .. } => Ok(Err(failure)),
                _ => Err(Error::Platform(
                    "the reduce step ended without a result".into(),
                )),
            },
            Err(Fault::Stopped) => Err(Error::Platform("the reduce step was stopped".into())),
        }
    }
}

/// Makes sure query workers `0..w` exist and can take a query. `Err` inside:
/// the module could not be loaded.
async fn prepare_workers(
    pool: &Arc<Pool>,
    set: &mut QuerySet,
    w: usize,
) -> Result<std::result::Result<(), Failure>> {
    if set.slots.len() < w {
        set.slots.resize_with(w, || None);
    }
    let frame_max = pool.config().max_result_bytes + FRAME_SLACK;
    for slot in &mut set.slots[..w] {
        let unusable = match slot.as_mut() {
            None => false,
            Some(qw) if qw.torn => true,
            Some(qw) => {
                qw.worker.has_exited()
                    // A cleanup that did not finish: finish it.
                    || (qw.outstanding > 0 && !abort(qw, frame_max).await)
            }
        };
        if unusable && let Some(dead) = slot.take() {
            pool.discard_query_worker(dead);
        }
        if slot.is_none() {
            match pool.spawn_query_worker().await? {
                Ok(worker) => *slot = Some(worker),
                Err(failure) => return Ok(Err(failure)),
            }
        }
    }
    Ok(Ok(()))
}

/// The result of a query that stopped early, or the platform's error.
fn stopped_result(stop: Stop) -> Result<QueryResult> {
    match stop {
        Stop::Failed { doc_id, failure } => Ok(QueryResult::Failed { doc_id, failure }),
        Stop::Platform(message) => Err(Error::Platform(message)),
        Stop::Gone => Err(Error::Platform(
            "the receiver of the query's values went away".into(),
        )),
    }
}

fn empty_result(reduce: bool) -> QueryResult {
    if reduce {
        QueryResult::Reduced(None)
    } else {
        QueryResult::Mapped
    }
}

fn outcome(result: QueryResult, docs: u64, done: Vec<UnitDone>) -> QueryOutcome {
    let mut errors = 0;
    let mut failures = Vec::new();
    let mut cached_shards = 0;
    for unit in done {
        errors += unit.errors;
        cached_shards += u32::from(unit.resident);
        let room = MAX_FAILURES - failures.len();
        failures.extend(unit.failures.into_iter().take(room));
    }
    QueryOutcome {
        result,
        docs,
        errors,
        failures,
        cached_shards,
    }
}

fn failed(doc_id: Option<String>, failure: Failure) -> QueryOutcome {
    outcome(QueryResult::Failed { doc_id, failure }, 0, Vec::new())
}

impl Ctx<'_> {
    fn stop_with(&self, stop: Stop) {
        let mut stopped = lock(&self.stopped);
        if stopped.is_none() {
            *stopped = Some(stop);
        }
        drop(stopped);
        self.stop.cancel();
    }

    /// Counts processed documents and reports them. Progress is advisory: it
    /// never waits for the channel; while it is full, reports are merged into
    /// later ones (values, which must arrive, are waited for).
    fn progress(&self, unit: &Unit, docs: u64) {
        if docs == 0 {
            return;
        }
        self.docs.fetch_add(docs, Ordering::Relaxed);
        self.unit_docs[unit.index].fetch_add(docs, Ordering::Relaxed);
        let mut pending = lock(&self.progress);
        let waiting = &mut pending[unit.index];
        *waiting += docs;
        let event = QueryEvent::Progress {
            shard: unit.shard.shard,
            docs: *waiting,
        };
        match self.request.events.try_send(event) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => *waiting = 0,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
        }
    }

    /// Queues mapped values; waits while the worker is too far ahead.
    async fn push_values(&self, unit: &Unit, lines: Vec<u8>) -> std::result::Result<(), Fault> {
        let Some(order) = &self.order else {
            return Err(Fault::Stop(Stop::Platform(
                "a worker sent values for a query with reduce".into(),
            )));
        };
        if lines.is_empty() {
            return Ok(());
        }
        {
            let mut state = lock(&order.state);
            state.buffered[unit.slot] += lines.len();
            state.queues[unit.index].push_back(lines);
        }
        order.wake.notify_one();
        loop {
            if lock(&order.state).buffered[unit.slot] <= AHEAD_BYTES {
                return Ok(());
            }
            tokio::select! {
                () = order.drained[unit.slot].notified() => {}
                () = self.stop.cancelled() => return Err(Fault::Stopped),
            }
        }
    }

    fn finish_unit(&self, unit: &Unit, done: UnitDone) {
        lock(&self.done)[unit.index] = Some(done);
        if let Some(order) = &self.order {
            lock(&order.state).finished[unit.index] = true;
            order.wake.notify_one();
        }
    }
}

/// Sends mapped values out in document order.
async fn emit(ctx: &Ctx<'_>, units: &[Unit]) {
    let Some(order) = &ctx.order else {
        return;
    };
    for unit in units {
        loop {
            let next = {
                let mut state = lock(&order.state);
                match state.queues[unit.index].pop_front() {
                    Some(chunk) => {
                        state.buffered[unit.slot] -= chunk.len();
                        Some(Some(chunk))
                    }
                    None if state.finished[unit.index] => Some(None),
                    None => None,
                }
            };
            match next {
                Some(Some(chunk)) => {
                    order.drained[unit.slot].notify_one();
                    if let Some(collect) = &ctx.collect {
                        lock(collect)[unit.index].extend_from_slice(&chunk);
                        continue;
                    }
                    tokio::select! {
                        sent = ctx.request.events.send(QueryEvent::Values(chunk)) => {
                            if sent.is_err() {
                                ctx.stop_with(Stop::Gone);
                                return;
                            }
                        }
                        () = ctx.stop.cancelled() => return,
                    }
                }
                Some(None) => break,
                None => {
                    tokio::select! {
                        () = order.wake.notified() => {}
                        () = ctx.stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Runs one worker's shards; on a failure, stops the query.
async fn drive(slot: &mut Option<QueryWorker>, units: Vec<&Unit>, ctx: &Ctx<'_>, report: Duration) {
    let Some(qw) = slot.as_mut() else {
        ctx.stop_with(Stop::Platform("a query worker is missing".into()));
        return;
    };
    match drive_worker(qw, units, ctx, report).await {
        Ok(()) | Err(Fault::Stopped) => {}
        Err(Fault::Stop(stop)) => ctx.stop_with(stop),
        Err(Fault::Lost(stop)) => {
            ctx.stop_with(stop);
            if let Some(qw) = slot.take() {
                ctx.pool.discard_query_worker(qw);
            }
        }
    }
}

/// The shards of one worker, turned into frames: resident ones as `run`
/// frames, others as batches fetched from the source, one fetch ahead.
struct Feed<'u> {
    units: VecDeque<(&'u Unit, bool)>,
    cold: Option<Cold<'u>>,
    ready: Option<Ready<'u>>,
    fetching: Option<BoxFuture<'static, std::result::Result<DocBatch, String>>>,
    /// Whether the worker keeps a streamed shard, by unit.
    keep: HashMap<usize, Keep>,
}

/// The next frame to send.
enum Ready<'u> {
    Run(&'u Unit),
    Batch(&'u Unit, DocBatch),
    End(&'u Unit),
}

/// Whether a worker keeps the shard it streams.
#[derive(Clone, Copy)]
enum Keep {
    /// The first batch went out to be kept for now: its `ack` brings the
    /// measured size, and with it the cache's answer. Later frames of the
    /// shard wait for that answer.
    Measuring,
    /// The cache's allowance (0: not kept).
    Decided(u64),
}

/// A shard being streamed from storage.
struct Cold<'u> {
    unit: &'u Unit,
    after: Option<String>,
    limit: usize,
}

impl<'u> Feed<'u> {
    fn is_drained(&self) -> bool {
        self.units.is_empty()
            && self.cold.is_none()
            && self.ready.is_none()
            && self.fetching.is_none()
    }

    /// Prepares the next frame, or starts fetching what it needs.
    fn advance(&mut self, ctx: &Ctx<'_>) {
        if let Some(cold) = &self.cold {
            let scan =
                ctx.request
                    .source
                    .scan(cold.unit.shard.shard, cold.after.clone(), cold.limit);
            self.fetching = Some(scan);
            return;
        }
        let Some((unit, resident)) = self.units.pop_front() else {
            return;
        };
        if resident {
            self.ready = Some(Ready::Run(unit));
            return;
        }
        self.cold = Some(Cold {
            unit,
            after: None,
            limit: FIRST_BATCH_DOCS,
        });
        self.advance(ctx);
    }

    async fn fetched(&mut self) -> std::result::Result<DocBatch, String> {
        match &mut self.fetching {
            Some(fetch) => fetch.await,
            None => std::future::pending().await,
        }
    }

    fn on_fetched(
        &mut self,
        fetched: std::result::Result<DocBatch, String>,
        ctx: &Ctx<'_>,
    ) -> std::result::Result<(), Fault> {
        self.fetching = None;
        let Some(cold) = self.cold.as_mut() else {
            return Ok(());
        };
        let unit = cold.unit;
        let docs = fetched.map_err(|e| {
            Fault::Stop(Stop::Platform(format!(
                "reading shard {} of {}: {e}",
                unit.shard.shard, ctx.request.dataset
            )))
        })?;
        if docs.is_empty() {
            self.ready = Some(Ready::End(unit));
            self.cold = None;
            return Ok(());
        }
        let raw: usize = docs.iter().map(|(id, doc)| id.len() + doc.len()).sum();
        cold.after = docs.last().map(|(id, _)| id.clone());
        cold.limit = (BATCH_BYTES / (raw / docs.len()).max(1)).clamp(16, MAX_BATCH_DOCS);
        self.ready = Some(Ready::Batch(unit, docs));
        Ok(())
    }

    /// The ready frame, unless it must wait for the cache's answer.
    fn take_ready(&mut self, uid: u64, cache: &Cache) -> Option<Vec<u8>> {
        let unit = match self.ready.as_ref()? {
            Ready::Run(unit) => {
                let unit = *unit;
                self.ready = None;
                return Some(protocol::run_frame(
                    unit.index,
                    &unit.key,
                    unit.shard.version,
                ));
            }
            Ready::Batch(unit, _) | Ready::End(unit) => *unit,
        };
        let keep = match self.keep.get(&unit.index) {
            Some(Keep::Measuring) => return None,
            Some(Keep::Decided(keep)) => i64::try_from(*keep).unwrap_or(i64::MAX),
            None => match self.ready.as_ref()? {
                Ready::Batch(..) => {
                    self.keep.insert(unit.index, Keep::Measuring);
                    -1
                }
                _ => {
                    // An empty shard: kept as such, for next time.
                    let keep = cache.reserve(uid, &unit.key, unit.shard.version, 64);
                    self.keep.insert(unit.index, Keep::Decided(keep));
                    i64::try_from(keep).unwrap_or(0)
                }
            },
        };
        Some(match self.ready.take()? {
            Ready::Batch(unit, docs) => {
                protocol::batch_frame(unit.index, &unit.key, unit.shard.version, keep, &docs)
            }
            Ready::End(unit) | Ready::Run(unit) => {
                protocol::end_frame(unit.index, &unit.key, unit.shard.version, keep)
            }
        })
    }

    /// The first batch's `ack` measured the documents: ask the cache for
    /// room for the whole shard.
    fn decide(&mut self, unit: &Unit, per_doc: u64, uid: u64, cache: &Cache) {
        if !matches!(self.keep.get(&unit.index), Some(Keep::Measuring)) {
            return;
        }
        // Room for a sample that measured a little low.
        let want = unit
            .shard
            .docs
            .max(1)
            .saturating_mul(per_doc)
            .saturating_mul(13)
            / 10;
        let keep = cache.reserve(uid, &unit.key, unit.shard.version, want);
        self.keep.insert(unit.index, Keep::Decided(keep));
    }
}

enum Step {
    Incoming(Incoming),
    Fetched(std::result::Result<DocBatch, String>),
}

async fn drive_worker(
    qw: &mut QueryWorker,
    units: Vec<&Unit>,
    ctx: &Ctx<'_>,
    report: Duration,
) -> std::result::Result<(), Fault> {
    let caps = *ctx.pool.caps();
    let drops = ctx.cache.take_drops(qw.uid);
    let start = protocol::query_start_frame(ctx.reduce, ctx.request.skip_errors, report, &drops);
    if qw.send(&start).await.is_err() {
        return Err(lost(qw.worker.death(&caps).await));
    }
    let by_index: HashMap<usize, &Unit> = units.iter().map(|u| (u.index, *u)).collect();
    let mut feed = Feed {
        units: units.iter().map(|u| (*u, u.resident)).collect(),
        cold: None,
        ready: None,
        fetching: None,
        keep: HashMap::new(),
    };
    let mut deadline = None;
    loop {
        if qw.outstanding < PIPELINE {
            if feed.ready.is_none() && feed.fetching.is_none() {
                feed.advance(ctx);
            }
            if let Some(frame) = feed.take_ready(qw.uid, ctx.cache) {
                if qw.outstanding == 0 {
                    deadline = Some(Instant::now() + ctx.timeout);
                }
                if qw.send(&frame).await.is_err() {
                    return Err(lost(qw.worker.death(&caps).await));
                }
                qw.outstanding += 1;
                continue;
            }
        }
        if qw.outstanding == 0 && feed.is_drained() {
            return Ok(());
        }
        let step = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => return Err(Fault::Stopped),
            incoming = qw.worker.next_frame(deadline, ctx.frame_max), if qw.outstanding > 0 => {
                Step::Incoming(incoming)
            }
            fetched = feed.fetched(), if feed.fetching.is_some() => Step::Fetched(fetched),
        };
        let len = match step {
            Step::Fetched(fetched) => {
                feed.on_fetched(fetched, ctx)?;
                continue;
            }
            Step::Incoming(Incoming::Frame(len)) => len,
            Step::Incoming(Incoming::Eof) => return Err(lost(qw.worker.death(&caps).await)),
            Step::Incoming(Incoming::Deadline) => {
                qw.worker.kill();
                let message = format!(
                    "the query's map made no progress for {} (the function's timeout)",
                    human(ctx.timeout)
                );
                return Err(lost(Failure::new(FailureKind::TimedOut, message)));
            }
            Step::Incoming(Incoming::FrameTooBig(len)) => {
                qw.worker.kill();
                let message = format!(
                    "the worker sent a {len}-byte frame; values are limited to {} bytes",
                    ctx.pool.config().max_result_bytes
                );
                return Err(lost(Failure::new(FailureKind::OutputLimit, message)));
            }
        };
        deadline = Some(Instant::now() + ctx.timeout);
        let message = parse(qw.worker.frame_body(len), ctx.request.skip_errors);
        qw.worker.consume(len);
        let message = message?;
        let unit = match message.unit() {
            Some(index) => match by_index.get(&index) {
                Some(unit) => Some(*unit),
                None => {
                    return Err(Fault::Stop(Stop::Platform(format!(
                        "a query worker answered for shard {index}, which is not its own"
                    ))));
                }
            },
            None => None,
        };
        match (message, unit) {
            (Message::Progress { docs, .. }, Some(unit)) => ctx.progress(unit, docs),
            (Message::Values { lines, .. }, Some(unit)) => {
                ctx.push_values(unit, lines).await?;
                // Time spent waiting for our turn is not the worker's.
                deadline = Some(Instant::now() + ctx.timeout);
            }
            (
                Message::Ack {
                    docs,
                    kept,
                    per_doc,
                    ..
                },
                Some(unit),
            ) => {
                qw.outstanding -= 1;
                ctx.progress(unit, docs);
                feed.decide(unit, per_doc, qw.uid, ctx.cache);
                if kept == 0
                    && let Some(Keep::Decided(keep)) = feed.keep.get(&unit.index)
                    && *keep > 0
                {
                    // The documents came out bigger than the room made.
                    ctx.cache.release(qw.uid, &unit.key);
                    feed.keep.insert(unit.index, Keep::Decided(0));
                }
            }
            (
                Message::Done {
                    docs, kept, done, ..
                },
                Some(unit),
            ) => {
                qw.outstanding -= 1;
                ctx.progress(unit, docs);
                let resident = feed.keep.remove(&unit.index).is_none();
                if !resident {
                    ctx.cache.settle(qw.uid, &unit.key, kept);
                }
                ctx.finish_unit(unit, UnitDone { resident, ..done });
            }
            (Message::Miss { .. }, Some(unit)) => {
                // The cache and the worker disagree (should not happen):
                // stream the shard after all.
                qw.outstanding -= 1;
                ctx.cache.settle(qw.uid, &unit.key, 0);
                feed.units.push_back((unit, false));
            }
            (Message::Skipped, _) => qw.outstanding -= 1,
            (Message::Failed { stop, fatal }, _) => {
                qw.outstanding -= 1;
                return Err(if fatal {
                    Fault::Lost(stop)
                } else {
                    Fault::Stop(stop)
                });
            }
            (Message::Combined(_), _) | (Message::Aborted, _) | (_, None) => {
                return Err(Fault::Stop(Stop::Platform(
                    "unexpected frame from a query worker".into(),
                )));
            }
        }
    }
}

fn lost(failure: Failure) -> Fault {
    Fault::Lost(Stop::Failed {
        doc_id: None,
        failure,
    })
}

/// A worker's frame, owned (the read buffer is released before acting on it).
enum Message {
    Progress {
        unit: usize,
        docs: u64,
    },
    Values {
        unit: usize,
        lines: Vec<u8>,
    },
    Ack {
        unit: usize,
        docs: u64,
        kept: u64,
        per_doc: u64,
    },
    Done {
        unit: usize,
        docs: u64,
        kept: u64,
        done: UnitDone,
    },
    Miss {
        unit: usize,
    },
    Skipped,
    Failed {
        stop: Stop,
        fatal: bool,
    },
    Combined(String),
    Aborted,
}

impl Message {
    fn unit(&self) -> Option<usize> {
        match self {
            Message::Progress { unit, .. }
            | Message::Values { unit, .. }
            | Message::Ack { unit, .. }
            | Message::Done { unit, .. }
            | Message::Miss { unit } => Some(*unit),
            _ => None,
        }
    }
}

fn parse(body: &[u8], skip_errors: bool) -> std::result::Result<Message, Fault> {
    let platform = |message: String| Fault::Stop(Stop::Platform(message));
    let (reply, tail): (QueryReply<'_>, &[u8]) = protocol::split(body)
        .map_err(|e| platform(format!("unreadable frame from a query worker: {e}")))?;
    let unit = || {
        reply
            .unit
            .ok_or_else(|| platform(format!("a {} frame without its shard", reply.kind)))
    };
    Ok(match &*reply.kind {
        "progress" => Message::Progress {
            unit: unit()?,
            docs: reply.docs,
        },
        "values" => Message::Values {
            unit: unit()?,
            lines: protocol::array_to_lines(tail)
                .ok_or_else(|| platform("a query worker sent malformed values".into()))?,
        },
        "ack" => Message::Ack {
            unit: unit()?,
            docs: reply.docs,
            kept: reply.kept,
            per_doc: reply.per_doc,
        },
        "done" => {
            let failures = if skip_errors {
                reply
                    .failures
                    .into_iter()
                    .map(|f| DocFailure {
                        id: f.id,
                        failure: Failure {
                            kind: FailureKind::parse(&f.failure).unwrap_or(FailureKind::Raised),
                            exception: f.exception,
                            message: f.message.unwrap_or_default(),
                            traceback: f.traceback.filter(|t| !t.is_empty()),
                        },
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Message::Done {
                unit: reply
                    .unit
                    .ok_or_else(|| platform("a done frame without its shard".into()))?,
                docs: reply.docs,
                kept: reply.kept,
                done: UnitDone {
                    errors: reply.errors,
                    failures,
                    partial: reply
                        .partial
                        .filter(|_| reply.has)
                        .map(|p| p.get().to_owned()),
                    resident: false,
                },
            }
        }
        "miss" => Message::Miss { unit: unit()? },
        "skipped" => Message::Skipped,
        "failed" => {
            let kind = reply.failure.as_deref().unwrap_or("raised");
            let message = reply.message.unwrap_or_default();
            let stop = match FailureKind::parse(kind) {
                Some(kind) => Stop::Failed {
                    doc_id: reply.doc_id,
                    failure: Failure {
                        kind,
                        exception: reply.exception,
                        message,
                        traceback: reply.traceback.filter(|t| !t.is_empty()),
                    },
                },
                None => Stop::Platform(format!("a query worker failed: {message}")),
            };
            Message::Failed {
                stop,
                fatal: reply.fatal,
            }
        }
        "combined" => Message::Combined(
            reply
                .result
                .map(|r| r.get().to_owned())
                .unwrap_or_else(|| "null".into()),
        ),
        "aborted" => Message::Aborted,
        "error" => {
            return Err(platform(format!(
                "a query worker refused a frame: {}",
                reply.message.unwrap_or_default()
            )));
        }
        other => {
            return Err(platform(format!(
                "unexpected frame kind {other:?} from a query worker"
            )));
        }
    })
}

/// Reduces the partial results, in shard order, on one worker.
async fn combine(
    qw: &mut QueryWorker,
    partials: &[String],
    pool: &Pool,
    timeout: Duration,
    frame_max: usize,
) -> std::result::Result<String, Fault> {
    let caps = *pool.caps();
    if qw.send(&protocol::combine_frame(partials)).await.is_err() {
        return Err(lost(qw.worker.death(&caps).await));
    }
    qw.outstanding += 1;
    let deadline = Instant::now() + timeout;
    loop {
        let len = match qw.worker.next_frame(Some(deadline), frame_max).await {
            Incoming::Frame(len) => len,
            Incoming::Eof => return Err(lost(qw.worker.death(&caps).await)),
            Incoming::Deadline => {
                qw.worker.kill();
                let message = format!(
                    "reduce ran past the function's timeout ({})",
                    human(timeout)
                );
                return Err(lost(Failure::new(FailureKind::TimedOut, message)));
            }
            Incoming::FrameTooBig(len) => {
                qw.worker.kill();
                let message = format!("the worker sent a {len}-byte result");
                return Err(lost(Failure::new(FailureKind::OutputLimit, message)));
            }
        };
        let message = parse(qw.worker.frame_body(len), false);
        qw.worker.consume(len);
        match message? {
            Message::Combined(result) => {
                qw.outstanding -= 1;
                return Ok(result);
            }
            Message::Failed { stop, fatal } => {
                qw.outstanding -= 1;
                return Err(if fatal {
                    Fault::Lost(stop)
                } else {
                    Fault::Stop(stop)
                });
            }
            _ => {}
        }
    }
}

/// After a query, complete or not: aborts workers still in a step (killing
/// those that do not stop), unpins the query's shards, and delivers evictions.
async fn recover(pool: &Pool, mut set: OwnedMutexGuard<QuerySet>) {
    let frame_max = pool.config().max_result_bytes + FRAME_SLACK;
    let aborts = set.slots.iter_mut().map(|slot| async move {
        let usable = match slot.as_mut() {
            Some(qw) if qw.torn => false,
            Some(qw) if qw.outstanding > 0 => abort(qw, frame_max).await,
            _ => true,
        };
        (!usable).then(|| slot.take()).flatten()
    });
    for worker in join_all(aborts).await.into_iter().flatten() {
        pool.discard_query_worker(worker);
    }
    for qw in set.slots.iter().flatten() {
        pool.config().cache.end_query(qw.uid);
    }
    deliver_drops(pool, &mut set).await;
    set.last_used = Instant::now();
    if pool.is_retired() {
        for worker in set.slots.iter_mut().filter_map(Option::take) {
            pool.discard_query_worker(worker);
        }
    }
}

/// Stops a worker's step: SIGINT (user code raises), then an `abort` frame
/// it answers once everything before it is answered or dropped. False when
/// the worker must be killed.
async fn abort(qw: &mut QueryWorker, frame_max: usize) -> bool {
    qw.worker.interrupt();
    let deadline = Instant::now() + ABORT_GRACE;
    match tokio::time::timeout_at(deadline.into(), qw.send(&protocol::abort_frame())).await {
        Ok(Ok(())) => {}
        _ => return false,
    }
    loop {
        let Incoming::Frame(len) = qw.worker.next_frame(Some(deadline), frame_max).await else {
            return false;
        };
        let aborted = matches!(
            parse(qw.worker.frame_body(len), false),
            Ok(Message::Aborted)
        );
        qw.worker.consume(len);
        if aborted {
            qw.outstanding = 0;
            return true;
        }
    }
}

/// Tells each worker of the set which resident shards it must forget.
pub(crate) async fn deliver_drops(pool: &Pool, set: &mut QuerySet) {
    for slot in &mut set.slots {
        let Some(qw) = slot.as_mut() else {
            continue;
        };
        let cache = &pool.config().cache;
        let drops = cache.take_drops(qw.uid);
        if drops.is_empty() {
            continue;
        }
        // A worker that lost everything it held is replaced rather than
        // told: Python keeps the memory it freed, so only a fresh process
        // (forked from the template on the next query) gives it back.
        if cache.held(qw.uid) == 0 {
            if let Some(qw) = slot.take() {
                pool.discard_query_worker(qw);
            }
            continue;
        }
        let frame = protocol::drop_frame(&drops);
        let sent = tokio::time::timeout(ABORT_GRACE, qw.send(&frame)).await;
        if !matches!(sent, Ok(Ok(())))
            && let Some(qw) = slot.take()
        {
            pool.discard_query_worker(qw);
        }
    }
}

/// Which worker maps which shard: resident shards stay on their holder; the
/// rest go, biggest first, to the least loaded worker (by documents), ties to
/// the lower index — for equal shards that is shard `i` on worker `i % W`.
fn place(request: &QueryRequest, uids: &[u64], cache: &Cache) -> Vec<usize> {
    let w = uids.len().max(1);
    let n = request.shards.len();
    let mut load = vec![0u64; w];
    let mut slots = vec![usize::MAX; n];
    for (i, shard) in request.shards.iter().enumerate() {
        let key = (request.dataset.clone(), shard.shard);
        if let Some(slot) = cache.holder_among(uids, &key, shard.version) {
            slots[i] = slot;
            load[slot] += shard.docs;
        }
    }
    let mut rest: Vec<usize> = (0..n).filter(|i| slots[*i] == usize::MAX).collect();
    rest.sort_by_key(|i| (std::cmp::Reverse(request.shards[*i].docs), *i));
    for i in rest {
        let slot = (0..w).min_by_key(|s| (load[*s], *s)).unwrap_or(0);
        slots[i] = slot;
        load[slot] += request.shards[i].docs;
    }
    slots
}
