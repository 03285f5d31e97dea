//! Queries spread over the nodes sharing a store (issue 11).
//!
//! When the store keeps partial results (`Docs::shares_queries`: Redis, and
//! the in-memory store of tests), a query's shards run on every node:
//!
//! 1. The origin (the node that received the query) puts one task per
//!    non-empty shard on the internal queue [`QUEUE`]: id `QUERYID:SHARD`,
//!    body a JSON [`Task`] (category, dataset, function version, shard and
//!    its version, `skip_errors`, the function's timeout).
//! 2. Every node runs one consumer of that queue ([`QueryDist::consume`]):
//!    whenever it runs no shard, it leases as many as its runtime maps at
//!    once (`Runtime::parts_at_once`: the query workers) for the function's
//!    timeout plus the lease margin, extends the leases at half of that
//!    while they run (as the dispatcher's `run_leased` does), runs those of
//!    one query together with `Runtime::query_parts` (each shard's own
//!    result; a runtime without it: `Runtime::query` shard by shard), stores
//!    each shard's partial with `Docs::put_query_part` (the first write
//!    wins) and acks it. A node killed mid-shard stops extending: its lease
//!    lapses, another node runs the shard, and the first write winning makes
//!    every shard count once. A platform failure (not user code) releases
//!    the task for another try; the third one stores the failure.
//! 3. The origin polls the store for the partials it still waits for
//!    (every [`POLL`] at most; sooner after a partial arrived), reports
//!    progress as they arrive, emits mapped values in shard order as soon
//!    as every shard before them is in, or combines the reduced partials in
//!    shard order with `Runtime::combine` on one of its own query workers.
//!    A shard that failed in user code (without `skip_errors`) fails the
//!    query as on one node. Then it removes the partials; they expire by
//!    themselves ([`PART_TTL`]) if it dies first.
//!
//! A node leases shards only while it runs none ([`PER_NODE`] batch at a
//! time): the runtime's query workers of a deployment serve one query at a
//! time, so a node holding more would keep shards from idle nodes. The
//! origin's consumer is woken as it queues, so it takes the first batch at
//! once; the others look every [`IDLE_POLL`]: a short query may run wholly
//! on its origin, a long one spreads.
//!
//! **Resident shards.** A partial names the node that ran it; the origin
//! remembers, per data set and shard, which node ran it at which version,
//! and names that node in the next task for the shard (`prefer`). Another
//! node that leases such a task within [`PREFER`] of its queueing leaves it
//! (pushes its lease to the end of that window, no failure counted); then
//! any node takes it. So a query repeated through the same origin finds its
//! shards where they are resident; the runtime then places each on the
//! worker that holds it. What the origin remembers is a hint: a node that
//! evicted the shard, or died, costs the window and nothing else.
//!
//! A query that failed, or whose client went away, has its tasks that no
//! node finished removed from the queue (those running finish, and their
//! partials expire). A query whose origin died still has its tasks run by
//! the nodes; their partials expire.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use shoal_runtime::{
    DocFailure, QueryEvent, QueryOutcome, QueryRequest, QueryResult, QueryShard, ShardPart,
    ShardSource,
};
use shoal_store::{Delivery, NewMessage};
use shoal_types::{Failure, FailureKind};

use crate::categories::StoreSource;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::functions::{Deployed, Functions};

/// The internal queue of query shards.
pub(crate) const QUEUE: &str = "_query";
/// How often the origin looks for the partials it waits for: from
/// `POLL_FIRST`, doubling while none arrives, up to `POLL`.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL: Duration = Duration::from_millis(20);
/// How often an idle consumer looks for tasks (sends on this node wake it
/// at once).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long partials outlive their last write, should the origin die.
const PART_TTL: Duration = Duration::from_secs(15 * 60);
/// Batches of shards a node runs at once.
const PER_NODE: usize = 1;
/// Attempts at a shard that failed on the platform before the failure is
/// stored as its result.
const PLATFORM_TRIES: u32 = 3;
/// Failed documents listed with `skip_errors`.
const MAX_FAILURES: usize = 100;
/// How long after it was queued a shard waits for the node that ran it last
/// (and may hold it resident) before any node takes it. Longer than
/// [`IDLE_POLL`], so an idle preferred node looks within it.
const PREFER: Duration = Duration::from_millis(150);
/// Mapped values of later shards the origin holds before it fetches only
/// the shard whose turn it is.
const AHEAD_BYTES: usize = 16 << 20;
/// Shards whose last node a node remembers (then it starts over).
const MAX_PLACED: usize = 100_000;

