//! The dispatcher: the one path every invocation takes — run on the
//! runtime, account, record, settle its queue messages.
//!
//! Synchronous calls run at once and their record is written behind the
//! answer (the live map serves reads until it is durable). Everything else
//! is a message on a durable queue, leased by that queue's consumer:
//! asynchronous invocations (one message, one invocation record across its
//! attempts) and subscriptions to user queues (a batch of messages per
//! run). Both go through [`Dispatcher::run_leased`] (the run, with the
//! leases extended while it lasts) and [`Dispatcher::finish`] (the record,
//! the job slot, then each message acked, retried with backoff, or
//! dead-lettered — in that order, so a crash in between redelivers rather
//! than loses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::{debug, warn};

use shoal_runtime::response::BinaryResult;
use shoal_runtime::{Gate, Request, Response};
use shoal_store::{Delivery, InvocationRecord, NewMessage, QueueRecord, StoreHealth};
use shoal_types::{Failure, FailureKind, InvocationMode, InvocationStatus, Outcome};

use crate::auth::Origin;
use crate::cache::ResultCache;
use crate::categories::Categories;
use crate::channels::Channels;
use crate::consumers::{Consumer, Consumers, Feed};
use crate::env::Env;
use crate::error::{Entity, Error, Result};
use crate::functions::{Deployed, Functions};
use crate::history::{FeedSender, FinishedAttempt};
use crate::invocation::{self, Message, apply_response, backoff, key_of, new_record, queue_name};
use crate::jobs::{Caller, Jobs};
use crate::limits::Limiters;
use crate::outcomes::Outcomes;
use crate::queues::Queues;

/// A finished synchronous invocation.
#[derive(Debug, Clone)]
pub struct Completed {
    pub id: String,
    pub outcome: Outcome,
}

/// Who starts an asynchronous invocation of [`Dispatcher::invoke_async_as`].
#[derive(Debug, Clone, Default)]
pub(crate) struct AsyncStart {
    /// The invocation's id (see [`derived_id`]); a new UUIDv7 when `None`.
    pub(crate) id: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) user: Option<String>,
}

/// An invocation id made from what caused it, so that doing the same thing
/// twice names the same invocation: UUIDv7-shaped, its time `ms`, its other
/// bits from the SHA-256 of `seed`.
pub(crate) fn derived_id(ms: u64, seed: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(seed);
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&hash[..10]);
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes)
        .into_uuid()
        .to_string()
}

/// Most slots a consumer fills in one lease.
const MAX_PERMITS_PER_LEASE: usize = 256;

/// Runs invocations; owns the consumers' loops and the live records.
pub(crate) struct Dispatcher {
    pub(crate) env: Arc<Env>,
    functions: Arc<Functions>,
    limiters: Arc<Limiters>,
    consumers: Arc<Consumers>,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) queues: Arc<Queues>,
    pub(crate) categories: Arc<Categories>,
    /// Channels (`ctx.publish`) and the feeds of finished invocations.
    pub(crate) channels: Arc<Channels>,
    live: Arc<Live>,
    /// Finished attempts, sent once durable (see `history`).
    pub(crate) feed: Arc<FeedSender>,
    /// Results of synchronous calls to functions with `[cache]`.
    pub(crate) cache: ResultCache,
    /// What follows finished invocations (destinations, notifications).
    pub(crate) outcomes: Arc<Outcomes>,
    /// Usage, prices and budgets; `admit` where new work starts.
    pub(crate) usage: Arc<crate::usage::UsageService>,
}

/// Invocation records whose latest state is not durable yet (running, or
/// finished with the write still in flight). Reads look here first, so a
/// client always sees its own invocation.
#[derive(Default)]
struct Live {
    entries: Mutex<HashMap<String, Arc<LiveEntry>>>,
}

#[derive(Debug)]
struct LiveEntry {
    record: InvocationRecord,
    /// Logs of the finished attempt, until they are durable.
    logs: Option<Vec<u8>>,
}

impl Live {
    fn get(&self, id: &str) -> Option<Arc<LiveEntry>> {
        self.entries.lock().unwrap().get(id).cloned()
    }

    fn set(&self, record: InvocationRecord, logs: Option<Vec<u8>>) -> Arc<LiveEntry> {
        let entry = Arc::new(LiveEntry { record, logs });
        self.entries
            .lock()
            .unwrap()
            .insert(entry.record.id.clone(), entry.clone());
        entry
    }

    fn remove(&self, id: &str) {
        self.entries.lock().unwrap().remove(id);
    }

    /// Removes `entry` unless a newer state of its invocation replaced it.
    fn remove_entry(&self, entry: &Arc<LiveEntry>) {
        let mut entries = self.entries.lock().unwrap();
        if entries
            .get(&entry.record.id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            entries.remove(&entry.record.id);
        }
    }
}

/// How the failures of a queue's messages are retried.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    /// Deliveries at most, the first included.
    max_attempts: u32,
    /// The first retry's delay (doubled each time, with jitter).
    retry_delay: Duration,
    /// What happens to a message out of attempts.
    exhausted: Exhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exhausted {
    /// Asynchronous invocations: the record keeps the failure; the message
    /// is done.
    Ack,
    /// User queues: the message goes to the dead-letter list.
    DeadLetter,
}

/// What becomes of one delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settlement {
    Ack,
    Retry { due_ms: u64 },
    DeadLetter { reason: String },
}

