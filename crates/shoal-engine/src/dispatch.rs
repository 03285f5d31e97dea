//! The one path every invocation takes: run on the runtime, account, record.
//!
//! Synchronous calls run at once and their record is written behind the
//! answer (the `live` map serves reads until it is durable). Asynchronous
//! calls are messages on a durable per-function queue: accepted only once
//! durable, leased by a consumer, retried with exponential backoff and jitter,
//! acknowledged only after their final record was issued. A node killed
//! mid-run delivers the message again after restart.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

use shoal_runtime::{Gate, Request, Response};
use std::collections::HashMap;

use shoal_store::{ConcurrencyKey, Delivery, ErrorRecord, InvocationRecord, KeyLimit, NewMessage};
use shoal_types::{FailureKind, InvocationStatus, Outcome, gb_seconds};

use crate::engine::Inner;
use crate::error::{Error, Result};
use crate::functions::{Deployed, parse_name};

/// A finished synchronous invocation.
#[derive(Debug, Clone)]
pub struct Completed {
    pub id: String,
    pub outcome: Outcome,
}

/// An invocation whose latest state is not durable yet.
#[derive(Debug)]
pub(crate) struct LiveEntry {
    pub(crate) record: InvocationRecord,
    /// Logs of the finished attempt, until they are durable.
    pub(crate) logs: Option<Vec<u8>>,
}

/// What a consumer feeds its deliveries to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Feed {
    /// Asynchronous invocations of a function (queue `_async.<function>`).
    Async { function: String },
    /// A function subscribed to a user queue.
    Subscription {
        queue: String,
        function: String,
        batch_size: u32,
    },
}

impl Feed {
    pub(crate) fn queue(&self) -> String {
        match self {
            Feed::Async { function } => queue_name(function),
            Feed::Subscription { queue, .. } => queue.clone(),
        }
    }

    fn batch_size(&self) -> usize {
        match self {
            Feed::Async { .. } => 1,
            Feed::Subscription { batch_size, .. } => *batch_size as usize,
        }
    }
}

/// The consumer of one queue: leases while it has free slots.
pub(crate) struct Consumer {
    pub(crate) notify: Notify,
    /// Batches running now by concurrency key (functions with a key only).
    running: std::sync::Mutex<HashMap<String, u32>>,
    slots: Arc<Semaphore>,
    /// Slots in all (free or in use).
    total: std::sync::atomic::AtomicU32,
    pub(crate) feed: Feed,
}

/// What an asynchronous invocation's queue message carries; the invocation
/// record holds the rest.
#[derive(Serialize, Deserialize)]
pub(crate) struct Message {
    id: String,
    version: u64,
}

impl Message {
    pub(crate) fn new(id: &str, version: u64) -> Message {
        Message {
            id: id.to_string(),
            version,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("message encodes")
    }
}

/// Queue names with a dot cannot clash with user queue names.
pub(crate) fn queue_name(function: &str) -> String {
    format!("_async.{function}")
}

pub(crate) async fn invoke_sync(
    inner: &Arc<Inner>,
    name: &str,
    event: String,
) -> Result<Completed> {
    let d = resolve_latest(inner, name)?;
    let now = inner.clock.now_ms();
    let mut record = new_record(&d, "sync", event, now);
    record.status = InvocationStatus::Running.as_str().into();
    record.attempts = 1;
    record.started_at_ms = Some(now);
    record.max_attempts = 1;
    let id = record.id.clone();
    set_live(inner, record.clone(), None);
    let (request, _) = request(inner, &record, &d);
    let response = inner.runtime.invoke(&d.deployment, request).await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            inner.live.lock().unwrap().remove(&id);
            return Err(e.into());
        }
    };
    let outcome = response.outcome.clone();
    apply_response(inner, &mut record, &d, &response);
    metrics(&d, "sync", &response);
    persist(inner, record, response.logs, None);
    Ok(Completed { id, outcome })
}