/// One shard of a query, as queued.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    query: String,
    category: String,
    dataset: String,
    function: String,
    version: u64,
    shard: u32,
    shard_version: u64,
    docs: u64,
    skip_errors: bool,
    timeout_ms: u64,
    /// When the origin queued it, by its clock.
    #[serde(default)]
    queued_ms: u64,
    /// The node that ran this shard at this version last (as far as the
    /// origin knows): it may hold the shard resident.
    #[serde(default)]
    prefer: Option<String>,
}

/// A failure, as stored in a partial.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FailureJson {
    kind: FailureKind,
    #[serde(default)]
    exception: Option<String>,
    message: String,
    #[serde(default)]
    traceback: Option<String>,
}

impl From<&Failure> for FailureJson {
    fn from(f: &Failure) -> FailureJson {
        FailureJson {
            kind: f.kind,
            exception: f.exception.clone(),
            message: f.message.clone(),
            traceback: f.traceback.clone(),
        }
    }
}

impl From<FailureJson> for Failure {
    fn from(f: FailureJson) -> Failure {
        Failure {
            kind: f.kind,
            exception: f.exception,
            message: f.message,
            traceback: f.traceback,
        }
    }
}

/// How a shard ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PartResult {
    /// The body is the shard's reduced value (JSON); empty: no value.
    Reduced,
    /// The body is the shard's mapped values, NDJSON.
    Mapped,
    Failed {
        doc_id: Option<String>,
        failure: FailureJson,
    },
    /// The platform failed every try.
    Platform { message: String },
}

/// The first line of a stored partial; the body follows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartHead {
    result: PartResult,
    docs: u64,
    errors: u64,
    failures: Vec<(String, FailureJson)>,
    cached: bool,
    /// The node that ran the shard.
    #[serde(default)]
    node: String,
}

fn encode_part(head: &PartHead, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn decode_part(bytes: Vec<u8>) -> Option<(PartHead, Vec<u8>)> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let head: PartHead = serde_json::from_slice(&bytes[..nl]).ok()?;
    Some((head, bytes[nl + 1..].to_vec()))
}

/// The shared-query machinery of one node.
pub(crate) struct QueryDist {
    env: Arc<Env>,
    functions: Arc<Functions>,
    /// Wakes this node's consumer: this node queued tasks.
    wake: Notify,
    /// Names this node in partials and preferences.
    node: String,
    /// Which node ran a shard of a data set last, at which version, as this
    /// node saw in the partials of its queries: `(dataset, shard)` →
    /// `(version, node)`.
    placed: std::sync::Mutex<std::collections::HashMap<(String, u32), (u64, String)>>,
}

/// What the origin needs to run a query spread over the nodes.
pub(crate) struct Spread {
    pub(crate) category: String,
    pub(crate) dataset: String,
    pub(crate) shards: Vec<QueryShard>,
    pub(crate) skip_errors: bool,
    pub(crate) events: mpsc::Sender<QueryEvent>,
}

impl QueryDist {
    /// `None` when the store does not share queries (one node).
    pub(crate) fn new(env: Arc<Env>, functions: Arc<Functions>) -> Option<Arc<QueryDist>> {
        env.backend.docs.shares_queries().then(|| {
            Arc::new(QueryDist {
                env,
                functions,
                wake: Notify::new(),
                node: uuid::Uuid::now_v7().simple().to_string(),
                placed: std::sync::Mutex::default(),
            })
        })
    }

    /// Starts this node's consumer of query shards.
    pub(crate) fn start(self: &Arc<Self>) {
        self.env.tasks.spawn(self.clone().consume());
    }

    // ---- the origin ----

