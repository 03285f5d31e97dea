//! Fan-out jobs with fan-in: `ctx.map(fn, events, then=fn2)` and
//! `POST /v1/jobs`.
//!
//! A job is written with all its children (invocation records and queue
//! messages) in one atomic store write; each child is an ordinary
//! asynchronous invocation whose record names its slot (job, index). When a
//! child reaches its final state, the dispatcher records its outcome in the
//! job before acknowledging its message; the store counts each slot once and,
//! in the write that fills the last one, starts the `then` invocation with
//! `{"job": id, "count": n}`. The children's results stay in the store and
//! the fan-in pages through them (`ctx.job_results`), so a job of 100,000
//! children never carries their results in one payload.
//!
//! **Nesting.** A child that calls `ctx.map` itself hands its own slot to the
//! job it creates: its slot is then filled by that job's `then` (or, without
//! one, by the job itself when it completes), so a parent's fan-in runs only
//! after the whole tree below it has finished. Only a child's first
//! `ctx.map` hands its slot over; later ones are independent jobs, still
//! filed under the parent for `GET /v1/jobs/{id}`.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::json;
use tracing::warn;

use shoal_store::{
    ChildResult, InvocationRecord, JobProgress, JobRecord, JobSlot, NewMessage, ThenPlan,
};
use shoal_types::{InvocationMode, InvocationStatus, JobStatus};

use crate::consumers::Consumers;
use crate::env::Env;
use crate::error::{Entity, Error, Result};
use crate::functions::Functions;
use crate::invocation::{Message, key_of, new_record, queue_name};

/// The most children one job may have unless the node sets another cap
/// (`Options::max_job_children`, `shoal serve --max-job-children`).
pub const MAX_CHILDREN: usize = 100_000;
/// Failed children listed by a job's view.
const LISTED_FAILURES: usize = 20;
/// Jobs shown in one job's tree.
const TREE_NODES: usize = 1_000;

/// What a job runs.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub function: String,
    /// Each child's event, as JSON text.
    pub events: Vec<String>,
    pub then: Option<String>,
    /// At most this many children of the job run at once (across nodes);
    /// `None`: as many as the function's concurrency allows.
    pub max_in_flight: Option<u32>,
}

/// The invocation calling `ctx.map`, if any.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) invocation: String,
    pub(crate) slot: Option<JobSlot>,
    /// The job this invocation handed its slot to (set by its first map).
    pub(crate) handoff: Arc<Mutex<Option<String>>>,
    /// Who started the calling invocation: its children and fan-in carry
    /// the same token and user.
    pub(crate) origin: crate::auth::Origin,
}

/// Children of a job by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCounts {
    pub total: u64,
    /// Queued or running.
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// A job as clients see it: its record, where it stands, its first
/// failures and the jobs below it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub record: JobRecord,
    pub status: JobStatus,
    pub counts: JobCounts,
    /// Finished children over all children (1 for a job without any).
    pub progress: f64,
    pub finished_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
    /// The fan-in invocation, once the job started it.
    pub then_invocation: Option<String>,
    /// The first failed children.
    pub failures: Vec<ChildResult>,
    /// Jobs created by its children, each with its own tree.
    pub sub_jobs: Vec<JobNode>,
}

/// A job as the list shows it: its record and where it stands (no
/// failures, no tree: see [`JobView`] for one job).
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub record: JobRecord,
    pub status: JobStatus,
    pub counts: JobCounts,
    /// Finished children over all children (1 for a job without any).
    pub progress: f64,
    pub finished_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// The cursor of the next page (the last job's id) when the page is
    /// full: there may be more.
    pub next: Option<String>,
}

/// One job of a tree.
#[derive(Debug, Clone)]
pub struct JobNode {
    pub record: JobRecord,
    pub status: JobStatus,
    pub counts: JobCounts,
    pub sub_jobs: Vec<JobNode>,
}

