//! Jobs: fan-out with a fan-in that starts exactly once.
//!
//! A job keeps the first result of each child slot. The call that fills
//! the last slot completes the job and, in the same lock, writes its
//! `then_plan` (the invocation record and its message) or, without one,
//! fills the parent slot the job `continues`, which may complete the parent
//! in turn, up the tree. A cancelled job completes without its fan-in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use shoal_types::InvocationStatus;

use crate::{
    ChildFinished, ChildResult, Error, InvocationRecord, JobProgress, JobRecord, Jobs, NewMessage,
    Pending, Result,
};

use super::{MemoryStore, State};

#[derive(Default)]
pub(super) struct JobState {
    jobs: HashMap<String, Job>,
    /// Jobs created by a job's children, by parent job, in id order.
    sub_jobs: HashMap<String, BTreeSet<String>>,
}

struct Job {
    record: JobRecord,
    progress: JobProgress,
    /// The first result of each child slot, by index.
    results: BTreeMap<u64, ChildResult>,
}

impl State {
    fn create_job(
        &mut self,
        record: JobRecord,
        children: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<()> {
        let id = record.id.clone();
        if self.jobs.jobs.contains_key(&id) {
            return Err(Error::Corrupt(format!("job {id} exists already")));
        }
        if let Some(parent) = &record.parent {
            let siblings = self.jobs.sub_jobs.entry(parent.clone()).or_default();
            siblings.insert(id.clone());
        }
        for child in children {
            self.invocations.put(child);
        }
        self.queues.send(queue, messages);
        let now_ms = record.created_at_ms;
        let empty = record.total == 0;
        let job = Job {
            record,
            progress: JobProgress::default(),
            results: BTreeMap::new(),
        };
        self.jobs.jobs.insert(id.clone(), job);
        if empty {
            // No children: complete as created. What that does is not
            // reported (`create_job` returns nothing).
            let mut ignored = ChildFinished::default();
            if let Some(job) = self.jobs.jobs.get_mut(&id) {
                job.progress.finished_at_ms = Some(now_ms);
            }
            if let Some((parent, result)) = self.on_complete(&id, false, now_ms, &mut ignored) {
                self.fill(parent, result, now_ms, &mut ignored);
            }
        }
        Ok(())
    }

    /// Records `result` in its slot of `job` unless the slot is filled (or
    /// the job is missing, or the index out of range: then the cascade
    /// stops), and follows each completed job up the tree.
    fn fill(&mut self, job: String, result: ChildResult, now_ms: u64, out: &mut ChildFinished) {
        let (mut job, mut result) = (job, result);
        loop {
            let Some(j) = self.jobs.jobs.get_mut(&job) else {
                return;
            };
            if result.index >= j.record.total || j.results.contains_key(&result.index) {
                return;
            }
            match result.status {
                InvocationStatus::Succeeded => j.progress.succeeded += 1,
                InvocationStatus::Cancelled => j.progress.cancelled += 1,
                _ => j.progress.failed += 1,
            }
            j.results.insert(result.index, result);
            if j.progress.done() < j.record.total || j.progress.finished_at_ms.is_some() {
                return;
            }
            j.progress.finished_at_ms = Some(now_ms);
            let cancelled = j.progress.cancelled_at_ms.is_some();
            out.completed.push(job.clone());
            match self.on_complete(&job, cancelled, now_ms, out) {
                Some((parent, filled)) => (job, result) = (parent, filled),
                None => return,
            }
        }
    }

    /// A job just completed: unless cancelled, writes its fan-in's record
    /// and message. Without a fan-in to run, returns the result with which
    /// it fills the parent slot it continues, if any.
    fn on_complete(
        &mut self,
        job: &str,
        cancelled: bool,
        now_ms: u64,
        out: &mut ChildFinished,
    ) -> Option<(String, ChildResult)> {
        let record = &self.jobs.jobs.get(job)?.record;
        if let (Some(plan), false) = (&record.then_plan, cancelled) {
            let message = NewMessage {
                id: plan.record.id.clone(),
                body: plan.body.clone().into_bytes(),
                due_ms: 0,
                sent_ms: now_ms,
                dedup: None,
                key: None,
            };
            self.invocations.put(plan.record.clone());
            self.queues.send(&plan.queue, vec![message]);
            out.sent_to.push(plan.queue.clone());
            return None;
        }
        let slot = record.continues.as_ref()?;
        let (status, output) = if cancelled {
            (InvocationStatus::Cancelled, None)
        } else {
            let output = serde_json::json!({"job": record.id, "count": record.total});
            (InvocationStatus::Succeeded, Some(output.to_string()))
        };
        let filled = ChildResult {
            index: slot.index,
            invocation: record.invocation.clone().unwrap_or_default(),
            status,
            output,
            error: None,
            finished_at_ms: now_ms,
        };
        Some((slot.job.clone(), filled))
    }

    /// Marks the job and every job below it cancelled, unless already
    /// cancelled or finished.
    fn cancel_job(&mut self, id: &str, now_ms: u64) -> bool {
        if !self.jobs.jobs.contains_key(id) {
            return false;
        }
        let mut todo = VecDeque::from([id.to_string()]);
        while let Some(job) = todo.pop_front() {
            if let Some(j) = self.jobs.jobs.get_mut(&job) {
                let p = &mut j.progress;
                if p.cancelled_at_ms.is_none() && p.finished_at_ms.is_none() {
                    p.cancelled_at_ms = Some(now_ms);
                }
            }
            if let Some(subs) = self.jobs.sub_jobs.get(&job) {
                todo.extend(subs.iter().cloned());
            }
        }
        true
    }
}

impl Jobs for MemoryStore {
    fn create_job(
        &self,
        job: JobRecord,
        children: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Pending<()> {
        self.run(|s| s.create_job(job, children, queue, messages))
    }

    fn job(&self, id: &str) -> Pending<Option<(JobRecord, JobProgress)>> {
        self.run(|s| {
            let job = s.jobs.jobs.get(id);
            Ok(job.map(|j| (j.record.clone(), j.progress)))
        })
    }

    fn list_jobs(&self, after: Option<&str>, limit: usize) -> Pending<Vec<JobRecord>> {
        self.run(|s| {
            let mut ids: Vec<&String> = s
                .jobs
                .jobs
                .keys()
                .filter(|id| after.is_none_or(|a| id.as_str() < a))
                .collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.truncate(limit);
            Ok(ids
                .into_iter()
                .filter_map(|id| s.jobs.jobs.get(id))
                .map(|j| j.record.clone())
                .collect())
        })
    }

    fn finish_child(&self, job: &str, result: ChildResult, now_ms: u64) -> Pending<ChildFinished> {
        self.run(|s| {
            let Some(j) = s.jobs.jobs.get(job) else {
                return Err(Error::NotFound(format!("job {job}")));
            };
            if result.index >= j.record.total {
                return Err(Error::NotFound(format!(
                    "job {job} child {} (the job has {})",
                    result.index, j.record.total
                )));
            }
            let mut out = ChildFinished {
                recorded: !j.results.contains_key(&result.index),
                ..ChildFinished::default()
            };
            s.fill(job.to_string(), result, now_ms, &mut out);
            Ok(out)
        })
    }

    fn child_results(&self, job: &str, from_index: u64, limit: usize) -> Pending<Vec<ChildResult>> {
        self.run(|s| {
            let Some(j) = s.jobs.jobs.get(job) else {
                return Ok(Vec::new());
            };
            Ok(j.results
                .range(from_index..)
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect())
        })
    }

    fn child_failures(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Pending<Vec<ChildResult>> {
        self.run(|s| {
            let Some(j) = s.jobs.jobs.get(job) else {
                return Ok(Vec::new());
            };
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let failed = j.results.range((from, Bound::Unbounded)).map(|(_, r)| r);
            let failed = failed.filter(|r| {
                !matches!(
                    r.status,
                    InvocationStatus::Succeeded | InvocationStatus::Cancelled
                )
            });
            Ok(failed.take(limit).cloned().collect())
        })
    }

    fn sub_jobs(&self, job: &str) -> Pending<Vec<String>> {
        self.run(|s| {
            let subs = s.jobs.sub_jobs.get(job);
            Ok(subs
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn cancel_job(&self, id: &str, now_ms: u64) -> Pending<bool> {
        self.run(|s| Ok(s.cancel_job(id, now_ms)))
    }
}
