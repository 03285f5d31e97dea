//! User queues: settings, send (batch, delay, deduplication), dead letters,
//! statistics, and the subscription consumer that runs a function for their
//! messages.
//!
//! Delivery is at-least-once: a message is acked only after its invocation
//! succeeded; a failure is retried with exponential backoff and jitter until
//! the queue's `max_attempts`, then the message moves to the dead-letter
//! list. While a handler runs, the lease of its messages is extended, so a
//! visibility timeout shorter than the function's timeout does not deliver
//! the message twice at once.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use shoal_store::{DeadLetter, NewMessage, QueueCounters, QueueDepth, QueueRecord, QueueSample};
use shoal_types::validate_name;

use crate::consumers::Consumers;
use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Removal, Result};
use crate::functions::{Deployed, Functions};
use crate::invocation::key_of;

/// Settings a client may give when creating or changing a queue.
#[derive(Debug, Clone, Default)]
pub struct QueueSettings {
    pub max_attempts: Option<u32>,
    pub visibility: Option<Duration>,
    pub retry_delay: Option<Duration>,
    pub dedup_window: Option<Duration>,
}

/// A queue with its current state.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub record: QueueRecord,
    pub depth: QueueDepth,
    pub counters: QueueCounters,
    /// The function subscribed to it, if any.
    pub subscriber: Option<String>,
}

/// What became of one message sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message's id; for a duplicate, the id of the message that took
    /// its deduplication id (empty when that message predates the store
    /// keeping such ids).
    pub id: String,
    /// Dropped: its deduplication id was taken within the queue's window.
    pub duplicate: bool,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// The body, as JSON text.
    pub body: String,
    pub delay: Duration,
    pub dedup_id: Option<String>,
}

/// One point of a queue's history, with the rates since the point before.
#[derive(Debug, Clone, Copy)]
pub struct QueueHistoryPoint {
    pub sample: QueueSample,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    /// Failed attempts (retried or dead-lettered) per second.
    pub failed_per_s: f64,
}

pub const MAX_ATTEMPTS: u32 = 101;
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
pub const MAX_BATCH: usize = 10_000;
/// Most dead letters (and job results) in one page.
pub const MAX_PAGE: usize = 1_000;

/// A page's `limit` must be 1 to `max`: a larger one is refused, saying
/// the maximum, rather than cut down without a word.
pub(crate) fn check_page_limit(limit: usize, max: usize) -> Result<()> {
    if !(1..=max).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("must be between 1 and {max} (it is {limit}); page with the cursor for more"),
        ));
    }
    Ok(())
}

const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

fn check_name(name: &str) -> Result<()> {
    Ok(validate_name("queue name", name)?)
}

/// Refuses `adding` more messages to `queue` (described to the caller as
/// `what`) when it would then hold more than the node's cap
/// (`Options::max_queue_messages`) waiting or in flight. The count is read
/// before the write, so concurrent senders can pass the cap by at most a
/// batch each.
pub(crate) async fn check_room(env: &Env, queue: &str, what: &str, adding: usize) -> Result<()> {
    let cap = env.opts.max_queue_messages;
    let depth = env.backend.queues.depth(queue).await?;
    let held = depth.waiting + depth.in_flight;
    if held.saturating_add(adding as u64) > cap {
        return Err(queue_full(what, held, cap, adding));
    }
    Ok(())
}

/// The refusal of a send that does not fit a queue's cap.
pub(crate) fn queue_full(what: &str, held: u64, cap: u64, adding: usize) -> Error {
    Error::QueueFull(format!(
        "{what} holds {held} messages waiting or in flight and this node keeps at most {cap} per queue \
         (--max-queue-messages); {adding} more do not fit: send again once it has drained"
    ))
}

/// User queues: their settings, messages, dead letters and history.
pub(crate) struct Queues {
    env: Arc<Env>,
    functions: Arc<Functions>,
    consumers: Arc<Consumers>,
    /// Settings read before, by queue (the defaults for a queue without a
    /// record): a consumer asks for them on every lease and run. Changed
    /// with every write through this node, emptied when another node
    /// sharing the store changed the catalog.
    settings: std::sync::Mutex<std::collections::HashMap<String, QueueRecord>>,
}

impl Queues {
    pub(crate) fn new(
        env: Arc<Env>,
        functions: Arc<Functions>,
        consumers: Arc<Consumers>,
    ) -> Queues {
        Queues {
            env,
            functions,
            consumers,
            settings: Default::default(),
        }
    }

