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
//!    it leases a task for the function's timeout plus the lease margin,
//!    extends the lease at half of that while the shard runs (as the
//!    dispatcher's `run_leased` does), runs `Runtime::query` over that one
//!    shard, stores the shard's partial result with
//!    `Docs::put_query_part` (the first write wins) and acks. A node killed
//!    mid-shard stops extending: its lease lapses, another node runs the
//!    shard, and the first write winning makes every shard count once. A
//!    platform failure (not user code) releases the task for another try;
//!    the third one stores the failure.
//! 3. The origin polls the store for the partials it still waits for
//!    (every [`POLL`]), reports progress as they arrive, emits mapped values
//!    in shard order as soon as every shard before them is in, or combines
//!    the reduced partials in shard order with `Runtime::combine` on one of
//!    its own query workers. A shard that failed in user code (without
//!    `skip_errors`) fails the query as on one node. Then it removes the
//!    partials; they expire by themselves ([`PART_TTL`]) if it dies first.
//!
//! Each node runs [`PER_NODE`] shard at a time: the runtime's query
//! workers of a deployment serve one query at a time, so a node leasing
//! more would hold shards other nodes could run. Shards are not steered
//! towards nodes that hold them resident; a repeated query finds a shard
//! resident only where it happens to run again.
//!
//! A query abandoned by its origin (the client went away, the node died)
//! still has its tasks run by the nodes; their partials expire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use shoal_runtime::{
    DocFailure, QueryEvent, QueryOutcome, QueryRequest, QueryResult, QueryShard, ShardSource,
};
use shoal_store::{Delivery, NewMessage};
use shoal_types::{Failure, FailureKind};

use crate::categories::StoreSource;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::functions::{Deployed, Functions};