    /// Queues the query's shards, waits for their partials and puts them
    /// together. Fails with `ShuttingDown` when this node stops meanwhile.
    pub(crate) async fn run(&self, d: Arc<Deployed>, spread: Spread) -> Result<QueryOutcome> {
        let query = uuid::Uuid::now_v7().to_string();
        let now = self.env.now_ms();
        let mut messages = Vec::with_capacity(spread.shards.len());
        let preferred = self.preferences(&spread.dataset, &spread.shards);
        for (s, prefer) in spread.shards.iter().zip(preferred) {
            let task = Task {
                query: query.clone(),
                category: spread.category.clone(),
                dataset: spread.dataset.clone(),
                function: d.record.name.to_string(),
                version: d.record.version,
                shard: s.shard,
                shard_version: s.version,
                docs: s.docs,
                skip_errors: spread.skip_errors,
                timeout_ms: d.record.timeout_ms,
                queued_ms: now,
                prefer,
            };
            messages.push(NewMessage {
                id: format!("{query}:{}", s.shard),
                body: serde_json::to_vec(&task)
                    .map_err(|e| platform(format!("encoding a query task: {e}")))?,
                due_ms: now,
                sent_ms: now,
                dedup: None,
                key: None,
            });
        }
        let mut cleanup = Cleanup {
            env: self.env.clone(),
            query: query.clone(),
            tasks: messages.iter().map(|m| m.id.clone()).collect(),
            done: false,
        };
        if !messages.is_empty() {
            self.env.backend.queues.send(QUEUE, messages).await?;
            self.wake.notify_one();
        }
        let result = self.gather(&d, &query, spread).await;
        // Every shard is in (its task acked by the node that ran it), unless
        // the query failed: then the shards nobody has taken are removed.
        let unfinished =
            !matches!(&result, Ok(o) if !matches!(o.result, QueryResult::Failed { .. }));
        if !unfinished {
            cleanup.tasks.clear();
        }
        cleanup.done = true;
        cleanup.run().await;
        result
    }

    /// The node to prefer for each shard: the one that ran it last at its
    /// current version.
    fn preferences(&self, dataset: &str, shards: &[QueryShard]) -> Vec<Option<String>> {
        let placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        shards
            .iter()
            .map(|s| {
                placed
                    .get(&(dataset.to_string(), s.shard))
                    .filter(|(version, _)| *version == s.version)
                    .map(|(_, node)| node.clone())
            })
            .collect()
    }

    /// Remembers which node ran a shard (and so may hold it resident).
    fn note_placed(&self, dataset: &str, shards: &[QueryShard], shard: u32, node: &str) {
        let Some(version) = shards.iter().find(|s| s.shard == shard).map(|s| s.version) else {
            return;
        };
        if node.is_empty() {
            return;
        }
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (dataset.to_string(), shard);
        if placed.len() >= MAX_PLACED && !placed.contains_key(&key) {
            placed.clear();
        }
        placed.insert(key, (version, node.to_string()));
    }

