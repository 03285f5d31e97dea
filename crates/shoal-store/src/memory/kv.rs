//! The key-value store: entries by key, an expiry index, and one version
//! counter for the whole store.
//!
//! Expired entries stay in the maps until `kv_sweep` (or a write of the
//! key) removes them; every read compares `expires_at_ms` with its own
//! `now_ms`, so an expired entry is absent at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::{Kv, KvCondition, KvEntry, KvIncr, KvPage, KvSet, Pending, kv_integer};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct KvState {
    entries: BTreeMap<String, KvEntry>,
    /// (expires_at_ms, key) of every entry with an expiry.
    expiry: BTreeSet<(u64, String)>,
    /// The last version given out (store-wide).
    version: u64,
}

impl KvState {
    fn live(&self, key: &str, now_ms: u64) -> Option<&KvEntry> {
        self.entries.get(key).filter(|e| e.live_at(now_ms))
    }

    fn remove(&mut self, key: &str) -> Option<KvEntry> {
        let old = self.entries.remove(key)?;
        if let Some(at) = old.expires_at_ms {
            self.expiry.remove(&(at, key.to_string()));
        }
        Some(old)
    }

    /// Stores a new value of `key` with the next version.
    fn write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> KvEntry {
        self.remove(key);
        self.version += 1;
        let entry = KvEntry {
            key: key.to_string(),
            value,
            version: self.version,
            expires_at_ms,
            updated_at_ms: now_ms,
        };
        if let Some(at) = expires_at_ms {
            self.expiry.insert((at, key.to_string()));
        }
        self.entries.insert(key.to_string(), entry.clone());
        entry
    }
}

impl Kv for MemoryStore {
    fn kv_get(&self, key: &str, now_ms: u64) -> Pending<Option<KvEntry>> {
        self.run(|s| Ok(s.kv.live(key, now_ms).cloned()))
    }

    fn kv_set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: KvCondition,
        now_ms: u64,
    ) -> Pending<KvSet> {
        self.run(|s| {
            let current = s.kv.live(key, now_ms);
            let holds = match cond {
                KvCondition::Always => true,
                KvCondition::Absent => current.is_none(),
                KvCondition::Present => current.is_some(),
                KvCondition::Version(v) => current.is_some_and(|e| e.version == v),
            };
            if !holds {
                let current = current.cloned();
                return Ok(KvSet::Refused { current });
            }
            let expires = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
            Ok(KvSet::Written(s.kv.write(key, value, expires, now_ms)))
        })
    }

    fn kv_incr(&self, key: &str, by: i64, now_ms: u64) -> Pending<KvIncr> {
        self.run(|s| {
            let current = s.kv.live(key, now_ms).cloned();
            let (old, expires) = match &current {
                None => (0, None),
                Some(c) => match kv_integer(&c.value) {
                    Some(n) => (n, c.expires_at_ms),
                    None => {
                        let current = c.clone();
                        return Ok(KvIncr::NotInteger { current });
                    }
                },
            };
            let sum = match (old.checked_add(by), current) {
                (Some(sum), _) => sum,
                (None, Some(current)) => return Ok(KvIncr::Overflow { current }),
                // 0 + by never overflows.
                (None, None) => by,
            };
            let value = sum.to_string().into_bytes();
            Ok(KvIncr::Written(s.kv.write(key, value, expires, now_ms)))
        })
    }

    fn kv_delete(&self, key: &str, version: Option<u64>, now_ms: u64) -> Pending<bool> {
        self.run(|s| {
            let matches =
                s.kv.live(key, now_ms)
                    .map(|e| version.is_none_or(|v| v == e.version));
            match matches {
                Some(true) => Ok(s.kv.remove(key).is_some()),
                Some(false) => Ok(false),
                None => {
                    // Absent, or expired: an expired entry goes now.
                    s.kv.remove(key);
                    Ok(false)
                }
            }
        })
    }

    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Pending<KvPage> {
        self.run(|s| {
            let limit = limit.max(1);
            let start = match after {
                Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
                _ => Bound::Included(prefix.to_string()),
            };
            let mut page = KvPage::default();
            for (seen, (key, entry)) in s.kv.entries.range((start, Bound::Unbounded)).enumerate() {
                if !key.starts_with(prefix) {
                    break;
                }
                if seen == limit {
                    // Another key of the prefix follows.
                    return Ok(page);
                }
                page.next = Some(key.clone());
                if entry.live_at(now_ms) {
                    page.entries.push(entry.clone());
                }
            }
            page.next = None;
            Ok(page)
        })
    }

    fn kv_sweep(&self, now_ms: u64, max: usize) -> Pending<u64> {
        self.run(|s| {
            let due: Vec<String> =
                s.kv.expiry
                    .iter()
                    .take_while(|(at, _)| *at <= now_ms)
                    .take(max)
                    .map(|(_, key)| key.clone())
                    .collect();
            for key in &due {
                s.kv.remove(key);
            }
            Ok(due.len() as u64)
        })
    }
}
