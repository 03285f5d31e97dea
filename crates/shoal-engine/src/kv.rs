//! The key-value store (`/v1/kv/{key}`): checks keys, values and ttls,
//! maps the store's [`Kv`](shoal_store::Kv) outcomes to typed results and
//! sweeps expired entries on a timer the engine's tasks own.
//!
//! Rules, said in the errors:
//! - a key is 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 with no control
//!   characters (`/` is allowed; in a URL path it is sent as `%2F`);
//! - a value is JSON text of at most [`MAX_VALUE_BYTES`] bytes, nesting at
//!   most [`MAX_DOC_DEPTH`](crate::MAX_DOC_DEPTH) levels (like documents);
//!   surrounding whitespace is not kept;
//! - a ttl is 1 ms to 10 years.
//!
//! A write refused by its condition (`nx`, `xx`, a version) is a
//! `Conflict::KeyVersion` that names the current version; `incr` of a value
//! that is not an integer (or would overflow) is `Conflict::NotAnInteger`.
//! Expired entries are absent for every call from their `expires_at_ms` on,
//! whether or not the sweep has removed them yet (the store's rule).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use shoal_store::{KvCondition, KvEntry, KvIncr, KvPage, KvSet};

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Result};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The largest value, in bytes of JSON text.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The longest ttl.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The most entries one list call answers.
pub const MAX_KV_LIST: usize = 1_000;
/// How often expired entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Entries removed per sweep step.
const SWEEP_STEP: usize = 1_000;

/// When a [`Kv::set`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvWhen {
    /// Whatever is stored.
    #[default]
    Always,
    /// Only when the key is absent (`nx`).
    Absent,
    /// Only when the key is present (`xx`).
    Present,
    /// Only when the key is at this version (compare-and-set).
    Version(u64),
}

/// The key-value service.
pub(crate) struct Kv {
    env: Arc<Env>,
}

impl Kv {
    pub(crate) fn new(env: Arc<Env>) -> Kv {
        Kv { env }
    }

    /// The live entry of `key`.
    pub(crate) async fn get(&self, key: &str) -> Result<KvEntry> {
        check_key(key)?;
        let now = self.env.now_ms();
        self.env
            .backend
            .kv
            .kv_get(key, now)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Key, key))
    }

    /// Stores `value` (JSON text) under `key` when `when` holds.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        when: KvWhen,
    ) -> Result<KvEntry> {
        self.set_if(key, value, ttl, when)
            .await?
            .map_err(|current| refused(key, when, current.as_ref()))
    }

    /// [`Kv::set`], with a refused condition as `Ok(Err(current entry))`
    /// (what `ctx.kv_set` answers) instead of a conflict.
    pub(crate) async fn set_if(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        when: KvWhen,
    ) -> Result<std::result::Result<KvEntry, Option<KvEntry>>> {
        check_key(key)?;
        let value = check_value(value)?;
        let ttl_ms = ttl.map(check_ttl).transpose()?;
        self.env.accepting()?;
        let cond = match when {
            KvWhen::Always => KvCondition::Always,
            KvWhen::Absent => KvCondition::Absent,
            KvWhen::Present => KvCondition::Present,
            KvWhen::Version(v) => KvCondition::Version(v),
        };
        let now = self.env.now_ms();
        Ok(
            match self
                .env
                .backend
                .kv
                .kv_set(key, value.to_vec(), ttl_ms, cond, now)
                .await?
            {
                KvSet::Written(e) => Ok(e),
                KvSet::Refused { current } => Err(current),
            },
        )
    }

    /// Deletes `key` when present (and at `version` when given); false
    /// otherwise (what `ctx.kv_delete` answers).
    pub(crate) async fn delete_if(&self, key: &str, version: Option<u64>) -> Result<bool> {
        check_key(key)?;
        self.env.accepting()?;
        let now = self.env.now_ms();
        Ok(self.env.backend.kv.kv_delete(key, version, now).await?)
    }

    /// Adds `by` to the integer value of `key` (absent counts as 0).
    pub(crate) async fn incr(&self, key: &str, by: i64) -> Result<KvEntry> {
        check_key(key)?;
        self.env.accepting()?;
        let now = self.env.now_ms();
        match self.env.backend.kv.kv_incr(key, by, now).await? {
            KvIncr::Written(e) => Ok(e),
            KvIncr::NotInteger { current } => Err(Error::conflict(
                Conflict::NotAnInteger,
                format!(
                    "key `{key}` holds a value that is not an integer (version {}); incr adds only to a JSON integer such as 42",
                    current.version
                ),
            )),
            KvIncr::Overflow { current } => Err(Error::conflict(
                Conflict::NotAnInteger,
                format!(
                    "adding {by} to key `{key}` (version {}) would not fit in a 64-bit integer",
                    current.version
                ),
            )),
        }
    }

    /// Deletes `key` (only at `version` when given).
    pub(crate) async fn delete(&self, key: &str, version: Option<u64>) -> Result<()> {
        check_key(key)?;
        self.env.accepting()?;
        let now = self.env.now_ms();
        if self.env.backend.kv.kv_delete(key, version, now).await? {
            return Ok(());
        }
        if let Some(want) = version
            && let Some(current) = self.env.backend.kv.kv_get(key, now).await?
        {
            return Err(Error::conflict(
                Conflict::KeyVersion,
                format!(
                    "key `{key}` is at version {}, not {want}; nothing was deleted",
                    current.version
                ),
            ));
        }
        Err(Error::not_found(Entity::Key, key))
    }

    /// Live entries whose key starts with `prefix`, after `cursor`.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KvPage> {
        check_listing(prefix, cursor, limit, MAX_KEY_BYTES, MAX_KV_LIST)?;
        let now = self.env.now_ms();
        let mut page = self
            .env
            .backend
            .kv
            .kv_list(prefix, crate::user_cursor(prefix, cursor), limit, now)
            .await?;
        page.entries.retain(|e| !crate::is_internal_key(&e.key));
        Ok(page)
    }

    /// Starts the sweep of expired entries on the engine's tasks.
    pub(crate) fn start_sweep(env: Arc<Env>) {
        let tasks = env.tasks.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                    _ = env.tasks.stopping() => return,
                }
                sweep(&env).await;
            }
        });
    }
}

