//! Notifications: webhooks told about events (an invocation failed or
//! succeeded, a message was dead-lettered, a job finished, a budget was
//! reached), signed, retried with backoff and logged.
//!
//! - **Settings** live in the key-value store under the node's own keys
//!   (`\0notify\0cfg\0<name>`): durable, shared by every node on a shared
//!   store, and no change to any store port. Each node keeps them in memory
//!   (read again every 2 s, and at once after its own change), so deciding
//!   whether an outcome notifies anyone costs no store read. The signing
//!   secret is sealed like the secrets (`secrets.rs`: ChaCha20-Poly1305
//!   under the secrets key) and never shown again after it was set.
//! - **Events** become one message per matching notification on the
//!   internal queue `_notify` (its id derived from the event's identity and
//!   the notification's name, with a deduplication key from the same, so an
//!   outcome handed over twice notifies once). The same events go to the
//!   channel `_events` while someone follows it (a feed: best effort).
//! - **Deliveries**: a deliverer task on every node leases `_notify`
//!   (so at most one node works on one delivery at a time), POSTs the event
//!   through the [`Webhook`] port with `Shoal-Signature`, `Shoal-Event` and
//!   `Shoal-Delivery`, and acks on a 2xx; otherwise it releases it for
//!   `1 s × 2^(attempt-1)` (equal jitter, at most 10 min) until
//!   [`MAX_ATTEMPTS`], then gives up (`failed`). A node killed mid-delivery
//!   leaves the message leased; it is delivered again once the lease lapses
//!   (after a restart, or by another node).
//! - **The log**: one KV entry per delivery (`\0notify\0log\0<inverted
//!   time><id>`, newest first), rewritten after every attempt, expiring
//!   [`LOG_TTL`] after its last write.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};
use tracing::warn;

use shoal_store::{Delivery, InvocationRecord, KvCondition, NewMessage};
use shoal_types::{FunctionName, InvocationStatus};

use crate::channels::Channels;
use crate::env::Env;
use crate::error::{Entity, Error, Result};
use crate::outcomes::OutcomeSink;
use crate::secrets::Secrets;

/// The internal queue of pending deliveries.
pub(crate) const QUEUE: &str = "_notify";
/// The channel the events are published on (every type on one channel).
pub const EVENTS_CHANNEL: &str = "_events";
/// The event types a notification can ask for.
pub const EVENT_TYPES: [&str; 5] = [
    "invocation.failed",
    "invocation.succeeded",
    "dead_letter",
    "job.finished",
    "budget.reached",
];
/// Attempts of one delivery before it is `failed`.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first retry's delay; doubled each time.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// How long one attempt may take (connect, send, answer).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a delivery's log entry is kept after its last attempt; also
/// how long an event's identity is remembered against duplicates.
pub const LOG_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most notifications.
pub const MAX_NOTIFICATIONS: usize = 100;
/// Deliveries one node attempts at once.
const IN_FLIGHT: usize = 16;
/// How long a leased delivery is invisible to other nodes.
const VISIBILITY: Duration = Duration::from_secs(30);
/// How often the settings are read again (changes made by other nodes).
const REFRESH: Duration = Duration::from_secs(2);
/// The most log entries one listing looks at.
const MAX_LOG_SCAN: usize = 5_000;
const MAX_URL: usize = 2_048;
const MAX_PATTERNS: usize = 100;
const MAX_SECRET: usize = 1_024;

const CFG_PREFIX: &str = "\0notify\0cfg\0";
const LOG_PREFIX: &str = "\0notify\0log\0";

/// Sends one webhook request: the port the binary implements over HTTP
/// (reqwest) and tests implement with a recording fake.
pub trait Webhook: Send + Sync + 'static {
    /// POSTs `body` to `url` with `headers`, giving up after `timeout`.
    /// `Ok(status)` when an answer came (any status), `Err(why)` when none
    /// did (refused, timed out, not a valid URL).
    fn send(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, std::result::Result<u16, String>>;
}