pub(crate) async fn invoke_async(inner: &Arc<Inner>, name: &str, event: String) -> Result<String> {
    let d = resolve_latest(inner, name)?;
    let key = d
        .record
        .concurrency_key
        .as_ref()
        .and_then(|ck| key_of(ck, &event));
    let record = new_record(&d, "async", event, inner.clock.now_ms());
    let id = record.id.clone();
    let record_created_ms = record.created_at_ms;
    let body = Message::new(&id, d.record.version).encode();
    // Both writes are issued in order; the message is durable only after the
    // record is, so a delivered message always finds its record.
    let put = inner.backend.invocations.put_invocations(vec![record]);
    let send = inner.backend.queues.send(
        &queue_name(&d.record.name),
        vec![NewMessage {
            id: id.clone(),
            body,
            due_ms: 0,
            sent_ms: record_created_ms,
            dedup: None,
            key,
        }],
    );
    put.await?;
    send.await?;
    wake(inner, &queue_name(&d.record.name));
    metrics::counter!("shoal_async_accepted_total", "function" => d.record.name.clone())
        .increment(1);
    Ok(id)
}

/// Starts the consumer of a function's asynchronous invocations unless it
/// runs already, and grows its slots to the function's concurrency.
pub(crate) fn ensure_consumer(inner: &Arc<Inner>, d: &Deployed) {
    let feed = Feed::Async {
        function: d.record.name.clone(),
    };
    ensure_feed(inner, feed, d.record.concurrency);
}

/// Starts (or grows) the consumer of a feed's queue. One consumer per queue.
pub(crate) fn ensure_feed(inner: &Arc<Inner>, feed: Feed, slots: u32) {
    use std::sync::atomic::Ordering;
    let queue = feed.queue();
    let mut consumers = inner.consumers.lock().unwrap();
    if let Some(c) = consumers.get(&queue)
        && c.feed == feed
    {
        let have = c.total.load(Ordering::SeqCst);
        if slots > have {
            // Only ever grow: shrinking would have to wait for running work.
            c.slots.add_permits((slots - have) as usize);
            c.total.store(slots, Ordering::SeqCst);
        }
        c.notify.notify_one();
        return;
    }
    let consumer = Arc::new(Consumer {
        notify: Notify::new(),
        running: std::sync::Mutex::new(HashMap::new()),
        slots: Arc::new(Semaphore::new(slots as usize)),
        total: std::sync::atomic::AtomicU32::new(slots),
        feed,
    });
    // A consumer of the same queue with another feed stops by itself when it
    // sees it was replaced.
    consumers.insert(queue.clone(), consumer.clone());
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        consume(inner2, queue, consumer).await;
    });
}

/// Wakes the consumer of a queue (after a send).
pub(crate) fn wake(inner: &Inner, queue: &str) {
    if let Some(c) = inner.consumers.lock().unwrap().get(queue) {
        c.notify.notify_one();
    }
}

/// True while the consumer should keep running: it is still the registered
/// consumer of its queue and its function still wants the queue.
fn wanted(inner: &Inner, queue: &str, consumer: &Arc<Consumer>) -> bool {
    let current = inner
        .consumers
        .lock()
        .unwrap()
        .get(queue)
        .is_some_and(|c| Arc::ptr_eq(c, consumer));
    current
        && match &consumer.feed {
            // Async queues drain even after their function is removed (their
            // invocations then fail with load_failed).
            Feed::Async { .. } => true,
            Feed::Subscription {
                queue, function, ..
            } => inner
                .registry
                .latest(function)
                .and_then(|d| d.record.subscribe.clone())
                .is_some_and(|s| &s.queue == queue),
        }
}

