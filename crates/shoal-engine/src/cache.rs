//! The result cache of synchronous invocations (`[cache]` of `shoal.toml`).
//!
//! Key: the function version and the event's canonical JSON (object keys
//! sorted, no insignificant whitespace: `serde_json::Value` keeps objects
//! in a sorted map, the workspace does not enable `preserve_order`), so
//! `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are one entry. Value: the
//! successful result's JSON text; failures are never cached.
//!
//! Each function version (`name@version`) has its own least-recently-used
//! list, bounded by the bytes of its keys and results (`max_bytes`); an
//! entry expires `ttl_ms` after it was stored, by the engine clock. A
//! deploy, a rollback or the removal of a function drops the entries of all
//! its versions.
//!
//! The cache is per node, in memory: nodes sharing a store each keep their
//! own, and a restart empties it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shoal_store::CacheSettings;

/// Bytes counted for an entry beyond its key and result (maps, timestamps).
const ENTRY_OVERHEAD: u64 = 96;

/// The canonical JSON of an event, or `None` when it is not JSON (such
/// events are not cached).
pub(crate) fn canonical(event: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(event)
        .ok()
        .map(|v| v.to_string())
}

/// Every function version's cached results on this node, by `name@version`.
#[derive(Default)]
pub(crate) struct ResultCache {
    functions: Mutex<HashMap<String, FunctionCache>>,
}

/// One function version's entries.
#[derive(Default)]
struct FunctionCache {
    bytes: u64,
    /// Bumped on every use; orders `recent`.
    tick: u64,
    entries: HashMap<String, Entry>,
    /// Least recently used first: tick → key.
    recent: BTreeMap<u64, String>,
}

struct Entry {
    output: String,
    expires_ms: u64,
    tick: u64,
    size: u64,
}

impl FunctionCache {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.recent.remove(&e.tick);
            self.bytes -= e.size;
        }
    }
}

impl ResultCache {
    /// The cached result of `key` for `version` (`name@version`), if fresh
    /// at `now_ms`.
    pub(crate) fn get(&self, version: &str, key: &str, now_ms: u64) -> Option<String> {
        let mut functions = self.functions.lock().unwrap();
        let f = functions.get_mut(version)?;
        let entry = f.entries.get(key)?;
        if entry.expires_ms <= now_ms {
            f.remove(key);
            return None;
        }
        let old = entry.tick;
        f.tick += 1;
        let tick = f.tick;
        let entry = f.entries.get_mut(key)?;
        entry.tick = tick;
        let output = entry.output.clone();
        if let Some(k) = f.recent.remove(&old) {
            f.recent.insert(tick, k);
        }
        Some(output)
    }

    /// Stores a successful result, evicting the least recently used entries
    /// of the function beyond its size. A result larger than the whole
    /// cache is not stored.
    pub(crate) fn put(
        &self,
        version: &str,
        settings: CacheSettings,
        key: String,
        output: String,
        now_ms: u64,
    ) {
        let size = (key.len() + output.len()) as u64 + ENTRY_OVERHEAD;
        if size > settings.max_bytes {
            return;
        }
        let mut functions = self.functions.lock().unwrap();
        let f = functions.entry(version.to_string()).or_default();
        f.remove(&key);
        while f.bytes + size > settings.max_bytes {
            let Some((_, oldest)) = f.recent.pop_first() else {
                break;
            };
            if let Some(e) = f.entries.remove(&oldest) {
                f.bytes -= e.size;
            }
        }
        f.tick += 1;
        let tick = f.tick;
        f.recent.insert(tick, key.clone());
        f.entries.insert(
            key,
            Entry {
                output,
                expires_ms: now_ms.saturating_add(settings.ttl_ms),
                tick,
                size,
            },
        );
        f.bytes += size;
    }

    /// Drops the entries of every version of a function (deployed anew,
    /// rolled back or removed).
    pub(crate) fn forget(&self, function: &str) {
        let prefix = format!("{function}@");
        self.functions
            .lock()
            .unwrap()
            .retain(|version, _| !version.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canonical("{ \"b\": [1, {\"d\":1,\"c\":2}], \"a\": null }").unwrap(),
            r#"{"a":null,"b":[1,{"c":2,"d":1}]}"#
        );
        assert_eq!(canonical("not json"), None);
    }

    #[test]
    fn lru_by_bytes() {
        let c = ResultCache::default();
        let s = CacheSettings {
            ttl_ms: 1000,
            max_bytes: 3 * (ENTRY_OVERHEAD + 2),
        };
        for k in ["a", "b", "c"] {
            c.put("f@1", s, k.into(), "1".into(), 0);
        }
        assert!(c.get("f@1", "a", 0).is_some());
        c.put("f@1", s, "d".into(), "1".into(), 0);
        assert!(c.get("f@1", "b", 0).is_none(), "b was the least recent");
        assert!(c.get("f@1", "a", 0).is_some());
        assert!(c.get("f@1", "d", 0).is_some());
        assert!(c.get("f@1", "a", 1000).is_none(), "expired");
        assert!(c.get("f@2", "c", 0).is_none(), "another version");
        assert!(c.get("f@1", "c", 0).is_some());
        c.forget("f");
        assert!(c.get("f@1", "c", 0).is_none(), "forgotten");
    }
}