fn status(progress: &JobProgress) -> JobStatus {
    match (progress.finished_at_ms, progress.cancelled_at_ms) {
        (None, None) => JobStatus::Running,
        (None, Some(_)) => JobStatus::Cancelling,
        (Some(_), None) => JobStatus::Finished,
        (Some(_), Some(_)) => JobStatus::Cancelled,
    }
}

fn counts(r: &JobRecord, p: &JobProgress) -> JobCounts {
    JobCounts {
        total: r.total,
        pending: r.total.saturating_sub(p.done()),
        succeeded: p.succeeded,
        failed: p.failed,
        cancelled: p.cancelled,
    }
}

/// Finished children over all (1 for a job without children).
fn fraction(r: &JobRecord, p: &JobProgress) -> f64 {
    if r.total == 0 {
        1.0
    } else {
        p.done() as f64 / r.total as f64
    }
}

/// Fan-out jobs with fan-in.
pub(crate) struct Jobs {
    pub(crate) env: Arc<Env>,
    pub(crate) functions: Arc<Functions>,
    pub(crate) consumers: Arc<Consumers>,
    /// The gates of functions with `max_jobs_in_flight` this node runs
    /// (see `jobgate`).
    pub(crate) gates: crate::jobgate::Gates,
}

impl Jobs {
    pub(crate) fn new(env: Arc<Env>, functions: Arc<Functions>, consumers: Arc<Consumers>) -> Jobs {
        Jobs {
            env,
            functions,
            consumers,
            gates: Default::default(),
        }
    }

