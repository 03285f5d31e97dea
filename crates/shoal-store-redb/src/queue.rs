//! The in-memory view of the queues: which stored messages are waiting
//! (ordered by due time, then send order) and which are leased (ordered by
//! lease end). Leases live only here: the embedded store is single-node, so
//! after a restart every stored message is deliverable again.
//!
//! Waiting messages are grouped by concurrency key (messages without one
//! share the key ""): each key's messages in due order, plus the head of
//! every key in due order. A lease walks the heads, so passing over keys at
//! their limit costs one step per such key, however many messages they hold.
//!
//! The writer thread changes the set of messages after each commit (send,
//! ack, nack, dead letter, redrive, purge); `lease` and `extend` change only
//! leases, so they need no write. Bodies stay on disk and are read when a
//! message is leased.
//!
//! Each queue's totals (the monotonic counters and the number of dead
//! letters) are kept here too, as the writer last committed them: the writer
//! changes a copy while it applies a batch, writes the copy into the same
//! transaction, and publishes it here after the commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_store::{KeyLimit, QueueCounters, QueueDepth};

use crate::codec::MessageHeader;

/// All queues.
#[derive(Default)]
pub(crate) struct QueueIndex {
    queues: Mutex<HashMap<String, Queue>>,
    /// Committed totals by queue; a queue never written has none.
    totals: Mutex<HashMap<String, Totals>>,
}

/// A queue's durable totals, stored as one `queue_totals` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub counters: QueueCounters,
    /// Dead letters now (a gauge, unlike the counters).
    pub dead: u64,
}

/// (sent, acked, nacked, dead_lettered, dead).
pub(crate) type TotalsRow = (u64, u64, u64, u64, u64);

impl Totals {
    pub(crate) fn row(&self) -> TotalsRow {
        let c = &self.counters;
        (c.sent, c.acked, c.nacked, c.dead_lettered, self.dead)
    }

    pub(crate) fn from_row(row: TotalsRow) -> Totals {
        let (sent, acked, nacked, dead_lettered, dead) = row;
        Totals {
            counters: QueueCounters {
                sent,
                acked,
                nacked,
                dead_lettered,
            },
            dead,
        }
    }
}

/// A message chosen by `lease`; the caller reads its body.
pub(crate) struct Picked {
    pub id: Arc<str>,
    pub failures: u32,
    /// The concurrency key ("" for none).
    pub key: Arc<str>,
}

type Entry = (u64, u64, Arc<str>);

#[derive(Default)]
struct Queue {
    messages: HashMap<Arc<str>, Meta>,
    /// Not leased, by key: (due_ms, seq, id).
    waiting: HashMap<Arc<str>, BTreeSet<Entry>>,
    /// The first waiting message of every key: (due_ms, seq, key).
    heads: BTreeSet<Entry>,
    waiting_len: usize,
    /// Leased: (lease_until_ms, seq, id). Expired leases stay here until a
    /// `lease` call takes them again.
    leased: BTreeSet<(u64, u64, Arc<str>)>,
    /// Every message, waiting or leased: (sent_ms, seq), for the oldest age.
    ages: BTreeSet<(u64, u64)>,
}

struct Meta {
    seq: u64,
    sent_ms: u64,
    due_ms: u64,
    failures: u32,
    lease_until_ms: Option<u64>,
    key: Arc<str>,
}

impl Queue {
    /// Takes a message out of whichever ordered set holds it.
    fn unlink(&mut self, id: &Arc<str>, meta: &Meta) {
        match meta.lease_until_ms {
            Some(until) => {
                self.leased.remove(&(until, meta.seq, id.clone()));
            }
            None => self.unwait(&meta.key, &(meta.due_ms, meta.seq, id.clone())),
        }
    }

    fn wait(&mut self, key: &Arc<str>, entry: Entry) {
        let set = self.waiting.entry(key.clone()).or_default();
        if let Some(old) = set.first() {
            if (old.0, old.1) > (entry.0, entry.1) {
                self.heads.remove(&(old.0, old.1, key.clone()));
                self.heads.insert((entry.0, entry.1, key.clone()));
            }
        } else {
            self.heads.insert((entry.0, entry.1, key.clone()));
        }
        set.insert(entry);
        self.waiting_len += 1;
    }

    fn unwait(&mut self, key: &Arc<str>, entry: &Entry) {
        let Some(set) = self.waiting.get_mut(key) else {
            return;
        };
        let was_head = set.first() == Some(entry);
        if !set.remove(entry) {
            return;
        }
        self.waiting_len -= 1;
        if was_head {
            self.heads.remove(&(entry.0, entry.1, key.clone()));
            match set.first() {
                Some(next) => {
                    self.heads.insert((next.0, next.1, key.clone()));
                }
                None => {
                    self.waiting.remove(key);
                }
            }
        }
    }