    /// Waits for every shard's partial, in shard order.
    async fn gather(&self, d: &Deployed, query: &str, spread: Spread) -> Result<QueryOutcome> {
        let order: Vec<u32> = spread.shards.iter().map(|s| s.shard).collect();
        let mut parts: BTreeMap<u32, (PartHead, Vec<u8>)> = BTreeMap::new();
        // Mapped values go out in shard order: `emitted` shards are out.
        let mut emitted = 0;
        let mut reduce = None;
        let mut poll = POLL_FIRST;
        // Mapped values of later shards held here, waiting for their turn.
        let mut held = 0usize;
        loop {
            let missing: Vec<u32> = order
                .iter()
                .copied()
                .filter(|s| !parts.contains_key(s))
                .collect();
            if missing.is_empty() {
                break;
            }
            // Holding enough values already: only the shard whose turn it
            // is (the others wait in the store).
            let missing = match order.get(emitted) {
                Some(next)
                    if reduce == Some(false) && held > AHEAD_BYTES && missing.contains(next) =>
                {
                    vec![*next]
                }
                _ => missing,
            };
            let got = self
                .env
                .backend
                .docs
                .query_parts(query, missing.clone())
                .await?;
            let mut arrived = false;
            for (shard, bytes) in missing.into_iter().zip(got) {
                let Some(bytes) = bytes else { continue };
                let (head, body) = decode_part(bytes).ok_or_else(|| {
                    platform(format!("query {query}: shard {shard}'s partial is corrupt"))
                })?;
                let _ = spread.events.try_send(QueryEvent::Progress {
                    shard,
                    docs: head.docs,
                });
                match &head.result {
                    PartResult::Failed { doc_id, failure } => {
                        let failure = Failure::from(failure.clone());
                        let mut out = total(&parts, &order);
                        out.docs += head.docs;
                        out.result = QueryResult::Failed {
                            doc_id: doc_id.clone(),
                            failure,
                        };
                        return Ok(out);
                    }
                    PartResult::Platform { message } => {
                        return Err(platform(format!(
                            "shard {shard} of the query failed on the platform: {message}"
                        )));
                    }
                    PartResult::Reduced => reduce = Some(true),
                    PartResult::Mapped => reduce = Some(false),
                }
                self.note_placed(&spread.dataset, &spread.shards, shard, &head.node);
                held += body.len();
                parts.insert(shard, (head, body));
                arrived = true;
            }
            if reduce == Some(false) {
                while let Some(shard) = order.get(emitted)
                    && let Some((_, body)) = parts.get_mut(shard)
                {
                    let values = std::mem::take(body);
                    held -= values.len();
                    if !values.is_empty()
                        && spread
                            .events
                            .send(QueryEvent::Values(values))
                            .await
                            .is_err()
                    {
                        return Err(platform("the receiver of the query's values went away"));
                    }
                    emitted += 1;
                }
            }
            if arrived {
                poll = POLL_FIRST;
                continue;
            }
            tokio::select! {
                () = self.env.tasks.stopping() => return Err(Error::ShuttingDown),
                () = tokio::time::sleep(poll) => {}
            }
            poll = (poll * 2).min(POLL);
        }
        let mut out = total(&parts, &order);
        if reduce == Some(true) {
            let partials: Vec<String> = order
                .iter()
                .filter_map(|s| parts.get(s))
                .filter(|(_, body)| !body.is_empty())
                .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
                .collect();
            out.result = match partials.len() {
                0 => QueryResult::Reduced(None),
                1 => QueryResult::Reduced(partials.into_iter().next()),
                _ => match self.env.runtime.combine(&d.deployment, partials).await? {
                    Ok(value) => QueryResult::Reduced(Some(value)),
                    Err(failure) => QueryResult::Failed {
                        doc_id: None,
                        failure,
                    },
                },
            };
        } else if order.is_empty() {
            // No shard holds documents: ask the runtime whether the module
            // reduces, as one node does.
            return Ok(self
                .env
                .runtime
                .query(
                    &d.deployment,
                    QueryRequest {
                        query_id: query.to_string(),
                        dataset: spread.dataset,
                        shards: Vec::new(),
                        skip_errors: spread.skip_errors,
                        source: Arc::new(StoreSource::new(
                            self.env.backend.docs.clone(),
                            &spread.category,
                        )),
                        events: spread.events,
                    },
                )
                .await?);
        }
        Ok(out)
    }

    // ---- every node ----

    /// Whenever this node runs no shard, leases as many as its runtime maps
    /// at once and runs them in a task.
    async fn consume(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(PER_NODE));
        let first_lease = self.first_lease_ms();
        loop {
            let permit = tokio::select! {
                () = self.env.tasks.stopping() => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let at_once = self.env.runtime.parts_at_once().max(1);
            let now = self.env.now_ms();
            let leased = self
                .env
                .backend
                .queues
                .lease(QUEUE, now, at_once, first_lease)
                .await;
            let deliveries = match leased {
                Ok(l) if !l.deliveries.is_empty() => l.deliveries,
                Ok(_) => {
                    drop(permit);
                    tokio::select! {
                        () = self.env.tasks.stopping() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "Leasing query shards failed; retrying.");
                    drop(permit);
                    tokio::select! {
                        () = self.env.tasks.stopping() => return,
                        () = tokio::time::sleep(self.env.opts.idle_poll) => {}
                    }
                    continue;
                }
            };
            let me = self.clone();
            self.env.tasks.spawn(async move {
                me.run_batch(deliveries).await;
                drop(permit);
            });
        }
    }

    /// How long a lease of query shards lasts before the function's
    /// timeout is known: the lease margin plus 30 s.
    fn first_lease_ms(&self) -> u64 {
        self.env.opts.lease_margin.as_millis() as u64 + 30_000
    }

