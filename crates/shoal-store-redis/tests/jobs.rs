//! The jobs port on a real `redis-server`: the conformance suite's job
//! cases, and listing the invocations jobs write, one test each, with
//! invocations, queues and jobs on Redis.

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

/// A backend whose work ports (invocations, queues, jobs) and catalog are
/// on Redis; documents in memory (the job cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(
        RedisStore::connect(&server.options())
            .await
            .expect("connect to the test's redis-server")
            .0,
    );
    Backend {
        catalog: store.clone(),
        invocations: store.clone(),
        queues: store.clone(),
        docs: Arc::new(MemoryStore::new()),
        jobs: store.clone(),
        kv: store.clone(),
        blobs: store.clone(),
        channels: store.clone(),
        usage: store,
    }
}

macro_rules! cases {
    ($($area:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::$area::$case(&backend(&server).await).await;
            }
        )*
    };
}

cases!(
    jobs::jobs_fan_in_once,
    jobs::jobs_nested_and_cancel,
    invocation_lists::list_invocations_of_jobs,
);

use shoal_store::{ChildResult, InvocationRecord, JobRecord, JobSlot, NewMessage, ThenPlan};
use shoal_types::InvocationStatus;

const T: u64 = 1_700_000_000_000;

fn job(id: &str, total: u64, then: Option<ThenPlan>, continues: Option<JobSlot>) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        function: conformance::name("child"),
        then: then.as_ref().map(|p| p.record.function.clone()),
        total,
        invocation: Some(format!("{id}-inv")),
        parent: continues.as_ref().map(|c| c.job.clone()),
        continues,
        created_at_ms: T,
        then_plan: then,
    }
}

fn plan(queue: &str, id: &str) -> ThenPlan {
    ThenPlan {
        record: conformance::sample_invocation(id, "fan-in"),
        queue: queue.to_string(),
        body: format!(r#"{{"id":"{id}"}}"#),
    }
}

fn succeeded(index: u64) -> ChildResult {
    ChildResult {
        index,
        invocation: format!("inv-{index}"),
        status: InvocationStatus::Succeeded,
        output: Some("{}".into()),
        error: None,
        finished_at_ms: T,
    }
}

fn children(job: &str, n: u64) -> (Vec<InvocationRecord>, Vec<NewMessage>) {
    let records: Vec<InvocationRecord> = (0..n)
        .map(|i| conformance::sample_invocation(&format!("{job}-c{i}"), "child"))
        .collect();
    let messages = records
        .iter()
        .map(|r| NewMessage {
            id: r.id.clone(),
            body: r.id.as_bytes().to_vec(),
            due_ms: T,
            sent_ms: T,
            dedup: None,
            key: None,
        })
        .collect();
    (records, messages)
}

/// A job id used twice is refused, and the refused call writes nothing
/// (no records, no messages).
#[tokio::test]
async fn a_job_created_twice_is_refused_and_writes_nothing() {
    let server = RedisServer::start(&[]);
    let b = backend(&server).await;
    let id = conformance::unique("job");
    let queue = conformance::unique("q");
    let (records, messages) = children(&id, 2);
    b.jobs
        .create_job(job(&id, 2, None, None), records, &queue, messages)
        .await
        .unwrap();
    let other = format!("{id}-again");
    let (records, messages) = children(&other, 3);
    let again = b
        .jobs
        .create_job(job(&id, 3, None, None), records, &queue, messages)
        .await;
    assert!(
        matches!(again, Err(shoal_store::Error::Corrupt(_))),
        "{again:?}"
    );
    assert_eq!(b.queues.depth(&queue).await.unwrap().waiting, 2);
    let record = b.invocations.invocation(&format!("{other}-c0")).await;
    assert!(record.unwrap().is_none());
    let (stored, _) = b.jobs.job(&id).await.unwrap().unwrap();
    assert_eq!(stored.total, 2);
}

/// Three levels: the leaf's last child completes the leaf, which fills the
/// middle job's slot, which fills the top's, whose fan-in is written in
/// the same script, its message sent at that time.
#[tokio::test]
async fn a_leaf_completes_the_whole_tree_in_one_write() {
    let server = RedisServer::start(&[]);
    let b = backend(&server).await;
    let queue = conformance::unique("q");
    let then_q = conformance::unique("thenq");
    let (top, mid, leaf) = (
        conformance::unique("top"),
        conformance::unique("mid"),
        conformance::unique("leaf"),
    );
    let then_id = conformance::unique("then");
    let slot = |job: &str, index| {
        Some(JobSlot {
            job: job.to_string(),
            index,
        })
    };
    b.jobs
        .create_job(
            job(&top, 2, Some(plan(&then_q, &then_id)), None),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    b.jobs
        .create_job(job(&mid, 1, None, slot(&top, 1)), vec![], &queue, vec![])
        .await
        .unwrap();
    b.jobs
        .create_job(job(&leaf, 2, None, slot(&mid, 0)), vec![], &queue, vec![])
        .await
        .unwrap();
    assert_eq!(b.jobs.sub_jobs(&top).await.unwrap(), vec![mid.clone()]);
    assert_eq!(b.jobs.sub_jobs(&mid).await.unwrap(), vec![leaf.clone()]);

    b.jobs
        .finish_child(&top, succeeded(0), T + 1)
        .await
        .unwrap();
    b.jobs
        .finish_child(&leaf, succeeded(1), T + 2)
        .await
        .unwrap();
    let f = b
        .jobs
        .finish_child(&leaf, succeeded(0), T + 3)
        .await
        .unwrap();
    assert!(f.recorded);
    assert_eq!(f.completed, [leaf.clone(), mid.clone(), top.clone()]);
    assert_eq!(f.sent_to, vec![then_q.clone()]);

    let filled = &b.jobs.child_results(&top, 1, 10).await.unwrap()[0];
    assert_eq!(filled.invocation, format!("{mid}-inv"));
    assert_eq!(filled.finished_at_ms, T + 3);
    let output: serde_json::Value =
        serde_json::from_str(filled.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"job": mid, "count": 1}));
    let depth = b.queues.depth(&then_q).await.unwrap();
    assert_eq!((depth.waiting, depth.oldest_sent_ms), (1, Some(T + 3)));
    let fan_in = b.invocations.invocation(&then_id).await.unwrap().unwrap();
    assert_eq!(fan_in.function, "fan-in");
    for j in [&top, &mid, &leaf] {
        let (_, p) = b.jobs.job(j).await.unwrap().unwrap();
        assert_eq!(p.finished_at_ms, Some(T + 3), "{j}");
    }
    // Cancelling a finished tree changes nothing.
    assert!(b.jobs.cancel_job(&top, T + 4).await.unwrap());
    let (_, p) = b.jobs.job(&leaf).await.unwrap().unwrap();
    assert_eq!(p.cancelled_at_ms, None);
}