    /// The first waiting message due at `now_ms` whose key `room` admits.
    fn first_due(&self, now_ms: u64, room: &impl Fn(&str) -> bool) -> Option<(Arc<str>, Entry)> {
        for (due, _, key) in &self.heads {
            if *due > now_ms {
                return None;
            }
            if room(key) {
                let entry = self.waiting.get(key)?.first()?.clone();
                return Some((key.clone(), entry));
            }
        }
        None
    }

    /// Forgets a message for good.
    fn delete(&mut self, id: &str) {
        if let Some((id, meta)) = self.messages.remove_entry(id) {
            self.unlink(&id, &meta);
            self.ages.remove(&(meta.sent_ms, meta.seq));
        }
    }

    fn next_due_ms(&self) -> Option<u64> {
        let waiting = self.heads.first().map(|e| e.0);
        let leased = self.leased.first().map(|e| e.0);
        match (waiting, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl QueueIndex {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // The index holds no invariant a panic could break halfway in a way
        // worse than losing the process, so a poisoned lock is still usable.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stored message, waiting (after a committed send or on open).
    pub(crate) fn insert(&self, queue: &str, id: &str, header: MessageHeader) {
        let mut queues = self.lock();
        let q = match queues.get_mut(queue) {
            Some(q) => q,
            None => queues.entry(queue.to_string()).or_default(),
        };
        if q.messages.contains_key(id) {
            return;
        }
        let id: Arc<str> = Arc::from(id);
        let key: Arc<str> = Arc::from(header.key.as_deref().unwrap_or(""));
        q.wait(&key, (header.due_ms, header.seq, id.clone()));
        q.ages.insert((header.sent_ms, header.seq));
        q.messages.insert(
            id,
            Meta {
                seq: header.seq,
                sent_ms: header.sent_ms,
                due_ms: header.due_ms,
                failures: header.failures,
                lease_until_ms: None,
                key,
            },
        );
    }

    /// Messages deleted by a committed ack, dead letter or purge.
    pub(crate) fn remove(&self, queue: &str, ids: &[String]) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        for id in ids {
            q.delete(id);
        }
        if q.messages.is_empty() {
            queues.remove(queue);
        }
    }

    /// The ids of a queue's leased messages (expired leases included).
    pub(crate) fn leased_ids(&self, queue: &str) -> HashSet<Arc<str>> {
        let queues = self.lock();
        queues
            .get(queue)
            .map(|q| q.leased.iter().map(|(_, _, id)| id.clone()).collect())
            .unwrap_or_default()
    }

    fn lock_totals(&self) -> MutexGuard<'_, HashMap<String, Totals>> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed totals of a queue (zero if never written).
    pub(crate) fn totals(&self, queue: &str) -> Totals {
        self.lock_totals().get(queue).copied().unwrap_or_default()
    }

    /// Totals just committed (or read on open).
    pub(crate) fn publish_totals(&self, changed: impl IntoIterator<Item = (String, Totals)>) {
        let mut totals = self.lock_totals();
        for (queue, t) in changed {
            totals.insert(queue, t);
        }
    }

    /// A message released by a committed nack: waiting again with its new state.
    pub(crate) fn release(&self, queue: &str, id: &str, due_ms: u64, failures: u32) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        let Some((id, mut meta)) = q.messages.remove_entry(id) else {
            return;
        };
        q.unlink(&id, &meta);
        meta.due_ms = due_ms;
        meta.failures = failures;
        meta.lease_until_ms = None;
        let key = meta.key.clone();
        q.wait(&key, (due_ms, meta.seq, id.clone()));
        q.messages.insert(id, meta);
    }

    /// Leases up to `max` deliverable messages: expired leases first, then
    /// waiting messages in due order, passing over keys at their `limit`.
    /// Returns them and the queue's next due time.
    pub(crate) fn lease(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> (Vec<Picked>, Option<u64>) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return (Vec::new(), None);
        };
        // Messages of each key taken by this lease.
        let mut taken_by_key: HashMap<Arc<str>, u32> = HashMap::new();
        let has_room = |key: &str, taken: &HashMap<Arc<str>, u32>| match limit {
            None => true,
            Some(_) if key.is_empty() => true,
            Some(l) => {
                let running = l.running.get(key).copied().unwrap_or(0);
                let now = taken.get(key).copied().unwrap_or(0);
                running + now < l.of(key)
            }
        };
        let mut taken = Vec::new();
        // Expired leases (rare): a walk over them only.
        let expired: Vec<Entry> = q
            .leased
            .iter()
            .take_while(|e| e.0 <= now_ms)
            .cloned()
            .collect();
        for entry in expired {
            if taken.len() >= max {
                break;
            }
            let key = q.messages.get(&entry.2).map(|m| m.key.clone());
            let key = key.unwrap_or_else(|| Arc::from(""));
            if !has_room(&key, &taken_by_key) {
                continue;
            }
            q.leased.remove(&entry);
            *taken_by_key.entry(key).or_default() += 1;
            taken.push((entry.1, entry.2));
        }
        while taken.len() < max {
            let room = |k: &str| has_room(k, &taken_by_key);
            let Some((key, entry)) = q.first_due(now_ms, &room) else {
                break;
            };
            q.unwait(&key, &entry);
            *taken_by_key.entry(key).or_default() += 1;
            taken.push((entry.1, entry.2));
        }
        let until = now_ms.saturating_add(visibility_ms);
        let mut picked = Vec::with_capacity(taken.len());
        for (seq, id) in taken {
            let meta = q.messages.get_mut(&id).expect("indexed message has meta");
            meta.lease_until_ms = Some(until);
            picked.push(Picked {
                id: id.clone(),
                failures: meta.failures,
                key: meta.key.clone(),
            });
            q.leased.insert((until, seq, id));
        }
        (picked, q.next_due_ms())
    }

