//! `max_jobs_in_flight`: at most J jobs of a function have their children
//! out at once, on every node together; later jobs wait in creation order,
//! so each request finishes as early as it can instead of all of them
//! slowing down together.
//!
//! A job of such a function is written (atomically, as every job) with its
//! children's records and, instead of their messages, ONE gate message on
//! the internal queue `_jobs.<function>`, holding the children's messages.
//! The gate message's concurrency key carries its own limit
//! (`"\0J\0<function>"`, see `shoal_store::own_key_limit`), so a keyed
//! lease hands out at most J gates at once across nodes, oldest first.
//! The node that leases a gate sends the children's messages to the
//! function's queue (each deduplicated by its invocation id, so a gate
//! leased again after a crash sends none twice), then holds the gate's
//! lease — extending it — until the job has finished, and acks it. A node
//! killed while holding a gate lets its lease expire: another node (or the
//! same one, restarted) leases the gate and goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::warn;

use shoal_store::{Delivery, KeyLimit, NewMessage};

use crate::jobs::Jobs;

/// How long a gate's lease lasts; it is extended at half of it.
const GATE_LEASE: Duration = Duration::from_secs(30);
/// How often a held gate looks at its job, and an idle gate loop at its queue.
const POLL: Duration = Duration::from_millis(200);
/// How long a child's message id keeps its deduplication key.
const DEDUP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The gate queue of a function.
pub(crate) fn gate_queue(function: &str) -> String {
    format!("_jobs.{function}")
}

/// The gates this node runs, by function.
#[derive(Default)]
pub(crate) struct Gates {
    running: Mutex<HashMap<String, Arc<Gate>>>,
}

/// One function's gate loop: its wake-up, and the gates it holds by key.
#[derive(Default)]
pub(crate) struct Gate {
    wake: Notify,
    held: Mutex<HashMap<String, u32>>,
}

/// What a gate message holds: the job and its children's messages.
#[derive(Serialize, Deserialize)]
struct GateBody {
    job: String,
    queue: String,
    messages: Vec<HeldMessage>,
}

#[derive(Serialize, Deserialize)]
struct HeldMessage {
    id: String,
    body: String,
    key: Option<String>,
}

/// The gate message of a new job.
pub(crate) fn gate_message(
    job: &str,
    function: &str,
    limit: u32,
    queue: &str,
    messages: Vec<NewMessage>,
    now_ms: u64,
) -> NewMessage {
    let body = GateBody {
        job: job.to_string(),
        queue: queue.to_string(),
        messages: messages
            .into_iter()
            .map(|m| HeldMessage {
                id: m.id,
                body: String::from_utf8_lossy(&m.body).into_owned(),
                key: m.key,
            })
            .collect(),
    };
    NewMessage {
        id: job.to_string(),
        body: serde_json::to_vec(&body).unwrap_or_default(),
        due_ms: 0,
        sent_ms: now_ms,
        dedup: None,
        key: Some(format!("\0{limit}\0{function}")),
    }
}

impl Jobs {
    /// Runs the gate loop of `function` on this node, once.
    pub(crate) fn ensure_gate(self: &Arc<Self>, function: &str) {
        let gate = {
            let mut running = self.gates.running.lock().unwrap();
            if running.contains_key(function) {
                return;
            }
            let gate = Arc::new(Gate::default());
            running.insert(function.to_string(), gate.clone());
            gate
        };
        let me = self.clone();
        let function = function.to_string();
        self.env
            .tasks
            .spawn(async move { me.gate_loop(&function, gate).await });
    }

    /// Wakes the gate loop of `function` (a new job, a finished one).
    pub(crate) fn wake_gate(&self, function: &str) {
        if let Some(g) = self.gates.running.lock().unwrap().get(function) {
            g.wake.notify_one();
        }
    }

