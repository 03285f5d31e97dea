//! Jobs (fan-out with fan-in) inside the writer's transactions.
//!
//! A job's record is written once; its progress (counts, finished and
//! cancelled times) is a row of its own, rewritten as children finish. A
//! child's result is keyed `(job, index)`: the first result for an index
//! counts and a redelivered one finds the key taken, so the count of done
//! children reaches the total exactly once, in exactly one transaction —
//! the one that also writes the fan-in's invocation and message.

use std::collections::VecDeque;

use redb::{ReadableTable, Table, WriteTransaction};
use shoal_store::{ChildFinished, ChildResult, Error, JobProgress, JobRecord, NewMessage};
use shoal_types::InvocationStatus;

use crate::codec::{self, decode_record};
use crate::invocations::Encoded;
use crate::queue::QueueIndex;
use crate::queue_ops::{QueueOps, queue_end};
use crate::writer::{Applied, Effect, Tables, Value, ok};
use crate::{JOB_FAILURES, JOB_PROGRESS, JOB_RESULTS, JOBS, SUB_JOBS};

/// The job tables, opened by the first job operation of a batch.
pub(crate) struct JobTables<'txn> {
    jobs: Table<'txn, &'static str, &'static [u8]>,
    progress: Table<'txn, &'static str, &'static [u8]>,
    results: Table<'txn, (&'static str, u64), &'static [u8]>,
    failures: Table<'txn, (&'static str, u64), ()>,
    sub_jobs: Table<'txn, (&'static str, &'static str), ()>,
}

impl<'txn> JobTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(JobTables {
            jobs: txn.open_table(JOBS)?,
            progress: txn.open_table(JOB_PROGRESS)?,
            results: txn.open_table(JOB_RESULTS)?,
            failures: txn.open_table(JOB_FAILURES)?,
            sub_jobs: txn.open_table(SUB_JOBS)?,
        })
    }
}

/// A job write: the record (and its encoding, checked by the caller), its
/// children's encoded invocation records and their messages.
pub(crate) struct NewJob {
    pub job: JobRecord,
    pub encoded: Vec<u8>,
    pub children: Vec<Encoded>,
    pub queue: String,
    pub messages: Vec<NewMessage>,
}

pub(crate) fn create(
    ops: &mut QueueOps,
    t: &mut Tables<'_>,
    index: &QueueIndex,
    new: NewJob,
) -> Applied {
    let record = new.job;
    let id = record.id.as_str();
    let now_ms = record.created_at_ms;
    {
        let j = t.jobs()?;
        if j.jobs.get(id)?.is_some() {
            return Ok(Err(Error::Corrupt(format!("job {id} exists already"))));
        }
        j.jobs.insert(id, new.encoded.as_slice())?;
        let progress = encode_progress(id, &JobProgress::default());
        j.progress.insert(id, progress.as_slice())?;
        if let Some(parent) = &record.parent {
            j.sub_jobs.insert((parent.as_str(), id), ())?;
        }
    }
    t.put_invocations(&new.children)?;
    // The send's answer (which messages were duplicates) is not this
    // command's: children carry no deduplication keys.
    let sent = match ops.send(t, index, new.queue, new.messages)? {
        Ok((_, sent)) => sent,
        Err(e) => return Ok(Err(e)),
    };
    if record.total > 0 {
        return ok(Value::Unit, sent);
    }
    // No children: the job is complete as it is created.
    let progress = JobProgress {
        finished_at_ms: Some(now_ms),
        ..JobProgress::default()
    };
    let encoded = encode_progress(id, &progress);
    t.jobs()?.progress.insert(id, encoded.as_slice())?;
    let mut out = ChildFinished::default();
    match on_complete(ops, t, index, &record, false, now_ms, &mut out)? {
        Ok(Next::Stop(effect)) => ok(Value::Unit, effect),
        Ok(Next::Cascade(parent, filled)) => {
            match finish_child(ops, t, index, parent, filled, now_ms)? {
                Ok((_, effect)) => ok(Value::Unit, effect),
                Err(e) => Ok(Err(e)),
            }
        }
        Err(e) => Ok(Err(e)),
    }
}