    /// Moves the lease end of a leased message; does nothing to others.
    pub(crate) fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        let Some((id, meta)) = q.messages.get_key_value(id) else {
            return;
        };
        let Some(old) = meta.lease_until_ms else {
            return;
        };
        let (id, seq) = (id.clone(), meta.seq);
        q.leased.remove(&(old, seq, id.clone()));
        q.leased.insert((lease_until_ms, seq, id.clone()));
        if let Some(meta) = q.messages.get_mut(&id) {
            meta.lease_until_ms = Some(lease_until_ms);
        }
    }

    /// Waiting and leased counts, the oldest message's send time and the
    /// dead letters. An expired lease counts as in flight until a `lease`
    /// call takes the message again.
    pub(crate) fn depth(&self, queue: &str) -> QueueDepth {
        let mut depth = {
            let queues = self.lock();
            queues
                .get(queue)
                .map(|q| QueueDepth {
                    waiting: q.waiting_len as u64,
                    in_flight: q.leased.len() as u64,
                    dead: 0,
                    oldest_sent_ms: q.ages.first().map(|(sent_ms, _)| *sent_ms),
                })
                .unwrap_or_default()
        };
        depth.dead = self.totals(queue).dead;
        depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(due_ms: u64, seq: u64) -> MessageHeader {
        MessageHeader {
            due_ms,
            failures: 0,
            starts: 0,
            seq,
            sent_ms: 1_000 - seq,
            key: None,
        }
    }

    fn lease_ids(index: &QueueIndex, now: u64, max: usize) -> Vec<String> {
        let (picked, _) = index.lease("q", now, max, 100, None);
        picked.iter().map(|p| p.id.to_string()).collect()
    }

    #[test]
    fn expired_leases_first_then_due_order() {
        let index = QueueIndex::default();
        index.insert("q", "a", header(10, 1));
        index.insert("q", "b", header(5, 2));
        index.insert("q", "c", header(5, 3));
        assert_eq!(lease_ids(&index, 10, 1), ["b"]);
        index.insert("q", "d", header(0, 4));
        // b's lease (until 110) expired at 200: it comes before waiting d.
        assert_eq!(lease_ids(&index, 200, 2), ["b", "d"]);
        assert_eq!(lease_ids(&index, 200, 10), ["c", "a"]);
        assert_eq!(
            index.depth("q"),
            QueueDepth {
                waiting: 0,
                in_flight: 4,
                dead: 0,
                oldest_sent_ms: Some(996),
            }
        );
        let leased: BTreeSet<String> = index
            .leased_ids("q")
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(leased.len(), 4);
        index.remove("q", &["d".to_string(), "nope".to_string()]);
        assert_eq!(index.depth("q").oldest_sent_ms, Some(997));
        index.remove("q", &["a".to_string(), "b".to_string(), "c".to_string()]);
        assert!(index.lock().is_empty(), "empty queues are dropped");
        assert_eq!(index.depth("q"), QueueDepth::default());
    }
}