    async fn gate_loop(self: Arc<Self>, function: &str, gate: Arc<Gate>) {
        let queue = gate_queue(function);
        loop {
            // A gate leased while the node stops would release its job's
            // children and then let its lease lapse: the next job could
            // then start on another node while this one still runs.
            if self.env.tasks.is_stopping() {
                return;
            }
            if self.functions.latest(function).is_none() {
                // Removed: its jobs' children would have nothing to run.
                self.gates.running.lock().unwrap().remove(function);
                return;
            }
            let running = gate.held.lock().unwrap().clone();
            // Every gate's key carries its own limit; per_key is moot.
            let limit = KeyLimit {
                per_key: u32::MAX,
                running,
            };
            let now = self.env.now_ms();
            let leased = self
                .env
                .backend
                .queues
                .lease_keyed(&queue, now, 64, GATE_LEASE.as_millis() as u64, Some(&limit))
                .await;
            match leased {
                // Stopping meanwhile: the gates just leased lapse untouched.
                Ok(_) if self.env.tasks.is_stopping() => return,
                Ok(l) => {
                    for d in l.deliveries {
                        if let Some(key) = &d.key {
                            *gate.held.lock().unwrap().entry(key.clone()).or_default() += 1;
                        }
                        let me = self.clone();
                        let gate = gate.clone();
                        let queue = queue.clone();
                        self.env
                            .tasks
                            .spawn(async move { me.hold(&queue, d, gate).await });
                    }
                }
                Err(e) => warn!(%queue, error = %e, "Leasing job gates failed; trying again."),
            }
            tokio::select! {
                _ = gate.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.env.tasks.stopping() => return,
            }
        }
    }

    /// Releases a gate's children, then holds its lease until the job has
    /// finished.
    async fn hold(self: Arc<Self>, queue: &str, d: Delivery, gate: Arc<Gate>) {
        let done = self.release_and_wait(queue, &d).await;
        if done && let Err(e) = self.env.backend.queues.ack(queue, vec![d.id.clone()]).await {
            warn!(%queue, job = %d.id, error = %e, "Acknowledging a finished job's gate failed; its lease will run out and the next holder finds the job finished.");
        }
        if let Some(key) = &d.key {
            let mut held = gate.held.lock().unwrap();
            if let Some(n) = held.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(key);
                }
            }
        }
        gate.wake.notify_one();
    }

    /// True once the job has finished (or the gate is unreadable); false
    /// when the node is stopping (the gate's lease then runs out).
    async fn release_and_wait(&self, queue: &str, d: &Delivery) -> bool {
        let body: GateBody = match serde_json::from_slice(&d.body) {
            Ok(b) => b,
            Err(e) => {
                warn!(%queue, id = %d.id, error = %e, "A job gate message is unreadable; dropping it.");
                return true;
            }
        };
        let now = self.env.now_ms();
        let until = now.saturating_add(DEDUP_FOR.as_millis() as u64);
        let messages: Vec<NewMessage> = body
            .messages
            .into_iter()
            .map(|m| NewMessage {
                dedup: Some((m.id.clone(), until)),
                id: m.id,
                body: m.body.into_bytes(),
                due_ms: 0,
                sent_ms: now,
                key: m.key,
            })
            .collect();
        loop {
            match self
                .env
                .backend
                .queues
                .send(&body.queue, messages.clone())
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    warn!(job = %body.job, error = %e, "Releasing a job's children failed; trying again.");
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = self.env.tasks.stopping() => return false,
                    }
                }
            }
        }
        self.consumers.wake(&body.queue);
        let mut lease_until = d.lease_until_ms;
        loop {
            match self.env.backend.jobs.job(&body.job).await {
                Ok(Some((_, p))) if p.finished_at_ms.is_some() => return true,
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(e) => {
                    warn!(job = %body.job, error = %e, "Reading a gated job failed; trying again.")
                }
            }
            let now = self.env.now_ms();
            if now + (GATE_LEASE.as_millis() as u64) / 2 >= lease_until {
                lease_until = now + GATE_LEASE.as_millis() as u64;
                if let Err(e) = self
                    .env
                    .backend
                    .queues
                    .extend(queue, &d.id, lease_until)
                    .await
                {
                    warn!(job = %body.job, error = %e, "Extending a job gate's lease failed.");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.env.tasks.stopping() => return false,
            }
        }
    }
}