/// The internal queue of query shards.
pub(crate) const QUEUE: &str = "_query";
/// How often the origin looks for the partials it waits for.
const POLL: Duration = Duration::from_millis(15);
/// How often an idle consumer looks for tasks (sends on this node wake it
/// at once).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long partials outlive their last write, should the origin die.
const PART_TTL: Duration = Duration::from_secs(15 * 60);
/// Shards a node runs at once.
const PER_NODE: usize = 1;
/// Attempts at a shard that failed on the platform before the failure is
/// stored as its result.
const PLATFORM_TRIES: u32 = 3;
/// Failed documents listed with `skip_errors`.
const MAX_FAILURES: usize = 100;

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
        for s in &spread.shards {
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
        if !messages.is_empty() {
            self.env.backend.queues.send(QUEUE, messages).await?;
            self.wake.notify_one();
        }
        let result = self.gather(&d, &query, spread).await;
        if let Err(e) = self.env.backend.docs.drop_query_parts(&query).await {
            warn!(%query, error = %e, "Removing a query's partial results failed; they expire.");
        }
        result
    }

    /// Waits for every shard's partial, in shard order.
    async fn gather(&self, d: &Deployed, query: &str, spread: Spread) -> Result<QueryOutcome> {
        let order: Vec<u32> = spread.shards.iter().map(|s| s.shard).collect();
        let mut parts: BTreeMap<u32, (PartHead, Vec<u8>)> = BTreeMap::new();
        // Mapped values go out in shard order: `emitted` shards are out.
        let mut emitted = 0;
        let mut reduce = None;
        loop {
            let missing: Vec<u32> = order
                .iter()
                .copied()
                .filter(|s| !parts.contains_key(s))
                .collect();
            if missing.is_empty() {
                break;
            }
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
                parts.insert(shard, (head, body));
                arrived = true;
            }
            if reduce == Some(false) {
                while let Some(shard) = order.get(emitted)
                    && let Some((_, body)) = parts.get_mut(shard)
                {
                    let values = std::mem::take(body);
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
                continue;
            }
            tokio::select! {
                () = self.env.tasks.stopping() => return Err(Error::ShuttingDown),
                () = tokio::time::sleep(POLL) => {}
            }
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

    /// Leases query shards while a slot is free and runs each in a task.
    async fn consume(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(PER_NODE));
        let first_lease = self.env.opts.lease_margin.as_millis() as u64 + 30_000;
        loop {
            let permit = tokio::select! {
                () = self.env.tasks.stopping() => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let now = self.env.now_ms();
            let leased = self
                .env
                .backend
                .queues
                .lease(QUEUE, now, 1, first_lease)
                .await;
            let delivery = match leased {
                Ok(mut l) if !l.deliveries.is_empty() => l.deliveries.swap_remove(0),
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
                me.run_task(delivery).await;
                drop(permit);
            });
        }
    }

    /// Runs one leased shard and stores its partial.
    async fn run_task(&self, delivery: Delivery) {
        let queues = &self.env.backend.queues;
        let Ok(task) = serde_json::from_slice::<Task>(&delivery.body) else {
            warn!(id = %delivery.id, "Undecodable query task dropped.");
            drop(queues.ack(QUEUE, vec![delivery.id]));
            return;
        };
        let visibility_ms = task.timeout_ms + self.env.opts.lease_margin.as_millis() as u64;
        drop(queues.extend(QUEUE, &delivery.id, self.env.now_ms() + visibility_ms));
        // By `NAME@VERSION`: a version deployed through another node since
        // this one synced is found by syncing on the miss.
        let reference = format!("{}@{}", task.function, task.version);
        let ran = match self.functions.resolve(&reference).await {
            Ok(d) => self.run_shard(&task, &d, &delivery.id, visibility_ms).await,
            Err(Error::NotFound { .. }) => Some(Ok(failed_part(Failure::new(
                FailureKind::LoadFailed,
                format!(
                    "function {} version {} was removed during the query",
                    task.function, task.version
                ),
            )))),
            Err(Error::ShuttingDown) => None,
            Err(e) => Some(Err(e.to_string())),
        };
        let part = match ran {
            // Shutting down: the lease lapses and another node runs it.
            None => return,
            Some(Ok(part)) => part,
            Some(Err(message)) if delivery.failures + 1 < PLATFORM_TRIES => {
                warn!(id = %delivery.id, error = %message, "A query shard failed on the platform; it will be tried again.");
                let due = self.env.now_ms() + self.env.opts.platform_retry.as_millis() as u64;
                if let Err(e) = queues.nack(QUEUE, &delivery.id, due).await {
                    warn!(id = %delivery.id, error = %e, "Releasing a query shard failed; its lease lapses.");
                }
                return;
            }
            Some(Err(message)) => {
                let head = PartHead {
                    result: PartResult::Platform { message },
                    docs: 0,
                    errors: 0,
                    failures: Vec::new(),
                    cached: false,
                };
                encode_part(&head, b"")
            }
        };
        let ttl = PART_TTL.as_millis() as u64;
        match self
            .env
            .backend
            .docs
            .put_query_part(&task.query, task.shard, part, ttl)
            .await
        {
            Ok(_) => {
                if let Err(e) = queues.ack(QUEUE, vec![delivery.id.clone()]).await {
                    warn!(id = %delivery.id, error = %e, "Acknowledging a query shard failed; it may run again (it counts once).");
                }
            }
            Err(e) => {
                warn!(id = %delivery.id, error = %e, "Storing a query shard's result failed; it will run again.");
            }
        }
    }

    /// Runs the shard on this node's runtime, extending the lease meanwhile.
    /// `None`: the node is stopping (nothing is stored, the lease lapses);
    /// `Some(Err)`: a platform failure.
    async fn run_shard(
        &self,
        task: &Task,
        d: &Deployed,
        id: &str,
        visibility_ms: u64,
    ) -> Option<std::result::Result<Vec<u8>, String>> {
        let (tx, mut rx) = mpsc::channel(64);
        let source: Arc<dyn ShardSource> = Arc::new(StoreSource::new(
            self.env.backend.docs.clone(),
            &task.category,
        ));
        let request = QueryRequest {
            query_id: format!("{}:{}", task.query, task.shard),
            dataset: task.dataset.clone(),
            shards: vec![QueryShard {
                shard: task.shard,
                version: task.shard_version,
                docs: task.docs,
            }],
            skip_errors: task.skip_errors,
            source,
            events: tx,
        };
        let run = self.env.runtime.query(&d.deployment, request);
        tokio::pin!(run);
        let every = Duration::from_millis((visibility_ms / 2).max(50));
        let mut values = Vec::new();
        let mut open = true;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                ev = rx.recv(), if open => match ev {
                    Some(QueryEvent::Values(v)) => values.extend_from_slice(&v),
                    Some(QueryEvent::Progress { .. }) => {}
                    None => open = false,
                },
                () = tokio::time::sleep(every) => {
                    let until = self.env.now_ms() + visibility_ms;
                    drop(self.env.backend.queues.extend(QUEUE, id, until));
                }
                () = self.env.tasks.stopping() => return None,
            }
        };
        while let Ok(ev) = rx.try_recv() {
            if let QueryEvent::Values(v) = ev {
                values.extend_from_slice(&v);
            }
        }
        let outcome = match result {
            Ok(o) => o,
            Err(shoal_runtime::Error::ShuttingDown) => return None,
            Err(e) => return Some(Err(e.to_string())),
        };
        let (result, body) = match outcome.result {
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
            docs: outcome.docs,
            errors: outcome.errors,
            failures: outcome
                .failures
                .iter()
                .map(|f| (f.id.clone(), FailureJson::from(&f.failure)))
                .collect(),
            cached: outcome.cached_shards > 0,
        };
        Some(Ok(encode_part(&head, &body)))
    }
}

/// The platform failing, as the engine's error.
fn platform(message: impl Into<String>) -> Error {
    Error::unavailable(std::io::Error::other(message.into()))
}

fn failed_part(failure: Failure) -> Vec<u8> {
    let head = PartHead {
        result: PartResult::Failed {
            doc_id: None,
            failure: FailureJson::from(&failure),
        },
        docs: 0,
        errors: 0,
        failures: Vec::new(),
        cached: false,
    };
    encode_part(&head, b"")
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
        };
        let bytes = encode_part(&head, b"{\"a\":1}\n2\n");
        let (back, body) = decode_part(bytes).unwrap();
        assert_eq!(body, b"{\"a\":1}\n2\n");
        assert_eq!(back.docs, 3);
        assert!(back.cached);
        assert!(matches!(back.result, PartResult::Failed { .. }));
    }
}