/// Leases due messages while slots are free and runs each batch in its own task.
async fn consume(inner: Arc<Inner>, queue: String, consumer: Arc<Consumer>) {
    let idle_poll = Duration::from_secs(1);
    let per = consumer.feed.batch_size();
    loop {
        if !wanted(&inner, &queue, &consumer) {
            let mut consumers = inner.consumers.lock().unwrap();
            if consumers
                .get(&queue)
                .is_some_and(|c| Arc::ptr_eq(c, &consumer))
            {
                consumers.remove(&queue);
            }
            return;
        }
        let permit = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            p = consumer.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![permit];
        while let Ok(p) = consumer.slots.clone().try_acquire_owned() {
            permits.push(p);
            if permits.len() >= 256 {
                break;
            }
        }
        let visibility = visibility_ms(&inner, &consumer.feed).await;
        let deployed = feed_deployed(&inner, &consumer.feed);
        let now = inner.clock.now_ms();
        let mut want = permits.len() * per;
        // A rate-limited function leases only as many messages as it has
        // tokens for now; the rest wait in the queue until the next token is
        // due. The tokens themselves are taken right before each handler
        // starts (`TokenGate`, on a ready worker), so the limit holds where the calls
        // happen, not where they were leased.
        if let Some(l) = deployed.as_ref().and_then(|d| d.record.limiter.as_deref()) {
            match inner.limiters.available(l, want, now) {
                Ok(n) => want = n,
                Err(wait) => {
                    drop(permits);
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            }
            permits.truncate(want.div_ceil(per));
        }
        // With a concurrency key, the lease passes over keys that have
        // `per_key` batches running: their messages wait in the queue, in
        // order, while other keys' messages go ahead.
        let key_limit = deployed
            .as_ref()
            .and_then(|d| d.record.concurrency_key.as_ref())
            .map(|ck| KeyLimit {
                per_key: ck.per_key,
                running: consumer.running.lock().unwrap().clone(),
            });
        let leased = inner
            .backend
            .queues
            .lease_keyed(&queue, now, want, visibility, key_limit.as_ref())
            .await;
        let leased = match leased {
            Ok(l) => l,
            Err(e) => {
                warn!(%queue, error = %e, "Leasing failed; retrying.");
                drop(permits);
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(idle_poll) => continue,
                }
            }
        };
        if leased.deliveries.is_empty() {
            drop(permits);
            if let Feed::Async { function } = &consumer.feed
                && inner.registry.latest(function).is_none()
                && leased.next_due_ms.is_none()
            {
                // The function was removed and its queue is drained.
                let mut consumers = inner.consumers.lock().unwrap();
                if inner.registry.latest(function).is_none()
                    && consumers
                        .get(&queue)
                        .is_some_and(|c| Arc::ptr_eq(c, &consumer))
                {
                    consumers.remove(&queue);
                    return;
                }
                continue;
            }
            // Due messages left behind belong to keys at their limit: a
            // finishing batch wakes the consumer (no polling meanwhile).
            let wait = leased
                .next_due_ms
                .filter(|due| *due > now)
                .map(|due| Duration::from_millis(due - now))
                .unwrap_or(idle_poll)
                .min(idle_poll);
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = consumer.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut permits = permits.into_iter();
        let mut deliveries = leased.deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            let batch: Vec<Delivery> = deliveries.by_ref().take(per).collect();
            let permit = permits.next().expect("leased at most `per` per permit");
            let inner = inner.clone();
            let feed = consumer.feed.clone();
            let keys = hold_keys(&consumer, &batch);
            let consumer = consumer.clone();
            inner.tasks.clone().spawn(async move {
                match feed {
                    Feed::Async { function } => {
                        for delivery in batch {
                            run_delivery(&inner, &function, delivery).await;
                        }
                    }
                    Feed::Subscription {
                        queue, function, ..
                    } => {
                        crate::queues::run_batch(&inner, &queue, &function, batch).await;
                    }
                }
                drop(permit);
                if !keys.is_empty() {
                    release_keys(&consumer, &keys);
                    consumer.notify.notify_one();
                }
            });
        }
    }
}

