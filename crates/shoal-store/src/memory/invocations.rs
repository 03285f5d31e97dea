//! Invocation records and their logs, each by invocation id. Logs are kept
//! apart from records: either may exist without the other.

use std::collections::HashMap;

use crate::{InvocationRecord, Invocations, Pending};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct InvocationState {
    records: HashMap<String, InvocationRecord>,
    logs: HashMap<String, Vec<u8>>,
}

impl InvocationState {
    /// Inserts or replaces a record (also used by jobs for their children
    /// and fan-ins).
    pub(super) fn put(&mut self, record: InvocationRecord) {
        self.records.insert(record.id.clone(), record);
    }
}

impl Invocations for MemoryStore {
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()> {
        self.run(|s| {
            for record in records {
                s.invocations.put(record);
            }
            Ok(())
        })
    }

    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>> {
        self.run(|s| Ok(s.invocations.records.get(id).cloned()))
    }

    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()> {
        self.run(|s| {
            s.invocations.logs.insert(id.to_string(), logs);
            Ok(())
        })
    }

    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>> {
        self.run(|s| Ok(s.invocations.logs.get(id).cloned()))
    }
}