    /// Runs leased shards, those of one query together, extending their
    /// leases meanwhile. When the node stops, it drops them: nothing is
    /// stored or acked and their leases lapse.
    async fn run_batch(&self, deliveries: Vec<Delivery>) {
        let queues = &self.env.backend.queues;
        let mut groups: Vec<Vec<(Delivery, Task)>> = Vec::new();
        let now = self.env.now_ms();
        for delivery in deliveries {
            let Ok(task) = serde_json::from_slice::<Task>(&delivery.body) else {
                warn!(id = %delivery.id, "Undecodable query task dropped.");
                drop(queues.ack(QUEUE, vec![delivery.id]));
                continue;
            };
            // Another node ran this shard last and may hold it resident:
            // left to it until `PREFER` after it was queued (at most
            // `PREFER` from now, whatever the clocks say), then to anyone.
            let window = PREFER.as_millis() as u64;
            let until = task.queued_ms.saturating_add(window).min(now + window);
            if task.prefer.as_ref().is_some_and(|n| *n != self.node) && now < until {
                drop(queues.extend(QUEUE, &delivery.id, until));
                continue;
            }
            match groups.iter_mut().find(|g| g[0].1.query == task.query) {
                Some(group) => group.push((delivery, task)),
                None => groups.push(vec![(delivery, task)]),
            }
        }
        let Some(timeout_ms) = groups.iter().flatten().map(|(_, t)| t.timeout_ms).max() else {
            return;
        };
        let visibility_ms = timeout_ms + self.env.opts.lease_margin.as_millis() as u64;
        let leased: Vec<String> = groups.iter().flatten().map(|(d, _)| d.id.clone()).collect();
        let extend = || {
            let until = self.env.now_ms() + visibility_ms;
            for id in &leased {
                drop(queues.extend(QUEUE, id, until));
            }
        };
        // Leased for `first_lease_ms`; now for what the function needs, so
        // that a node dying now gives the shards back after the function's
        // timeout plus the lease margin.
        extend();
        let work = async {
            for group in groups {
                self.run_group(group).await;
            }
        };
        tokio::pin!(work);
        let every = Duration::from_millis((visibility_ms / 2).max(50));
        loop {
            tokio::select! {
                () = &mut work => return,
                () = tokio::time::sleep(every) => extend(),
                () = self.env.tasks.stopping() => return,
            }
        }
    }

    /// Runs shards of one query and stores their partials.
    async fn run_group(&self, group: Vec<(Delivery, Task)>) {
        let task = &group[0].1;
        // By `NAME@VERSION`: a version deployed through another node since
        // this one synced is found by syncing on the miss.
        let reference = format!("{}@{}", task.function, task.version);
        let ran: Vec<Ran> = match self.functions.resolve(&reference).await {
            Ok(d) if self.env.runtime.parts_at_once() > 0 => {
                let tasks: Vec<&Task> = group.iter().map(|(_, t)| t).collect();
                match self.run_parts(&tasks, &d).await {
                    Some(ran) => ran,
                    None => return,
                }
            }
            Ok(d) => {
                let mut ran = Vec::with_capacity(group.len());
                for (_, task) in &group {
                    match self.run_shard(task, &d).await {
                        Some(r) => ran.push(r),
                        None => return,
                    }
                }
                ran
            }
            Err(Error::NotFound { .. }) => {
                let part = failed_part(Failure::new(
                    FailureKind::LoadFailed,
                    format!(
                        "function {} version {} was removed during the query",
                        task.function, task.version
                    ),
                ));
                group.iter().map(|_| Ok(part.clone())).collect()
            }
            Err(Error::ShuttingDown) => return,
            Err(e) => group.iter().map(|_| Err(e.to_string())).collect(),
        };
        self.settle(group, ran).await;
    }