/// The `Shoal-Signature` header of `body` sent at `t_ms`:
/// `t=<t_ms>,v1=<hex HMAC-SHA256(secret, "<t_ms>.<body>")>`.
pub fn signature(secret: &str, t_ms: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t_ms},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An event to notify about (`Notifications::emit`).
#[derive(Debug, Clone)]
pub struct Event {
    /// One of [`EVENT_TYPES`].
    pub kind: String,
    /// What the event is about (the body's `data`).
    pub data: serde_json::Value,
    /// The function it is about, if any: notifications with function
    /// patterns get only events about a function they match (events about
    /// no function reach every notification that asks for the type).
    pub function: Option<FunctionName>,
    /// The event's identity: an event emitted twice with the same key
    /// notifies once (within [`LOG_TTL`]). `None`: every emit is new.
    pub key: Option<String>,
}

impl Event {
    pub fn new(kind: &str, data: serde_json::Value) -> Event {
        Event {
            kind: kind.to_string(),
            data,
            function: None,
            key: None,
        }
    }

    pub fn about(mut self, function: FunctionName) -> Event {
        self.function = Some(function);
        self
    }

    pub fn keyed(mut self, key: impl Into<String>) -> Event {
        self.key = Some(key.into());
        self
    }
}

/// What a `PUT` of a notification asks.
#[derive(Debug, Clone, Default)]
pub struct NotificationSpec {
    pub url: String,
    /// `None` or empty: every type.
    pub events: Option<Vec<String>>,
    /// Exact names or prefixes ending in `*`; empty: every function.
    pub functions: Vec<String>,
    /// `None`: generated (and answered once).
    pub secret: Option<String>,
}

/// A notification as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub functions: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first or next attempt.
    Pending,
    Delivered,
    /// Out of attempts (or its notification was removed).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One delivery in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLog {
    /// The delivery's id (`Shoal-Delivery`).
    pub id: String,
    /// The notification's name.
    pub name: String,
    /// The event type.
    pub event: String,
    /// The event's id (the body's `id`).
    pub event_id: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
    /// When a pending delivery is tried next.
    pub next_attempt_at_ms: Option<u64>,
}

/// A page of the delivery log, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryLog>,
    /// Pass back to continue; `None` at the end.
    pub cursor: Option<String>,
}

