//! Jobs: fan-out whose fan-in starts exactly once, nested jobs that fill
//! their parent's slot, cancel.

use shoal_types::FailureKind;
use shoal_types::InvocationStatus::{self, Cancelled, Failed, Succeeded};

use crate::{
    Backend, ChildResult, Error, ErrorRecord, InvocationRecord, JobProgress, JobRecord, JobSlot,
    ThenPlan,
};

use super::{T, msg, name, sample_invocation, unique};

/// A job is created with its children atomically; each index counts once;
/// the last result writes the fan-in's record and message exactly once.
pub async fn jobs_fan_in_once(b: &Backend) {
    let id = unique("job");
    let queue = unique("jobq");
    let then_q = unique("thenq");
    let then_id = unique("then-inv");
    let children: Vec<InvocationRecord> = (0..3)
        .map(|i| sample_invocation(&format!("{id}-c{i}"), "child"))
        .collect();
    let messages = children
        .iter()
        .map(|c| msg(&c.id, c.id.as_bytes(), T))
        .collect();
    b.jobs
        .create_job(
            job(&id, 3, Some(plan(&then_q, &then_id))),
            children,
            &queue,
            messages,
        )
        .await
        .unwrap();
    let (record, progress) = b.jobs.job(&id).await.unwrap().expect("job stored");
    assert_eq!(record.total, 3);
    assert_eq!(progress, JobProgress::default());
    assert_eq!(b.queues.depth(&queue).await.unwrap().waiting, 3);
    assert!(
        b.invocations
            .invocation(&format!("{id}-c2"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(b.jobs.job(&unique("nojob")).await.unwrap().is_none());

    // Out of order, with a repeat: the repeat changes nothing.
    let f = b
        .jobs
        .finish_child(&id, child_result(2, Succeeded), T + 1)
        .await
        .unwrap();
    assert!(f.recorded && f.completed.is_empty() && f.sent_to.is_empty());
    let f = b
        .jobs
        .finish_child(&id, child_result(2, Failed), T + 2)
        .await
        .unwrap();
    assert!(!f.recorded);
    let f = b
        .jobs
        .finish_child(&id, child_result(0, Failed), T + 3)
        .await
        .unwrap();
    assert!(f.recorded && f.completed.is_empty());
    assert!(b.invocations.invocation(&then_id).await.unwrap().is_none());
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 0);
    let f = b
        .jobs
        .finish_child(&id, child_result(1, Succeeded), T + 4)
        .await
        .unwrap();
    assert!(f.recorded);
    assert_eq!(f.completed, vec![id.clone()]);
    assert_eq!(f.sent_to, vec![then_q.clone()]);
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 1);
    assert_eq!(
        b.invocations
            .invocation(&then_id)
            .await
            .unwrap()
            .unwrap()
            .function,
        "fan-in"
    );
    let leased = b.queues.lease(&then_q, T + 5, 10, 1000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 1);
    assert_eq!(leased.deliveries[0].id, then_id);
    b.queues.ack(&then_q, vec![then_id.clone()]).await.unwrap();
    // A redelivered last child never fires the fan-in again.
    let f = b
        .jobs
        .finish_child(&id, child_result(1, Succeeded), T + 6)
        .await
        .unwrap();
    assert_eq!(f, Default::default());
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 0);

    let (_, progress) = b.jobs.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (progress.succeeded, progress.failed, progress.cancelled),
        (2, 1, 0)
    );
    assert_eq!(progress.finished_at_ms, Some(T + 4));
    let results = b.jobs.child_results(&id, 0, 10).await.unwrap();
    let indexes: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert_eq!(results[2].output.as_deref(), Some("{\"n\":2}"));
    assert_eq!(results[0].error.as_ref().unwrap().message, "child 0");
    let page = b.jobs.child_results(&id, 1, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].index, 1);
    assert!(b.jobs.child_results(&id, 0, 0).await.unwrap().is_empty());
    let failures = b.jobs.child_failures(&id, None, 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].index, 0);
    assert!(
        b.jobs
            .child_failures(&id, Some(0), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Unknown jobs and indexes out of range are refused.
    assert!(matches!(
        b.jobs
            .finish_child(&id, child_result(3, Succeeded), T)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        b.jobs
            .finish_child(&unique("nojob"), child_result(0, Succeeded), T)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(!b.jobs.cancel_job(&unique("nojob"), T).await.unwrap());
    // Cancelling a finished job changes nothing.
    assert!(b.jobs.cancel_job(&id, T + 7).await.unwrap());
    let (_, after) = b.jobs.job(&id).await.unwrap().unwrap();
    assert_eq!(after, progress);

    // No children: complete as created, the fan-in queued at once.
    let empty = unique("job");
    let then_id = unique("then-inv");
    b.jobs
        .create_job(
            job(&empty, 0, Some(plan(&then_q, &then_id))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    let (_, progress) = b.jobs.job(&empty).await.unwrap().unwrap();
    assert_eq!(progress.finished_at_ms, Some(T));
    assert_eq!(progress.done(), 0);
    let leased = b.queues.lease(&then_q, T + 5, 10, 1000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 1);
    assert_eq!(leased.deliveries[0].id, then_id);
}

/// A nested job without a fan-in fills its parent's slot when it completes;
/// cancelling reaches every job below; a cancelled job starts no fan-in.
pub async fn jobs_nested_and_cancel(b: &Backend) {
    let queue = unique("jobq");
    let then_q = unique("thenq");
    let top = unique("top");
    let top_then = unique("top-then");
    b.jobs
        .create_job(
            job(&top, 2, Some(plan(&then_q, &top_then))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    // Child 0 of `top` fans out again and hands its slot to `sub`.
    let sub = unique("sub");
    let mut sub_job = job_under(&sub, 2, &top);
    sub_job.invocation = Some("inv-0".into());
    b.jobs
        .create_job(sub_job, vec![], &queue, vec![])
        .await
        .unwrap();
    assert_eq!(b.jobs.sub_jobs(&top).await.unwrap(), vec![sub.clone()]);
    assert!(b.jobs.sub_jobs(&sub).await.unwrap().is_empty());

    b.jobs
        .finish_child(&top, child_result(1, Succeeded), T)
        .await
        .unwrap();
    b.jobs
        .finish_child(&sub, child_result(0, Succeeded), T)
        .await
        .unwrap();
    let f = b
        .jobs
        .finish_child(&sub, child_result(1, Succeeded), T + 9)
        .await
        .unwrap();
    assert_eq!(f.completed, vec![sub.clone(), top.clone()]);
    assert_eq!(f.sent_to, vec![then_q.clone()]);
    let slot = &b.jobs.child_results(&top, 0, 1).await.unwrap()[0];
    assert_eq!(slot.status, Succeeded);
    assert_eq!(slot.invocation, "inv-0");
    let output: serde_json::Value = serde_json::from_str(slot.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"job": sub, "count": 2}));

    // Cancel: the whole tree is marked; the fan-in does not start; a
    // cancelled nested job fills its parent's slot as cancelled.
    let top = unique("top");
    let top_then = unique("top-then");
    b.jobs
        .create_job(
            job(&top, 1, Some(plan(&then_q, &top_then))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    let sub = unique("sub");
    b.jobs
        .create_job(job_under(&sub, 1, &top), vec![], &queue, vec![])
        .await
        .unwrap();
    assert!(b.jobs.cancel_job(&top, T + 1).await.unwrap());
    assert!(b.jobs.cancel_job(&top, T + 2).await.unwrap());
    let (_, p) = b.jobs.job(&top).await.unwrap().unwrap();
    assert_eq!(p.cancelled_at_ms, Some(T + 1));
    let (_, p) = b.jobs.job(&sub).await.unwrap().unwrap();
    assert_eq!(p.cancelled_at_ms, Some(T + 1));
    let f = b
        .jobs
        .finish_child(&sub, child_result(0, Cancelled), T + 3)
        .await
        .unwrap();
    assert_eq!(f.completed, vec![sub.clone(), top.clone()]);
    assert!(f.sent_to.is_empty());
    assert!(b.invocations.invocation(&top_then).await.unwrap().is_none());
    let (_, p) = b.jobs.job(&top).await.unwrap().unwrap();
    assert_eq!(
        (p.succeeded, p.cancelled, p.finished_at_ms),
        (0, 1, Some(T + 3))
    );
}

/// Jobs are listed newest first (greatest id first), strictly older than
/// the cursor, `limit` at a time, sub-jobs included, with their records.
/// Other cases' jobs may be listed too: only this case's are compared.
pub async fn jobs_list_newest_first(b: &Backend) {
    let base = unique("list");
    let queue = unique("jobq");
    let ids: Vec<String> = (0..5).map(|i| format!("{base}-{i}")).collect();
    // Created out of id order: the list follows ids, not write order.
    for i in [2, 0, 4, 1] {
        let mut record = job(&ids[i], 1, None);
        record.created_at_ms = T + i as u64;
        b.jobs
            .create_job(record, vec![], &queue, vec![])
            .await
            .unwrap();
    }
    b.jobs
        .create_job(job_under(&ids[3], 2, &ids[2]), vec![], &queue, vec![])
        .await
        .unwrap();
    assert!(b.jobs.list_jobs(None, 0).await.unwrap().is_empty());

    // Pages of two from the newest, each strictly below the last id seen.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.jobs.list_jobs(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        for pair in page.windows(2) {
            assert!(pair[0].id > pair[1].id, "newest first");
        }
        if let (Some(a), Some(first)) = (&after, page.first()) {
            assert!(first.id < *a, "strictly older than the cursor");
        }
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page.into_iter().filter(|r| r.id.starts_with(&base)));
    }
    let listed: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
    let expected: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, expected);
    assert_eq!(seen[1].parent.as_deref(), Some(ids[2].as_str()));
    assert_eq!(seen[1].total, 2);
    assert_eq!(seen[0].created_at_ms, T + 4);

    // A cursor that is not a job's id works as a bound too.
    let page = b
        .jobs
        .list_jobs(Some(&format!("{base}-3x")), 1)
        .await
        .unwrap();
    assert_eq!(page[0].id, ids[3]);
    let page = b.jobs.list_jobs(Some(&ids[0]), 10).await.unwrap();
    assert!(page.iter().all(|r| !r.id.starts_with(&base)));
}

fn job(id: &str, total: u64, then: Option<ThenPlan>) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        function: name("child"),
        then: then.as_ref().map(|p| p.record.function.clone()),
        total,
        invocation: None,
        parent: None,
        continues: None,
        created_at_ms: T,
        then_plan: then,
    }
}

/// A job without a fan-in, created under `parent` and filling its slot 0.
fn job_under(id: &str, total: u64, parent: &str) -> JobRecord {
    JobRecord {
        parent: Some(parent.to_string()),
        continues: Some(JobSlot {
            job: parent.to_string(),
            index: 0,
        }),
        ..job(id, total, None)
    }
}

fn plan(queue: &str, id: &str) -> ThenPlan {
    ThenPlan {
        record: sample_invocation(id, "fan-in"),
        queue: queue.to_string(),
        body: format!(r#"{{"id":"{id}"}}"#),
    }
}

fn child_result(index: u64, status: InvocationStatus) -> ChildResult {
    ChildResult {
        index,
        invocation: format!("inv-{index}"),
        status,
        output: (status == Succeeded).then(|| format!("{{\"n\":{index}}}")),
        error: (status == Failed).then(|| ErrorRecord {
            kind: FailureKind::Raised,
            exception: Some("ValueError".into()),
            message: format!("child {index}"),
            traceback: None,
        }),
        finished_at_ms: T + index,
    }
}
