//! Queues: messages with leases, dead letters, deduplication keys,
//! counters and samples.
//!
//! A message is either waiting (no lease) or leased until some time. A
//! lease that has ended still counts as in flight until a `lease` call takes
//! the message again; nothing moves on its own. `lease` takes expired
//! leases first, by lease end, then waiting messages that are due, by due
//! time and then send order (a store-wide sequence number). Both walks pass
//! over messages whose concurrency key is at its limit without touching them.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::{
    DeadLetter, Delivery, KeyLimit, Leased, NewMessage, Pending, QueueCounters, QueueDepth,
    QueueSample, Queues,
};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct QueueState {
    /// The last sequence number given to a message (send order across
    /// every queue; a redriven message gets a new one).
    seq: u64,
    queues: HashMap<String, Queue>,
    /// Samples of each queue by time.
    samples: HashMap<String, BTreeMap<u64, QueueSample>>,
}

#[derive(Default)]
struct Queue {
    /// Waiting and leased messages by id.
    messages: HashMap<String, Message>,
    /// Dead letters by id, listed in id order.
    dead: BTreeMap<String, Dead>,
    /// Deduplication key → the end of its window (`until_ms`). Outlives
    /// the messages that took the keys.
    /// Deduplication key → (until_ms, the id of the message that took it).
    dedup: HashMap<String, (u64, String)>,
    counters: QueueCounters,
}

struct Message {
    body: Vec<u8>,
    seq: u64,
    sent_ms: u64,
    due_ms: u64,
    failures: u32,
    /// Attempts begun (`started`).
    starts: u32,
    key: Option<String>,
    /// Set while leased, including after the lease has ended, until the
    /// message is leased again, released by `nack` or removed.
    lease_until_ms: Option<u64>,
}

struct Dead {
    body: Vec<u8>,
    failures: u32,
    sent_ms: u64,
    dead_at_ms: u64,
    reason: String,
    /// Kept for a redrive.
    key: Option<String>,
}