/// Counts a batch's keys as running; returns them for `release_keys`.
fn hold_keys(consumer: &Consumer, batch: &[Delivery]) -> Vec<String> {
    let mut keys: Vec<String> = batch.iter().filter_map(|d| d.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let mut running = consumer.running.lock().unwrap();
    for k in &keys {
        *running.entry(k.clone()).or_default() += 1;
    }
    keys
}

fn release_keys(consumer: &Consumer, keys: &[String]) {
    let mut running = consumer.running.lock().unwrap();
    for k in keys {
        if let Some(n) = running.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                running.remove(k);
            }
        }
    }
}

/// The latest version of the function a feed runs.
fn feed_deployed(inner: &Inner, feed: &Feed) -> Option<Arc<Deployed>> {
    let function = match feed {
        Feed::Async { function } | Feed::Subscription { function, .. } => function,
    };
    inner.registry.latest(function)
}

/// The concurrency key of the function subscribed to a user queue, if any.
pub(crate) fn subscriber_key(inner: &Inner, queue: &str) -> Option<ConcurrencyKey> {
    let consumers = inner.consumers.lock().unwrap();
    let feed = consumers.get(queue)?.feed.clone();
    drop(consumers);
    match &feed {
        Feed::Subscription { .. } => feed_deployed(inner, &feed)?.record.concurrency_key.clone(),
        Feed::Async { .. } => None,
    }
}

/// The value of the key's field in an event (JSON text): a string as it
/// is, a number or boolean as JSON; `None` when the field is missing, null,
/// or the event is not an object (such messages are not limited by key).
pub(crate) fn key_of(ck: &ConcurrencyKey, event: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(event).ok()?;
    let mut v = &value;
    for part in ck.field.split('.') {
        v = v.get(part)?;
    }
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A rate limiter's gate: the runtime waits on it right before the handler
/// starts; over the limit the call waits its turn (no error, no busy loop).
struct TokenGate {
    inner: Arc<Inner>,
    limiter: String,
}

impl Gate for TokenGate {
    fn wait(&self) -> futures_util::future::BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move {
            while let Err(wait) = inner.limiters.take(&limiter, 1, inner.clock.now_ms()) {
                tokio::time::sleep(wait).await;
            }
        })
    }
}

async fn visibility_ms(inner: &Inner, feed: &Feed) -> u64 {
    match feed {
        Feed::Async { function } => {
            let timeout = inner
                .registry
                .latest(function)
                .map(|d| d.record.timeout_ms)
                .unwrap_or(30_000);
            timeout + inner.opts.lease_margin.as_millis() as u64
        }
        Feed::Subscription { queue, .. } => match inner.backend.catalog.queue(queue).await {
            Ok(Some(q)) => q.visibility_ms,
            _ => 30_000,
        },
    }
}