pub(crate) fn finish_child(
    ops: &mut QueueOps,
    t: &mut Tables<'_>,
    index: &QueueIndex,
    job: String,
    mut result: ChildResult,
    now_ms: u64,
) -> Applied {
    let mut out = ChildFinished::default();
    let mut effect = Effect::None;
    let mut job = job;
    let mut first = true;
    loop {
        let j = t.jobs()?;
        let record = match load_job(j, &job)? {
            Ok(Some(r)) => r,
            // A parent that vanished or does not decode: the child's own
            // result is written; the cascade stops here.
            _ if !first => break,
            Ok(None) => return Ok(Err(Error::NotFound(format!("job {job}")))),
            Err(e) => return Ok(Err(e)),
        };
        if result.index >= record.total {
            if first {
                return Ok(Err(Error::NotFound(format!(
                    "job {job} child {} (the job has {})",
                    result.index, record.total
                ))));
            }
            break;
        }
        let key = (job.as_str(), result.index);
        if j.results.get(key)?.is_some() {
            break;
        }
        let value = codec::encode_record(&format_args!("job {job} result"), &result);
        let value = match value {
            Ok(v) => v,
            Err(e) if first => return Ok(Err(e)),
            Err(_) => break,
        };
        j.results.insert(key, value.as_slice())?;
        let mut progress = match load_progress(j, &job)? {
            Ok(p) => p,
            Err(e) if first => return Ok(Err(e)),
            Err(_) => JobProgress::default(),
        };
        match result.status {
            InvocationStatus::Succeeded => progress.succeeded += 1,
            InvocationStatus::Cancelled => progress.cancelled += 1,
            _ => {
                progress.failed += 1;
                j.failures.insert(key, ())?;
            }
        }
        if first {
            out.recorded = true;
            first = false;
        }
        let completes = progress.done() >= record.total && progress.finished_at_ms.is_none();
        if completes {
            progress.finished_at_ms = Some(now_ms);
        }
        let encoded = encode_progress(&job, &progress);
        j.progress.insert(job.as_str(), encoded.as_slice())?;
        if !completes {
            break;
        }
        out.completed.push(job.clone());
        let cancelled = progress.cancelled_at_ms.is_some();
        match on_complete(ops, t, index, &record, cancelled, now_ms, &mut out)? {
            Ok(Next::Stop(sent)) => {
                effect = sent;
                break;
            }
            Ok(Next::Cascade(parent, filled)) => {
                job = parent;
                result = filled;
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    ok(Value::Finished(out), effect)
}

/// What follows a job's completion.
enum Next {
    /// Nothing more (with the effect of the fan-in's message, if sent).
    Stop(Effect),
    /// The job fills its parent's slot with this result.
    Cascade(String, ChildResult),
}

/// A job just completed: start its fan-in, unless cancelled; without one,
/// fill the parent's slot it continues, if any.
fn on_complete(
    ops: &mut QueueOps,
    t: &mut Tables<'_>,
    index: &QueueIndex,
    record: &JobRecord,
    cancelled: bool,
    now_ms: u64,
    out: &mut ChildFinished,
) -> Result<shoal_store::Result<Next>, redb::Error> {
    if let (Some(plan), false) = (&record.then_plan, cancelled) {
        let value =
            codec::encode_record(&format_args!("invocation {}", plan.record.id), &plan.record);
        let value = match value {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        t.put_invocations(&[Encoded::of(&plan.record, value)])?;
        let message = NewMessage {
            id: plan.record.id.clone(),
            body: plan.body.clone().into_bytes(),
            due_ms: 0,
            sent_ms: now_ms,
            dedup: None,
            key: None,
        };
        let sent = match ops.send(t, index, plan.queue.clone(), vec![message])? {
            Ok((_, sent)) => sent,
            Err(e) => return Ok(Err(e)),
        };
        out.sent_to.push(plan.queue.clone());
        return Ok(Ok(Next::Stop(sent)));
    }
    // No fan-in to run: the job itself fills its parent's slot.
    let Some(slot) = &record.continues else {
        return Ok(Ok(Next::Stop(Effect::None)));
    };
    let status = if cancelled {
        InvocationStatus::Cancelled
    } else {
        InvocationStatus::Succeeded
    };
    let filled = ChildResult {
        index: slot.index,
        invocation: record.invocation.clone().unwrap_or_default(),
        status,
        output: (!cancelled)
            .then(|| serde_json::json!({"job": record.id, "count": record.total}).to_string()),
        error: None,
        finished_at_ms: now_ms,
    };
    Ok(Ok(Next::Cascade(slot.job.clone(), filled)))
}

pub(crate) fn cancel(t: &mut Tables<'_>, id: String, now_ms: u64) -> Applied {
    let j = t.jobs()?;
    if j.jobs.get(id.as_str())?.is_none() {
        return ok(Value::Existed(false), Effect::None);
    }
    let mut todo = VecDeque::from([id]);
    while let Some(job) = todo.pop_front() {
        // A job that has finished stays finished.
        if let Ok(mut progress) = load_progress(j, &job)?
            && progress.cancelled_at_ms.is_none()
            && progress.finished_at_ms.is_none()
        {
            progress.cancelled_at_ms = Some(now_ms);
            let encoded = encode_progress(&job, &progress);
            j.progress.insert(job.as_str(), encoded.as_slice())?;
        }
        let end = queue_end(&job);
        for entry in j.sub_jobs.range((job.as_str(), "")..(end.as_str(), ""))? {
            todo.push_back(entry?.0.value().1.to_string());
        }
    }
    ok(Value::Existed(true), Effect::None)
}

fn load_job(
    j: &JobTables<'_>,
    id: &str,
) -> Result<shoal_store::Result<Option<JobRecord>>, redb::StorageError> {
    Ok(match j.jobs.get(id)? {
        None => Ok(None),
        Some(v) => decode_record(&format_args!("job {id}"), v.value()).map(Some),
    })
}

fn load_progress(
    j: &JobTables<'_>,
    id: &str,
) -> Result<shoal_store::Result<JobProgress>, redb::StorageError> {
    Ok(match j.progress.get(id)? {
        None => Ok(JobProgress::default()),
        Some(v) => decode_record(&format_args!("job {id} progress"), v.value()),
    })
}

fn encode_progress(id: &str, progress: &JobProgress) -> Vec<u8> {
    codec::encode_record(&format_args!("job {id} progress"), progress)
        .expect("progress is plain integers")
}