    /// Stores the shards' partials (the writes pipelined) and acks their
    /// tasks in one call; releases a task for another try after a platform
    /// failure.
    async fn settle(&self, group: Vec<(Delivery, Task)>, ran: Vec<Ran>) {
        let queues = &self.env.backend.queues;
        let ttl = PART_TTL.as_millis() as u64;
        let mut puts = Vec::with_capacity(group.len());
        for ((delivery, task), ran) in group.into_iter().zip(ran) {
            let (mut head, body) = match ran {
                Ok(part) => part,
                Err(message) if delivery.failures + 1 < PLATFORM_TRIES => {
                    warn!(id = %delivery.id, error = %message, "A query shard failed on the platform; it will be tried again.");
                    let due = self.env.now_ms() + self.env.opts.platform_retry.as_millis() as u64;
                    drop(queues.nack(QUEUE, &delivery.id, due));
                    continue;
                }
                Err(message) => {
                    let head = PartHead {
                        result: PartResult::Platform { message },
                        docs: 0,
                        errors: 0,
                        failures: Vec::new(),
                        cached: false,
                        node: String::new(),
                    };
                    (head, Vec::new())
                }
            };
            head.node = self.node.clone();
            let part = encode_part(&head, &body);
            let put = self
                .env
                .backend
                .docs
                .put_query_part(&task.query, task.shard, part, ttl);
            puts.push((delivery.id, put));
        }
        let mut acks = Vec::with_capacity(puts.len());
        for (id, put) in puts {
            match put.await {
                Ok(stored) => {
                    // Shards this node ran; `counted` false: another node's
                    // partial for the shard was stored first.
                    let counted = if stored { "true" } else { "false" };
                    metrics::counter!("shoal_query_shards_total", "counted" => counted)
                        .increment(1);
                    acks.push(id);
                }
                Err(e) => {
                    warn!(%id, error = %e, "Storing a query shard's result failed; it will run again.");
                }
            }
        }
        if !acks.is_empty()
            && let Err(e) = queues.ack(QUEUE, acks).await
        {
            warn!(error = %e, "Acknowledging query shards failed; they may run again (each counts once).");
        }
    }

    /// The request for some shards of one query; its progress events are
    /// read and dropped by `drain`.
    fn request(&self, tasks: &[&Task]) -> (QueryRequest, mpsc::Receiver<QueryEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let task = tasks[0];
        let source: Arc<dyn ShardSource> = Arc::new(StoreSource::new(
            self.env.backend.docs.clone(),
            &task.category,
        ));
        let request = QueryRequest {
            query_id: format!("{}:{}", task.query, task.shard),
            dataset: task.dataset.clone(),
            shards: tasks
                .iter()
                .map(|t| QueryShard {
                    shard: t.shard,
                    version: t.shard_version,
                    docs: t.docs,
                })
                .collect(),
            skip_errors: task.skip_errors,
            source,
            events: tx,
        };
        (request, rx)
    }

    /// Runs shards of one query together (`Runtime::query_parts`). `None`:
    /// the runtime is shutting down.
    async fn run_parts(&self, tasks: &[&Task], d: &Deployed) -> Option<Vec<Ran>> {
        let (request, mut rx) = self.request(tasks);
        let run = self.env.runtime.query_parts(&d.deployment, request);
        let drain = async { while rx.recv().await.is_some() {} };
        let (result, ()) = futures_util::future::join(run, drain).await;
        let parts = match result {
            Ok(parts) => parts,
            Err(shoal_runtime::Error::ShuttingDown) => return None,
            Err(e) => return Some(tasks.iter().map(|_| Err(e.to_string())).collect()),
        };
        let mut by_shard: BTreeMap<u32, ShardPart> =
            parts.into_iter().map(|p| (p.shard, p)).collect();
        Some(
            tasks
                .iter()
                .map(|t| match by_shard.remove(&t.shard) {
                    Some(p) => Ok(part_of(
                        p.result,
                        p.values,
                        p.docs,
                        p.errors,
                        &p.failures,
                        p.resident,
                    )),
                    None => Err(format!("the runtime gave no result for shard {}", t.shard)),
                })
                .collect(),
        )
    }