/// Removes expired entries, a step at a time, until a step removes fewer
/// than it could. Returns how many it removed.
pub(crate) async fn sweep(env: &Env) -> u64 {
    let mut removed = 0;
    while !env.tasks.is_stopping() {
        match env.backend.kv.kv_sweep(env.now_ms(), SWEEP_STEP).await {
            Ok(n) => {
                removed += n;
                if n < SWEEP_STEP as u64 {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "Removing expired key-value entries failed; the next sweep tries again.");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    removed
}

fn refused(key: &str, when: KvWhen, current: Option<&KvEntry>) -> Error {
    let now = match current {
        Some(e) => format!("it is at version {}", e.version),
        None => "it is absent".to_string(),
    };
    let message = match when {
        KvWhen::Absent => format!("key `{key}` exists (nx); {now}"),
        KvWhen::Present => format!("key `{key}` is absent (xx); nothing was written"),
        KvWhen::Version(v) => format!("key `{key}` is not at version {v}; {now}"),
        // A write without a condition is never refused.
        KvWhen::Always => format!("key `{key}` was not written; {now}"),
    };
    Error::conflict(Conflict::KeyVersion, message)
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<()> {
    check_key_within(key, MAX_KEY_BYTES)
}

/// The arguments of a listing by key prefix (key-value entries, blobs):
/// a prefix no longer than a key, a cursor that is a key, 1 to `max_list`.
pub(crate) fn check_listing(
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    max_key: usize,
    max_list: usize,
) -> Result<()> {
    if prefix.len() > max_key {
        return Err(Error::invalid(
            "prefix",
            format!("is {} bytes; at most {max_key}", prefix.len()),
        ));
    }
    if let Some(c) = cursor {
        check_key_within(c, max_key).map_err(|_| {
            Error::invalid("cursor", "is not a cursor this listing gave".to_string())
        })?;
    }
    if limit == 0 || limit > max_list {
        return Err(Error::invalid(
            "limit",
            format!("is {limit}; use 1 to {max_list}"),
        ));
    }
    Ok(())
}

/// The key rule of the key-value store and of blobs: 1 to `max` bytes of
/// UTF-8 with no control characters.
pub(crate) fn check_key_within(key: &str, max: usize) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(
            "key",
            format!("is empty; a key is 1 to {max} bytes"),
        ));
    }
    if key.len() > max {
        return Err(Error::invalid(
            "key",
            format!("is {} bytes; a key is at most {max}", key.len()),
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            "key",
            format!(
                "contains the control character U+{:04X}; a key has no control characters",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Checks a value and returns it without surrounding whitespace: JSON
/// text, at most [`MAX_VALUE_BYTES`], nested like documents.
pub fn check_value(value: &[u8]) -> Result<&[u8]> {
    let value = value.trim_ascii();
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge(format!(
            "the value is {} bytes; a value is at most {MAX_VALUE_BYTES} bytes (1 MiB) of JSON",
            value.len()
        )));
    }
    if value.is_empty() {
        return Err(Error::invalid(
            "value",
            "is empty; send one JSON value (e.g. 1, \"text\", {\"a\": 1})",
        ));
    }
    crate::check_document(value).map_err(|r| Error::invalid("value", r))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(value)
        .map_err(|e| Error::invalid("value", format!("is not one JSON value: {e}")))?;
    Ok(value)
}

/// A ttl in ms: at least 1 ms, at most [`MAX_TTL`].
fn check_ttl(ttl: Duration) -> Result<u64> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::invalid("ttl", "is under 1 ms; use at least 1ms"));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid("ttl", "is over 10 years"));
    }
    Ok(ttl.as_millis() as u64)
}
