//! Queues, the writer's side: send (with deduplication), ack, nack, dead
//! letters, redrive, purge and samples (reads are in `lib.rs`; the
//! in-memory lease index is in `queue`).
//!
//! Every operation also keeps its queue's totals (`queue::Totals`): the
//! writer takes the committed totals from the index the first time a batch
//! touches a queue, changes that copy as operations succeed, writes each
//! changed queue's row once, just before the commit, in the same
//! transaction, and publishes the copies to the index after the commit. The
//! hot path (send, ack, nack) thus pays one in-memory update per operation
//! and one small row per queue per commit, never a read of the table.
//!
//! Deduplication keys live in `queue_dedup` ((queue, key) → until) with an
//! expiry index `queue_dedup_expiry` ((until, queue, key)), so expired keys
//! are pruned oldest first without a scan: a few per key sent, and a larger
//! chunk whenever samples are recorded.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;

use redb::{ReadableTable, StorageError, Table};
use shoal_store::{NewMessage, QueueSample};

use crate::codec::{self, DeadHeader, MessageHeader};
use crate::queue::{QueueIndex, Totals};
use crate::writer::{Applied, Effect, QueueExtra, Tables, Value, ok};

/// Expired deduplication keys pruned per key sent (more than one, so the
/// table shrinks back after a burst).
const PRUNE_PER_KEY: usize = 2;
/// Expired deduplication keys pruned per `record_samples`.
const PRUNE_PER_TICK: usize = 10_000;

type StorageResult<T> = std::result::Result<T, StorageError>;

