//! The memory budget for resident documents, shared by every query worker of
//! the runtime: which worker holds which shard at which version, how many
//! bytes it takes, and which shards go first when room is needed (the least
//! recently used).
//!
//! Rust is the authority. A worker keeps a shard's documents only when told to
//! (with a byte allowance it must stay within) and forgets them when told to
//! (a drop list in its next frame). Sizes are the workers' own estimates of
//! the decoded Python objects (`sys.getsizeof` over a sample of each batch).
//! A shard that cannot get room is streamed without being kept.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use crate::lock;
use crate::pool::Pool;
use crate::protocol::ShardKey;

pub(crate) struct Cache {
    budget: u64,
    per_worker: u64,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    used: u64,
    clock: u64,
    holders: HashMap<u64, Holder>,
}

/// One query worker's resident shards.
struct Holder {
    pool: Weak<Pool>,
    used: u64,
    entries: HashMap<ShardKey, Entry>,
    /// Evicted shards the worker has not been told about yet.
    drops: Vec<(ShardKey, u64)>,
}

struct Entry {
    version: u64,
    bytes: u64,
    last_used: u64,
    /// Used by the running query: not to be evicted under it.
    pinned: bool,
    /// Being streamed in; `bytes` is the reservation.
    building: bool,
}

impl Cache {
    /// `budget` bytes in all; one worker holds at most its share of them.
    pub(crate) fn new(budget: u64, workers: usize) -> Cache {
        let workers = u64::try_from(workers.max(1)).unwrap_or(u64::MAX);
        Cache {
            budget,
            per_worker: budget / workers,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// The most one worker may hold.
    pub(crate) fn per_worker(&self) -> u64 {
        self.per_worker
    }

    pub(crate) fn register(&self, uid: u64, pool: Weak<Pool>) {
        lock(&self.ledger).holders.insert(
            uid,
            Holder {
                pool,
                used: 0,
                entries: HashMap::new(),
                drops: Vec::new(),
            },
        );
    }

    /// The worker is gone, and its memory with it.
    pub(crate) fn forget(&self, uid: u64) {
        let mut ledger = lock(&self.ledger);
        if let Some(holder) = ledger.holders.remove(&uid) {
            ledger.used -= holder.used;
        }
    }

    /// Which of `uids` holds `key` at `version`, without touching the entry
    /// (for placing a query's shards).
    pub(crate) fn holder_among(&self, uids: &[u64], key: &ShardKey, version: u64) -> Option<usize> {
        let ledger = lock(&self.ledger);
        uids.iter().position(|uid| {
            ledger
                .holders
                .get(uid)
                .and_then(|h| h.entries.get(key))
                .is_some_and(|e| e.version == version && !e.building)
        })
    }

    /// True when worker `uid` holds `key` at `version`; the entry is then
    /// pinned until `end_query`. An entry at another version is evicted.
    pub(crate) fn lookup(&self, uid: u64, key: &ShardKey, version: u64) -> bool {
        let mut ledger = lock(&self.ledger);
        ledger.clock += 1;
        let clock = ledger.clock;
        let Some(holder) = ledger.holders.get_mut(&uid) else {
            return false;
        };
        match holder.entries.get_mut(key) {
            Some(entry) if entry.version == version && !entry.building => {
                entry.last_used = clock;
                entry.pinned = true;
                true
            }
            Some(_) => {
                let freed = holder.evict(key);
                ledger.used -= freed;
                false
            }
            None => false,
        }
    }

    /// Makes room for `want` bytes of `key` (at `version`) in worker `uid`,
    /// evicting least recently used shards that no running query uses.
    /// Returns the allowance: `want`, or 0 when the shard is not to be kept.
    pub(crate) fn reserve(&self, uid: u64, key: &ShardKey, version: u64, want: u64) -> u64 {
        let mut victims: Vec<Weak<Pool>> = Vec::new();
        let granted = {
            let mut ledger = lock(&self.ledger);
            ledger.reserve(self, uid, key, version, want, &mut victims)
        };
        // Evicted shards of idle workers are freed now, not at their next query.
        if !victims.is_empty()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            for pool in victims {
                handle.spawn(async move {
                    if let Some(pool) = pool.upgrade() {
                        pool.deliver_drops().await;
                    }
                });
            }
        }
        granted
    }

    /// The worker kept `key` in `bytes` (0: it did not keep it).
    pub(crate) fn settle(&self, uid: u64, key: &ShardKey, bytes: u64) {
        let mut ledger = lock(&self.ledger);
        ledger.clock += 1;
        let clock = ledger.clock;
        let Some(holder) = ledger.holders.get_mut(&uid) else {
            return;
        };
        let Some(entry) = holder.entries.get_mut(key) else {
            return;
        };
        let old = entry.bytes;
        if bytes == 0 {
            holder.entries.remove(key);
        } else {
            entry.bytes = bytes;
            entry.building = false;
            entry.last_used = clock;
        }
        holder.used = holder.used - old + bytes;
        ledger.used = ledger.used - old + bytes;
    }

    /// The worker will not keep `key` (it ran past its allowance).
    pub(crate) fn release(&self, uid: u64, key: &ShardKey) {
        let mut ledger = lock(&self.ledger);
        let Some(holder) = ledger.holders.get_mut(&uid) else {
            return;
        };
        if holder.entries.get(key).is_some_and(|e| e.building) {
            let freed = holder.entries.remove(key).map_or(0, |e| e.bytes);
            holder.used -= freed;
            ledger.used -= freed;
        }
    }

    /// The query on worker `uid` is over: unpins its shards. Shards still
    /// being built were abandoned (the worker dropped them, or is told to).
    pub(crate) fn end_query(&self, uid: u64) {
        let mut ledger = lock(&self.ledger);
        let Some(holder) = ledger.holders.get_mut(&uid) else {
            return;
        };
        let abandoned: Vec<ShardKey> = holder
            .entries
            .iter()
            .filter(|(_, e)| e.building)
            .map(|(k, _)| k.clone())
            .collect();
        let mut freed = 0;
        for key in &abandoned {
            freed += holder.evict(key);
        }
        for entry in holder.entries.values_mut() {
            entry.pinned = false;
        }
        ledger.used -= freed;
    }

    /// Evicted shards worker `uid` must forget: `(key, version)`.
    pub(crate) fn take_drops(&self, uid: u64) -> Vec<(ShardKey, u64)> {
        lock(&self.ledger)
            .holders
            .get_mut(&uid)
            .map(|h| std::mem::take(&mut h.drops))
            .unwrap_or_default()
    }

    /// Bytes worker `uid` still holds.
    pub(crate) fn held(&self, uid: u64) -> u64 {
        lock(&self.ledger).holders.get(&uid).map_or(0, |h| h.used)
    }

    /// Bytes held in all (for tests and metrics).
    #[cfg(test)]
    fn used(&self) -> u64 {
        lock(&self.ledger).used
    }
}

impl Ledger {
    fn reserve(
        &mut self,
        cache: &Cache,
        uid: u64,
        key: &ShardKey,
        version: u64,
        want: u64,
        victims: &mut Vec<Weak<Pool>>,
    ) -> u64 {
        if want == 0 || want > cache.per_worker || !self.holders.contains_key(&uid) {
            return 0;
        }
        if let Some(holder) = self.holders.get_mut(&uid)
            && holder.entries.contains_key(key)
        {
            let freed = holder.evict(key);
            self.used -= freed;
        }
        // Enough evictable room, in the worker's share and in all? Check
        // before evicting anything.
        let holder = &self.holders[&uid];
        let own_free =
            cache.per_worker - holder.used.min(cache.per_worker) + holder.evictable_bytes();
        let all_free = cache.budget - self.used.min(cache.budget)
            + self
                .holders
                .values()
                .map(Holder::evictable_bytes)
                .sum::<u64>();
        if own_free < want || all_free < want {
            return 0;
        }
        while self.holders[&uid].used + want > cache.per_worker {
            if !self.evict_oldest(Some(uid), victims) {
                return 0;
            }
        }
        while self.used + want > cache.budget {
            if !self.evict_oldest(None, victims) {
                return 0;
            }
            // Another worker's shards go all at once: a worker left with
            // nothing is replaced, which returns its memory to the system
            // before this shard is loaded (Python keeps freed memory, so
            // dropping shards one by one would leave both copies resident).
            self.empty_victims(uid);
        }
        self.clock += 1;
        let clock = self.clock;
        let Some(holder) = self.holders.get_mut(&uid) else {
            return 0;
        };
        holder.entries.insert(
            key.clone(),
            Entry {
                version,
                bytes: want,
                last_used: clock,
                pinned: true,
                building: true,
            },
        );
        holder.used += want;
        self.used += want;
        want
    }