async fn run_delivery(inner: &Arc<Inner>, name: &str, delivery: Delivery) {
    let queue = queue_name(name);
    let ack = |id: String| inner.backend.queues.ack(&queue, vec![id]);
    let Ok(msg) = serde_json::from_slice::<Message>(&delivery.body) else {
        warn!(%queue, id = %delivery.id, "Undecodable queue message dropped.");
        drop(ack(delivery.id));
        return;
    };
    let record = match load_record(inner, &msg.id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            warn!(id = %msg.id, "Queued invocation has no record; dropped.");
            drop(ack(delivery.id));
            return;
        }
        Err(e) => {
            warn!(id = %msg.id, error = %e, "Reading an invocation failed; it will be redelivered.");
            return;
        }
    };
    let mut record = record;
    if InvocationStatus::parse(&record.status).is_some_and(|s| s.is_final()) {
        // Finished before a crash took the acknowledgement with it (and
        // maybe the job result: recording it again changes nothing).
        let finish = crate::jobs::finish_slot(inner, &record);
        let acked = ack(delivery.id);
        if let Some(finish) = finish {
            finish.await;
        }
        drop(acked);
        return;
    }
    if let Some(slot) = &record.job
        && crate::jobs::cancelled(inner, &slot.job).await
    {
        record.status = InvocationStatus::Cancelled.as_str().into();
        record.finished_at_ms = Some(inner.clock.now_ms());
        record.next_attempt_at_ms = None;
        persist(inner, record, Vec::new(), Some((queue, delivery.id)));
        return;
    }
    let d = match resolve_version(inner, name, msg.version).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let now = inner.clock.now_ms();
            record.status = InvocationStatus::Failed.as_str().into();
            record.error = Some(error_record(&shoal_types::Failure::new(
                FailureKind::LoadFailed,
                format!(
                    "function {name} version {} was removed before this invocation ran",
                    msg.version
                ),
            )));
            record.finished_at_ms = Some(now);
            record.next_attempt_at_ms = None;
            persist(inner, record, Vec::new(), Some((queue, delivery.id)));
            return;
        }
        Err(e) => {
            warn!(id = %msg.id, error = %e, "Resolving a function failed; it will be redelivered.");
            return;
        }
    };

    let now = inner.clock.now_ms();
    record.attempts += 1;
    record.status = InvocationStatus::Running.as_str().into();
    record.started_at_ms = Some(now);
    record.next_attempt_at_ms = None;
    set_live(inner, record.clone(), None);
    let Some(response) = run_leased(
        inner,
        &queue,
        std::slice::from_ref(&delivery.id),
        &mut record,
        &d,
    )
    .await
    else {
        return;
    };
    apply_response(inner, &mut record, &d, &response);
    metrics(&d, "async", &response);
    let failed = !matches!(response.outcome, Outcome::Succeeded(_));
    if failed && record.attempts < record.max_attempts {
        let delay = backoff(
            Duration::from_millis(d.record.retry_delay_ms),
            record.attempts,
        );
        let due = inner.clock.now_ms() + delay.as_millis() as u64;
        record.status = InvocationStatus::Queued.as_str().into();
        record.next_attempt_at_ms = Some(due);
        record.finished_at_ms = None;
        debug!(id = %record.id, attempt = record.attempts, delay_ms = delay.as_millis() as u64, "Invocation failed; retrying.");
        let nack = inner.backend.queues.nack(&queue, &delivery.id, due);
        persist(inner, record, response.logs, None);
        drop(nack);
        return;
    }
    persist(inner, record, response.logs, Some((queue, delivery.id)));
}

/// Runs a leased invocation on the runtime. When the platform (not the user
/// code) fails, the record leaves the live map and the messages are released
/// for another try in a second; when the node is shutting down their leases
/// simply lapse and they are delivered again after the restart.
pub(crate) async fn run_leased(
    inner: &Arc<Inner>,
    queue: &str,
    ids: &[String],
    record: &mut InvocationRecord,
    d: &Deployed,
) -> Option<Response> {
    let (request, handoff) = request(inner, record, d);
    match inner.runtime.invoke(&d.deployment, request).await {
        Ok(r) => {
            record.handed_to = handoff.lock().unwrap().take();
            Some(r)
        }
        Err(e) => {
            inner.live.lock().unwrap().remove(&record.id);
            if !inner.shutdown.is_cancelled() {
                warn!(%queue, id = %record.id, error = %e, "Runtime failed; the messages will be redelivered.");
                let due = inner.clock.now_ms() + 1000;
                for id in ids {
                    drop(inner.backend.queues.nack(queue, id, due));
                }
            }
            None
        }
    }
}

/// Delay before retry number `attempt` (1-based): `base × 2^(attempt-1)`,
/// capped at 15 minutes, with "equal jitter" (between half and all of it) so
/// that failures that happened together do not retry together.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(15 * 60);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let half = exp / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

