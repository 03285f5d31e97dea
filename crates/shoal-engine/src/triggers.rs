//! Triggers: `[[trigger]]` of `shoal.toml` (parsed and checked here) and the
//! service that runs functions when something happens — documents change in
//! a category, blobs are created or deleted, another function's
//! asynchronous invocation finishes (Lambda's destinations). Every run is an
//! ordinary asynchronous invocation of the trigger's function.
//!
//! - `docs`: a write or delete in the category, once stored, sends its
//!   changes (in messages of at most `batch_size`) to the trigger's internal
//!   queue `_trigger.<function>.<index>.<category>` before the write is
//!   answered. On every node a consumer leases those messages one by one
//!   (a message is leased by one node at a time), fills a batch of at most
//!   `batch_size` changes for up to `batch_window_ms` from the first, queues
//!   one invocation whose id is made from the batch's message ids (so a
//!   batch redelivered whole after a crash names the same invocation, which
//!   is then not queued again), and acknowledges the messages.
//! - `blob`: an upload (or a fixed-size blob created) or a delete, once
//!   stored, queues one invocation per matching trigger before it is
//!   answered.
//! - `outcome`: an [`OutcomeSink`] registered at start. For a final
//!   asynchronous invocation of the source whose status matches `when`, it
//!   queues an invocation of the target whose id is made from the source's,
//!   deduplicated by that id, carrying the source's token and user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::warn;

use shoal_store::{Delivery, InvocationRecord, OutcomeWhen, TriggerRecord};
use shoal_types::{InvocationMode, InvocationStatus};

use crate::dispatch::{AsyncStart, Dispatcher, derived_id};
use crate::env::Env;
use crate::functions::Functions;
use crate::outcomes::OutcomeSink;

/// Most triggers one function may declare.
pub const MAX_TRIGGERS: usize = 20;
/// The largest `batch_size` of a `docs` trigger.
pub const MAX_BATCH_SIZE: u32 = 1000;
/// The longest `batch_window_ms` of a `docs` trigger.
pub const MAX_BATCH_WINDOW_MS: u64 = 60_000;
/// The defaults of a `docs` trigger.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 500;

/// How often an idle `docs` consumer looks at its queue (a write on this
/// node wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often a consumer filling a batch looks for more changes.
const FILL_POLL: Duration = Duration::from_millis(20);
/// How often the service looks for new or removed `docs` triggers.
const RESCAN: Duration = Duration::from_secs(1);
/// How long a leased message is out beyond the batch window, before it is
/// delivered again (its consumer died).
const LEASE_MARGIN_MS: u64 = 30_000;
/// How long a batch whose run could not be queued waits before another try.
const RETRY_MS: u64 = 2_000;

/// `[[trigger]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    on: Option<String>,
    category: Option<String>,
    batch_size: Option<i64>,
    batch_window_ms: Option<i64>,
    prefix: Option<String>,
    events: Option<Vec<String>>,
    function: Option<String>,
    when: Option<String>,
}