    /// Evicts the least recently used unpinned shard, of worker `only` or of
    /// any worker. False when there is none.
    fn evict_oldest(&mut self, only: Option<u64>, victims: &mut Vec<Weak<Pool>>) -> bool {
        let oldest = self
            .holders
            .iter()
            .filter(|(uid, _)| only.is_none_or(|o| o == **uid))
            .flat_map(|(uid, h)| {
                h.entries
                    .iter()
                    .filter(|(_, e)| !e.pinned && !e.building)
                    .map(move |(k, e)| (e.last_used, *uid, k))
            })
            .min_by_key(|(last_used, _, _)| *last_used)
            .map(|(_, uid, k)| (uid, k.clone()));
        let Some((uid, key)) = oldest else {
            return false;
        };
        let Some(holder) = self.holders.get_mut(&uid) else {
            return false;
        };
        let freed = holder.evict(&key);
        self.used -= freed;
        if !victims.iter().any(|p| p.ptr_eq(&holder.pool)) {
            victims.push(holder.pool.clone());
        }
        true
    }
}

impl Ledger {
    /// Empties every worker other than `requester` that lost a shard in this
    /// reservation, of all its other evictable shards.
    fn empty_victims(&mut self, requester: u64) {
        let mut freed_all = 0;
        for (uid, holder) in self.holders.iter_mut() {
            if *uid == requester || holder.drops.is_empty() {
                continue;
            }
            let keys: Vec<ShardKey> = holder
                .entries
                .iter()
                .filter(|(_, e)| !e.pinned && !e.building)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                freed_all += holder.evict(&key);
            }
        }
        self.used -= freed_all;
    }
}