/// The settings as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    url: String,
    events: Vec<String>,
    functions: Vec<String>,
    /// The signing secret, sealed (`Secrets::seal_value`), base64.
    secret: String,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl Stored {
    fn view(&self) -> Notification {
        Notification {
            name: self.name.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            functions: self.functions.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    fn wants(&self, kind: &str, function: Option<&str>) -> bool {
        self.events.iter().any(|e| e == kind)
            && match function {
                None => true,
                Some(f) => {
                    self.functions.is_empty() || self.functions.iter().any(|p| matches(p, f))
                }
            }
    }
}

/// `pattern`: an exact name, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A queued delivery (the `_notify` message's body).
#[derive(Serialize, Deserialize)]
struct Queued {
    delivery: String,
    name: String,
    event_type: String,
    event_id: String,
    created_at_ms: u64,
    /// The body to POST, exactly.
    event: Box<RawValue>,
}

/// The notifications service.
pub struct Notifications {
    env: Arc<Env>,
    secrets: Arc<Secrets>,
    channels: Arc<Channels>,
    webhook: Option<Arc<dyn Webhook>>,
    /// The settings, as last read.
    settings: RwLock<Arc<Vec<Stored>>>,
    /// Wakes the deliverer (a new delivery, or one just settled).
    wake: Arc<Notify>,
    /// This node's settings changes, one at a time.
    writes: tokio::sync::Mutex<()>,
}

impl Notifications {
    pub(crate) fn new(
        env: Arc<Env>,
        secrets: Arc<Secrets>,
        channels: Arc<Channels>,
        webhook: Option<Arc<dyn Webhook>>,
    ) -> Arc<Notifications> {
        Arc::new(Notifications {
            env,
            secrets,
            channels,
            webhook,
            settings: RwLock::new(Arc::new(Vec::new())),
            wake: Arc::new(Notify::new()),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads the settings and starts the refresh loop and, with a webhook
    /// port, the deliverer.
    pub(crate) async fn start(self: &Arc<Self>) -> Result<()> {
        self.reload().await?;
        let me = Arc::downgrade(self);
        let tasks = self.env.tasks.clone();
        self.env.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = tasks.stopping() => return,
                    () = tokio::time::sleep(REFRESH) => {}
                }
                let Some(me) = me.upgrade() else { return };
                if let Err(e) = me.reload().await {
                    warn!(error = %e, "Reading the notifications failed; retrying.");
                }
            }
        });
        if self.webhook.is_some() {
            self.env.tasks.spawn(self.clone().deliver_loop());
        }
        Ok(())
    }

    async fn reload(&self) -> Result<()> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .env
                .backend
                .kv
                .kv_list(CFG_PREFIX, after.as_deref(), 1_000, self.env.now_ms())
                .await?;
            for e in page.entries {
                match serde_json::from_slice::<Stored>(&e.value) {
                    Ok(s) => all.push(s),
                    Err(err) => {
                        warn!(key = ?e.key, error = %err, "An unreadable notification was skipped.")
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        *self.settings.write().unwrap() = Arc::new(all);
        Ok(())
    }

    fn current(&self) -> Arc<Vec<Stored>> {
        self.settings.read().unwrap().clone()
    }

    // ---- settings ----

    /// Creates or replaces a notification; answers it and, when the
    /// secret was generated, the secret (shown this once).
    pub async fn put(
        &self,
        name: &str,
        spec: NotificationSpec,
    ) -> Result<(Notification, Option<String>)> {
        shoal_types::validate_name("notification name", name)?;
        if name == "deliveries" {
            return Err(Error::invalid(
                "name",
                "\"deliveries\" is taken by /v1/notifications/deliveries",
            ));
        }
        check_url(&spec.url)?;
        let events = match spec.events {
            None => EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            Some(e) if e.is_empty() => EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            Some(e) => {
                for t in &e {
                    if !EVENT_TYPES.contains(&t.as_str()) {
                        return Err(Error::invalid(
                            "events",
                            format!(
                                "unknown event type {t:?}; one of {}",
                                EVENT_TYPES.join(", ")
                            ),
                        ));
                    }
                }
                let mut e = e;
                e.sort();
                e.dedup();
                e
            }
        };
        if spec.functions.len() > MAX_PATTERNS {
            return Err(Error::invalid(
                "functions",
                format!("at most {MAX_PATTERNS} patterns"),
            ));
        }
        for p in &spec.functions {
            let bare = p.strip_suffix('*').unwrap_or(p);
            if p.is_empty() || bare.contains('*') || bare.len() > 128 {
                return Err(Error::invalid(
                    "functions",
                    format!("{p:?} is not a function name or a prefix ending in *"),
                ));
            }
        }
        let (secret, shown) = match spec.secret {
            Some(s) => {
                if s.len() < 8 || s.len() > MAX_SECRET {
                    return Err(Error::invalid(
                        "secret",
                        format!("a signing secret has 8 to {MAX_SECRET} bytes"),
                    ));
                }
                (s, None)
            }
            None => {
                let s = new_secret();
                (s.clone(), Some(s))
            }
        };
        let sealed = self.secrets.seal_value(secret.as_bytes())?;
        use base64::Engine as _;
        let sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
        let _one = self.writes.lock().await;
        self.reload().await?;
        let now = self.env.now_ms();
        let current = self.current();
        let existing = current.iter().find(|s| s.name == name);
        if existing.is_none() && current.len() >= MAX_NOTIFICATIONS {
            return Err(Error::invalid(
                "name",
                format!("at most {MAX_NOTIFICATIONS} notifications"),
            ));
        }
        let stored = Stored {
            name: name.to_string(),
            url: spec.url,
            events,
            functions: spec.functions,
            secret: sealed,
            created_at_ms: existing.map_or(now, |s| s.created_at_ms),
            updated_at_ms: now,
        };
        let value = serde_json::to_vec(&stored).expect("settings encode");
        self.env
            .backend
            .kv
            .kv_set(&cfg_key(name), value, None, KvCondition::Always, now)
            .await?;
        self.reload().await?;
        Ok((stored.view(), shown))
    }

    /// Every notification, by name.
    pub async fn list(&self) -> Result<Vec<Notification>> {
        self.reload().await?;
        let mut all: Vec<Notification> = self.current().iter().map(Stored::view).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One notification.
    pub async fn get(&self, name: &str) -> Result<Notification> {
        shoal_types::validate_name("notification name", name)?;
        let entry = self
            .env
            .backend
            .kv
            .kv_get(&cfg_key(name), self.env.now_ms())
            .await?;
        entry
            .and_then(|e| serde_json::from_slice::<Stored>(&e.value).ok())
            .map(|s| s.view())
            .ok_or_else(|| Error::NotFound {
                entity: Entity::Notification,
                name: name.to_string(),
            })
    }

    /// Removes a notification; its pending deliveries end as `failed`.
    pub async fn remove(&self, name: &str) -> Result<()> {
        shoal_types::validate_name("notification name", name)?;
        let _one = self.writes.lock().await;
        let removed = self
            .env
            .backend
            .kv
            .kv_delete(&cfg_key(name), None, self.env.now_ms())
            .await?;
        self.reload().await?;
        if removed {
            Ok(())
        } else {
            Err(Error::NotFound {
                entity: Entity::Notification,
                name: name.to_string(),
            })
        }
    }

    /// A page of the delivery log, newest first, of one notification
    /// and/or with one status when asked.
    pub async fn deliveries(
        &self,
        name: Option<&str>,
        status: Option<DeliveryStatus>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        let limit = limit.clamp(1, 1_000);
        let mut after = cursor.map(|c| format!("{LOG_PREFIX}{c}"));
        let mut items = Vec::new();
        let mut scanned = 0;
        let now = self.env.now_ms();
        loop {
            let page = self
                .env
                .backend
                .kv
                .kv_list(LOG_PREFIX, after.as_deref(), 500, now)
                .await?;
            for e in page.entries {
                scanned += 1;
                after = Some(e.key.clone());
                let Ok(log) = serde_json::from_slice::<DeliveryLog>(&e.value) else {
                    continue;
                };
                if name.is_some_and(|n| n != log.name) || status.is_some_and(|s| s != log.status) {
                    continue;
                }
                items.push(log);
                if items.len() == limit {
                    let cursor = after.as_deref().map(|k| k[LOG_PREFIX.len()..].to_string());
                    return Ok(DeliveryPage { items, cursor });
                }
            }
            match page.next {
                Some(next) if scanned < MAX_LOG_SCAN => after = Some(next),
                Some(next) => {
                    return Ok(DeliveryPage {
                        items,
                        cursor: Some(next[LOG_PREFIX.len()..].to_string()),
                    });
                }
                None => {
                    return Ok(DeliveryPage {
                        items,
                        cursor: None,
                    });
                }
            }
        }
    }

    // ---- events ----

    /// Notifies about an event (for other services: `budget.reached`).
    /// Resolves once its deliveries are durable.
    pub fn emit(&self, event: Event) -> BoxFuture<'static, std::result::Result<(), String>> {
        if !EVENT_TYPES.contains(&event.kind.as_str()) {
            let kind = event.kind.clone();
            return Box::pin(async move { Err(format!("unknown event type {kind:?}")) });
        }
        let now = self.env.now_ms();
        let key = event
            .key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let function = event.function.as_ref().map(|f| f.as_str().to_string());
        self.issue(&event.kind, &key, now, event.data, function.as_deref())
            .unwrap_or_else(|| Box::pin(async { Ok(()) }))
    }

    /// Issues an event's deliveries (and its `_events` message): `None`
    /// when nothing is to be done. `key` is its identity, `at_ms` its time.
    fn issue(
        &self,
        kind: &str,
        key: &str,
        at_ms: u64,
        data: serde_json::Value,
        function: Option<&str>,
    ) -> Option<BoxFuture<'static, std::result::Result<(), String>>> {
        let settings = self.current();
        let targets: Vec<&Stored> = settings
            .iter()
            .filter(|s| s.wants(kind, function))
            .collect();
        let feed = self.channels.feeds.wants_any(EVENTS_CHANNEL);
        if targets.is_empty() && !feed {
            return None;
        }
        let seed = format!("{kind}\0{key}");
        let event_id = crate::dispatch::derived_id(at_ms, seed.as_bytes());
        let event = serde_json::json!({
            "id": event_id,
            "type": kind,
            "at_ms": at_ms,
            "data": data,
        });
        if feed {
            self.channels
                .feeds
                .note(EVENTS_CHANNEL.to_string(), event.clone());
        }
        if targets.is_empty() {
            return None;
        }
        let body = event.to_string();
        let now = self.env.now_ms();
        let seed_hash = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..16])
        };
        let mut messages = Vec::with_capacity(targets.len());
        let mut logs = Vec::with_capacity(targets.len());
        for s in targets {
            let delivery =
                crate::dispatch::derived_id(at_ms, format!("{seed}\0{}", s.name).as_bytes());
            let queued = Queued {
                delivery: delivery.clone(),
                name: s.name.clone(),
                event_type: kind.to_string(),
                event_id: event_id.clone(),
                created_at_ms: at_ms,
                event: RawValue::from_string(body.clone()).expect("JSON text"),
            };
            messages.push(NewMessage {
                id: delivery.clone(),
                body: serde_json::to_vec(&queued).expect("delivery encodes"),
                due_ms: now,
                sent_ms: now,
                dedup: Some((
                    format!("{seed_hash}\0{}", s.name),
                    now + LOG_TTL.as_millis() as u64,
                )),
                key: None,
            });
            logs.push(DeliveryLog {
                id: delivery,
                name: s.name.clone(),
                event: kind.to_string(),
                event_id: event_id.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_status_code: None,
                last_error: None,
                created_at_ms: at_ms,
                delivered_at_ms: None,
                next_attempt_at_ms: Some(now),
            });
        }
        let sent = self.env.backend.queues.send(QUEUE, messages);
        let kv = self.env.backend.kv.clone();
        let wake = self.wake.clone();
        Some(Box::pin(async move {
            let answers = sent.await.map_err(|e| e.to_string())?;
            wake.notify_one();
            // The log shows the new ones (not duplicates) as pending until
            // their first attempt; a later attempt's entry is not replaced.
            let mut writes = Vec::new();
            for (log, dup) in logs.into_iter().zip(answers) {
                if dup.is_none() {
                    let value = serde_json::to_vec(&log).expect("log encodes");
                    writes.push(kv.kv_set(
                        &log_key(log.created_at_ms, &log.id),
                        value,
                        Some(LOG_TTL.as_millis() as u64),
                        KvCondition::Absent,
                        now,
                    ));
                }
            }
            for w in writes {
                w.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }))
    }

    /// Messages of `queue` dead-lettered after `record`'s attempt: issued
    /// before the dead letters themselves (a crash in between retries the
    /// message and the event is deduplicated by queue and message id).
    pub(crate) fn dead_lettered(
        &self,
        queue: &str,
        record: &InvocationRecord,
        letters: &[(String, String)],
    ) -> Option<BoxFuture<'static, std::result::Result<(), String>>> {
        let now = self.env.now_ms();
        let pending: Vec<_> = letters
            .iter()
            .filter_map(|(id, reason)| {
                self.issue(
                    "dead_letter",
                    &format!("{queue}\0{id}"),
                    now,
                    serde_json::json!({
                        "queue": queue,
                        "message": id,
                        "reason": reason,
                        "function": record.function.as_str(),
                        "invocation": record.id,
                        "attempts": record.attempts,
                    }),
                    Some(record.function.as_str()),
                )
            })
            .collect();
        if pending.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for p in pending {
                p.await?;
            }
            Ok(())
        }))
    }

    /// A job that just finished (after the write that completed it).
    pub(crate) fn job_finished(
        &self,
        record: &shoal_store::JobRecord,
        progress: &shoal_store::JobProgress,
    ) -> Option<BoxFuture<'static, std::result::Result<(), String>>> {
        let at = progress.finished_at_ms.unwrap_or_else(|| self.env.now_ms());
        let status = if progress.cancelled_at_ms.is_some() {
            "cancelled"
        } else {
            "finished"
        };
        self.issue(
            "job.finished",
            &record.id,
            at,
            serde_json::json!({
                "job": record.id,
                "function": record.function.as_str(),
                "status": status,
                "total": record.total,
                "succeeded": progress.succeeded,
                "failed": progress.failed,
                "cancelled": progress.cancelled,
                "finished_at_ms": progress.finished_at_ms,
            }),
            Some(record.function.as_str()),
        )
    }

    // ---- deliveries ----

    async fn deliver_loop(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let free = slots.available_permits();
            let mut sleep = self.env.opts.idle_poll;
            if free > 0 {
                let now = self.env.now_ms();
                match self
                    .env
                    .backend
                    .queues
                    .lease(QUEUE, now, free, VISIBILITY.as_millis() as u64)
                    .await
                {
                    Ok(leased) => {
                        let got = !leased.deliveries.is_empty();
                        for d in leased.deliveries {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let me = self.clone();
                            self.env.tasks.spawn(async move {
                                me.attempt(d).await;
                                drop(permit);
                                me.wake.notify_one();
                            });
                        }
                        if got {
                            continue;
                        }
                        if let Some(due) = leased.next_due_ms {
                            sleep = sleep.min(Duration::from_millis(due.saturating_sub(now)));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Leasing notification deliveries failed; retrying.")
                    }
                }
            }
            tokio::select! {
                () = self.env.tasks.stopping() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// The settings of `name`: from memory, else from the store (created
    /// on another node a moment ago).
    async fn find(&self, name: &str) -> Result<Option<Stored>> {
        if let Some(s) = self.current().iter().find(|s| s.name == name) {
            return Ok(Some(s.clone()));
        }
        let entry = self
            .env
            .backend
            .kv
            .kv_get(&cfg_key(name), self.env.now_ms())
            .await?;
        Ok(entry.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    fn open_secret(&self, s: &Stored) -> Result<String> {
        use base64::Engine as _;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&s.secret)
            .map_err(|_| {
                Error::unavailable(std::io::Error::other("a sealed secret is not base64"))
            })?;
        let plain = self.secrets.open_value(&sealed)?;
        String::from_utf8(plain)
            .map_err(|_| Error::unavailable(std::io::Error::other("a secret is not UTF-8")))
    }

    /// One attempt of a leased delivery, its log entry and its settlement.
    async fn attempt(&self, d: Delivery) {
        let queues = self.env.backend.queues.clone();
        let Ok(q) = serde_json::from_slice::<Queued>(&d.body) else {
            warn!(id = %d.id, "An undecodable notification delivery was dropped.");
            drop(queues.ack(QUEUE, vec![d.id]));
            return;
        };
        let attempts = d.failures + 1;
        let mut log = DeliveryLog {
            id: q.delivery.clone(),
            name: q.name.clone(),
            event: q.event_type.clone(),
            event_id: q.event_id.clone(),
            status: DeliveryStatus::Pending,
            attempts,
            last_status_code: None,
            last_error: None,
            created_at_ms: q.created_at_ms,
            delivered_at_ms: None,
            next_attempt_at_ms: None,
        };
        let settings = match self.find(&q.name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                log.status = DeliveryStatus::Failed;
                log.attempts = d.failures;
                log.last_error = Some("the notification was removed".into());
                self.settle(&d, log, None).await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "Reading a notification failed; its delivery will be retried.");
                return;
            }
        };
        let outcome = match self.open_secret(&settings) {
            Ok(secret) => {
                let body = q.event.get().as_bytes().to_vec();
                let t = self.env.now_ms();
                let headers = vec![
                    ("Content-Type".to_string(), "application/json".to_string()),
                    ("Shoal-Signature".to_string(), signature(&secret, t, &body)),
                    ("Shoal-Event".to_string(), q.event_type.clone()),
                    ("Shoal-Delivery".to_string(), q.delivery.clone()),
                ];
                let webhook = self.webhook.as_ref().expect("delivering needs a webhook");
                webhook
                    .send(&settings.url, headers, body, SEND_TIMEOUT)
                    .await
            }
            Err(e) => Err(format!("the signing secret cannot be opened here: {e}")),
        };
        let now = self.env.now_ms();
        match outcome {
            Ok(code) if (200..300).contains(&code) => {
                log.status = DeliveryStatus::Delivered;
                log.last_status_code = Some(code);
                log.delivered_at_ms = Some(now);
                self.settle(&d, log, None).await;
                metrics::counter!("shoal_notification_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                return;
            }
            Ok(code) => {
                log.last_status_code = Some(code);
                log.last_error = Some(format!("answered {code}"));
            }
            Err(e) => log.last_error = Some(e),
        }
        metrics::counter!("shoal_notification_deliveries_total", "outcome" => "failed_attempt")
            .increment(1);
        if attempts >= MAX_ATTEMPTS {
            log.status = DeliveryStatus::Failed;
            self.settle(&d, log, None).await;
        } else {
            let due = now + retry_delay(attempts, &*self.env.random).as_millis() as u64;
            log.next_attempt_at_ms = Some(due);
            self.settle(&d, log, Some(due)).await;
        }
    }

    /// Writes the log entry, then acks the delivery (`retry_at` `None`) or
    /// releases it for then.
    async fn settle(&self, d: &Delivery, log: DeliveryLog, retry_at: Option<u64>) {
        let now = self.env.now_ms();
        let value = serde_json::to_vec(&log).expect("log encodes");
        let logged = self.env.backend.kv.kv_set(
            &log_key(log.created_at_ms, &log.id),
            value,
            Some(LOG_TTL.as_millis() as u64),
            KvCondition::Always,
            now,
        );
        let queues = &self.env.backend.queues;
        let settled = match retry_at {
            None => queues.ack(QUEUE, vec![d.id.clone()]),
            Some(due) => queues.nack(QUEUE, &d.id, due),
        };
        if let Err(e) = logged.await {
            warn!(delivery = %log.id, error = %e, "Writing a delivery's log entry failed.");
        }
        if let Err(e) = settled.await {
            warn!(delivery = %log.id, error = %e, "Settling a notification delivery failed; it will be tried again.");
        }
    }
}

/// The event an invocation's final status is, if any.
fn outcome_kind(status: InvocationStatus) -> Option<&'static str> {
    match status {
        InvocationStatus::Succeeded => Some("invocation.succeeded"),
        InvocationStatus::Failed | InvocationStatus::TimedOut => Some("invocation.failed"),
        _ => None,
    }
}

impl OutcomeSink for Notifications {
    fn follows(&self, record: &InvocationRecord) -> bool {
        let Some(kind) = outcome_kind(record.status) else {
            return false;
        };
        self.channels.feeds.wants_any(EVENTS_CHANNEL)
            || self
                .current()
                .iter()
                .any(|s| s.wants(kind, Some(record.function.as_str())))
    }

    fn finished(
        &self,
        record: &InvocationRecord,
    ) -> Option<BoxFuture<'static, std::result::Result<(), String>>> {
        let kind = outcome_kind(record.status)?;
        let at = record.finished_at_ms.unwrap_or(record.created_at_ms);
        let error = record.error.as_ref().map(|e| {
            serde_json::json!({
                "kind": e.kind,
                "exception": e.exception,
                "message": e.message,
            })
        });
        self.issue(
            kind,
            &record.id,
            at,
            serde_json::json!({
                "invocation": record.id,
                "function": record.function.as_str(),
                "version": record.version,
                "mode": record.mode,
                "status": record.status,
                "attempts": record.attempts,
                "error": error,
                "duration_ms": record.duration_ms,
                "created_at_ms": record.created_at_ms,
                "finished_at_ms": record.finished_at_ms,
            }),
            Some(record.function.as_str()),
        )
    }
}

