//! Jobs: fan-out with fan-in exactly once. The `then` function starts once
//! with `{"job": id, "count": n}` after every child is final (failed ones
//! included, retried ones after their last attempt); a child that maps
//! hands its slot to its own job, so the outer fan-in waits for the whole
//! tree; a cancelled job records its undelivered children as cancelled.

mod common;

use common::{Latch, Node, Script, ms, secs};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use shoal_engine::JobSpec;
use shoal_runtime::{HostCall, MapArgs};
use shoal_types::{FailureKind, InvocationStatus, JobStatus};

fn events(values: impl IntoIterator<Item = Value>) -> Vec<String> {
    values.into_iter().map(|v| v.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn the_fan_in_starts_once_with_the_job_and_its_count() {
    let node = Node::start().await;
    node.deploy("name = \"child\"\nretries = 0\nconcurrency = 4")
        .await;
    node.deploy("name = \"total\"\nretries = 0").await;
    // Children finish in no particular order; every third one fails.
    node.fake.script_with("child", |req| {
        let n: u64 = req.event.parse().unwrap();
        let script = if n.is_multiple_of(3) {
            Script::raise("ValueError", format!("child {n} refuses"))
        } else {
            Script::ok(json!(n * 2))
        };
        script.sleep(ms(100 * ((n * 7) % 10)))
    });
    let id = node
        .engine
        .start_job(JobSpec {
            function: "child".into(),
            events: events((0..10).map(|n| json!(n))),
            then: Some("total".into()),
            max_in_flight: None,
        })
        .await
        .unwrap();
    let job = node.wait_job(&id).await;
    assert_eq!(job.status, JobStatus::Finished);
    assert_eq!(
        (
            job.counts.total,
            job.counts.succeeded,
            job.counts.failed,
            job.counts.pending
        ),
        (10, 6, 4, 0)
    );
    let then = job.then_invocation.clone().expect("the fan-in started");
    let r = node.wait_final(&then).await;
    assert_eq!(r.status, InvocationStatus::Succeeded);

    node.pass(secs(600)).await;
    let fan_ins = node.fake.calls_of("total");
    assert_eq!(fan_ins.len(), 1, "{fan_ins:?}");
    assert_eq!(fan_ins[0].event_json(), json!({"job": id, "count": 10}));
    assert_eq!(fan_ins[0].invocation_id, then);
    // After every child.
    let children = node.fake.calls_of("child");
    assert_eq!(children.len(), 10);
    let last_child = children.iter().filter_map(|c| c.ended).max().unwrap();
    assert!(fan_ins[0].started >= last_child);

    // Every child's result, in index order.
    let results = node.engine.job_results(&id, 0, 100).await.unwrap();
    let got: Vec<(u64, InvocationStatus, Option<String>)> = results
        .iter()
        .map(|r| (r.index, r.status, r.output.clone()))
        .collect();
    let expected: Vec<(u64, InvocationStatus, Option<String>)> = (0..10u64)
        .map(|n| {
            if n.is_multiple_of(3) {
                (n, InvocationStatus::Failed, None)
            } else {
                (n, InvocationStatus::Succeeded, Some((n * 2).to_string()))
            }
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        results[3].error.as_ref().unwrap().message,
        "child 3 refuses"
    );
}

#[tokio::test(start_paused = true)]
async fn the_fan_in_waits_for_retries_and_runs_when_every_child_failed() {
    let node = Node::start().await;
    node.deploy("name = \"child\"\nretries = 1\nretry_delay = \"5s\"")
        .await;
    node.deploy("name = \"total\"\nretries = 0").await;
    node.fake
        .script("child", Script::fail(FailureKind::Crashed));
    let id = node
        .engine
        .start_job(JobSpec {
            function: "child".into(),
            events: events((0..5).map(|n| json!(n))),
            then: Some("total".into()),
            max_in_flight: None,
        })
        .await
        .unwrap();
    let fan_in = node.ended("total", 1).await;
    let children = node.fake.calls_of("child");
    assert_eq!(children.len(), 10, "each child ran twice");
    assert!(children.iter().all(|c| c.ended.is_some()));
    let last_child = children.iter().filter_map(|c| c.ended).max().unwrap();
    assert!(fan_in[0].started >= last_child);
    assert_eq!(node.at(fan_in[0].started), secs(5));
    assert_eq!(fan_in[0].event_json(), json!({"job": id, "count": 5}));

    node.pass(secs(600)).await;
    assert_eq!(node.fake.calls_of("total").len(), 1);
    let job = node.wait_job(&id).await;
    assert_eq!((job.counts.failed, job.counts.succeeded), (5, 0));
    assert_eq!(job.failures.len(), 5);
    assert!(
        job.failures
            .iter()
            .all(|f| f.error.as_ref().unwrap().kind == FailureKind::Crashed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_without_children_fans_in_at_once() {
    let node = Node::start().await;
    node.deploy("name = \"child\"").await;
    node.deploy("name = \"total\"").await;
    let id = node
        .engine
        .start_job(JobSpec {
            function: "child".into(),
            events: Vec::new(),
            then: Some("total".into()),
            max_in_flight: None,
        })
        .await
        .unwrap();
    let fan_in = node.ended("total", 1).await;
    assert_eq!(fan_in[0].event_json(), json!({"job": id, "count": 0}));
    assert_eq!(node.at(fan_in[0].started), secs(0));
    node.pass(secs(60)).await;
    assert_eq!(node.fake.calls_of("total").len(), 1);
    assert!(node.fake.calls_of("child").is_empty());
}

/// A `map` host call: `events` to `function`, then `then`.
fn map(function: &str, events: &[Value], then: &str) -> HostCall {
    HostCall::Map(MapArgs {
        function: function.into(),
        events: events
            .iter()
            .map(|e| RawValue::from_string(e.to_string()).unwrap())
            .collect(),
        then: Some(then.into()),
    })
}

#[tokio::test(start_paused = true)]
async fn nested_jobs_make_the_outer_fan_in_wait_for_the_whole_tree() {
    let node = Node::start().await;
    for m in [
        "name = \"group\"\nretries = 0",
        "name = \"leaf\"\nretries = 0\nconcurrency = 10\ntimeout = \"15m\"",
        "name = \"sum_group\"\nretries = 0",
        "name = \"final\"\nretries = 0",
    ] {
        node.deploy(m).await;
    }
    // A group maps its leaves (as many as its event says) with sum_group
    // as their fan-in, and returns the map's answer `{"job": id}`.
    node.fake.script_with("group", |req| {
        let size = req.event.parse::<u64>().unwrap();
        let leaves: Vec<Value> = (0..size).map(|i| json!(i)).collect();
        Script::host_answer().host(map("leaf", &leaves, "sum_group"))
    });
    let leaves_go = Latch::new();
    node.fake.script("leaf", Script::echo().wait(&leaves_go));
    let sizes = [2u64, 0, 3];
    let outer = node
        .engine
        .start_job(JobSpec {
            function: "group".into(),
            events: events(sizes.iter().map(|s| json!(s))),
            then: Some("final".into()),
            max_in_flight: None,
        })
        .await
        .unwrap();

    // Every group has run and every leaf is held; only the empty group's
    // fan-in could run.
    let groups = node.ended("group", 3).await;
    assert!(groups.iter().all(|g| g.succeeded()), "{groups:?}");
    node.started("leaf", 5).await;
    node.ended("sum_group", 1).await;
    node.pass(secs(60)).await;
    assert!(
        node.fake.calls_of("final").is_empty(),
        "the outer fan-in ran early"
    );
    assert_eq!(node.fake.calls_of("sum_group").len(), 1);
    let view = node.engine.job(&outer).await.unwrap();
    assert_eq!(view.status, JobStatus::Running);
    assert_eq!((view.counts.succeeded, view.counts.pending), (1, 2));
    // Each group handed its slot to its own job.
    for g in &groups {
        let r = node.engine.invocation(&g.invocation_id).await.unwrap();
        let answer: Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
        assert_eq!(r.handed_to.as_deref(), answer["job"].as_str(), "{r:?}");
    }

    leaves_go.open();
    let fan_in = node.ended("final", 1).await;
    assert_eq!(fan_in[0].event_json(), json!({"job": outer, "count": 3}));
    let tree_done = node
        .fake
        .calls()
        .iter()
        .filter(|c| c.function == "leaf" || c.function == "sum_group")
        .filter_map(|c| c.ended)
        .max()
        .unwrap();
    assert!(fan_in[0].started >= tree_done);
    let mut counts: Vec<u64> = node
        .fake
        .calls_of("sum_group")
        .iter()
        .map(|c| c.event_json()["count"].as_u64().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, [0, 2, 3]);

    node.pass(secs(600)).await;
    assert_eq!(node.fake.calls_of("final").len(), 1);
    assert_eq!(node.fake.calls_of("sum_group").len(), 3);
    let view = node.wait_job(&outer).await;
    assert_eq!(view.status, JobStatus::Finished);
    assert_eq!((view.counts.succeeded, view.counts.pending), (3, 0));
    let mut inner: Vec<u64> = view.sub_jobs.iter().map(|j| j.counts.total).collect();
    inner.sort();
    assert_eq!(inner, [0, 2, 3]);
    assert!(
        view.sub_jobs
            .iter()
            .all(|j| j.status == JobStatus::Finished)
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_job_cancels_its_undelivered_children() {
    let node = Node::start().await;
    node.deploy("name = \"child\"\nconcurrency = 2").await;
    node.deploy("name = \"total\"").await;
    let go = Latch::new();
    node.fake.script("child", Script::echo().wait(&go));
    let id = node
        .engine
        .start_job(JobSpec {
            function: "child".into(),
            events: events((0..20).map(|n| json!(n))),
            then: Some("total".into()),
            max_in_flight: None,
        })
        .await
        .unwrap();
    node.started("child", 2).await;
    node.engine.cancel_job(&id).await.unwrap();
    assert_eq!(
        node.engine.job(&id).await.unwrap().status,
        JobStatus::Cancelling
    );
    go.open();
    let job = node.wait_job(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        (
            job.counts.succeeded,
            job.counts.cancelled,
            job.counts.pending
        ),
        (2, 18, 0)
    );
    assert_eq!(job.then_invocation, None);
    node.pass(secs(600)).await;
    // The two running children finished; no other child and no fan-in ran.
    assert_eq!(node.fake.calls_of("child").len(), 2);
    assert!(node.fake.calls_of("total").is_empty());
    let results = node.engine.job_results(&id, 0, 100).await.unwrap();
    assert_eq!(results.len(), 20);
    for r in &results {
        let inv = node.engine.invocation(&r.invocation).await.unwrap();
        assert_eq!(inv.status, r.status);
        if r.status == InvocationStatus::Cancelled {
            assert_eq!(inv.attempts, 0, "{inv:?}");
        }
    }
}
