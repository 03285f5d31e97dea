//! Invocation records and their logs, each by invocation id. Logs are kept
//! apart from records: either may exist without the other.

use std::collections::{BTreeMap, HashMap};

use crate::usage::{self, Grain, Rollup, RollupQuery, RollupRow, Usage};
use crate::{
    InvocationCursor, InvocationFilter, InvocationPage, InvocationRecord, Invocations, Pending,
    Purged, StoreHealth,
};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct InvocationState {
    records: HashMap<String, InvocationRecord>,
    logs: HashMap<String, Vec<u8>>,
    /// (grain, bucket start, function, token) → usage rollup.
    rollups: BTreeMap<(Grain, u64, String, String), Rollup>,
}

impl InvocationState {
    /// Inserts or replaces a record (also used by jobs for their children
    /// and fan-ins), adding to the usage rollups when it becomes final.
    pub(super) fn put(&mut self, record: InvocationRecord) {
        let was_final = self
            .records
            .get(&record.id)
            .is_some_and(|old| old.status.is_final());
        if let Some(delta) = usage::delta(&record).filter(|_| !was_final) {
            let add = delta.rollup();
            for (grain, start, function, token) in delta.rows() {
                let key = (grain, start, function.to_string(), token.to_string());
                self.rollups.entry(key).or_default().add(&add);
            }
        }
        self.records.insert(record.id.clone(), record);
    }
}

impl Usage for MemoryStore {
    fn rollups(&self, q: &RollupQuery) -> Pending<Vec<RollupRow>> {
        self.run(|s| {
            let from = (q.grain, q.since_ms, String::new(), String::new());
            Ok(s.invocations
                .rollups
                .range(from..)
                .take_while(|((g, start, _, _), _)| *g == q.grain && *start < q.until_ms)
                .filter(|((_, _, f, t), _)| q.wants(f, t))
                .map(|((_, start, function, token), rollup)| RollupRow {
                    start_ms: *start,
                    function: function.clone(),
                    token: token.clone(),
                    rollup: rollup.clone(),
                })
                .collect())
        })
    }

    fn count_indexed(&self, filter: &InvocationFilter) -> Pending<u64> {
        let filter = InvocationFilter {
            mode: None,
            ..filter.clone()
        };
        self.run(|s| {
            Ok(s.invocations
                .records
                .values()
                .filter(|r| matches(&filter, r))
                .count() as u64)
        })
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

    /// A scan of every record, sorted: the reference order, not an index.
    fn list_invocations(
        &self,
        filter: &InvocationFilter,
        after: Option<&InvocationCursor>,
        limit: usize,
    ) -> Pending<InvocationPage> {
        self.run(|s| {
            let mut found: Vec<&InvocationRecord> = s
                .invocations
                .records
                .values()
                .filter(|r| matches(filter, r))
                .filter(|r| after.is_none_or(|a| InvocationCursor::after(r) < *a))
                .collect();
            found.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
            let more = found.len() > limit;
            let records: Vec<InvocationRecord> = found.into_iter().take(limit).cloned().collect();
            let next = match (more, records.last()) {
                (true, Some(last)) => Some(InvocationCursor::after(last)),
                _ => None,
            };
            Ok(InvocationPage { records, next })
        })
    }

    fn count_invocations(&self) -> Pending<u64> {
        self.run(|s| Ok(s.invocations.records.len() as u64))
    }

    fn purge_invocations(
        &self,
        before_ms: u64,
        after: Option<&str>,
        scan: usize,
    ) -> Pending<Purged> {
        let after = after.map(str::to_string);
        self.run(move |s| {
            let state = &mut s.invocations;
            let mut ids: Vec<&String> = state
                .records
                .keys()
                .filter(|id| after.as_deref().is_none_or(|a| id.as_str() > a))
                .collect();
            ids.sort();
            let more = ids.len() > scan;
            let looked: Vec<String> = ids.into_iter().take(scan).cloned().collect();
            let mut deleted = 0;
            for id in &looked {
                let old = state.records.get(id).is_some_and(|r| {
                    r.status.is_final() && r.finished_at_ms.is_some_and(|f| f < before_ms)
                });
                if old {
                    state.records.remove(id);
                    state.logs.remove(id);
                    deleted += 1;
                }
            }
            Ok(Purged {
                deleted,
                next: if more { looked.last().cloned() } else { None },
            })
        })
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

    /// Memory has no disk to fill.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

fn matches(f: &InvocationFilter, r: &InvocationRecord) -> bool {
    f.function.as_ref().is_none_or(|n| *n == r.function)
        && f.status.is_none_or(|st| st == r.status)
        && f.mode.is_none_or(|m| m == r.mode)
        && f.since_ms.is_none_or(|t| r.created_at_ms >= t)
        && f.until_ms.is_none_or(|t| r.created_at_ms < t)
}
