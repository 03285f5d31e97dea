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

use shoal_store::{
    DeadLetter, Delivery, NewMessage, QueueCounters, QueueDepth, QueueRecord, QueueSample,
};
use shoal_types::{Invalid, Outcome, validate_name};

use crate::dispatch::{
    self, Feed, apply_response, backoff, metrics, new_record, persist, set_live,
};
use crate::engine::Inner;
use crate::error::{Error, Result};
use crate::functions::Deployed;

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

/// A message to send.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// The body, as JSON text.
    pub body: String,
    pub delay: Duration,
    pub dedup_id: Option<String>,
}

pub const MAX_ATTEMPTS: u32 = 101;
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
pub const MAX_BATCH: usize = 10_000;

const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid(Invalid {
        field,
        reason: reason.into(),
    })
}

fn check_name(name: &str) -> Result<()> {
    Ok(validate_name("queue name", name)?)
}

/// Creates a queue or changes its settings (at run time, no restart).
pub(crate) async fn put(inner: &Arc<Inner>, name: &str, s: QueueSettings) -> Result<QueueRecord> {
    check_name(name)?;
    let existing = inner.backend.catalog.queue(name).await?;
    let base = existing
        .clone()
        .unwrap_or_else(|| default_record(inner, name));
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
        return Err(invalid(
            "max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    if !(100..=12 * 3600 * 1000).contains(&record.visibility_ms) {
        return Err(invalid(
            "visibility_timeout",
            "must be between 100ms and 12h",
        ));
    }
    if record.retry_delay_ms > 3600 * 1000 {
        return Err(invalid("retry_delay", "must be at most 1h"));
    }
    if record.dedup_window_ms > 24 * 3600 * 1000 {
        return Err(invalid("dedup_window", "must be at most 24h"));
    }
    inner.backend.catalog.put_queue(record.clone()).await?;
    Ok(record)
}

fn default_record(inner: &Inner, name: &str) -> QueueRecord {
    QueueRecord {
        name: name.to_string(),
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        visibility_ms: DEFAULT_VISIBILITY.as_millis() as u64,
        retry_delay_ms: DEFAULT_RETRY_DELAY.as_millis() as u64,
        dedup_window_ms: DEFAULT_DEDUP_WINDOW.as_millis() as u64,
        created_at_ms: inner.clock.now_ms(),
    }
}

/// The queue's record, creating it with defaults derived from a subscribing
/// function when it does not exist yet.
pub(crate) async fn ensure_for_subscriber(inner: &Arc<Inner>, d: &Deployed) -> Result<()> {
    let Some(sub) = &d.record.subscribe else {
        return Ok(());
    };
    if inner.backend.catalog.queue(&sub.queue).await?.is_none() {
        let mut record = default_record(inner, &sub.queue);
        record.max_attempts = d.record.retries + 1;
        record.retry_delay_ms = d.record.retry_delay_ms;
        inner.backend.catalog.put_queue(record).await?;
    }
    Ok(())
}

/// Starts the consumer that runs `d` for its subscribed queue's messages.
pub(crate) fn subscribe(inner: &Arc<Inner>, d: &Deployed) {
    if let Some(sub) = &d.record.subscribe {
        dispatch::ensure_feed(
            inner,
            Feed::Subscription {
                queue: sub.queue.clone(),
                function: d.record.name.clone(),
                batch_size: sub.batch_size,
            },
            sub.concurrency,
        );
    }
}

pub(crate) async fn info(inner: &Inner, name: &str) -> Result<QueueInfo> {
    check_name(name)?;
    let record = inner
        .backend
        .catalog
        .queue(name)
        .await?
        .ok_or_else(|| Error::not_found("queue", name))?;
    info_of(inner, record).await
}

async fn info_of(inner: &Inner, record: QueueRecord) -> Result<QueueInfo> {
    let depth = inner.backend.queues.depth(&record.name).await?;
    let counters = inner.backend.queues.counters(&record.name).await?;
    let subscriber = inner
        .consumers
        .lock()
        .unwrap()
        .get(&record.name)
        .and_then(|c| match &c.feed {
            Feed::Subscription { function, .. } => Some(function.clone()),
            Feed::Async { .. } => None,
        });
    Ok(QueueInfo {
        record,
        depth,
        counters,
        subscriber,
    })
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<QueueInfo>> {
    let mut out = Vec::new();
    for record in inner.backend.catalog.queues().await? {
        out.push(info_of(inner, record).await?);
    }
    Ok(out)
}

/// Deletes a queue: its settings, waiting messages and dead letters.
pub(crate) async fn delete(inner: &Inner, name: &str) -> Result<()> {
    check_name(name)?;
    if !inner.backend.catalog.remove_queue(name).await? {
        return Err(Error::not_found("queue", name));
    }
    inner.backend.queues.purge(name).await?;
    inner.backend.queues.purge_dead(name, None).await?;
    Ok(())
}

/// Sends messages; returns their ids in order. Durable when it returns.
pub(crate) async fn send(
    inner: &Arc<Inner>,
    name: &str,
    messages: Vec<OutMessage>,
) -> Result<Vec<String>> {
    let record = info_record(inner, name).await?;
    if messages.is_empty() {
        return Err(invalid("messages", "send at least one message"));
    }
    if messages.len() > MAX_BATCH {
        return Err(invalid(
            "messages",
            format!("at most {MAX_BATCH} messages per request"),
        ));
    }
    let now = inner.clock.now_ms();
    let mut ids = Vec::with_capacity(messages.len());
    let mut out = Vec::with_capacity(messages.len());
    // The subscriber's concurrency key, taken from each body now.
    let key_field = dispatch::subscriber_key(inner, name);
    for m in messages {
        if m.delay > MAX_DELAY {
            return Err(invalid("delay", "must be at most 15m"));
        }
        if let Some(d) = &m.dedup_id
            && (d.is_empty() || d.len() > 128)
        {
            return Err(invalid("dedup_id", "must be 1 to 128 bytes"));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let key = key_field
            .as_ref()
            .and_then(|ck| dispatch::key_of(ck, &m.body));
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
    inner.backend.queues.send(name, out).await?;
    dispatch::wake(inner, name);
    Ok(ids)
}

async fn info_record(inner: &Inner, name: &str) -> Result<QueueRecord> {
    check_name(name)?;
    inner
        .backend
        .catalog
        .queue(name)
        .await?
        .ok_or_else(|| Error::not_found("queue", name))
}

pub(crate) async fn dead_letters(
    inner: &Inner,
    name: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    info_record(inner, name).await?;
    Ok(inner
        .backend
        .queues
        .dead_letters(name, after, limit.clamp(1, 1000))
        .await?)
}

pub(crate) async fn redrive(
    inner: &Arc<Inner>,
    name: &str,
    ids: Option<Vec<String>>,
) -> Result<u64> {
    info_record(inner, name).await?;
    let n = inner
        .backend
        .queues
        .redrive(name, ids, inner.clock.now_ms())
        .await?;
    dispatch::wake(inner, name);
    Ok(n)
}

pub(crate) async fn purge_dead(inner: &Inner, name: &str, ids: Option<Vec<String>>) -> Result<u64> {
    info_record(inner, name).await?;
    Ok(inner.backend.queues.purge_dead(name, ids).await?)
}

pub(crate) async fn purge(inner: &Inner, name: &str) -> Result<u64> {
    info_record(inner, name).await?;
    Ok(inner.backend.queues.purge(name).await?)
}

pub(crate) async fn samples(inner: &Inner, name: &str, since_ms: u64) -> Result<Vec<QueueSample>> {
    info_record(inner, name).await?;
    Ok(inner.backend.queues.samples(name, since_ms).await?)
}

/// Samples every user queue's depth and counters every `interval`, keeping a
/// day of history.
pub(crate) async fn sample_loop(inner: Arc<Inner>, interval: Duration) {
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = inner.clock.now_ms();
        let Ok(queues) = list(&inner).await else {
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
        if let Err(e) = inner
            .backend
            .queues
            .record_samples(samples, keep_after)
            .await
        {
            warn!(error = %e, "Recording queue samples failed.");
        }
    }
}

/// Runs the subscribed function for one batch of messages and settles them:
/// ack on success; on failure nack with backoff, or dead-letter those out of
/// attempts.
pub(crate) async fn run_batch(
    inner: &Arc<Inner>,
    queue: &str,
    function: &str,
    batch: Vec<Delivery>,
) {
    let Some(d) = inner.registry.latest(function) else {
        // Unsubscribed meanwhile: the leases lapse and another consumer (or
        // a later deploy) gets the messages.
        return;
    };
    let Some(sub) = d.record.subscribe.clone() else {
        return;
    };
    let settings = match inner.backend.catalog.queue(queue).await {
        Ok(Some(q)) => q,
        Ok(None) => default_record(inner, queue),
        Err(e) => {
            warn!(%queue, error = %e, "Reading queue settings failed; the batch will be redelivered.");
            return;
        }
    };
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
    let now = inner.clock.now_ms();
    let mut record = new_record(&d, "queue", event, now);
    let attempt = batch.iter().map(|m| m.failures).max().unwrap_or(0) + 1;
    record.attempts = attempt;
    record.max_attempts = settings.max_attempts;
    record.status = shoal_types::InvocationStatus::Running.as_str().into();
    record.started_at_ms = Some(now);
    set_live(inner, record.clone(), None);

    // Keep the messages invisible to others while the handler runs.
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    let extender = {
        let inner = inner.clone();
        let queue = queue.to_string();
        let ids = ids.clone();
        let every = Duration::from_millis((settings.visibility_ms / 2).max(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let until = inner.clock.now_ms() + settings.visibility_ms;
                for id in &ids {
                    drop(inner.backend.queues.extend(&queue, id, until));
                }
            }
        })
    };
    let response = dispatch::run_leased(inner, queue, &ids, &mut record, &d).await;
    extender.abort();
    let Some(response) = response else {
        return;
    };
    apply_response(inner, &mut record, &d, &response);
    metrics(&d, "queue", &response);
    match &response.outcome {
        Outcome::Succeeded(_) => {
            persist(inner, record, response.logs, None);
            drop(inner.backend.queues.ack(queue, ids));
        }
        Outcome::Failed(f) => {
            let reason = format!("{}: {}", f.kind.as_str(), f.message);
            let now = inner.clock.now_ms();
            for m in &batch {
                let attempts = m.failures + 1;
                if attempts >= settings.max_attempts {
                    drop(
                        inner
                            .backend
                            .queues
                            .dead_letter(queue, &m.id, reason.clone(), now),
                    );
                } else {
                    let delay = backoff(Duration::from_millis(settings.retry_delay_ms), attempts);
                    drop(
                        inner
                            .backend
                            .queues
                            .nack(queue, &m.id, now + delay.as_millis() as u64),
                    );
                }
            }
            persist(inner, record, response.logs, None);
        }
    }
}