impl Holder {
    /// Removes an entry and queues its drop for the worker; returns its bytes.
    fn evict(&mut self, key: &ShardKey) -> u64 {
        let Some(entry) = self.entries.remove(key) else {
            return 0;
        };
        self.used -= entry.bytes;
        self.drops.push((key.clone(), entry.version));
        entry.bytes
    }

    fn evictable_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| !e.pinned && !e.building)
            .map(|e| e.bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(shard: u32) -> ShardKey {
        ("ds".to_string(), shard)
    }

    #[test]
    fn reserves_settles_and_hits() {
        let cache = Cache::new(1000, 2);
        cache.register(1, Weak::new());
        assert!(!cache.lookup(1, &key(0), 1));
        assert_eq!(cache.reserve(1, &key(0), 1, 300), 300);
        cache.settle(1, &key(0), 250);
        cache.end_query(1);
        assert_eq!(cache.used(), 250);
        assert!(cache.lookup(1, &key(0), 1));
        // Another version is a miss and evicts the old one.
        cache.end_query(1);
        assert!(!cache.lookup(1, &key(0), 2));
        assert_eq!(cache.take_drops(1), vec![(key(0), 1)]);
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn evicts_the_least_recently_used_unpinned() {
        let cache = Cache::new(1000, 2);
        cache.register(1, Weak::new());
        cache.register(2, Weak::new());
        for shard in 0..2 {
            assert_eq!(cache.reserve(1, &key(shard), 1, 200), 200);
            cache.settle(1, &key(shard), 200);
        }
        cache.end_query(1);
        assert!(cache.lookup(1, &key(0), 1)); // touched: shard 1 is older
        cache.end_query(1);
        // Worker 1's share is 500: 400 held, 200 more evicts shard 1.
        assert_eq!(cache.reserve(1, &key(2), 1, 200), 200);
        assert_eq!(cache.take_drops(1), vec![(key(1), 1)]);
        cache.settle(1, &key(2), 200);
        // Pinned shards are not evicted: no room, no keeping.
        assert!(cache.lookup(1, &key(0), 1));
        assert!(cache.lookup(1, &key(2), 1));
        assert_eq!(cache.reserve(1, &key(3), 1, 200), 0);
        assert!(cache.take_drops(1).is_empty());
        // More than a worker's share is never kept.
        assert_eq!(cache.reserve(2, &key(9), 1, 501), 0);
        cache.end_query(1);
    }

    #[test]
    fn abandoned_and_released_reservations_free_their_room() {
        let cache = Cache::new(1000, 1);
        cache.register(1, Weak::new());
        assert_eq!(cache.reserve(1, &key(0), 1, 400), 400);
        cache.release(1, &key(0));
        assert_eq!(cache.used(), 0);
        assert_eq!(cache.reserve(1, &key(1), 1, 400), 400);
        cache.end_query(1);
        assert_eq!(cache.used(), 0);
        assert_eq!(cache.take_drops(1), vec![(key(1), 1)]);
        cache.register(2, Weak::new());
        assert_eq!(cache.reserve(2, &key(1), 1, 400), 400);
        cache.forget(2);
        assert_eq!(cache.used(), 0);
    }
}