impl QueueState {
    /// Stores new messages: an id already queued is skipped, and so is a
    /// message whose deduplication key is held past its `sent_ms`; an
    /// accepted message takes its key until its own `until_ms`. (Also used
    /// by jobs for their children and fan-ins.)
    pub(super) fn send(&mut self, queue: &str, messages: Vec<NewMessage>) -> Vec<Option<String>> {
        let q = self.queues.entry(queue.to_string()).or_default();
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            if q.messages.contains_key(&m.id) {
                out.push(None);
                continue;
            }
            if let Some((key, until_ms)) = m.dedup {
                if let Some((held, first)) = q.dedup.get(&key)
                    && *held > m.sent_ms
                {
                    out.push(Some(first.clone()));
                    continue;
                }
                q.dedup.insert(key, (until_ms, m.id.clone()));
            }
            out.push(None);
            self.seq += 1;
            let message = Message {
                body: m.body,
                seq: self.seq,
                sent_ms: m.sent_ms,
                due_ms: m.due_ms,
                failures: 0,
                starts: 0,
                key: m.key,
                lease_until_ms: None,
            };
            q.messages.insert(m.id, message);
            q.counters.sent += 1;
        }
        out
    }

    fn lease(
        &mut self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Leased {
        let Some(q) = self.queues.get_mut(queue) else {
            return Leased::default();
        };
        // Candidates in the order they are offered: expired leases by lease
        // end, then due waiting messages by due time; send order breaks ties.
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (id, m) in &q.messages {
            match m.lease_until_ms {
                Some(until) if until <= now_ms => expired.push((until, m.seq, id)),
                Some(_) => {}
                None if m.due_ms <= now_ms => due.push((m.due_ms, m.seq, id)),
                None => {}
            }
        }
        expired.sort();
        due.sort();
        // Messages of each key taken by this lease.
        let mut taken_of_key: HashMap<&str, u32> = HashMap::new();
        let mut taken: Vec<String> = Vec::new();
        for (_, _, id) in expired.into_iter().chain(due) {
            if taken.len() >= max {
                break;
            }
            if let (Some(limit), Some(key)) = (limit, q.messages[id].key.as_deref()) {
                let running = limit.running.get(key).copied().unwrap_or(0);
                let of_key = taken_of_key.entry(key).or_default();
                if running + *of_key >= limit.of(key) {
                    continue;
                }
                *of_key += 1;
            }
            taken.push(id.clone());
        }
        let lease_until_ms = now_ms.saturating_add(visibility_ms);
        let mut deliveries = Vec::with_capacity(taken.len());
        for id in taken {
            let m = q.messages.get_mut(&id).expect("a candidate is queued");
            m.lease_until_ms = Some(lease_until_ms);
            deliveries.push(Delivery {
                body: m.body.clone(),
                failures: m.failures,
                starts: m.starts,
                lease_until_ms,
                key: m.key.clone(),
                id,
            });
        }
        // When the next message becomes deliverable: a waiting one's due
        // time or a leased one's lease end, whichever comes first.
        let next_due_ms = q
            .messages
            .values()
            .map(|m| m.lease_until_ms.unwrap_or(m.due_ms))
            .min();
        Leased {
            deliveries,
            next_due_ms,
        }
    }

    fn depth(&self, queue: &str) -> QueueDepth {
        let Some(q) = self.queues.get(queue) else {
            return QueueDepth::default();
        };
        let in_flight = q.messages.values().filter(|m| m.lease_until_ms.is_some());
        let in_flight = in_flight.count() as u64;
        QueueDepth {
            waiting: q.messages.len() as u64 - in_flight,
            in_flight,
            dead: q.dead.len() as u64,
            oldest_sent_ms: q.messages.values().map(|m| m.sent_ms).min(),
        }
    }

    /// Puts dead letters back, due at `now_ms`, failures reset, `sent_ms`
    /// and key kept, each with a new sequence number. Unknown ids and dead
    /// letters whose id is queued again are skipped.
    fn redrive(&mut self, queue: &str, ids: Option<Vec<String>>, now_ms: u64) -> u64 {
        let Some(q) = self.queues.get_mut(queue) else {
            return 0;
        };
        let ids = ids.unwrap_or_else(|| q.dead.keys().cloned().collect());
        let mut n = 0;
        for id in ids {
            if q.messages.contains_key(&id) {
                continue;
            }
            let Some(dead) = q.dead.remove(&id) else {
                continue;
            };
            self.seq += 1;
            let message = Message {
                body: dead.body,
                seq: self.seq,
                sent_ms: dead.sent_ms,
                due_ms: now_ms,
                failures: 0,
                starts: 0,
                key: dead.key,
                lease_until_ms: None,
            };
            q.messages.insert(id, message);
            n += 1;
        }
        n
    }

    /// Stores samples and drops every queue's samples before
    /// `keep_after_ms`. Also forgets deduplication keys whose window ended
    /// by the latest time the sampler has seen: no send at or after that
    /// time can find them held, and they would otherwise pile up.
    fn record_samples(&mut self, samples: Vec<(String, QueueSample)>, keep_after_ms: u64) {
        let mut now_ms = keep_after_ms;
        for (queue, sample) in samples {
            now_ms = now_ms.max(sample.at_ms);
            self.samples
                .entry(queue)
                .or_default()
                .insert(sample.at_ms, sample);
        }
        for samples in self.samples.values_mut() {
            *samples = samples.split_off(&keep_after_ms);
        }
        self.samples.retain(|_, samples| !samples.is_empty());
        for q in self.queues.values_mut() {
            q.dedup.retain(|_, (until_ms, _)| *until_ms > now_ms);
        }
    }

    fn queue(&mut self, queue: &str) -> Option<&mut Queue> {
        self.queues.get_mut(queue)
    }
}

impl Queues for MemoryStore {
    fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Pending<Vec<Option<String>>> {
        self.run(|s| Ok(s.queues.send(queue, messages)))
    }