/// Messages being worked on: the queue, and each message with the attempt
/// this delivery is.
struct Lease {
    queue: String,
    messages: Vec<(String, u32)>,
    /// How long a lease lasts; extended every half of it while running.
    visibility_ms: u64,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        env: Arc<Env>,
        functions: Arc<Functions>,
        limiters: Arc<Limiters>,
        consumers: Arc<Consumers>,
        jobs: Arc<Jobs>,
        queues: Arc<Queues>,
        categories: Arc<Categories>,
        channels: Arc<Channels>,
    ) -> Dispatcher {
        Dispatcher {
            channels,
            functions,
            limiters,
            consumers,
            jobs,
            queues,
            categories,
            live: Arc::default(),
            feed: Arc::default(),
            cache: ResultCache::default(),
            outcomes: Arc::default(),
            usage: Arc::new(crate::usage::UsageService::new(env.clone())),
            env,
        }
    }

    // ---- calls ----

    /// Runs a function and waits for its outcome. `event` must be JSON
    /// text. Started by no token (see [`invoke_sync_by`](Self::invoke_sync_by)).
    pub(crate) async fn invoke_sync(
        self: &Arc<Self>,
        name: &str,
        event: String,
    ) -> Result<Completed> {
        self.invoke_sync_by(&Origin::default(), name, event).await
    }

    /// Runs a function for `origin` (the token and user its record names)
    /// and waits for its outcome.
    pub(crate) async fn invoke_sync_by(
        self: &Arc<Self>,
        origin: &Origin,
        name: &str,
        event: String,
    ) -> Result<Completed> {
        self.usage.admit(origin.token.as_deref()).await?;
        let d = self.functions.resolve(name).await?;
        // The record is written behind the answer (invariant 4): with the
        // store known to be full it would be lost, so do not run at all.
        self.store_writable()?;
        let now = self.env.now_ms();
        let cached = match d.record.cache {
            Some(settings) => match crate::cache::canonical(&event) {
                Some(key) => match self.cache.get(&d.deployment.key, &key, now) {
                    Some(output) => return Ok(self.cache_hit(&d, origin, event, output, now)),
                    None => {
                        metrics::counter!("shoal_cache_misses_total", "function" => d.record.name.to_string())
                            .increment(1);
                        Some((settings, key))
                    }
                },
                None => None,
            },
            None => None,
        };
        let mut record = new_record(&d, InvocationMode::Sync, event, now);
        origin.stamp(&mut record);
        record.status = InvocationStatus::Running;
        record.attempts = 1;
        record.started_at_ms = Some(now);
        record.max_attempts = 1;
        let id = record.id.clone();
        self.live.set(record.clone(), None);
        let (request, _) = self.request(&record, &d);
        let response = match self.env.runtime.invoke(&d.deployment, request).await {
            Ok(r) => cleaned(&d, r),
            Err(e) => {
                self.live.remove(&id);
                return Err(e.into());
            }
        };
        let outcome = response.outcome.clone();
        let finished = self.env.now_ms();
        if let (Some((settings, key)), Outcome::Succeeded(output)) = (cached, &outcome) {
            self.cache
                .put(&d.deployment.key, settings, key, output.clone(), finished);
        }
        apply_response(&mut record, &d, &response, finished);
        metrics(&d, InvocationMode::Sync, &response);
        // The disk may have filled while it ran: then the caller gets the
        // error, not a result whose record is lost. (The write is still
        // tried; it may land if space comes back.)
        let writable = self.store_writable();
        self.persist(record, response.logs, None, Vec::new());
        writable?;
        Ok(Completed { id, outcome })
    }

    /// Answers a synchronous call from the result cache: a new invocation
    /// whose record (succeeded, 0 attempts, no run time, nothing billed)
    /// is written behind the answer like any other.
    fn cache_hit(
        &self,
        d: &Deployed,
        origin: &Origin,
        event: String,
        output: String,
        now: u64,
    ) -> Completed {
        metrics::counter!("shoal_cache_hits_total", "function" => d.record.name.to_string())
            .increment(1);
        let mut record = new_record(d, InvocationMode::Sync, event, now);
        origin.stamp(&mut record);
        record.status = InvocationStatus::Succeeded;
        record.max_attempts = 1;
        record.started_at_ms = Some(now);
        record.finished_at_ms = Some(now);
        record.duration_ms = Some(0.0);
        record.queued_ms = Some(0.0);
        record.output = Some(output.clone());
        record.cache_hit = true;
        let id = record.id.clone();
        self.persist(record, Vec::new(), None, Vec::new());
        Completed {
            id,
            outcome: Outcome::Succeeded(output),
        }
    }

    /// `StorageFull` while the store reports a full disk: a cheap flag.
    fn store_writable(&self) -> Result<()> {
        match self.env.backend.health() {
            StoreHealth::Ok => Ok(()),
            StoreHealth::Full(why) => Err(Error::StorageFull(format!("storage full: {why}"))),
        }
    }

    /// Queues an invocation durably and returns its id. Started by no
    /// token (see [`invoke_async_by`](Self::invoke_async_by)).
    pub(crate) async fn invoke_async(&self, name: &str, event: String) -> Result<String> {
        self.invoke_async_by(&Origin::default(), name, event).await
    }

    /// Queues an invocation for `origin` (the token and user its record
    /// names) durably and returns its id.
    pub(crate) async fn invoke_async_by(
        &self,
        origin: &Origin,
        name: &str,
        event: String,
    ) -> Result<String> {
        self.usage.admit(origin.token.as_deref()).await?;
        let d = self.functions.resolve(name).await?;
        let mut record = new_record(&d, InvocationMode::Async, event, self.env.now_ms());
        origin.stamp(&mut record);
        self.enqueue(&d, record, None).await
    }

    /// Writes a new asynchronous invocation's record and its message on the
    /// function's queue (`dedup`: the message's deduplication key and its
    /// expiry); wakes the queue's consumer.
    async fn enqueue(
        &self,
        d: &Deployed,
        record: InvocationRecord,
        dedup: Option<(String, u64)>,
    ) -> Result<String> {
        let queue = queue_name(&d.record.name);
        let key = d
            .record
            .concurrency_key
            .as_ref()
            .and_then(|ck| key_of(ck, &record.input));
        let id = record.id.clone();
        let message = NewMessage {
            id: id.clone(),
            body: Message::new(&id, d.record.version).encode(),
            due_ms: 0,
            sent_ms: record.created_at_ms,
            dedup,
            key,
        };
        // The record, then the message (so a delivered message always finds
        // its record), unless the queue is at its cap: one store step where
        // the store has one.
        let cap = self.env.opts.max_queue_messages;
        let admitted = self
            .env
            .backend
            .put_and_send(vec![record], &queue, vec![message], cap)
            .await?;
        if let shoal_store::Admitted::Full { held } = admitted {
            let what = format!("the queue of function `{}`", d.record.name);
            return Err(crate::queues::queue_full(&what, held, cap, 1));
        }
        self.consumers.wake(&queue);
        metrics::counter!("shoal_async_accepted_total", "function" => d.record.name.to_string())
            .increment(1);
        Ok(id)
    }

    /// Queues an invocation as [`Dispatcher::invoke_async`] does, with the
    /// id, token and user given (schedules, triggers, destinations). With
    /// an id, it is idempotent: nothing is written when a record with that
    /// id exists, and the message is deduplicated by the id for 7 days.
    pub(crate) async fn invoke_async_as(
        &self,
        name: &str,
        event: String,
        start: AsyncStart,
    ) -> Result<String> {
        let d = self.functions.resolve(name).await?;
        if let Some(id) = &start.id
            && self.load(id).await?.is_some()
        {
            return Ok(id.clone());
        }
        let mut record = new_record(&d, InvocationMode::Async, event, self.env.now_ms());
        let dedup = start
            .id
            .as_ref()
            .map(|id| (id.clone(), record.created_at_ms + 7 * 24 * 3_600_000));
        if let Some(id) = start.id {
            record.id = id;
        }
        record.token = start.token;
        record.user = start.user;
        self.enqueue(&d, record, dedup).await
    }

    /// An invocation's latest state.
    pub(crate) async fn invocation(&self, id: &str) -> Result<InvocationRecord> {
        self.load(id)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Invocation, id))
    }

    /// The logs of an invocation's latest attempt (empty when it printed
    /// nothing).
    pub(crate) async fn logs(&self, id: &str) -> Result<Vec<u8>> {
        if let Some(logs) = self.live.get(id).and_then(|e| e.logs.clone()) {
            return Ok(logs);
        }
        // The record decides existence; logs may be absent.
        self.invocation(id).await?;
        Ok(self
            .env
            .backend
            .invocations
            .logs(id)
            .await?
            .unwrap_or_default())
    }

    async fn load(&self, id: &str) -> Result<Option<InvocationRecord>> {
        if let Some(entry) = self.live.get(id) {
            return Ok(Some(entry.record.clone()));
        }
        Ok(self.env.backend.invocations.invocation(id).await?)
    }

    // ---- consumers ----

    /// Starts the consumers a function version needs: its asynchronous
    /// invocations' and its subscription's.
    pub(crate) fn start_consumers(self: &Arc<Self>, d: &Deployed) {
        if d.record.max_jobs_in_flight.is_some() {
            self.jobs.ensure_gate(&d.record.name);
        }
        self.ensure_feed(
            Feed::Async {
                function: d.record.name.to_string(),
            },
            d.record.concurrency,
        );
        if let Some(sub) = &d.record.subscribe {
            self.ensure_feed(
                Feed::Subscription {
                    queue: sub.queue.clone(),
                    function: d.record.name.to_string(),
                    batch_size: sub.batch_size,
                },
                sub.concurrency,
            );
        }
    }

    /// Wakes the consumer of a function's asynchronous invocations (after
    /// the function was removed, so it drains them).
    pub(crate) fn wake_async(&self, function: &str) {
        self.consumers.wake(&queue_name(function));
    }

    fn ensure_feed(self: &Arc<Self>, feed: Feed, slots: u32) {
        if let Some(consumer) = self.consumers.ensure(feed, slots) {
            let me = self.clone();
            self.env
                .tasks
                .spawn(async move { me.consume(consumer).await });
        }
    }

    /// True while the consumer should keep running: it is still the
    /// registered consumer of its queue and its function still wants it.
    fn wanted(&self, consumer: &Arc<Consumer>) -> bool {
        self.consumers.is_current(consumer)
            && match &consumer.feed {
                // Async queues drain even after their function is removed
                // (their invocations then fail with load_failed).
                Feed::Async { .. } => true,
                Feed::Subscription {
                    queue, function, ..
                } => self
                    .functions
                    .latest(function)
                    .and_then(|d| d.record.subscribe.clone())
                    .is_some_and(|s| &s.queue == queue),
            }
    }

    /// Leases due messages while slots are free and runs each batch in its
    /// own task.
    async fn consume(self: Arc<Self>, consumer: Arc<Consumer>) {
        let queue = consumer.feed.queue();
        let per = consumer.feed.batch_size();
        let idle_poll = self.env.opts.idle_poll;
        loop {
            if !self.wanted(&consumer) {
                self.consumers.retire_if(&consumer, || true);
                return;
            }
            let permits = tokio::select! {
                _ = self.env.tasks.stopping() => return,
                p = consumer.slots(MAX_PERMITS_PER_LEASE) => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            let mut permits = permits;
            let deployed = self.functions.latest(consumer.feed.function());
            let now = self.env.now_ms();
            let mut want = permits.len() * per;
            // A rate-limited function leases only as many messages as it has
            // tokens for now; the rest wait in the queue until the next token
            // is due. The tokens themselves are taken right before each
            // handler starts (`TokenGate`, on a ready worker), so the limit
            // holds where the calls happen, not where they were leased.
            if let Some(l) = deployed.as_ref().and_then(|d| d.record.limiter.as_deref()) {
                match self.limiters.available(l, want, now).await {
                    Ok(n) => want = n,
                    Err(wait) => {
                        drop(permits);
                        tokio::select! {
                            _ = self.env.tasks.stopping() => return,
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
            // Asynchronous invocations always lease keyed: a job's children
            // under `max_in_flight` carry a key with its own limit.
            let ck = deployed
                .as_ref()
                .and_then(|d| d.record.concurrency_key.as_ref());
            let key_limit = match (ck, &consumer.feed) {
                (Some(ck), _) => Some(consumer.key_limit(ck.per_key)),
                (None, Feed::Async { .. }) => Some(consumer.key_limit(u32::MAX)),
                (None, Feed::Subscription { .. }) => None,
            };
            let visibility_ms = self
                .visibility_ms(&consumer.feed, deployed.as_deref())
                .await;
            // Asynchronous invocations: the records come with the lease
            // where the store can (one step instead of a read per record).
            let queues = &self.env.backend.queues;
            let with_records = match consumer.feed {
                Feed::Async { .. } => {
                    queues.lease_with_records(&queue, now, want, visibility_ms, key_limit.as_ref())
                }
                Feed::Subscription { .. } => None,
            };
            let leased = match with_records {
                Some(leased) => leased.await,
                None => queues
                    .lease_keyed(&queue, now, want, visibility_ms, key_limit.as_ref())
                    .await
                    .map(|l| (l, Vec::new())),
            };
            let (leased, mut records) = match leased {
                Ok(l) => l,
                Err(e) => {
                    warn!(%queue, error = %e, "Leasing failed; retrying.");
                    drop(permits);
                    tokio::select! {
                        _ = self.env.tasks.stopping() => return,
                        _ = tokio::time::sleep(idle_poll) => continue,
                    }
                }
            };
            if leased.deliveries.is_empty() {
                drop(permits);
                if let Feed::Async { function } = &consumer.feed
                    && leased.next_due_ms.is_none()
                    && self
                        .consumers
                        .retire_if(&consumer, || self.functions.latest(function).is_none())
                {
                    // The function was removed and its queue is drained.
                    return;
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
                    _ = self.env.tasks.stopping() => return,
                    _ = consumer.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let mut permits = permits.into_iter();
            records.resize(leased.deliveries.len(), None);
            let mut records = records.into_iter();
            let mut deliveries = leased.deliveries.into_iter().peekable();
            while deliveries.peek().is_some() {
                let batch: Vec<Delivery> = deliveries.by_ref().take(per).collect();
                let known: Vec<Option<InvocationRecord>> =
                    records.by_ref().take(batch.len()).collect();
                let permit = permits.next().expect("leased at most `per` per permit");
                let keys = consumer.hold_keys(&batch);
                let me = self.clone();
                let feed = consumer.feed.clone();
                self.env.tasks.spawn(async move {
                    match feed {
                        Feed::Async { function } => {
                            for (delivery, known) in batch.into_iter().zip(known) {
                                me.run_async(&function, delivery, known, visibility_ms)
                                    .await;
                            }
                        }
                        Feed::Subscription {
                            queue, function, ..
                        } => me.run_subscription(&queue, &function, batch).await,
                    }
                    drop(permit);
                    drop(keys);
                });
            }
        }
    }

    /// How long a lease of the feed's queue lasts.
    async fn visibility_ms(&self, feed: &Feed, d: Option<&Deployed>) -> u64 {
        match feed {
            Feed::Async { .. } => {
                d.map_or(30_000, |d| d.record.timeout_ms)
                    + self.env.opts.lease_margin.as_millis() as u64
            }
            Feed::Subscription { queue, .. } => self.queues.settings(queue).await.visibility_ms,
        }
    }

    /// One delivery of an asynchronous invocation.
    /// `known`: the record as the lease found it, if the store sent it.
    async fn run_async(
        self: &Arc<Self>,
        function: &str,
        delivery: Delivery,
        known: Option<InvocationRecord>,
        visibility_ms: u64,
    ) {
        let queue = queue_name(function);
        let lease = Lease {
            queue: queue.clone(),
            messages: vec![(delivery.id.clone(), delivery.failures + 1)],
            visibility_ms,
        };
        let ack = vec![(delivery.id.clone(), Settlement::Ack)];
        let Ok(msg) = serde_json::from_slice::<Message>(&delivery.body) else {
            warn!(%queue, id = %delivery.id, "Undecodable queue message dropped.");
            drop(self.settle(&queue, ack));
            return;
        };
        // This node's own record is newer than the store's while its write
        // is in flight (the live map); otherwise the lease's copy will do.
        let known = known.filter(|r| r.id == msg.id && self.live.get(&msg.id).is_none());
        let loaded = match known {
            Some(record) => Ok(Some(record)),
            None => self.load(&msg.id).await,
        };
        let mut record = match loaded {
            Ok(Some(r)) => r,
            Ok(None) => {
                warn!(id = %msg.id, "Queued invocation has no record; dropped.");
                drop(self.settle(&queue, ack));
                return;
            }
            Err(e) => {
                warn!(id = %msg.id, error = %e, "Reading an invocation failed; it will be redelivered.");
                return;
            }
        };
        if record.status.is_final() {
            // Finished before a crash took the acknowledgement with it (and
            // maybe the job result: recording it again changes nothing).
            self.persist_outcome_again(record, &queue, ack).await;
            return;
        }
        if let Some(slot) = &record.job
            && self.jobs.cancelled(&slot.job).await
        {
            record.status = InvocationStatus::Cancelled;
            record.finished_at_ms = Some(self.env.now_ms());
            record.next_attempt_at_ms = None;
            self.persist(record, Vec::new(), Some(&queue), ack);
            return;
        }
        let d = match self.functions.version(function, msg.version).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                record.status = InvocationStatus::Failed;
                record.error = Some(invocation::error_record(&Failure::new(
                    FailureKind::LoadFailed,
                    format!(
                        "function {function} version {} was removed before this invocation ran",
                        msg.version
                    ),
                )));
                record.finished_at_ms = Some(self.env.now_ms());
                record.next_attempt_at_ms = None;
                self.persist(record, Vec::new(), Some(&queue), ack);
                return;
            }
            Err(e) => {
                warn!(id = %msg.id, error = %e, "Resolving a function failed; it will be redelivered.");
                return;
            }
        };
        // The attempt is stored as `running` as it starts: a crash (kill -9)
        // mid-run leaves that record behind, so the redelivery counts on
        // from it and the function sees attempt 2, not 1 again. The write is
        // issued, not awaited: it shares the next group commit with the
        // others instead of holding every start back by an fsync (that cost
        // three quarters of the asynchronous throughput). Only a crash within
        // that commit's few milliseconds of the start repeats the count.
        let before = record.clone();
        record.attempts += 1;
        record.status = InvocationStatus::Running;
        record.started_at_ms = Some(self.env.now_ms());
        record.next_attempt_at_ms = None;
        drop(
            self.env
                .backend
                .invocations
                .put_invocations(vec![record.clone()]),
        );
        let policy = RetryPolicy {
            max_attempts: record.max_attempts,
            retry_delay: Duration::from_millis(d.record.retry_delay_ms),
            exhausted: Exhausted::Ack,
        };
        // The record counts attempts (a message released by a platform
        // failure was not an attempt of the invocation).
        let lease = Lease {
            messages: vec![(delivery.id.clone(), record.attempts)],
            ..lease
        };
        self.live.set(record.clone(), None);
        match self.run_leased(&mut record, &d, &lease).await {
            Some(response) => self.finish(record, &d, response, &lease, policy),
            // The platform failed, not the attempt: the record waits as it
            // did (`run_leased` released the message), unless the node is
            // stopping, when the `running` record stays for the redelivery.
            None if !self.env.tasks.is_stopping() => {
                drop(self.env.backend.invocations.put_invocations(vec![before]));
            }
            None => {}
        }
    }

    /// One batch of a user queue for its subscribed function.
    async fn run_subscription(self: &Arc<Self>, queue: &str, function: &str, batch: Vec<Delivery>) {
        let Some(d) = self.functions.latest(function) else {
            // Unsubscribed meanwhile: the leases lapse and another consumer
            // (or a later deploy) gets the messages.
            return;
        };
        let Some(sub) = d.record.subscribe.clone() else {
            return;
        };
        let settings: QueueRecord = self.queues.settings(queue).await;
        let event = if sub.batch_size <= 1 && batch.len() == 1 {
            String::from_utf8_lossy(&batch[0].body).into_owned()
        } else {
            let mut s = String::from("[");
            for (i, m) in batch.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&String::from_utf8_lossy(&m.body));
            }
            s.push(']');
            s
        };
        let now = self.env.now_ms();
        // The attempt is counted in the store as it begins (issued, not
        // awaited, like an asynchronous invocation's `running` record): a
        // node that dies during it redelivers the messages as the next
        // attempt, and a message that keeps killing the node runs out of
        // attempts like one that keeps failing.
        let ids = batch.iter().map(|m| m.id.clone()).collect();
        drop(self.env.backend.queues.started(queue, ids));
        let prior = |m: &Delivery| m.failures.max(m.starts);
        let mut record = new_record(&d, InvocationMode::Queue, event, now);
        record.attempts = batch.iter().map(prior).max().unwrap_or(0) + 1;
        record.max_attempts = settings.max_attempts;
        record.status = InvocationStatus::Running;
        record.started_at_ms = Some(now);
        let lease = Lease {
            queue: queue.to_string(),
            messages: batch.iter().map(|m| (m.id.clone(), prior(m) + 1)).collect(),
            visibility_ms: settings.visibility_ms,
        };
        let policy = RetryPolicy {
            max_attempts: settings.max_attempts,
            retry_delay: Duration::from_millis(settings.retry_delay_ms),
            exhausted: Exhausted::DeadLetter,
        };
        self.run_and_finish(record, &d, lease, policy).await;
    }

    async fn run_and_finish(
        self: &Arc<Self>,
        mut record: InvocationRecord,
        d: &Deployed,
        lease: Lease,
        policy: RetryPolicy,
    ) {
        self.live.set(record.clone(), None);
        let Some(response) = self.run_leased(&mut record, d, &lease).await else {
            return;
        };
        self.finish(record, d, response, &lease, policy);
    }

    /// Runs a leased invocation on the runtime, extending the leases every
    /// half visibility while it runs. When the platform (not the user code)
    /// fails, the record leaves the live map and the messages are released
    /// for another try; when the node is shutting down their leases simply
    /// lapse and they are delivered again after the restart.
    async fn run_leased(
        self: &Arc<Self>,
        record: &mut InvocationRecord,
        d: &Deployed,
        lease: &Lease,
    ) -> Option<Response> {
        let (request, handoff) = self.request(record, d);
        let run = self.env.runtime.invoke(&d.deployment, request);
        tokio::pin!(run);
        let every = Duration::from_millis((lease.visibility_ms / 2).max(50));
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tokio::time::sleep(every) => {
                    let until = self.env.now_ms() + lease.visibility_ms;
                    for (id, _) in &lease.messages {
                        drop(self.env.backend.queues.extend(&lease.queue, id, until));
                    }
                }
            }
        };
        match result {
            Ok(r) => {
                record.handed_to = handoff.lock().unwrap().take();
                Some(cleaned(d, r))
            }
            Err(e) => {
                self.live.remove(&record.id);
                if !self.env.tasks.is_stopping() {
                    warn!(queue = %lease.queue, id = %record.id, error = %e, "Runtime failed; the messages will be redelivered.");
                    let due_ms =
                        self.env.now_ms() + self.env.opts.platform_retry.as_millis() as u64;
                    let retry = lease
                        .messages
                        .iter()
                        .map(|(id, _)| (id.clone(), Settlement::Retry { due_ms }))
                        .collect();
                    let settled = self.settle(&lease.queue, retry);
                    self.env.tasks.spawn(async move {
                        if let Err(e) = settled.await {
                            warn!(error = %e, "Releasing messages after a runtime failure failed.");
                        }
                    });
                }
                None
            }
        }
    }

    /// Records a run's outcome and settles its messages.
    fn finish(
        &self,
        mut record: InvocationRecord,
        d: &Deployed,
        response: Response,
        lease: &Lease,
        policy: RetryPolicy,
    ) {
        let now = self.env.now_ms();
        apply_response(&mut record, d, &response, now);
        metrics(d, record.mode, &response);
        let settlements: Vec<(String, Settlement)> = lease
            .messages
            .iter()
            .map(|(id, attempt)| {
                let s = self.settlement(&response.outcome, *attempt, policy, now);
                (id.clone(), s)
            })
            .collect();
        // An asynchronous invocation spans its attempts: retried, its record
        // waits in the queue again.
        if record.mode == InvocationMode::Async
            && let Some((_, Settlement::Retry { due_ms })) = settlements.first()
        {
            debug!(id = %record.id, attempt = record.attempts, due_ms, "Invocation failed; retrying.");
            record.status = InvocationStatus::Queued;
            record.next_attempt_at_ms = Some(*due_ms);
            record.finished_at_ms = None;
        }
        self.persist(record, response.logs, Some(&lease.queue), settlements);
    }

    /// What becomes of a message after attempt `attempt` ended in `outcome`.
    fn settlement(
        &self,
        outcome: &Outcome,
        attempt: u32,
        policy: RetryPolicy,
        now: u64,
    ) -> Settlement {
        let Outcome::Failed(f) = outcome else {
            return Settlement::Ack;
        };
        if attempt < policy.max_attempts {
            let delay = backoff(policy.retry_delay, attempt, &*self.env.random);
            return Settlement::Retry {
                due_ms: now + delay.as_millis() as u64,
            };
        }
        match policy.exhausted {
            Exhausted::Ack => Settlement::Ack,
            Exhausted::DeadLetter => Settlement::DeadLetter {
                reason: format!("{}: {}", f.kind, f.message),
            },
        }
    }

    /// A record already final when its message came again: record its job
    /// slot and hand it to the outcome sinks again (both idempotent), then
    /// acknowledge.
    async fn persist_outcome_again(
        &self,
        record: InvocationRecord,
        queue: &str,
        ack: Vec<(String, Settlement)>,
    ) {
        let finish = self.jobs.finish_slot(&record);
        let caused = self.outcomes.finished(&record);
        if let Some(finish) = finish {
            finish.await;
        }
        // What the outcome causes is durable before the acknowledgement;
        // if it failed, the message comes back and it is tried again.
        if let Some(Err(e)) = futures_util::future::OptionFuture::from(caused).await {
            warn!(id = %record.id, error = %e, "Recording what an outcome causes failed; the message will come back.");
            return;
        }
        drop(self.settle(queue, ack));
    }

    /// Issues the record (and logs) write, the job slot, what its outcome
    /// causes (`Outcomes`), then the messages' settlements, and keeps the record readable from memory until the
    /// write is durable.
    fn persist(
        &self,
        record: InvocationRecord,
        logs: Vec<u8>,
        queue: Option<&str>,
        settlements: Vec<(String, Settlement)>,
    ) {
        let id = record.id.clone();
        let entry = self.live.set(record.clone(), Some(logs.clone()));
        let backend = &self.env.backend;
        // Copies of the record and logs only while someone follows.
        let attempt = self.feed.followed().then(|| FinishedAttempt {
            record: record.clone(),
            logs: logs.clone(),
        });
        let only_acks = !settlements.is_empty()
            && settlements
                .iter()
                .all(|(_, s)| matches!(s, Settlement::Ack));
        // Writes issued in this order: logs, record, job slot, what the
        // outcome causes, settlements. With none of the middle two between
        // the record and plain acks, the record and the acks are one store
        // step where the store has one.
        let put_logs = (!logs.is_empty()).then(|| backend.invocations.put_logs(&id, logs));
        let followed = self.outcomes.follow(&record);
        let (put, finish, caused, settled) = match queue {
            Some(q) if record.job.is_none() && only_acks && !followed => {
                let ids = settlements.into_iter().map(|(id, _)| id).collect();
                (
                    backend.put_and_ack(vec![record.clone()], q, ids),
                    None,
                    None,
                    None,
                )
            }
            _ => {
                let put = backend.invocations.put_invocations(vec![record.clone()]);
                // The job result before the acknowledgement (see
                // `Jobs::finish_slot`).
                let finish = self.jobs.finish_slot(&record);
                let caused = self.outcomes.finished(&record);
                let caused = match (caused, self.dead_lettered(queue, &record, &settlements)) {
                    (Some(a), Some(b)) => Some(Box::pin(async move {
                        let a = a.await;
                        a.and(b.await)
                    })
                        as BoxFuture<'static, std::result::Result<(), String>>),
                    (a, b) => a.or(b),
                };
                // What the outcome causes must be durable before the
                // acknowledgement (a sink may issue its writes only once
                // it has looked at the store): then the settlements wait
                // for it, and are not issued if it failed, so the message
                // comes back and its sinks are asked again.
                let settle = queue.map(|q| self.settler(q, settlements));
                match (caused, settle) {
                    (Some(caused), Some(settle)) => {
                        let then = Box::pin(async move {
                            caused.await?;
                            settle().await
                        });
                        (put, finish, Some(then as BoxFuture<'static, _>), None)
                    }
                    (caused, settle) => (put, finish, caused, settle.map(|s| s())),
                }
            }
        };
        let live = self.live.clone();
        let feed = self.feed.clone();
        self.env.tasks.spawn(async move {
            let mut ok = put.await.map_err(|e| e.to_string());
            if let Some(f) = put_logs {
                ok = ok.and(f.await.map_err(|e| e.to_string()));
            }
            if let (Ok(()), Some(attempt)) = (&ok, attempt) {
                feed.send(attempt);
            }
            if let Some(f) = finish {
                f.await;
            }
            if let Some(f) = caused {
                ok = ok.and(f.await);
            }
            if let Some(f) = settled {
                ok = ok.and(f.await);
            }
            if let Err(e) = ok {
                warn!(%id, error = %e, "Writing an invocation's outcome failed.");
            }
            live.remove_entry(&entry);
        });
    }

    /// Tells notifications about the messages `settlements` dead-letter
    /// (issued before the dead letters: a crash in between retries the
    /// message, and the event is deduplicated).
    fn dead_lettered(
        &self,
        queue: Option<&str>,
        record: &InvocationRecord,
        settlements: &[(String, Settlement)],
    ) -> Option<BoxFuture<'static, std::result::Result<(), String>>> {
        let letters: Vec<(String, String)> = settlements
            .iter()
            .filter_map(|(id, s)| match s {
                Settlement::DeadLetter { reason } => Some((id.clone(), reason.clone())),
                _ => None,
            })
            .collect();
        if letters.is_empty() {
            return None;
        }
        self.env
            .notifications()?
            .dead_lettered(queue?, record, &letters)
    }

    /// Issues each message's settlement; the future resolves when all are
    /// durable. A message put back for later wakes the queue's consumer
    /// then, so it sleeps until that message is due rather than until its
    /// next idle look.
    fn settle(
        &self,
        queue: &str,
        settlements: Vec<(String, Settlement)>,
    ) -> BoxFuture<'static, std::result::Result<(), String>> {
        self.settler(queue, settlements)()
    }

    /// [`Dispatcher::settle`], to be issued later: when called.
    fn settler(
        &self,
        queue: &str,
        settlements: Vec<(String, Settlement)>,
    ) -> impl FnOnce() -> BoxFuture<'static, std::result::Result<(), String>> + Send + 'static {
        let queues = self.env.backend.queues.clone();
        let consumers = self.consumers.clone();
        let queue = queue.to_string();
        let now = self.env.now_ms();
        move || Self::issue_settlements(&*queues, &consumers, &queue, settlements, now)
    }

    /// Issues each settlement of messages of `queue`; see [`Dispatcher::settle`].
    fn issue_settlements(
        queues: &dyn shoal_store::Queues,
        consumers: &Arc<Consumers>,
        queue: &str,
        settlements: Vec<(String, Settlement)>,
        now: u64,
    ) -> BoxFuture<'static, std::result::Result<(), String>> {
        let mut acks = Vec::new();
        let mut pending = Vec::new();
        let mut retried = false;
        for (id, s) in settlements {
            match s {
                Settlement::Ack => acks.push(id),
                Settlement::Retry { due_ms } => {
                    retried = true;
                    pending.push(queues.nack(queue, &id, due_ms));
                }
                Settlement::DeadLetter { reason } => {
                    pending.push(queues.dead_letter(queue, &id, reason, now))
                }
            }
        }
        if !acks.is_empty() {
            pending.push(queues.ack(queue, acks));
        }
        let wake = retried.then(|| (consumers.clone(), queue.to_string()));
        Box::pin(async move {
            for p in pending {
                p.await.map_err(|e| e.to_string())?;
            }
            if let Some((consumers, queue)) = wake {
                consumers.wake(&queue);
            }
            Ok(())
        })
    }

    /// The runtime request of an invocation, and where its host calls note
    /// the job it handed its slot to.
    fn request(
        self: &Arc<Self>,
        record: &InvocationRecord,
        d: &Deployed,
    ) -> (Request, Arc<Mutex<Option<String>>>) {
        let handoff = Arc::new(Mutex::new(None));
        let host = crate::host::EngineHost {
            dispatcher: self.clone(),
            caller: Caller {
                invocation: record.id.clone(),
                slot: record.job.clone(),
                handoff: handoff.clone(),
                origin: Origin::of(record),
            },
        };
        let request = Request {
            invocation_id: record.id.clone(),
            function: d.record.name.to_string(),
            version: d.record.version,
            attempt: record.attempts,
            event: record.input.clone(),
            host: Some(Arc::new(host) as Arc<dyn shoal_runtime::Host>),
            gate: d.record.limiter.clone().map(|limiter| {
                Arc::new(TokenGate {
                    limiters: self.limiters.clone(),
                    limiter,
                }) as Arc<dyn Gate>
            }),
        };
        (request, handoff)
    }
}