/// The wait before attempt `attempt + 1`: `1 s × 2^(attempt-1)` capped at
/// [`MAX_RETRY`], with equal jitter (half fixed, half random).
pub fn retry_delay(attempt: u32, random: &dyn crate::env::Random) -> Duration {
    let full = FIRST_RETRY
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_RETRY);
    let half = full.as_millis() as u64 / 2;
    Duration::from_millis(half + random.up_to(full.as_millis() as u64 - half))
}

fn check_url(url: &str) -> Result<()> {
    if url.len() > MAX_URL {
        return Err(Error::invalid("url", format!("at most {MAX_URL} bytes")));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(Error::invalid(
            "url",
            "an http:// URL (this build sends plain HTTP; put a TLS proxy in front for https)",
        ));
    };
    if rest.is_empty()
        || rest.starts_with('/')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid("url", format!("{url:?} is not a URL")));
    }
    Ok(())
}

fn cfg_key(name: &str) -> String {
    format!("{CFG_PREFIX}{name}")
}

/// Newest first: the time inverted, as fixed-width hex.
fn log_key(created_at_ms: u64, id: &str) -> String {
    format!("{LOG_PREFIX}{:016x}{id}", u64::MAX - created_at_ms)
}

/// A new signing secret: 32 random bytes from the operating system.
fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    #[allow(clippy::disallowed_methods)] // key material, not jitter: never faked
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// A webhook that records requests and answers scripted statuses (engine
/// tests; also handy in the router's).
#[derive(Clone, Default)]
pub struct RecordingWebhook {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<WebhookRequest>,
    script: VecDeque<std::result::Result<u16, String>>,
}