    /// Runs one shard (`Runtime::query`). `None`: the runtime is shutting
    /// down.
    async fn run_shard(&self, task: &Task, d: &Deployed) -> Option<Ran> {
        let (request, mut rx) = self.request(&[task]);
        let run = self.env.runtime.query(&d.deployment, request);
        let collect = async {
            let mut values = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let QueryEvent::Values(v) = ev {
                    values.extend_from_slice(&v);
                }
            }
            values
        };
        let (result, values) = futures_util::future::join(run, collect).await;
        match result {
            Ok(o) => Some(Ok(part_of(
                o.result,
                values,
                o.docs,
                o.errors,
                &o.failures,
                o.cached_shards > 0,
            ))),
            Err(shoal_runtime::Error::ShuttingDown) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// A shard's partial (head and body), or the platform's failure.
type Ran = std::result::Result<(PartHead, Vec<u8>), String>;

fn part_of(
    result: QueryResult,
    values: Vec<u8>,
    docs: u64,
    errors: u64,
    failures: &[DocFailure],
    cached: bool,
) -> (PartHead, Vec<u8>) {
    let (result, body) = match result {
        QueryResult::Reduced(value) => (
            PartResult::Reduced,
            value.map(String::into_bytes).unwrap_or_default(),
        ),
        QueryResult::Mapped => (PartResult::Mapped, values),
        QueryResult::Failed { doc_id, failure } => (
            PartResult::Failed {
                doc_id,
                failure: FailureJson::from(&failure),
            },
            Vec::new(),
        ),
    };
    let head = PartHead {
        result,
        docs,
        errors,
        failures: failures
            .iter()
            .map(|f| (f.id.clone(), FailureJson::from(&f.failure)))
            .collect(),
        cached,
        node: String::new(),
    };
    (head, body)
}

/// What a query leaves behind: its partials, and after a failure (or when
/// the origin stops waiting: dropped, this runs in a task) its tasks no
/// node has finished (removed with `ack`, leased or not; a node still
/// running one stores a partial that expires).
struct Cleanup {
    env: Arc<Env>,
    query: String,
    tasks: Vec<String>,
    done: bool,
}

impl Cleanup {
    fn run(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let acked = (!self.tasks.is_empty())
            .then(|| self.env.backend.queues.ack(QUEUE, self.tasks.clone()));
        let dropped = self.env.backend.docs.drop_query_parts(&self.query);
        let query = self.query.clone();
        async move {
            if let Some(acked) = acked
                && let Err(e) = acked.await
            {
                warn!(%query, error = %e, "Removing a query's shards failed; the nodes run them.");
            }
            if let Err(e) = dropped.await {
                warn!(%query, error = %e, "Removing a query's partial results failed; they expire.");
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.done || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let cleanup = self.run();
        self.env.tasks.spawn(cleanup);
    }
}

/// The platform failing, as the engine's error.
fn platform(message: impl Into<String>) -> Error {
    Error::unavailable(std::io::Error::other(message.into()))
}

fn failed_part(failure: Failure) -> (PartHead, Vec<u8>) {
    let head = PartHead {
        result: PartResult::Failed {
            doc_id: None,
            failure: FailureJson::from(&failure),
        },
        docs: 0,
        errors: 0,
        failures: Vec::new(),
        cached: false,
        node: String::new(),
    };
    (head, Vec::new())
}

/// The counts of the partials in, in shard order.
fn total(parts: &BTreeMap<u32, (PartHead, Vec<u8>)>, order: &[u32]) -> QueryOutcome {
    let mut out = QueryOutcome {
        result: QueryResult::Mapped,
        docs: 0,
        errors: 0,
        failures: Vec::new(),
        cached_shards: 0,
    };
    for (head, _) in order.iter().filter_map(|s| parts.get(s)) {
        out.docs += head.docs;
        out.errors += head.errors;
        out.cached_shards += u32::from(head.cached);
        for (id, failure) in &head.failures {
            if out.failures.len() < MAX_FAILURES {
                out.failures.push(DocFailure {
                    id: id.clone(),
                    failure: failure.clone().into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let head = PartHead {
            result: PartResult::Failed {
                doc_id: Some("d1".into()),
                failure: FailureJson::from(&Failure::new(FailureKind::Raised, "boom\nline")),
            },
            docs: 3,
            errors: 1,
            failures: vec![(
                "d0".into(),
                FailureJson::from(&Failure::new(FailureKind::Raised, "x")),
            )],
            cached: true,
            node: "n1".into(),
        };
        let bytes = encode_part(&head, b"{\"a\":1}\n2\n");
        let (back, body) = decode_part(bytes).unwrap();
        assert_eq!(body, b"{\"a\":1}\n2\n");
        assert_eq!(back.docs, 3);
        assert!(back.cached);
        assert!(matches!(back.result, PartResult::Failed { .. }));
    }
}
