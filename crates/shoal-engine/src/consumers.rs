//! The consumers of the node's queues: one per queue, registered by queue
//! name, each with its free slots, its running concurrency keys and the
//! notification that wakes it.
//!
//! Owned by this service only: the dispatcher starts and runs consumers,
//! and anyone who puts work on a queue (a send, a job, a redrive) calls
//! [`Consumers::wake`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use shoal_store::{Delivery, KeyLimit};

use crate::invocation::queue_name;

/// What a consumer feeds its deliveries to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Feed {
    /// Asynchronous invocations of a function (queue `_async.<function>`).
    Async { function: String },
    /// A function subscribed to a user queue.
    Subscription {
        queue: String,
        function: String,
        batch_size: u32,
    },
}

impl Feed {
    pub(crate) fn queue(&self) -> String {
        match self {
            Feed::Async { function } => queue_name(function),
            Feed::Subscription { queue, .. } => queue.clone(),
        }
    }

    pub(crate) fn function(&self) -> &str {
        match self {
            Feed::Async { function } | Feed::Subscription { function, .. } => function,
        }
    }

    /// Messages per run of the function.
    pub(crate) fn batch_size(&self) -> usize {
        match self {
            Feed::Async { .. } => 1,
            Feed::Subscription { batch_size, .. } => (*batch_size).max(1) as usize,
        }
    }
}

/// The consumer of one queue: leases while it has free slots.
pub(crate) struct Consumer {
    pub(crate) feed: Feed,
    notify: Notify,
    slots: Arc<Semaphore>,
    /// Slots in all (free or in use).
    total: AtomicU32,
    /// Batches running now by concurrency key (functions with a key only).
    running: Mutex<HashMap<String, u32>>,
}

impl Consumer {
    /// Waits for a free slot, then takes every free slot up to `max`.
    pub(crate) async fn slots(&self, max: usize) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = self.slots.clone().acquire_owned().await.ok()?;
        let mut permits = vec![first];
        while permits.len() < max {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    /// The lease limit for a function with `per_key` batches per key.
    pub(crate) fn key_limit(&self, per_key: u32) -> KeyLimit {
        KeyLimit {
            per_key,
            running: self.running.lock().unwrap().clone(),
        }
    }

    /// Counts a batch's keys as running until the guard is dropped, which
    /// also wakes the consumer (a key below its limit may have work).
    pub(crate) fn hold_keys(self: &Arc<Self>, batch: &[Delivery]) -> KeysHeld {
        let mut keys: Vec<String> = batch.iter().filter_map(|d| d.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut running = self.running.lock().unwrap();
        for k in &keys {
            *running.entry(k.clone()).or_default() += 1;
        }
        KeysHeld {
            consumer: self.clone(),
            keys,
        }
    }
}

/// Keys of a running batch; released on drop.
pub(crate) struct KeysHeld {
    consumer: Arc<Consumer>,
    keys: Vec<String>,
}

impl Drop for KeysHeld {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        {
            let mut running = self.consumer.running.lock().unwrap();
            for k in &self.keys {
                if let Some(n) = running.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        running.remove(k);
                    }
                }
            }
        }
        self.consumer.notify.notify_one();
    }
}

/// Every queue's consumer, by queue name.
#[derive(Default)]
pub(crate) struct Consumers {
    by_queue: Mutex<HashMap<String, Arc<Consumer>>>,
}

impl Consumers {
    /// Wakes the consumer of a queue (after new work was put on it).
    pub(crate) fn wake(&self, queue: &str) {
        if let Some(c) = self.by_queue.lock().unwrap().get(queue) {
            c.notify.notify_one();
        }
    }

    /// The consumer for `feed` with at least `slots` slots: the running one
    /// (grown if needed) or, returned as new, one to start. A consumer of
    /// the same queue with another feed is replaced; it stops by itself.
    pub(crate) fn ensure(&self, feed: Feed, slots: u32) -> Option<Arc<Consumer>> {
        let queue = feed.queue();
        let mut by_queue = self.by_queue.lock().unwrap();
        if let Some(c) = by_queue.get(&queue)
            && c.feed == feed
        {
            let have = c.total.load(Ordering::SeqCst);
            if slots > have {
                // Only ever grow: shrinking would have to wait for running work.
                c.slots.add_permits((slots - have) as usize);
                c.total.store(slots, Ordering::SeqCst);
            }
            c.notify.notify_one();
            return None;
        }
        let consumer = Arc::new(Consumer {
            feed,
            notify: Notify::new(),
            slots: Arc::new(Semaphore::new(slots as usize)),
            total: AtomicU32::new(slots),
            running: Mutex::new(HashMap::new()),
        });
        by_queue.insert(queue, consumer.clone());
        Some(consumer)
    }

    /// True while `consumer` is the registered consumer of its queue.
    pub(crate) fn is_current(&self, consumer: &Arc<Consumer>) -> bool {
        self.by_queue
            .lock()
            .unwrap()
            .get(&consumer.feed.queue())
            .is_some_and(|c| Arc::ptr_eq(c, consumer))
    }

    /// Unregisters `consumer` if it is still the current one and `still`
    /// holds (checked under the registry's lock); true when it did.
    pub(crate) fn retire_if(&self, consumer: &Arc<Consumer>, still: impl FnOnce() -> bool) -> bool {
        let queue = consumer.feed.queue();
        let mut by_queue = self.by_queue.lock().unwrap();
        if by_queue
            .get(&queue)
            .is_some_and(|c| Arc::ptr_eq(c, consumer))
            && still()
        {
            by_queue.remove(&queue);
            true
        } else {
            false
        }
    }
}