    /// Forgets every queue's settings read before (the catalog changed
    /// through another node).
    pub(crate) fn forget_settings(&self) {
        self.settings.lock().unwrap().clear();
    }

    fn remember(&self, record: &QueueRecord) {
        self.settings
            .lock()
            .unwrap()
            .insert(record.name.clone(), record.clone());
    }

    /// Creates a queue or changes its settings (at run time, no restart).
    pub(crate) async fn put(&self, name: &str, s: QueueSettings) -> Result<QueueInfo> {
        check_name(name)?;
        let existing = self.env.backend.catalog.queue(name).await?;
        let base = existing.unwrap_or_else(|| self.default_record(name));
        let record = QueueRecord {
            name: name.to_string(),
            max_attempts: s.max_attempts.unwrap_or(base.max_attempts),
            visibility_ms: s
                .visibility
                .map_or(base.visibility_ms, |d| d.as_millis() as u64),
            retry_delay_ms: s
                .retry_delay
                .map_or(base.retry_delay_ms, |d| d.as_millis() as u64),
            dedup_window_ms: s
                .dedup_window
                .map_or(base.dedup_window_ms, |d| d.as_millis() as u64),
            created_at_ms: base.created_at_ms,
        };
        if !(1..=MAX_ATTEMPTS).contains(&record.max_attempts) {
            return Err(Error::invalid(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if !(100..=12 * 3600 * 1000).contains(&record.visibility_ms) {
            return Err(Error::invalid(
                "visibility_timeout",
                "must be between 100ms and 12h",
            ));
        }
        if record.retry_delay_ms > 3600 * 1000 {
            return Err(Error::invalid("retry_delay", "must be at most 1h"));
        }
        let min_delay = crate::manifest::MIN_RETRY_DELAY.as_millis() as u64;
        if record.max_attempts > 1 && record.retry_delay_ms < min_delay {
            return Err(Error::invalid(
                "retry_delay",
                format!(
                    "must be at least 100ms when max_attempts is above 1 (it is {}ms)",
                    record.retry_delay_ms
                ),
            ));
        }
        if record.dedup_window_ms > 24 * 3600 * 1000 {
            return Err(Error::invalid("dedup_window", "must be at most 24h"));
        }
        self.env.backend.catalog.put_queue(record.clone()).await?;
        self.remember(&record);
        self.info_of(record).await
    }

    fn default_record(&self, name: &str) -> QueueRecord {
        QueueRecord {
            name: name.to_string(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            visibility_ms: DEFAULT_VISIBILITY.as_millis() as u64,
            retry_delay_ms: DEFAULT_RETRY_DELAY.as_millis() as u64,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW.as_millis() as u64,
            created_at_ms: self.env.now_ms(),
        }
    }

    /// The queue's settings; the defaults when it has no record (or the
    /// store cannot be read: a consumer keeps going with the defaults).
    pub(crate) async fn settings(&self, name: &str) -> QueueRecord {
        if let Some(known) = self.settings.lock().unwrap().get(name) {
            return known.clone();
        }
        match self.env.backend.catalog.queue(name).await {
            Ok(found) => {
                let record = found.unwrap_or_else(|| self.default_record(name));
                self.remember(&record);
                record
            }
            Err(e) => {
                warn!(queue = %name, error = %e, "Reading queue settings failed; using the defaults.");
                self.default_record(name)
            }
        }
    }

    /// Creates the queue a function subscribes to, with defaults from the
    /// function, unless it exists.
    pub(crate) async fn ensure_for_subscriber(&self, d: &Deployed) -> Result<()> {
        let Some(sub) = &d.record.subscribe else {
            return Ok(());
        };
        if self.env.backend.catalog.queue(&sub.queue).await?.is_none() {
            let mut record = self.default_record(&sub.queue);
            record.max_attempts = d.record.retries + 1;
            record.retry_delay_ms = d.record.retry_delay_ms;
            self.env.backend.catalog.put_queue(record.clone()).await?;
            self.remember(&record);
        }
        Ok(())
    }

    pub(crate) async fn info(&self, name: &str) -> Result<QueueInfo> {
        let record = self.record(name).await?;
        self.info_of(record).await
    }

    async fn info_of(&self, record: QueueRecord) -> Result<QueueInfo> {
        let depth = self.env.backend.queues.depth(&record.name).await?;
        let counters = self.env.backend.queues.counters(&record.name).await?;
        let subscriber = self
            .functions
            .subscriber_of(&record.name)
            .map(|d| d.record.name.to_string());
        Ok(QueueInfo {
            record,
            depth,
            counters,
            subscriber,
        })
    }

    pub(crate) async fn list(&self) -> Result<Vec<QueueInfo>> {
        let mut out = Vec::new();
        for record in self.env.backend.catalog.queues().await? {
            out.push(self.info_of(record).await?);
        }
        Ok(out)
    }

    /// Deletes a queue: its settings, waiting messages and dead letters.
    /// Unless forced, only a queue with no messages, no dead letters and no
    /// subscribed function.
    pub(crate) async fn delete(&self, name: &str, removal: Removal) -> Result<()> {
        check_name(name)?;
        if removal == Removal::IfEmpty {
            let info = self.info(name).await?;
            let d = &info.depth;
            let mut held = Vec::new();
            if d.waiting + d.in_flight > 0 {
                held.push(count(d.waiting + d.in_flight, "message", "messages"));
            }
            if d.dead > 0 {
                held.push(count(d.dead, "dead letter", "dead letters"));
            }
            if let Some(f) = &info.subscriber {
                held.push(format!("function `{f}` subscribed to it"));
            }
            if !held.is_empty() {
                return Err(Error::conflict(
                    Conflict::ForceRequired,
                    format!(
                        "queue `{name}` has {}; delete it with ?force=true (CLI: --force) to lose them",
                        held.join(" and ")
                    ),
                ));
            }
        }
        let removed = self.env.backend.catalog.remove_queue(name).await;
        self.settings.lock().unwrap().remove(name);
        if !removed? {
            return Err(Error::not_found(Entity::Queue, name));
        }
        // Found empty: nothing to purge, and a message sent while the queue
        // was being removed must not be purged unseen (it waits until the
        // queue is created again).
        if removal == Removal::Force {
            self.env.backend.queues.purge(name).await?;
            self.env.backend.queues.purge_dead(name, None).await?;
        }
        Ok(())
    }

    /// Sends messages; returns their ids in order (a duplicate's is the id
    /// of the message it duplicates). Durable when it returns.
    pub(crate) async fn send(&self, name: &str, messages: Vec<OutMessage>) -> Result<Vec<String>> {
        let sent = self.send_messages(name, messages).await?;
        Ok(sent.into_iter().map(|s| s.id).collect())
    }

    /// Sends messages; says of each whether it was stored or dropped as a
    /// duplicate (its deduplication id was taken within the window).
    pub(crate) async fn send_messages(
        &self,
        name: &str,
        messages: Vec<OutMessage>,
    ) -> Result<Vec<Sent>> {
        let record = self.record(name).await?;
        if messages.is_empty() {
            return Err(Error::invalid("messages", "send at least one message"));
        }
        if messages.len() > MAX_BATCH {
            return Err(Error::invalid(
                "messages",
                format!("at most {MAX_BATCH} messages per request"),
            ));
        }
        check_room(&self.env, name, &format!("queue `{name}`"), messages.len()).await?;
        let now = self.env.now_ms();
        let mut ids = Vec::with_capacity(messages.len());
        let mut out = Vec::with_capacity(messages.len());
        // The subscriber's concurrency key, taken from each body now.
        let key_field = self
            .functions
            .subscriber_of(name)
            .and_then(|d| d.record.concurrency_key.clone());
        for m in messages {
            if m.delay > MAX_DELAY {
                return Err(Error::invalid("delay", "must be at most 15m"));
            }
            if let Some(d) = &m.dedup_id
                && (d.is_empty() || d.len() > 128)
            {
                return Err(Error::invalid("dedup_id", "must be 1 to 128 bytes"));
            }
            let id = uuid::Uuid::now_v7().to_string();
            let key = key_field.as_ref().and_then(|ck| key_of(ck, &m.body));
            out.push(NewMessage {
                id: id.clone(),
                body: m.body.into_bytes(),
                due_ms: now + m.delay.as_millis() as u64,
                sent_ms: now,
                dedup: m.dedup_id.map(|k| (k, now + record.dedup_window_ms)),
                key,
            });
            ids.push(id);
        }
        let duplicates = self.env.backend.queues.send(name, out).await?;
        self.consumers.wake(name);
        Ok(ids
            .into_iter()
            .zip(duplicates)
            .map(|(id, duplicate_of)| match duplicate_of {
                None => Sent {
                    id,
                    duplicate: false,
                },
                Some(first) => Sent {
                    id: first,
                    duplicate: true,
                },
            })
            .collect())
    }

    async fn record(&self, name: &str) -> Result<QueueRecord> {
        check_name(name)?;
        self.env
            .backend
            .catalog
            .queue(name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Queue, name))
    }

    pub(crate) async fn dead_letters(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        check_page_limit(limit, MAX_PAGE)?;
        self.record(name).await?;
        Ok(self
            .env
            .backend
            .queues
            .dead_letters(name, after, limit)
            .await?)
    }

    pub(crate) async fn redrive(&self, name: &str, ids: Option<Vec<String>>) -> Result<u64> {
        self.record(name).await?;
        // Redriven messages wait in the queue again: they must fit its cap.
        let adding = match &ids {
            Some(ids) => ids.len(),
            None => self.env.backend.queues.depth(name).await?.dead as usize,
        };
        check_room(&self.env, name, &format!("queue `{name}`"), adding).await?;
        let n = self
            .env
            .backend
            .queues
            .redrive(name, ids, self.env.now_ms())
            .await?;
        self.consumers.wake(name);
        Ok(n)
    }

    pub(crate) async fn purge_dead(&self, name: &str, ids: Option<Vec<String>>) -> Result<u64> {
        self.record(name).await?;
        Ok(self.env.backend.queues.purge_dead(name, ids).await?)
    }

    /// Deletes the waiting messages; unless forced, only when there are none
    /// (so a purge is never a surprise).
    pub(crate) async fn purge(&self, name: &str, removal: Removal) -> Result<u64> {
        self.record(name).await?;
        if removal == Removal::IfEmpty {
            let waiting = self.env.backend.queues.depth(name).await?.waiting;
            if waiting > 0 {
                return Err(Error::conflict(
                    Conflict::ForceRequired,
                    format!(
                        "queue `{name}` has {} waiting; purge it with ?force=true (CLI: --force) to delete them",
                        count(waiting, "message", "messages")
                    ),
                ));
            }
        }
        Ok(self.env.backend.queues.purge(name).await?)
    }

    /// The queue's samples since `since_ms`, each with the rates since the
    /// sample before it (zero for the first).
    pub(crate) async fn history(
        &self,
        name: &str,
        since_ms: u64,
    ) -> Result<Vec<QueueHistoryPoint>> {
        self.record(name).await?;
        let samples = self.env.backend.queues.samples(name, since_ms).await?;
        let mut out = Vec::with_capacity(samples.len());
        let mut prev: Option<&QueueSample> = None;
        for s in &samples {
            let (sent, acked, failed) = match prev {
                Some(p) => {
                    let dt = s.at_ms.saturating_sub(p.at_ms);
                    let failed = |c: &QueueCounters| c.nacked + c.dead_lettered;
                    (
                        rate(s.counters.sent, p.counters.sent, dt),
                        rate(s.counters.acked, p.counters.acked, dt),
                        rate(failed(&s.counters), failed(&p.counters), dt),
                    )
                }
                None => (0.0, 0.0, 0.0),
            };
            out.push(QueueHistoryPoint {
                sample: *s,
                sent_per_s: sent,
                acked_per_s: acked,
                failed_per_s: failed,
            });
            prev = Some(s);
        }
        Ok(out)
    }

    /// Samples every user queue's depth and counters every `interval`,
    /// keeping a day of history, until shutdown.
    pub(crate) async fn sample_loop(self: Arc<Self>) {
        let interval = self.env.opts.sample_interval;
        loop {
            tokio::select! {
                _ = self.env.tasks.stopping() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = self.env.now_ms();
            let Ok(queues) = self.list().await else {
                continue;
            };
            let samples: Vec<(String, QueueSample)> = queues
                .into_iter()
                .map(|q| {
                    let sample = QueueSample {
                        at_ms: now,
                        depth: q.depth,
                        counters: q.counters,
                    };
                    (q.record.name, sample)
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            let keep_after = now.saturating_sub(24 * 3600 * 1000);
            if let Err(e) = self
                .env
                .backend
                .queues
                .record_samples(samples, keep_after)
                .await
            {
                warn!(error = %e, "Recording queue samples failed.");
            }
        }
    }
}

/// Events per second between two counter readings `dt` ms apart.
fn rate(now: u64, then: u64, dt: u64) -> f64 {
    if dt == 0 {
        0.0
    } else {
        now.saturating_sub(then) as f64 * 1000.0 / dt as f64
    }
}

/// `1 message`, `3 messages`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