/// A rate limiter's gate: the runtime waits on it right before the handler
/// starts; over the limit the call waits its turn (no error, no busy loop).
struct TokenGate {
    limiters: Arc<Limiters>,
    limiter: String,
}

impl Gate for TokenGate {
    fn wait(&self) -> BoxFuture<'static, ()> {
        let limiters = self.limiters.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move { limiters.acquire(&limiter).await })
    }
}

/// A response with the values of the function's secrets taken out of its
/// result, error and logs, before anything is stored or answered.
/// The runtime's answer made fit to keep and to answer: secrets redacted,
/// and a `Response` envelope that breaks its rules turned into a
/// `bad_result` failure (so no record holds one that cannot be answered).
fn cleaned(d: &Deployed, r: Response) -> Response {
    let mut r = redact(d, r);
    shoal_runtime::response::check_outcome(&mut r.outcome);
    r
}

fn redact(d: &Deployed, mut r: Response) -> Response {
    if d.record.secrets.is_empty() {
        return r;
    }
    let values: Vec<&str> = d
        .record
        .secrets
        .iter()
        .filter_map(|name| d.deployment.env.get(name).map(String::as_str))
        .collect();
    let hide = |text: &mut String| {
        if let Some(clean) = crate::secrets::redact(text, &values) {
            *text = clean;
        }
    };
    match &mut r.outcome {
        Outcome::Succeeded(json) => {
            if let Some(Ok(mut binary)) = BinaryResult::parse(json) {
                // Redacted field by field: the body's bytes, not its base64.
                if redact_binary(&mut binary, &values) {
                    *json = binary.to_json();
                }
            } else if let Some(clean) = crate::secrets::redact(json, &values) {
                // Still JSON (a value inside a string), or said instead.
                *json = if serde_json::from_str::<serde_json::Value>(&clean).is_ok() {
                    clean
                } else {
                    "\"*** (the result held a secret's value and was withheld)\"".into()
                };
            }
        }
        Outcome::Failed(f) => {
            hide(&mut f.message);
            if let Some(t) = &mut f.traceback {
                hide(t);
            }
        }
    }
    if let Some(clean) = crate::secrets::redact(&String::from_utf8_lossy(&r.logs), &values) {
        r.logs = clean.into_bytes();
    }
    r
}