pub(crate) fn resolve_latest(inner: &Inner, name: &str) -> Result<Arc<Deployed>> {
    let name = parse_name(name)?;
    if inner.shutdown.is_cancelled() {
        return Err(Error::Unavailable(
            "the node is shutting down; retry on another node or later".into(),
        ));
    }
    inner
        .registry
        .latest(name.as_str())
        .ok_or_else(|| Error::not_found("function", name.as_str()))
}

async fn resolve_version(inner: &Inner, name: &str, version: u64) -> Result<Option<Arc<Deployed>>> {
    if let Some(d) = inner.registry.version(name, version) {
        return Ok(Some(d));
    }
    if inner.registry.latest(name).is_none() {
        return Ok(None);
    }
    let Some(record) = inner
        .backend
        .catalog
        .function_version(name, version)
        .await?
    else {
        return Ok(None);
    };
    let d = Arc::new(Deployed::from_record(&inner.opts.data_dir, record));
    inner.registry.insert_version(d.clone());
    Ok(Some(d))
}

async fn load_record(inner: &Inner, id: &str) -> Result<Option<InvocationRecord>> {
    if let Some(entry) = inner.live.lock().unwrap().get(id) {
        return Ok(Some(entry.record.clone()));
    }
    Ok(inner.backend.invocations.invocation(id).await?)
}

pub(crate) fn new_record(d: &Deployed, mode: &str, event: String, now: u64) -> InvocationRecord {
    InvocationRecord {
        id: uuid::Uuid::now_v7().to_string(),
        function: d.record.name.clone(),
        version: d.record.version,
        mode: mode.into(),
        status: InvocationStatus::Queued.as_str().into(),
        input: event,
        output: None,
        error: None,
        attempts: 0,
        max_attempts: d.max_attempts(),
        created_at_ms: now,
        started_at_ms: None,
        finished_at_ms: None,
        duration_ms: None,
        queued_ms: None,
        billed_gb_s: 0.0,
        cold_start: false,
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
    }
}

/// The runtime request of an invocation, and where its host calls note the
/// job it handed its slot to.
fn request(
    inner: &Arc<Inner>,
    record: &InvocationRecord,
    d: &Deployed,
) -> (Request, Arc<std::sync::Mutex<Option<String>>>) {
    let handoff = Arc::new(std::sync::Mutex::new(None));
    let host = crate::host::EngineHost {
        inner: inner.clone(),
        caller: crate::jobs::Caller {
            invocation: record.id.clone(),
            slot: record.job.clone(),
            handoff: handoff.clone(),
        },
    };
    let request = Request {
        invocation_id: record.id.clone(),
        function: d.record.name.clone(),
        version: d.record.version,
        attempt: record.attempts,
        event: record.input.clone(),
        host: Some(Arc::new(host) as Arc<dyn shoal_runtime::Host>),
        gate: d.record.limiter.clone().map(|limiter| {
            Arc::new(TokenGate {
                inner: inner.clone(),
                limiter,
            }) as Arc<dyn Gate>
        }),
    };
    (request, handoff)
}

pub(crate) fn apply_response(
    inner: &Inner,
    record: &mut InvocationRecord,
    d: &Deployed,
    r: &Response,
) {
    record.status = r.outcome.status().as_str().into();
    record.finished_at_ms = Some(inner.clock.now_ms());
    record.duration_ms = Some(r.duration.as_secs_f64() * 1000.0);
    record.queued_ms = Some(r.queued.as_secs_f64() * 1000.0);
    record.billed_gb_s += gb_seconds(d.record.memory_mb, r.duration);
    record.cold_start |= r.cold_start;
    match &r.outcome {
        Outcome::Succeeded(json) => {
            record.output = Some(json.clone());
            record.error = None;
        }
        Outcome::Failed(f) => {
            record.output = None;
            record.error = Some(error_record(f));
        }
    }
}

pub(crate) fn error_record(f: &shoal_types::Failure) -> ErrorRecord {
    ErrorRecord {
        kind: f.kind.as_str().into(),
        exception: f.exception.clone(),
        message: f.message.clone(),
        traceback: f.traceback.clone(),
    }
}