type Samples<'txn> = Table<'txn, (&'static str, u64), &'static [u8]>;

/// The first key after every (queue, id) key of `queue`: no string sorts
/// between `queue` and `queue` + NUL, so `(queue, "")..(end, "")` is
/// exactly the queue's keys.
pub(crate) fn queue_end(queue: &str) -> String {
    let mut end = String::with_capacity(queue.len() + 1);
    end.push_str(queue);
    end.push('\0');
    end
}

/// The writer's queue state.
pub(crate) struct QueueOps {
    /// The next message sequence number (send order across all queues).
    next_seq: u64,
    /// Totals changed by the batch being applied.
    dirty: HashMap<String, Totals>,
    /// (queue, id) of messages nacked in the batch being applied: waiting
    /// now, though the index (updated after the commit) still says leased.
    released: HashSet<(String, String)>,
}

impl QueueOps {
    pub(crate) fn new(next_seq: u64) -> QueueOps {
        QueueOps {
            next_seq,
            dirty: HashMap::new(),
            released: HashSet::new(),
        }
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The batch's copy of a queue's totals. Call it only once the
    /// operation has succeeded, with a change to make.
    fn totals(&mut self, index: &QueueIndex, queue: &str) -> &mut Totals {
        if !self.dirty.contains_key(queue) {
            self.dirty.insert(queue.to_string(), index.totals(queue));
        }
        self.dirty.get_mut(queue).expect("just inserted")
    }

    /// Writes the batch's changed totals (before the commit).
    pub(crate) fn write_totals(&self, t: &mut Tables<'_>) -> std::result::Result<(), redb::Error> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let table = t.totals()?;
        for (queue, totals) in &self.dirty {
            table.insert(queue.as_str(), totals.row())?;
        }
        Ok(())
    }

    /// The batch is committed: its totals are the committed ones now.
    pub(crate) fn committed(&mut self, index: &QueueIndex) {
        if !self.dirty.is_empty() {
            index.publish_totals(self.dirty.drain());
        }
        self.released.clear();
    }

    /// The batch failed: its changes never happened.
    pub(crate) fn aborted(&mut self) {
        self.dirty.clear();
        self.released.clear();
    }

    /// Stores new messages. An id already queued is skipped, and so is a
    /// message whose deduplication key is still held (its stored `until`
    /// is after the message's `sent_ms`); otherwise the key is (re)stored.
    pub(crate) fn send(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
        messages: Vec<NewMessage>,
    ) -> Applied {
        let q = queue.as_str();
        let mut sent = Vec::with_capacity(messages.len());
        let mut duplicates = Vec::with_capacity(messages.len());
        let mut prune_budget = 0;
        let mut prune_now = 0;
        for m in messages {
            let key = (q, m.id.as_str());
            if t.messages.get(key)?.is_some() {
                duplicates.push(None);
                continue;
            }
            if let Some((dedup_key, until)) = &m.dedup {
                let (_, x) = t.queue_extra()?;
                let dk = (q, dedup_key.as_str());
                let held = x.dedup.get(dk)?.map(|g| g.value());
                if let Some(held) = held {
                    if held > m.sent_ms {
                        let first = x.dedup_ids.get(dk)?.map(|g| g.value().to_string());
                        duplicates.push(Some(first.unwrap_or_default()));
                        continue;
                    }
                    x.dedup_expiry.remove((held, q, dedup_key.as_str()))?;
                }
                x.dedup.insert(dk, *until)?;
                x.dedup_ids.insert(dk, m.id.as_str())?;
                x.dedup_expiry.insert((*until, q, dedup_key.as_str()), ())?;
                prune_budget += PRUNE_PER_KEY;
                prune_now = prune_now.max(m.sent_ms);
            }
            let header = MessageHeader {
                due_ms: m.due_ms,
                failures: 0,
                starts: 0,
                seq: self.seq(),
                sent_ms: m.sent_ms,
                key: m.key,
            };
            let value = codec::encode_message(&header, &m.body);
            t.messages.insert(key, value.as_slice())?;
            sent.push((m.id, header));
            duplicates.push(None);
        }
        if prune_budget > 0 {
            prune_dedup(t.queue_extra()?.1, prune_now, prune_budget)?;
        }
        if !sent.is_empty() {
            self.totals(index, q).counters.sent += sent.len() as u64;
        }
        ok(Value::Sent(duplicates), Effect::Sent(queue, sent))
    }

    pub(crate) fn ack(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
        ids: Vec<String>,
    ) -> Applied {
        let mut acked = 0;
        for id in &ids {
            if t.messages.remove((queue.as_str(), id.as_str()))?.is_some() {
                acked += 1;
            }
        }
        if acked > 0 {
            self.totals(index, &queue).counters.acked += acked;
        }
        ok(Value::Unit, Effect::Removed(queue, ids))
    }

    pub(crate) fn nack(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
        id: String,
        due_ms: u64,
    ) -> Applied {
        let key = (queue.as_str(), id.as_str());
        let (header, value) = {
            let Some(stored) = t.messages.get(key)? else {
                return ok(Value::Unit, Effect::None);
            };
            let what = format_args!("queue {queue} message {id}");
            match codec::decode_message(&what, stored.value()) {
                Err(e) => return Ok(Err(e)),
                Ok((header, body)) => {
                    let header = MessageHeader {
                        due_ms,
                        failures: header.failures.saturating_add(1),
                        ..header
                    };
                    let value = codec::encode_message(&header, body);
                    (header, value)
                }
            }
        };
        t.messages.insert(key, value.as_slice())?;
        self.totals(index, &queue).counters.nacked += 1;
        self.released.insert((queue.clone(), id.clone()));
        let effect = Effect::Released {
            queue,
            id,
            due_ms,
            failures: header.failures,
        };
        ok(Value::Unit, effect)
    }

    /// Counts an attempt begun on each message (its header's `starts`);
    /// the in-memory index does not change.
    pub(crate) fn started(
        &mut self,
        t: &mut Tables<'_>,
        queue: String,
        ids: Vec<String>,
    ) -> Applied {
        for id in ids {
            let key = (queue.as_str(), id.as_str());
            let value = {
                let Some(stored) = t.messages.get(key)? else {
                    continue;
                };
                let what = format_args!("queue {queue} message {id}");
                match codec::decode_message(&what, stored.value()) {
                    Err(e) => return Ok(Err(e)),
                    Ok((header, body)) => {
                        let header = MessageHeader {
                            starts: header.starts.saturating_add(1),
                            ..header
                        };
                        codec::encode_message(&header, body)
                    }
                }
            };
            t.messages.insert(key, value.as_slice())?;
        }
        ok(Value::Unit, Effect::None)
    }

    /// Moves a message (leased or waiting) to the dead letters, in one step.
    pub(crate) fn dead_letter(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
        id: String,
        reason: String,
        now_ms: u64,
    ) -> Applied {
        let key = (queue.as_str(), id.as_str());
        let (messages, x) = t.queue_extra()?;
        let value = {
            let Some(stored) = messages.get(key)? else {
                return ok(Value::Unit, Effect::None);
            };
            let what = format_args!("queue {queue} message {id}");
            match codec::decode_message(&what, stored.value()) {
                Err(e) => return Ok(Err(e)),
                Ok((header, body)) => {
                    let dead = DeadHeader {
                        failures: header.failures,
                        sent_ms: header.sent_ms,
                        dead_at_ms: now_ms,
                        reason,
                        key: header.key,
                    };
                    codec::encode_dead(&dead, body)
                }
            }
        };
        messages.remove(key)?;
        // An id dead-lettered before (and sent again since) is replaced.
        let replaced = x.dead.insert(key, value.as_slice())?.is_some();
        let totals = self.totals(index, &queue);
        totals.counters.dead_lettered += 1;
        if !replaced {
            totals.dead += 1;
        }
        ok(Value::Unit, Effect::Removed(queue, vec![id]))
    }

    /// Moves dead letters back to the queue, due at `now_ms`, failures
    /// reset, `sent_ms` kept. A dead letter whose id is queued again (sent
    /// since) stays where it is, and so does one that cannot be decoded.
    pub(crate) fn redrive(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
        ids: Option<Vec<String>>,
        now_ms: u64,
    ) -> Applied {
        let q = queue.as_str();
        let (messages, x) = t.queue_extra()?;
        let ids = match ids {
            Some(ids) => ids,
            None => dead_ids(&x.dead, q)?,
        };
        let mut sent = Vec::new();
        for id in ids {
            let key = (q, id.as_str());
            let header = {
                let Some(stored) = x.dead.get(key)? else {
                    continue;
                };
                if messages.get(key)?.is_some() {
                    continue;
                }
                let what = format_args!("queue {queue} dead letter {id}");
                let (dead, body) = match codec::decode_dead(&what, stored.value()) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        tracing::error!(error = %e, "redb: cannot redrive a corrupt dead letter");
                        continue;
                    }
                };
                let header = MessageHeader {
                    due_ms: now_ms,
                    failures: 0,
                    starts: 0,
                    seq: self.seq(),
                    sent_ms: dead.sent_ms,
                    key: dead.key.clone(),
                };
                let value = codec::encode_message(&header, body);
                messages.insert(key, value.as_slice())?;
                header
            };
            x.dead.remove(key)?;
            sent.push((id, header));
        }
        let n = sent.len() as u64;
        if n > 0 {
            let totals = self.totals(index, q);
            totals.dead = totals.dead.saturating_sub(n);
        }
        ok(Value::Count(n), Effect::Sent(queue, sent))
    }

    pub(crate) fn purge_dead(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> Applied {
        let mut n = 0;
        let (_, x) = t.queue_extra()?;
        match ids {
            Some(ids) => {
                for id in &ids {
                    if x.dead.remove((queue, id.as_str()))?.is_some() {
                        n += 1;
                    }
                }
            }
            None => {
                let end = queue_end(queue);
                for entry in x
                    .dead
                    .extract_from_if((queue, "")..(end.as_str(), ""), |_, _| true)?
                {
                    entry?;
                    n += 1;
                }
            }
        }
        if n > 0 {
            let totals = self.totals(index, queue);
            totals.dead = totals.dead.saturating_sub(n);
        }
        ok(Value::Count(n), Effect::None)
    }

    /// Deletes every stored message of the queue that is not leased. The
    /// index is updated only after the commit, so this batch's own changes
    /// are read from the batch: a message sent (or redriven) earlier in it is
    /// not in the index, so it counts as waiting, and one nacked earlier in
    /// it is waiting though the index still says leased. The effect (applied
    /// after the earlier ones) takes every deleted id out of the index.
    pub(crate) fn purge(
        &mut self,
        t: &mut Tables<'_>,
        index: &QueueIndex,
        queue: String,
    ) -> Applied {
        let mut leased = index.leased_ids(&queue);
        for (q, id) in &self.released {
            if *q == queue {
                leased.remove(id.as_str());
            }
        }
        let end = queue_end(&queue);
        let mut removed = Vec::new();
        for entry in t
            .messages
            .extract_from_if((queue.as_str(), "")..(end.as_str(), ""), |key, _| {
                !leased.contains(key.1)
            })?
        {
            let (key, _) = entry?;
            removed.push(key.value().1.to_string());
        }
        ok(
            Value::Count(removed.len() as u64),
            Effect::Removed(queue, removed),
        )
    }
}

/// The ids of a queue's dead letters.
fn dead_ids(
    dead: &Table<'_, (&'static str, &'static str), &'static [u8]>,
    queue: &str,
) -> StorageResult<Vec<String>> {
    let end = queue_end(queue);
    let mut ids = Vec::new();
    for entry in dead.range((queue, "")..(end.as_str(), ""))? {
        ids.push(entry?.0.value().1.to_string());
    }
    Ok(ids)
}

/// Stores samples, drops every queue's samples before `keep_after_ms`, and
/// prunes a chunk of deduplication keys expired by the samples' time.
pub(crate) fn record_samples(
    t: &mut Tables<'_>,
    samples: &[(String, QueueSample)],
    keep_after_ms: u64,
) -> Applied {
    let (_, x) = t.queue_extra()?;
    let mut now = keep_after_ms;
    for (queue, sample) in samples {
        let value = codec::encode_sample(sample);
        x.samples
            .insert((queue.as_str(), sample.at_ms), value.as_slice())?;
        now = now.max(sample.at_ms);
    }
    prune_samples(&mut x.samples, keep_after_ms)?;
    prune_dedup(x, now, PRUNE_PER_TICK)?;
    ok(Value::Unit, Effect::None)
}

/// Deletes the samples before `keep_after_ms` of every queue: one range per
/// queue, jumping from queue to queue rather than scanning every sample.
fn prune_samples(samples: &mut Samples<'_>, keep_after_ms: u64) -> StorageResult<()> {
    if keep_after_ms == 0 {
        return Ok(());
    }
    let mut last: Option<String> = None;
    loop {
        let next = {
            let entry = match &last {
                None => samples.first()?,
                Some(q) => samples
                    .range::<(&str, u64)>((
                        Bound::Excluded((q.as_str(), u64::MAX)),
                        Bound::Unbounded,
                    ))?
                    .next()
                    .transpose()?,
            };
            match entry {
                None => return Ok(()),
                Some((key, _)) => key.value().0.to_string(),
            }
        };
        samples.retain_in(
            (next.as_str(), 0)..(next.as_str(), keep_after_ms),
            |_, _| false,
        )?;
        last = Some(next);
    }
}

/// Deletes up to `budget` deduplication keys whose window ended at or
/// before `now_ms`, earliest first.
fn prune_dedup(x: &mut QueueExtra<'_>, now_ms: u64, budget: usize) -> StorageResult<()> {
    let upper = now_ms.saturating_add(1);
    for entry in x
        .dedup_expiry
        .extract_from_if(..(upper, "", ""), |_, _| true)?
        .take(budget)
    {
        let (key, _) = entry?;
        let (until, queue, dedup_key) = key.value();
        let held = x.dedup.get((queue, dedup_key))?.map(|g| g.value());
        if held == Some(until) {
            x.dedup.remove((queue, dedup_key))?;
            x.dedup_ids.remove((queue, dedup_key))?;
        }
    }
    Ok(())
}
