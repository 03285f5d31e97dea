//! What a finished invocation causes beyond its own record: the sinks that
//! follow outcomes (destinations, notifications) register here, and the
//! dispatcher hands every record that reaches a final status to them.
//!
//! Ordering and durability: `Dispatcher::persist` calls [`Outcomes::finished`]
//! after issuing the record's write and before issuing its messages'
//! settlements, and `persist_outcome_again` (a message redelivered after a
//! crash, whose record is already final) calls it again. The settlements
//! are issued only once the sinks' future has resolved `Ok` (so a sink may
//! read the store before it writes), and not at all when it failed: the
//! message then comes back and the sinks are asked again. So a crash at any
//! point before the acknowledgement asks them again, and every sink must be
//! idempotent by invocation id (a queue send deduplicated by a key made
//! from it, a record that is not written twice). A synchronous invocation has no
//! message: its outcome is handed over once, after its record's write is
//! issued, and a crash in that moment loses what its sinks would have done.

use std::sync::{Arc, RwLock};

use futures_util::future::{BoxFuture, join_all};
use shoal_store::InvocationRecord;

/// Something that follows finished invocations.
pub trait OutcomeSink: Send + Sync + 'static {
    /// Whether this sink would do anything for `record` (a cheap look at
    /// its settings in memory, no I/O). When no sink follows a record, its
    /// write and its messages' acknowledgement stay one store step.
    fn follows(&self, record: &InvocationRecord) -> bool {
        let _ = record;
        true
    }

    /// Issues whatever this outcome causes; the future
    /// resolves when that is durable (`Err` says what failed). Called only
    /// for records whose status is final, possibly more than once for one
    /// invocation (see the module docs).
    fn finished(&self, record: &InvocationRecord)
    -> Option<BoxFuture<'static, Result<(), String>>>;
}

/// The registered sinks.
#[derive(Default)]
pub struct Outcomes {
    sinks: RwLock<Vec<Arc<dyn OutcomeSink>>>,
}

impl Outcomes {
    /// Adds a sink; it sees outcomes from now on.
    pub fn register(&self, sink: Arc<dyn OutcomeSink>) {
        self.sinks
            .write()
            .expect("outcome sinks lock poisoned")
            .push(sink);
    }

    /// True when `record` is final and a sink follows it.
    pub(crate) fn follow(&self, record: &InvocationRecord) -> bool {
        record.status.is_final()
            && self
                .sinks
                .read()
                .expect("outcome sinks lock poisoned")
                .iter()
                .any(|s| s.follows(record))
    }

    /// Hands a final record to every sink; `None` when none had anything
    /// to do. Records that are not final are ignored.
    pub(crate) fn finished(
        &self,
        record: &InvocationRecord,
    ) -> Option<BoxFuture<'static, Result<(), String>>> {
        if !record.status.is_final() {
            return None;
        }
        let pending: Vec<_> = self
            .sinks
            .read()
            .expect("outcome sinks lock poisoned")
            .iter()
            .filter_map(|s| s.finished(record))
            .collect();
        if pending.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            join_all(pending)
                .await
                .into_iter()
                .collect::<Result<Vec<()>, String>>()
                .map(drop)
        }))
    }
}