/// Checks `[[trigger]]` entries of function `own`; an error says which
/// one and what to fix.
pub(crate) fn parse(raw: Vec<RawTrigger>, own: &str) -> Result<Vec<TriggerRecord>, String> {
    if raw.len() > MAX_TRIGGERS {
        return Err(format!(
            "a function may have at most {MAX_TRIGGERS} [[trigger]] entries"
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| parse_one(r, own).map_err(|e| format!("[[trigger]] {}: {e}", i + 1)))
        .collect()
}

fn parse_one(r: RawTrigger, own: &str) -> Result<TriggerRecord, String> {
    let on =
        r.on.ok_or("set `on` to \"docs\", \"blob\" or \"outcome\"")?;
    // The keys each kind takes; another kind's key is a mistake.
    let given = |name: &str, set: bool, kinds: &str| -> Result<(), String> {
        if set {
            Err(format!(
                "`{name}` is for `on = {kinds}`, not `on = \"{on}\"`"
            ))
        } else {
            Ok(())
        }
    };
    match on.as_str() {
        "docs" => {
            given("prefix", r.prefix.is_some(), "\"blob\"")?;
            given("events", r.events.is_some(), "\"blob\"")?;
            given("function", r.function.is_some(), "\"outcome\"")?;
            given("when", r.when.is_some(), "\"outcome\"")?;
            let category = r
                .category
                .ok_or("`on = \"docs\"` needs `category`: the category whose changes run it")?;
            shoal_types::validate_name("category name", &category)
                .map_err(|e| format!("`category`: {e}"))?;
            let batch_size = r.batch_size.unwrap_or(i64::from(DEFAULT_BATCH_SIZE));
            if !(1..=i64::from(MAX_BATCH_SIZE)).contains(&batch_size) {
                return Err(format!(
                    "`batch_size` is {batch_size}; it must be 1 to {MAX_BATCH_SIZE}"
                ));
            }
            let window = r.batch_window_ms.unwrap_or(DEFAULT_BATCH_WINDOW_MS as i64);
            if !(0..=MAX_BATCH_WINDOW_MS as i64).contains(&window) {
                return Err(format!(
                    "`batch_window_ms` is {window}; it must be 0 to {MAX_BATCH_WINDOW_MS}"
                ));
            }
            Ok(TriggerRecord::Docs {
                category,
                batch_size: batch_size as u32,
                batch_window_ms: window as u64,
            })
        }
        "blob" => {
            given("category", r.category.is_some(), "\"docs\"")?;
            given("batch_size", r.batch_size.is_some(), "\"docs\"")?;
            given("batch_window_ms", r.batch_window_ms.is_some(), "\"docs\"")?;
            given("function", r.function.is_some(), "\"outcome\"")?;
            given("when", r.when.is_some(), "\"outcome\"")?;
            let prefix = r.prefix.unwrap_or_default();
            if prefix.len() > crate::blobs::MAX_BLOB_KEY_BYTES || prefix.starts_with('\0') {
                return Err(format!(
                    "`prefix` must be at most {} bytes and not start with a NUL",
                    crate::blobs::MAX_BLOB_KEY_BYTES
                ));
            }
            let (mut created, mut deleted) = (false, false);
            match r.events {
                None => (created, deleted) = (true, true),
                Some(events) => {
                    if events.is_empty() {
                        return Err("`events` is empty; leave it out for both, or name \"created\" and/or \"deleted\"".into());
                    }
                    for e in events {
                        match e.as_str() {
                            "created" => created = true,
                            "deleted" => deleted = true,
                            other => {
                                return Err(format!(
                                    "`events` has {other:?}; it may hold \"created\" and \"deleted\""
                                ));
                            }
                        }
                    }
                }
            }
            Ok(TriggerRecord::Blob {
                prefix,
                created,
                deleted,
            })
        }
        "outcome" => {
            given("category", r.category.is_some(), "\"docs\"")?;
            given("batch_size", r.batch_size.is_some(), "\"docs\"")?;
            given("batch_window_ms", r.batch_window_ms.is_some(), "\"docs\"")?;
            given("prefix", r.prefix.is_some(), "\"blob\"")?;
            given("events", r.events.is_some(), "\"blob\"")?;
            let function = r.function.ok_or(
                "`on = \"outcome\"` needs `function`: the function whose outcomes run this one",
            )?;
            let parsed = shoal_types::FunctionName::parse(&function)
                .map_err(|e| format!("`function`: {e}"))?;
            if parsed.as_str() == own {
                return Err(
                    "`function` names this function itself; its outcomes would run it forever"
                        .into(),
                );
            }
            let when = match r.when.as_deref() {
                None | Some("any") => OutcomeWhen::Any,
                Some("success") => OutcomeWhen::Success,
                Some("failure") => OutcomeWhen::Failure,
                Some(other) => {
                    return Err(format!(
                        "`when` is {other:?}; it must be \"success\", \"failure\" or \"any\""
                    ));
                }
            };
            Ok(TriggerRecord::Outcome {
                function: parsed.as_str().to_string(),
                when,
            })
        }
        other => Err(format!(
            "`on = {other:?}` is not a trigger; use \"docs\", \"blob\" or \"outcome\""
        )),
    }
}

/// A trigger of a live version.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerView {
    /// The function it runs.
    pub function: String,
    pub version: u64,
    /// Its place among the function's `[[trigger]]` entries, from 0.
    pub index: usize,
    pub trigger: TriggerRecord,
}

/// The triggers of every live version, by function and index.
pub(crate) fn views(functions: &Functions) -> Vec<TriggerView> {
    let mut out = Vec::new();
    for d in functions.with_triggers() {
        for (index, t) in d.record.triggers.iter().enumerate() {
            out.push(TriggerView {
                function: d.record.name.to_string(),
                version: d.record.version,
                index,
                trigger: t.clone(),
            });
        }
    }
    out
}

/// One document change, as a `docs` trigger's event lists it.
pub(crate) enum Change {
    /// Written: its id and JSON text.
    Put(String, Vec<u8>),
    Delete(String),
}

impl Change {
    fn json(&self) -> String {
        match self {
            Change::Put(id, doc) => format!(
                "{{\"op\":\"put\",\"id\":{},\"doc\":{}}}",
                json_string(id),
                String::from_utf8_lossy(doc)
            ),
            Change::Delete(id) => {
                format!("{{\"op\":\"delete\",\"id\":{}}}", json_string(id))
            }
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes")
}

/// The internal queue of a `docs` trigger.
fn docs_queue(function: &str, index: usize, category: &str) -> String {
    format!("_trigger.{function}.{index}.{category}")
}

/// A `docs` trigger being consumed on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DocsSpec {
    category: String,
    batch_size: u32,
    batch_window_ms: u64,
}

/// The trigger service.
pub(crate) struct Triggers {
    env: Arc<Env>,
    functions: Arc<Functions>,
    dispatcher: Arc<Dispatcher>,
    /// Wakes this node's `docs` consumers (a write here sent changes).
    wake: Notify,
    /// The `docs` consumers running on this node, by (function, index).
    running: Mutex<HashMap<(String, usize), DocsSpec>>,
    /// Wakes the loop that starts consumers (changes were sent for a
    /// trigger this node has no consumer for yet: just deployed).
    rescan: Notify,
}

impl Triggers {
    pub(crate) fn new(
        env: Arc<Env>,
        functions: Arc<Functions>,
        dispatcher: Arc<Dispatcher>,
    ) -> Triggers {
        Triggers {
            env,
            functions,
            dispatcher,
            wake: Notify::new(),
            running: Mutex::default(),
            rescan: Notify::new(),
        }
    }

    /// The live `docs` triggers of `category`: (function, index, batch size).
    fn docs_of(&self, category: &str) -> Vec<(String, usize, u32)> {
        let mut out = Vec::new();
        for d in self.functions.with_triggers() {
            let name = d.record.name.to_string();
            for (i, t) in d.record.triggers.iter().enumerate() {
                if let TriggerRecord::Docs {
                    category: c,
                    batch_size,
                    ..
                } = t
                    && c == category
                {
                    out.push((name.clone(), i, *batch_size));
                }
            }
        }
        out
    }

    /// True when some live trigger follows `category`'s changes (so the
    /// write keeps its documents' text for the event).
    pub(crate) fn wants_docs(&self, category: &str) -> bool {
        !self.docs_of(category).is_empty()
    }

    /// Sends changes stored in `category` to the queue of every trigger
    /// following it; resolves once they are durable.
    pub(crate) async fn docs_changed(&self, category: &str, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let targets = self.docs_of(category);
        if targets.is_empty() {
            return;
        }
        {
            let running = self.running.lock().expect("triggers lock poisoned");
            if targets
                .iter()
                .any(|(f, i, _)| !running.contains_key(&(f.clone(), *i)))
            {
                self.rescan.notify_one();
            }
        }
        let texts: Vec<String> = changes.iter().map(Change::json).collect();
        let now = self.env.now_ms();
        for (function, index, batch_size) in targets {
            let messages: Vec<shoal_store::NewMessage> = texts
                .chunks(batch_size as usize)
                .map(|chunk| {
                    let id = uuid::Uuid::now_v7().to_string();
                    shoal_store::NewMessage {
                        id,
                        body: format!("[{}]", chunk.join(",")).into_bytes(),
                        due_ms: 0,
                        sent_ms: now,
                        dedup: None,
                        key: None,
                    }
                })
                .collect();
            let queue = docs_queue(&function, index, category);
            if let Err(e) = self.env.backend.queues.send(&queue, messages).await {
                warn!(%function, %category, error = %e, "Document changes could not be queued for a trigger; they are lost.");
            }
        }
        self.wake.notify_waiters();
    }

    /// Runs the `blob` triggers matching an event on `key` (`size` for a
    /// created blob); resolves once their runs are queued.
    pub(crate) async fn blob_event(&self, created: bool, key: &str, size: Option<u64>) {
        if crate::is_internal_key(key) {
            return;
        }
        let mut targets = Vec::new();
        for d in self.functions.with_triggers() {
            let name = d.record.name.to_string();
            for t in &d.record.triggers {
                if let TriggerRecord::Blob {
                    prefix,
                    created: c,
                    deleted: dl,
                } = t
                    && key.starts_with(prefix.as_str())
                    && (if created { *c } else { *dl })
                {
                    targets.push(name.clone());
                    break;
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let mut event = serde_json::json!({
            "trigger": "blob",
            "event": if created { "created" } else { "deleted" },
            "key": key,
        });
        if let Some(size) = size {
            event["size"] = size.into();
        }
        let event = event.to_string();
        for function in targets {
            if let Err(e) = self
                .dispatcher
                .invoke_async_as(&function, event.clone(), AsyncStart::default())
                .await
            {
                warn!(%function, %key, error = %e, "A blob trigger's run could not be queued.");
            }
        }
    }

    /// Follows the live `docs` triggers, starting and stopping this node's
    /// consumers, until the engine stops.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let mut live = HashMap::new();
            for v in views(&self.functions) {
                if let TriggerRecord::Docs {
                    category,
                    batch_size,
                    batch_window_ms,
                } = v.trigger
                {
                    live.insert(
                        (v.function, v.index),
                        DocsSpec {
                            category,
                            batch_size,
                            batch_window_ms,
                        },
                    );
                }
            }
            let mut start = Vec::new();
            {
                let mut running = self.running.lock().expect("triggers lock poisoned");
                running.retain(|k, spec| live.get(k) == Some(spec));
                for (k, spec) in live {
                    if !running.contains_key(&k) {
                        running.insert(k.clone(), spec.clone());
                        start.push((k, spec));
                    }
                }
            }
            for ((function, index), spec) in start {
                let me = self.clone();
                self.env
                    .tasks
                    .spawn(async move { me.consume_docs(function, index, spec).await });
            }
            tokio::select! {
                _ = self.env.tasks.stopping() => return,
                _ = tokio::time::sleep(RESCAN) => {}
                _ = self.rescan.notified() => {}
            }
        }
    }

    fn still_running(&self, function: &str, index: usize, spec: &DocsSpec) -> bool {
        self.running
            .lock()
            .expect("triggers lock poisoned")
            .get(&(function.to_string(), index))
            == Some(spec)
    }

    /// Leases one message of `queue`: the delivery and how many changes it
    /// holds.
    async fn lease_one(&self, queue: &str, visibility_ms: u64) -> Option<(Delivery, usize)> {
        let now = self.env.now_ms();
        match self
            .env
            .backend
            .queues
            .lease(queue, now, 1, visibility_ms)
            .await
        {
            Ok(leased) => leased.deliveries.into_iter().next().map(|d| {
                let n = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&d.body)
                    .map_or(0, |v| v.len());
                (d, n)
            }),
            Err(e) => {
                warn!(%queue, error = %e, "Leasing a trigger's changes failed.");
                None
            }
        }
    }

    /// Waits `d` or until a local write wakes the consumers.
    async fn nap(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.env.tasks.stopping() => false,
            _ = tokio::time::sleep(d) => true,
            _ = self.wake.notified() => true,
        }
    }

    /// One node's consumer of a `docs` trigger: batches its changes and
    /// queues a run per batch.
    async fn consume_docs(self: Arc<Self>, function: String, index: usize, spec: DocsSpec) {
        let queue = docs_queue(&function, index, &spec.category);
        let visibility = spec.batch_window_ms + LEASE_MARGIN_MS;
        let max = spec.batch_size as usize;
        let mut carry: Option<(Delivery, usize)> = None;
        loop {
            if self.env.tasks.is_stopping() || !self.still_running(&function, index, &spec) {
                return;
            }
            let first = match carry.take() {
                Some(c) => c,
                None => match self.lease_one(&queue, visibility).await {
                    Some(c) => c,
                    None => {
                        if !self.nap(IDLE_POLL).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let deadline = self.env.now_ms() + spec.batch_window_ms;
            let mut count = first.1;
            let mut batch = vec![first.0];
            while count < max {
                match self.lease_one(&queue, visibility).await {
                    Some((d, n)) if count + n > max => {
                        carry = Some((d, n));
                        break;
                    }
                    Some((d, n)) => {
                        count += n;
                        batch.push(d);
                    }
                    None => {
                        let now = self.env.now_ms();
                        if now >= deadline {
                            break;
                        }
                        let wait = FILL_POLL.min(Duration::from_millis(deadline - now));
                        if !self.nap(wait).await {
                            return;
                        }
                    }
                }
            }
            self.run_batch(&function, &queue, &spec.category, batch)
                .await;
        }
    }

    /// Queues the run of one batch, then acknowledges its messages.
    async fn run_batch(&self, function: &str, queue: &str, category: &str, batch: Vec<Delivery>) {
        let mut event = format!(
            "{{\"trigger\":\"docs\",\"category\":{},\"changes\":[",
            json_string(category)
        );
        let mut first = true;
        let mut seed = format!("docs\0{queue}");
        for d in &batch {
            seed.push('\0');
            seed.push_str(&d.id);
            let body = String::from_utf8_lossy(&d.body);
            let inner = body.trim();
            let inner = inner
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or("")
                .trim();
            if inner.is_empty() {
                continue;
            }
            if !first {
                event.push(',');
            }
            first = false;
            event.push_str(inner);
        }
        event.push_str("]}");
        let ms = uuid_ms(&batch[0].id).unwrap_or_else(|| self.env.now_ms());
        let start = AsyncStart {
            id: Some(derived_id(ms, seed.as_bytes())),
            ..AsyncStart::default()
        };
        let ids: Vec<String> = batch.into_iter().map(|d| d.id).collect();
        match self
            .dispatcher
            .invoke_async_as(function, event, start)
            .await
        {
            Ok(_) => {
                if let Err(e) = self.env.backend.queues.ack(queue, ids).await {
                    warn!(%queue, error = %e, "Acknowledging a trigger's changes failed; they may run again.");
                }
            }
            Err(e) => {
                warn!(%function, error = %e, "A docs trigger's run could not be queued; trying again.");
                let due = self.env.now_ms() + RETRY_MS;
                for id in ids {
                    let _ = self.env.backend.queues.nack(queue, &id, due).await;
                }
            }
        }
    }
}

/// The time in a UUIDv7's first 48 bits.
fn uuid_ms(id: &str) -> Option<u64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// The destinations: runs `outcome` triggers for finished asynchronous
/// invocations of their source.
pub(crate) struct Destinations {
    functions: Arc<Functions>,
    dispatcher: Weak<Dispatcher>,
}

impl Destinations {
    pub(crate) fn new(functions: Arc<Functions>, dispatcher: Weak<Dispatcher>) -> Destinations {
        Destinations {
            functions,
            dispatcher,
        }
    }
}

/// Whether `when` follows an outcome of this status.
fn matches(when: OutcomeWhen, status: InvocationStatus) -> bool {
    let success = match status {
        InvocationStatus::Succeeded => true,
        InvocationStatus::Failed | InvocationStatus::TimedOut => false,
        _ => return false,
    };
    match when {
        OutcomeWhen::Any => true,
        OutcomeWhen::Success => success,
        OutcomeWhen::Failure => !success,
    }
}

/// The event of a destination run.
fn outcome_event(record: &InvocationRecord) -> String {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "trigger": "outcome",
        "function": record.function.as_str(),
        "invocation": {
            "id": record.id,
            "status": record.status.as_str(),
            "event": parse(&record.input),
            "output": record.output.as_deref().map(parse),
            "error": record.error,
            "attempts": record.attempts,
        },
    })
    .to_string()
}

impl Destinations {
    /// The `outcome` triggers (function, index) that follow `record`.
    fn targets(&self, record: &InvocationRecord) -> Vec<(String, usize)> {
        let mut targets = Vec::new();
        if record.mode != InvocationMode::Async {
            return targets;
        }
        for d in self.functions.with_triggers() {
            let name = d.record.name.to_string();
            for (i, t) in d.record.triggers.iter().enumerate() {
                if let TriggerRecord::Outcome { function, when } = t
                    && function.as_str() == record.function.as_str()
                    && matches(*when, record.status)
                {
                    targets.push((name.clone(), i));
                }
            }
        }
        targets
    }
}

impl OutcomeSink for Destinations {
    fn follows(&self, record: &InvocationRecord) -> bool {
        !self.targets(record).is_empty()
    }

    fn finished(
        &self,
        record: &InvocationRecord,
    ) -> Option<BoxFuture<'static, Result<(), String>>> {
        let targets = self.targets(record);
        if targets.is_empty() {
            return None;
        }
        let dispatcher = self.dispatcher.upgrade()?;
        let event = outcome_event(record);
        let ms = record.finished_at_ms.unwrap_or(record.created_at_ms);
        let source = record.id.clone();
        let (token, user) = (record.token.clone(), record.user.clone());
        Some(Box::pin(async move {
            let mut failed = Vec::new();
            for (target, index) in targets {
                let start = AsyncStart {
                    id: Some(derived_id(
                        ms,
                        format!("outcome\0{target}\0{index}\0{source}").as_bytes(),
                    )),
                    token: token.clone(),
                    user: user.clone(),
                };
                if let Err(e) = dispatcher
                    .invoke_async_as(&target, event.clone(), start)
                    .await
                {
                    failed.push(format!("{target}: {e}"));
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "destination runs not queued: {}",
                    failed.join("; ")
                ))
            }
        }))
    }
}