    /// Creates a job; its children are queued when this returns.
    /// Starts a job; its children and fan-in record `origin` (the
    /// caller's, when a function maps).
    pub(crate) async fn start(
        &self,
        spec: JobSpec,
        caller: Option<&Caller>,
        origin: &crate::auth::Origin,
    ) -> Result<String> {
        self.env.accepting()?;
        let max = self.env.opts.max_job_children;
        if spec.events.len() > max {
            return Err(Error::invalid(
                "events",
                format!(
                    "a job may have at most {max} children on this node (--max-job-children), not {}; split the events over several jobs",
                    spec.events.len()
                ),
            ));
        }
        let d = self.functions.resolve(&spec.function).await?;
        let queue = queue_name(&d.record.name);
        crate::queues::check_room(
            &self.env,
            &queue,
            &format!("the queue of function `{}`", d.record.name),
            spec.events.len(),
        )
        .await?;
        let then_d = match &spec.then {
            Some(then) => Some(self.functions.resolve(then).await?),
            None => None,
        };
        if spec.max_in_flight == Some(0) {
            return Err(Error::invalid(
                "max_in_flight",
                "is 0; give at least 1 (or none for no limit)".to_string(),
            ));
        }
        if spec.max_in_flight.is_some() && d.record.concurrency_key.is_some() {
            return Err(Error::invalid(
                "max_in_flight",
                format!(
                    "cannot be combined with the concurrency_key of function `{}`; deploy the child function without one, or drop max_in_flight",
                    d.record.name
                ),
            ));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.env.now_ms();
        let total = spec.events.len() as u64;
        // Children under max_in_flight share a key that carries the limit
        // (`shoal_store::own_key_limit`): every store's lease holds it.
        let job_key = spec.max_in_flight.map(|k| format!("\0{k}\0{id}"));
        // The caller's slot goes to its first job.
        let continues = caller.and_then(|c| {
            let handed = c.handoff.lock().unwrap().is_some();
            (!handed).then(|| c.slot.clone()).flatten()
        });
        let then_name = then_d.as_ref().map(|t| t.record.name.clone());
        let then_plan = then_d.map(|t| {
            let event = json!({"job": id, "count": total}).to_string();
            let mut record = new_record(&t, InvocationMode::Async, event, now);
            origin.stamp(&mut record);
            record.job = continues.clone();
            let body = Message::new(&record.id, t.record.version).encode();
            ThenPlan {
                record,
                queue: queue_name(&t.record.name),
                body: String::from_utf8(body).expect("messages are JSON"),
            }
        });
        let mut children = Vec::with_capacity(spec.events.len());
        let mut messages = Vec::with_capacity(spec.events.len());
        for (index, event) in spec.events.into_iter().enumerate() {
            let mut record = new_record(&d, InvocationMode::Async, event, now);
            origin.stamp(&mut record);
            record.job = Some(JobSlot {
                job: id.clone(),
                index: index as u64,
            });
            messages.push(NewMessage {
                id: record.id.clone(),
                body: Message::new(&record.id, d.record.version).encode(),
                due_ms: 0,
                sent_ms: now,
                dedup: None,
                key: job_key.clone().or_else(|| {
                    d.record
                        .concurrency_key
                        .as_ref()
                        .and_then(|ck| key_of(ck, &record.input))
                }),
            });
            children.push(record);
        }
        let job = JobRecord {
            id: id.clone(),
            function: d.record.name.clone(),
            then: then_name,
            total,
            invocation: caller.map(|c| c.invocation.clone()),
            parent: caller.and_then(|c| c.slot.as_ref().map(|s| s.job.clone())),
            continues: continues.clone(),
            created_at_ms: now,
            then_plan,
        };
        // Under `max_jobs_in_flight`, the children's messages wait in one
        // gate message until the job's turn (see `jobgate`).
        let (send_to, messages) = match d.record.max_jobs_in_flight {
            Some(limit) => {
                let gate =
                    crate::jobgate::gate_message(&id, &d.record.name, limit, &queue, messages, now);
                (crate::jobgate::gate_queue(&d.record.name), vec![gate])
            }
            None => (queue.clone(), messages),
        };
        self.env
            .backend
            .jobs
            .create_job(job, children, &send_to, messages)
            .await?;
        if send_to != queue {
            self.wake_gate(&d.record.name);
        }
        if let (Some(c), Some(_)) = (caller, &continues) {
            *c.handoff.lock().unwrap() = Some(id.clone());
        }
        self.consumers.wake(&queue);
        if let Some(then) = &spec.then {
            // A job without children completes as it is created.
            self.consumers.wake(&queue_name(then));
        }
        metrics::counter!("shoal_jobs_created_total", "function" => d.record.name.to_string())
            .increment(1);
        metrics::counter!("shoal_job_children_total", "function" => d.record.name.to_string())
            .increment(total);
        Ok(id)
    }

    /// Issues the write that records a finished invocation in its job slot,
    /// if it fills one: not while it will be retried, and not when it
    /// succeeded after handing its slot to a job of its own. Issued before
    /// the message's acknowledgement, so a crash in between redelivers the
    /// message and the (idempotent) result is recorded again.
    pub(crate) fn finish_slot(&self, record: &InvocationRecord) -> Option<BoxFuture<'static, ()>> {
        let slot = record.job.as_ref()?;
        let status = record.status;
        if !status.is_final()
            || (status == InvocationStatus::Succeeded && record.handed_to.is_some())
        {
            return None;
        }
        let now = self.env.now_ms();
        let result = ChildResult {
            index: slot.index,
            invocation: record.id.clone(),
            status,
            output: record.output.clone(),
            error: record.error.clone(),
            finished_at_ms: record.finished_at_ms.unwrap_or(now),
        };
        let pending = self.env.backend.jobs.finish_child(&slot.job, result, now);
        let consumers = self.consumers.clone();
        let job = slot.job.clone();
        let notifications = self.env.notifications();
        let store = self.env.backend.jobs.clone();
        Some(Box::pin(async move {
            match pending.await {
                Ok(finished) => {
                    for queue in &finished.sent_to {
                        consumers.wake(queue);
                    }
                    for _ in &finished.completed {
                        metrics::counter!("shoal_jobs_completed_total").increment(1);
                    }
                    // `job.finished`, after the write that completed the
                    // job (a crash right after it loses the event).
                    if let Some(n) = &notifications {
                        for done in &finished.completed {
                            if let Ok(Some((record, progress))) = store.job(done).await
                                && let Some(f) = n.job_finished(&record, &progress)
                                && let Err(e) = f.await
                            {
                                warn!(job = %done, error = %e, "Notifying a finished job failed.");
                            }
                        }
                    }
                }
                Err(e) => warn!(%job, error = %e, "Recording a job child's result failed."),
            }
        }))
    }

