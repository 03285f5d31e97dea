//! The in-memory view of the queues: which stored messages are waiting
//! (ordered by due time, then send order) and which are leased (ordered by
//! lease end). Leases live only here: the embedded store is single-node, so
//! after a restart every stored message is deliverable again.
//!
//! The writer thread changes the set of messages after each commit (send,
//! ack, nack); `lease` and `extend` change only leases, so they need no
//! write. Bodies stay on disk and are read when a message is leased.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_store::QueueDepth;

use crate::codec::MessageHeader;

/// All queues.
#[derive(Default)]
pub(crate) struct QueueIndex {
    queues: Mutex<HashMap<String, Queue>>,
}

/// A message chosen by `lease`; the caller reads its body.
pub(crate) struct Picked {
    pub id: Arc<str>,
    pub failures: u32,
}

#[derive(Default)]
struct Queue {
    messages: HashMap<Arc<str>, Meta>,
    /// Not leased: (due_ms, seq, id).
    waiting: BTreeSet<(u64, u64, Arc<str>)>,
    /// Leased: (lease_until_ms, seq, id). Expired leases stay here until a
    /// `lease` call takes them again.
    leased: BTreeSet<(u64, u64, Arc<str>)>,
}

struct Meta {
    seq: u64,
    due_ms: u64,
    failures: u32,
    lease_until_ms: Option<u64>,
}

impl Queue {
    /// Takes a message out of whichever ordered set holds it.
    fn unlink(&mut self, id: &Arc<str>, meta: &Meta) {
        match meta.lease_until_ms {
            Some(until) => self.leased.remove(&(until, meta.seq, id.clone())),
            None => self.waiting.remove(&(meta.due_ms, meta.seq, id.clone())),
        };
    }

    fn next_due_ms(&self) -> Option<u64> {
        let waiting = self.waiting.first().map(|e| e.0);
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
        q.waiting.insert((header.due_ms, header.seq, id.clone()));
        q.messages.insert(
            id,
            Meta {
                seq: header.seq,
                due_ms: header.due_ms,
                failures: header.failures,
                lease_until_ms: None,
            },
        );
    }

    /// A message deleted by a committed ack.
    pub(crate) fn remove(&self, queue: &str, id: &str) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        if let Some((id, meta)) = q.messages.remove_entry(id) {
            q.unlink(&id, &meta);
        }
        if q.messages.is_empty() {
            queues.remove(queue);
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
        q.waiting.insert((due_ms, meta.seq, id.clone()));
        q.messages.insert(id, meta);
    }

    /// Leases up to `max` deliverable messages: expired leases first, then
    /// waiting messages in due order. Returns them and the queue's next due time.
    pub(crate) fn lease(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
    ) -> (Vec<Picked>, Option<u64>) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue) else {
            return (Vec::new(), None);
        };
        let mut taken = Vec::new();
        for set in [&mut q.leased, &mut q.waiting] {
            while taken.len() < max {
                match set.first() {
                    Some(first) if first.0 <= now_ms => {
                        let (_, seq, id) = set.pop_first().expect("first exists");
                        taken.push((seq, id));
                    }
                    _ => break,
                }
            }
        }
        let until = now_ms.saturating_add(visibility_ms);
        let mut picked = Vec::with_capacity(taken.len());
        for (seq, id) in taken {
            let meta = q.messages.get_mut(&id).expect("indexed message has meta");
            meta.lease_until_ms = Some(until);
            picked.push(Picked {
                id: id.clone(),
                failures: meta.failures,
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

    /// Waiting and leased counts. An expired lease counts as in flight until
    /// a `lease` call takes the message again.
    pub(crate) fn depth(&self, queue: &str) -> QueueDepth {
        let queues = self.lock();
        queues
            .get(queue)
            .map(|q| QueueDepth {
                waiting: q.waiting.len() as u64,
                in_flight: q.leased.len() as u64,
                ..QueueDepth::default()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(due_ms: u64, seq: u64) -> MessageHeader {
        MessageHeader {
            due_ms,
            failures: 0,
            seq,
        }
    }

    fn lease_ids(index: &QueueIndex, now: u64, max: usize) -> Vec<String> {
        let (picked, _) = index.lease("q", now, max, 100);
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
                ..QueueDepth::default()
            }
        );
        for id in ["a", "b", "c", "d"] {
            index.remove("q", id);
        }
        assert!(index.lock().is_empty(), "empty queues are dropped");
    }
}