    fn lease_keyed(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Pending<Leased> {
        self.run(|s| Ok(s.queues.lease(queue, now_ms, max, visibility_ms, limit)))
    }

    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> Pending<()> {
        self.run(|s| {
            let message = s.queues.queue(queue).and_then(|q| q.messages.get_mut(id));
            if let Some(m) = message
                && m.lease_until_ms.is_some()
            {
                m.lease_until_ms = Some(lease_until_ms);
            }
            Ok(())
        })
    }

    fn ack(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        self.run(|s| {
            if let Some(q) = s.queues.queue(queue) {
                for id in &ids {
                    if q.messages.remove(id).is_some() {
                        q.counters.acked += 1;
                    }
                }
            }
            Ok(())
        })
    }

    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> Pending<()> {
        self.run(|s| {
            if let Some(q) = s.queues.queue(queue)
                && let Some(m) = q.messages.get_mut(id)
            {
                m.lease_until_ms = None;
                m.due_ms = due_ms;
                m.failures = m.failures.saturating_add(1);
                q.counters.nacked += 1;
            }
            Ok(())
        })
    }

    fn started(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        self.run(|s| {
            if let Some(q) = s.queues.queue(queue) {
                for id in ids {
                    if let Some(m) = q.messages.get_mut(&id) {
                        m.starts = m.starts.saturating_add(1);
                    }
                }
            }
            Ok(())
        })
    }

    fn depth(&self, queue: &str) -> Pending<QueueDepth> {
        self.run(|s| Ok(s.queues.depth(queue)))
    }

    fn counters(&self, queue: &str) -> Pending<QueueCounters> {
        self.run(|s| {
            let q = s.queues.queues.get(queue);
            Ok(q.map(|q| q.counters).unwrap_or_default())
        })
    }

    fn dead_letter(&self, queue: &str, id: &str, reason: String, now_ms: u64) -> Pending<()> {
        self.run(|s| {
            if let Some(q) = s.queues.queue(queue)
                && let Some(m) = q.messages.remove(id)
            {
                let dead = Dead {
                    body: m.body,
                    failures: m.failures,
                    sent_ms: m.sent_ms,
                    dead_at_ms: now_ms,
                    reason,
                    key: m.key,
                };
                q.dead.insert(id.to_string(), dead);
                q.counters.dead_lettered += 1;
            }
            Ok(())
        })
    }

    fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<DeadLetter>> {
        self.run(|s| {
            let Some(q) = s.queues.queues.get(queue) else {
                return Ok(Vec::new());
            };
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let page = q.dead.range::<str, _>((from, Bound::Unbounded)).take(limit);
            let page = page.map(|(id, d)| DeadLetter {
                id: id.clone(),
                body: d.body.clone(),
                failures: d.failures,
                sent_ms: d.sent_ms,
                dead_at_ms: d.dead_at_ms,
                reason: d.reason.clone(),
            });
            Ok(page.collect())
        })
    }

    fn redrive(&self, queue: &str, ids: Option<Vec<String>>, now_ms: u64) -> Pending<u64> {
        self.run(|s| Ok(s.queues.redrive(queue, ids, now_ms)))
    }

    fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Pending<u64> {
        self.run(|s| {
            let Some(q) = s.queues.queue(queue) else {
                return Ok(0);
            };
            let before = q.dead.len();
            match ids {
                None => q.dead.clear(),
                Some(ids) => {
                    for id in &ids {
                        q.dead.remove(id);
                    }
                }
            }
            Ok((before - q.dead.len()) as u64)
        })
    }

    fn purge(&self, queue: &str) -> Pending<u64> {
        self.run(|s| {
            let Some(q) = s.queues.queue(queue) else {
                return Ok(0);
            };
            let before = q.messages.len();
            q.messages.retain(|_, m| m.lease_until_ms.is_some());
            Ok((before - q.messages.len()) as u64)
        })
    }

    fn record_samples(
        &self,
        samples: Vec<(String, QueueSample)>,
        keep_after_ms: u64,
    ) -> Pending<()> {
        self.run(|s| {
            s.queues.record_samples(samples, keep_after_ms);
            Ok(())
        })
    }

    fn samples(&self, queue: &str, since_ms: u64) -> Pending<Vec<QueueSample>> {
        self.run(|s| {
            let Some(samples) = s.queues.samples.get(queue) else {
                return Ok(Vec::new());
            };
            Ok(samples.range(since_ms..).map(|(_, x)| *x).collect())
        })
    }
}