    /// True when the job was cancelled (its children that have not run yet
    /// are recorded as cancelled instead of running).
    pub(crate) async fn cancelled(&self, job: &str) -> bool {
        matches!(
            self.env.backend.jobs.job(job).await,
            Ok(Some((_, progress))) if progress.cancelled_at_ms.is_some()
        )
    }

    /// Jobs newest first, strictly older than `after`, at most `limit`.
    pub(crate) async fn list(&self, after: Option<&str>, limit: usize) -> Result<JobPage> {
        let records = self.env.backend.jobs.list_jobs(after, limit).await?;
        let next = (limit > 0 && records.len() == limit)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        let mut jobs = Vec::with_capacity(records.len());
        for record in records {
            // The record is immutable; its progress is read on its own.
            let p = match self.env.backend.jobs.job(&record.id).await? {
                Some((_, p)) => p,
                None => JobProgress::default(),
            };
            jobs.push(JobSummary {
                status: status(&p),
                counts: counts(&record, &p),
                progress: fraction(&record, &p),
                finished_at_ms: p.finished_at_ms,
                cancelled_at_ms: p.cancelled_at_ms,
                record,
            });
        }
        Ok(JobPage { jobs, next })
    }

    pub(crate) async fn view(&self, id: &str) -> Result<JobView> {
        let (record, p) = self
            .env
            .backend
            .jobs
            .job(id)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Job, id))?;
        let failures = self
            .env
            .backend
            .jobs
            .child_failures(id, None, LISTED_FAILURES)
            .await?;
        let mut budget = TREE_NODES;
        let sub_jobs = self.tree(id, &mut budget).await?;
        let then_invocation = match (&record.then_plan, p.finished_at_ms, p.cancelled_at_ms) {
            (Some(plan), Some(_), None) => Some(plan.record.id.clone()),
            _ => None,
        };
        Ok(JobView {
            status: status(&p),
            counts: counts(&record, &p),
            progress: fraction(&record, &p),
            finished_at_ms: p.finished_at_ms,
            cancelled_at_ms: p.cancelled_at_ms,
            then_invocation,
            record,
            failures,
            sub_jobs,
        })
    }

    /// The jobs below `id`, depth first, at most `budget` of them.
    fn tree<'a>(
        &'a self,
        id: &'a str,
        budget: &'a mut usize,
    ) -> BoxFuture<'a, Result<Vec<JobNode>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for sub in self.env.backend.jobs.sub_jobs(id).await? {
                if *budget == 0 {
                    break;
                }
                *budget -= 1;
                let Some((record, progress)) = self.env.backend.jobs.job(&sub).await? else {
                    continue;
                };
                let sub_jobs = self.tree(&sub, budget).await?;
                out.push(JobNode {
                    status: status(&progress),
                    counts: counts(&record, &progress),
                    record,
                    sub_jobs,
                });
            }
            Ok(out)
        })
    }

    /// Children's results by index from `offset`, at most `limit`.
    pub(crate) async fn results(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ChildResult>> {
        crate::queues::check_page_limit(limit, crate::queues::MAX_PAGE)?;
        if self.env.backend.jobs.job(id).await?.is_none() {
            return Err(Error::not_found(Entity::Job, id));
        }
        Ok(self
            .env
            .backend
            .jobs
            .child_results(id, offset, limit)
            .await?)
    }

    /// Cancels a job and the jobs below it.
    pub(crate) async fn cancel(&self, id: &str) -> Result<()> {
        let now = self.env.now_ms();
        if !self.env.backend.jobs.cancel_job(id, now).await? {
            return Err(Error::not_found(Entity::Job, id));
        }
        Ok(())
    }
}