/// Random job trees, finished in random order with repeats, indexes out of
/// range and cancels, answer on Redis as on the in-memory reference store.
#[tokio::test]
async fn random_job_trees_answer_as_the_reference_store() {
    use shoal_store::Jobs;
    let server = RedisServer::start(&[]);
    let redis = backend(&server).await;
    let memory = Arc::new(MemoryStore::new());
    let mut seed: u64 = 0x10b5;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let queue = conformance::unique("q");
    let then_q = conformance::unique("thenq");
    let mut completed = 0;
    for round in 0..40 {
        let top = format!("{}-{round}", conformance::unique("top"));
        let total = next(4);
        let with_plan = |id: &str, yes: bool| yes.then(|| plan(&then_q, &format!("{id}-then")));
        let mut jobs = vec![(top.clone(), total)];
        let mut creates = vec![job(&top, total, with_plan(&top, next(2) == 0), None)];
        for i in 0..total {
            if next(2) == 0 {
                let sub = format!("{top}-sub{i}");
                let sub_total = next(3);
                let slot = Some(JobSlot {
                    job: top.clone(),
                    index: i,
                });
                creates.push(job(&sub, sub_total, with_plan(&sub, next(3) == 0), slot));
                jobs.push((sub, sub_total));
            }
        }
        for record in creates {
            let (records, messages) = children(&record.id, record.total);
            let a = redis
                .jobs
                .create_job(record.clone(), records.clone(), &queue, messages.clone())
                .await;
            let b = memory.create_job(record, records, &queue, messages).await;
            assert_eq!(a.is_ok(), b.is_ok(), "create in round {round}");
        }
        for step in 0..12 {
            let (job, total) = &jobs[next(jobs.len() as u64) as usize];
            let now = 1_000 + step;
            if next(6) == 0 {
                let a = redis.jobs.cancel_job(job, now).await.unwrap();
                let b = memory.cancel_job(job, now).await.unwrap();
                assert_eq!(a, b, "cancel in round {round}");
                continue;
            }
            let status = [
                InvocationStatus::Succeeded,
                InvocationStatus::Failed,
                InvocationStatus::Cancelled,
            ][next(3) as usize];
            let result = ChildResult {
                status,
                output: (status == InvocationStatus::Succeeded).then(|| "[1]".to_string()),
                ..succeeded(next(total + 1))
            };
            let a = redis.jobs.finish_child(job, result.clone(), now).await;
            let b = memory.finish_child(job, result, now).await;
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "finish in round {round} step {step}");
                    completed += a.completed.len();
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("round {round} step {step}: {a:?} vs {b:?}"),
            }
        }
        for (job, _) in &jobs {
            assert_eq!(
                redis.jobs.job(job).await.unwrap(),
                memory.job(job).await.unwrap(),
                "{job}"
            );
            assert_eq!(
                redis.jobs.child_results(job, 0, 10).await.unwrap(),
                memory.child_results(job, 0, 10).await.unwrap(),
                "{job}"
            );
            assert_eq!(
                redis.jobs.child_failures(job, None, 10).await.unwrap(),
                memory.child_failures(job, None, 10).await.unwrap(),
                "{job}"
            );
            assert_eq!(
                redis.jobs.sub_jobs(job).await.unwrap(),
                memory.sub_jobs(job).await.unwrap(),
                "{job}"
            );
        }
    }
    assert_eq!(
        redis.queues.depth(&then_q).await.unwrap(),
        shoal_store::Queues::depth(&*memory, &then_q).await.unwrap()
    );
    assert_eq!(
        redis.queues.depth(&queue).await.unwrap(),
        shoal_store::Queues::depth(&*memory, &queue).await.unwrap()
    );
    assert!(completed > 20, "only {completed} jobs completed");
}