/// One request a [`RecordingWebhook`] received.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When it came (tokio's clock).
    pub at: tokio::time::Instant,
}

impl WebhookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RecordingWebhook {
    /// Answers these, in order, then 200.
    pub fn script(&self, answers: impl IntoIterator<Item = std::result::Result<u16, String>>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    pub fn requests(&self) -> Vec<WebhookRequest> {
        self.inner.lock().unwrap().requests.clone()
    }
}

impl Webhook for RecordingWebhook {
    fn send(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, std::result::Result<u16, String>> {
        let mut inner = self.inner.lock().unwrap();
        inner.requests.push(WebhookRequest {
            url: url.to_string(),
            headers,
            body,
            at: tokio::time::Instant::now(),
        });
        let answer = inner.script.pop_front().unwrap_or(Ok(200));
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: Python's
        // hmac.new(b"key", b"1700000000000.{}", hashlib.sha256).hexdigest().
        let s = signature("key", 1_700_000_000_000, b"{}");
        assert_eq!(
            s,
            "t=1700000000000,v1=36a72f4525d3323bd0f238fe82098164fb77b1e42288ff8e07b074c686178ad3"
        );
        assert_ne!(s, signature("key2", 1_700_000_000_000, b"{}"));
        assert_ne!(s, signature("key", 1_700_000_000_001, b"{}"));
    }

    #[test]
    fn patterns_are_names_or_prefixes() {
        assert!(matches("resize*", "resize_png"));
        assert!(matches("resize", "resize"));
        assert!(!matches("resize", "resize_png"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://example.com").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("ftp://x").is_err());
    }

    #[test]
    fn log_keys_sort_newest_first() {
        assert!(log_key(2, "a") < log_key(1, "a"));
    }
}
