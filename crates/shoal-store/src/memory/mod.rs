//! The in-memory adapter: every port over one `Mutex<State>`.
//!
//! Each method takes the lock, does the whole operation, releases the lock
//! and returns an already-ready future. A write is therefore applied when
//! the method is called, in call order, even if its future is dropped, and
//! no lock is ever held across an await. Nothing is durable: dropping the
//! store forgets everything.
//!
//! This is the reference semantics of the ports, written to be read (plain
//! maps, scans where a real store keeps indexes), and the store of fast
//! engine tests. One module per port: `catalog`, `invocations`, `queues`,
//! `docs`, `jobs`, `kv`, `blobs`, `channels`.

mod blobs;
mod catalog;
mod channels;
mod docs;
mod invocations;
mod jobs;
mod kv;
mod queues;

use std::sync::{Arc, Mutex, PoisonError};

use crate::{Pending, Result};

/// Every port in memory. Bundle it with
/// `Backend::from_adapter(Arc::new(MemoryStore::new()))`.
#[derive(Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

/// Everything the store holds. Operations that span ports (a job's
/// children and messages, a fan-in) change several parts in one lock.
#[derive(Default)]
struct State {
    catalog: catalog::CatalogState,
    invocations: invocations::InvocationState,
    queues: queues::QueueState,
    docs: docs::DocState,
    jobs: jobs::JobState,
    kv: kv::KvState,
    blobs: blobs::BlobState,
    channels: channels::ChannelState,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Runs one whole operation under the lock and hands back its result
    /// as a ready future.
    fn run<T: Send + 'static>(&self, op: impl FnOnce(&mut State) -> Result<T>) -> Pending<T> {
        // A panic inside an operation is a bug in this module; the tests
        // that hit it fail on their own, so later calls still get the state.
        let result = op(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        Box::pin(std::future::ready(result))
    }
}