/// Hides secret values in a `Response`'s content type, headers and body;
/// true when something changed.
fn redact_binary(r: &mut BinaryResult, values: &[&str]) -> bool {
    let mut changed = false;
    let mut hide = |text: &mut String| {
        if let Some(clean) = crate::secrets::redact(text, values) {
            *text = clean;
            changed = true;
        }
    };
    hide(&mut r.content_type);
    for value in r.headers.values_mut() {
        hide(value);
    }
    for cookie in &mut r.cookies {
        hide(cookie);
    }
    for v in values.iter().filter(|v| v.len() >= 4) {
        let v = v.as_bytes();
        if r.body.windows(v.len()).any(|w| w == v) {
            let mut out = Vec::with_capacity(r.body.len());
            let mut rest = &r.body[..];
            while let Some(at) = rest.windows(v.len()).position(|w| w == v) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(b"***");
                rest = &rest[at + v.len()..];
            }
            out.extend_from_slice(rest);
            r.body = out;
            changed = true;
        }
    }
    changed
}

fn metrics(d: &Deployed, mode: InvocationMode, r: &Response) {
    let function = d.record.name.to_string();
    let outcome = match &r.outcome {
        Outcome::Succeeded(_) => "succeeded",
        Outcome::Failed(f) => f.kind.as_str(),
    };
    metrics::counter!("shoal_invocations_total", "function" => function.clone(), "mode" => mode.as_str(), "outcome" => outcome).increment(1);
    metrics::histogram!("shoal_invocation_duration_seconds", "function" => function.clone())
        .record(r.duration.as_secs_f64());
    if r.cold_start {
        metrics::counter!("shoal_cold_starts_total", "function" => function).increment(1);
    }
}