pub(crate) fn set_live(
    inner: &Inner,
    record: InvocationRecord,
    logs: Option<Vec<u8>>,
) -> Arc<LiveEntry> {
    let entry = Arc::new(LiveEntry { record, logs });
    inner
        .live
        .lock()
        .unwrap()
        .insert(entry.record.id.clone(), entry.clone());
    entry
}

/// Issues the record (and logs) write, then the acknowledgement if any, and
/// keeps the record readable from memory until the write is durable.
pub(crate) fn persist(
    inner: &Arc<Inner>,
    record: InvocationRecord,
    logs: Vec<u8>,
    ack: Option<(String, String)>,
) {
    let id = record.id.clone();
    let entry = set_live(inner, record.clone(), Some(logs.clone()));
    let put_logs = (!logs.is_empty()).then(|| inner.backend.invocations.put_logs(&id, logs));
    let put = inner
        .backend
        .invocations
        .put_invocations(vec![record.clone()]);
    // The job result before the acknowledgement (see `jobs::finish_slot`).
    let finish = crate::jobs::finish_slot(inner, &record);
    let acked = ack.map(|(queue, msg)| inner.backend.queues.ack(&queue, vec![msg]));
    let inner = inner.clone();
    tokio::spawn(async move {
        let mut ok = put.await.map_err(|e| e.to_string());
        if let Some(f) = put_logs {
            ok = ok.and(f.await.map_err(|e| e.to_string()));
        }
        if let Some(f) = finish {
            f.await;
        }
        if let Some(f) = acked {
            ok = ok.and(f.await.map_err(|e| e.to_string()));
        }
        if let Err(e) = ok {
            warn!(%id, error = %e, "Writing an invocation's outcome failed.");
        }
        let mut live = inner.live.lock().unwrap();
        if live.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            live.remove(&id);
        }
    });
}

pub(crate) fn metrics(d: &Deployed, mode: &'static str, r: &Response) {
    let function = d.record.name.clone();
    let outcome = match &r.outcome {
        Outcome::Succeeded(_) => "succeeded",
        Outcome::Failed(f) => f.kind.as_str(),
    };
    metrics::counter!("shoal_invocations_total", "function" => function.clone(), "mode" => mode, "outcome" => outcome).increment(1);
    metrics::histogram!("shoal_invocation_duration_seconds", "function" => function.clone())
        .record(r.duration.as_secs_f64());
    if r.cold_start {
        metrics::counter!("shoal_cold_starts_total", "function" => function).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_event() {
        let ck = |field: &str| ConcurrencyKey {
            field: field.into(),
            per_key: 1,
        };
        let event = r#"{"tenant":"acme","n":7,"ok":true,"c":{"id":"x-1"},"z":null,"l":[1]}"#;
        assert_eq!(key_of(&ck("tenant"), event).as_deref(), Some("acme"));
        assert_eq!(key_of(&ck("n"), event).as_deref(), Some("7"));
        assert_eq!(key_of(&ck("ok"), event).as_deref(), Some("true"));
        assert_eq!(key_of(&ck("c.id"), event).as_deref(), Some("x-1"));
        assert_eq!(key_of(&ck("l"), event).as_deref(), Some("[1]"));
        assert_eq!(key_of(&ck("z"), event), None);
        assert_eq!(key_of(&ck("missing"), event), None);
        assert_eq!(key_of(&ck("tenant.deeper"), event), None);
        assert_eq!(key_of(&ck("tenant"), "[1, 2]"), None);
        assert_eq!(key_of(&ck("tenant"), "not json"), None);
    }

    #[test]
    fn backoff_grows_with_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..6u32 {
            let full = base * 2u32.pow(attempt - 1);
            for _ in 0..50 {
                let d = backoff(base, attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        assert!(backoff(Duration::from_secs(60), 90) <= Duration::from_secs(15 * 60));
    }
}
