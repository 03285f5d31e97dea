//! Subtasks over byte ranges and the bounds on what runs at once, on the
//! in-memory store, the scripted runtime and a paused clock: `map_ranges`
//! tiles a blob (or windows of it) with record-aligned children; a job's
//! `max_in_flight` holds its children to K; a function's
//! `max_jobs_in_flight` runs its jobs one after another in creation order;
//! `job_wait` answers the fan-in's result (end to end in `crates/shoal/tests/ranges.rs`).

mod common;

use common::{Node, Script, ms};
use serde_json::json;
use shoal_engine::JobSpec;
use shoal_runtime::HostCall;
use shoal_types::JobStatus;

async fn put_blob(node: &Node, key: &str, data: Vec<u8>) {
    let body =
        futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(data))]);
    node.engine
        .blob_upload(key, None, body)
        .await
        .expect("upload");
}

/// The children's (offset, length) in index order.
fn ranges_of(node: &Node, function: &str) -> Vec<(u64, u64)> {
    let mut calls: Vec<_> = node
        .fake
        .calls_of(function)
        .into_iter()
        .map(|c| c.event_json())
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
            )
        })
        .collect();
    calls.sort();
    calls.dedup();
    calls.into_iter().map(|(_, o, l)| (o, l)).collect()
}

fn map_ranges(args: serde_json::Value) -> HostCall {
    HostCall::decode("map_ranges", &args.to_string()).expect("a map_ranges call")
}

#[tokio::test(start_paused = true)]
async fn map_ranges_tiles_the_blob_into_record_aligned_children() {
    let node = Node::start().await;
    node.deploy("name = \"part\"\nretries = 0\nconcurrency = 8")
        .await;
    node.deploy("name = \"sum\"\nretries = 0").await;
    node.deploy("name = \"start\"\nretries = 0\ntimeout = \"60s\"")
        .await;
    put_blob(&node, "recs", vec![7u8; 16 * 1000]).await;
    node.fake.script("part", Script::ok(json!(1)).sleep(ms(50)));
    node.fake.script("sum", Script::ok(json!({"total": 42})));
    node.fake.script_with("start", |req| {
        let e: serde_json::Value = serde_json::from_str(&req.event).unwrap();
        let call = map_ranges(json!({
            "key": "recs", "function": "part", "chunk_bytes": e["chunk"], "records": 16,
            "then": "sum", "max_in_flight": 3,
        }));
        Script::host_answer().host(call)
    });
    let id = node
        .engine
        .invoke_async("start", json!({"chunk": 1000}).to_string())
        .await
        .unwrap();
    node.wait_final(&id).await;
    let answer = node.fake.calls_of("start")[0].host_answers[0]
        .clone()
        .expect("map_ranges answered");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    // 1000 rounds down to 992 bytes (62 records): 17 children.
    assert_eq!(answer["children"], json!(17));
    let job = answer["job"].as_str().unwrap().to_string();
    let view = node.wait_job(&job).await;
    assert_eq!(view.status, JobStatus::Finished);
    let ranges = ranges_of(&node, "part");
    assert_eq!(ranges.len(), 17);
    let mut at = 0;
    for &(offset, length) in &ranges {
        assert_eq!(offset, at, "{ranges:?}");
        assert_eq!(length % 16, 0);
        at += length;
    }
    assert_eq!(at, 16_000);
    assert_eq!(
        node.fake.peak("part"),
        3,
        "max_in_flight 3 with concurrency 8"
    );
}

#[tokio::test(start_paused = true)]
async fn windows_cut_only_their_parts() {
    let node = Node::start().await;
    node.deploy("name = \"part\"\nretries = 0\nconcurrency = 8")
        .await;
    node.deploy("name = \"start\"\nretries = 0").await;
    put_blob(&node, "recs", vec![0u8; 12 * 100]).await;
    node.fake.script("part", Script::ok(json!(1)));
    node.fake.script(
        "start",
        Script::host_answer().host(map_ranges(json!({
            "key": "recs", "function": "part", "chunk_bytes": 240, "records": 12,
            "windows": [[120, 360], [1080, 120]],
        }))),
    );
    let id = node
        .engine
        .invoke_async("start", "{}".into())
        .await
        .unwrap();
    node.wait_final(&id).await;
    node.ended("part", 3).await;
    assert_eq!(
        ranges_of(&node, "part"),
        vec![(120, 240), (360, 120), (1080, 120)]
    );
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_holds_a_jobs_children_whatever_the_concurrency() {
    let node = Node::start().await;
    node.deploy("name = \"child\"\nretries = 0\nconcurrency = 16")
        .await;
    node.fake
        .script("child", Script::ok(json!(1)).sleep(ms(100)));
    let spec = |k| JobSpec {
        function: "child".into(),
        events: (0..20).map(|i| json!(i).to_string()).collect(),
        then: None,
        max_in_flight: k,
    };
    let limited = node.engine.start_job(spec(Some(2))).await.unwrap();
    node.wait_job(&limited).await;
    assert_eq!(node.fake.peak("child"), 2);
    // Without it, the function's concurrency is the bound.
    let free = node.engine.start_job(spec(None)).await.unwrap();
    node.wait_job(&free).await;
    assert_eq!(node.fake.peak("child"), 16);
    let zero = node.engine.start_job(spec(Some(0))).await.unwrap_err();
    assert!(zero.to_string().contains("max_in_flight"), "{zero}");
}

#[tokio::test(start_paused = true)]
async fn a_function_with_max_jobs_in_flight_runs_its_jobs_in_order() {
    let node = Node::start().await;
    node.deploy("name = \"gated\"\nretries = 0\nconcurrency = 8\nmax_jobs_in_flight = 1")
        .await;
    node.fake
        .script("gated", Script::ok(json!(1)).sleep(ms(100)));
    let mut jobs = Vec::new();
    for label in ["a", "b", "c"] {
        let spec = JobSpec {
            function: "gated".into(),
            events: (0..4)
                .map(|i| json!({"job": label, "i": i}).to_string())
                .collect(),
            then: None,
            max_in_flight: None,
        };
        jobs.push(node.engine.start_job(spec).await.unwrap());
    }
    for job in &jobs {
        assert_eq!(node.wait_job(job).await.counts.succeeded, 4);
    }
    let calls = node.fake.calls_of("gated");
    let span = |label: &str| {
        let of: Vec<_> = calls
            .iter()
            .filter(|c| c.event_json()["job"] == label)
            .collect();
        let first = of.iter().map(|c| c.started).min().unwrap();
        let last = of.iter().map(|c| c.ended.unwrap()).max().unwrap();
        (first, last)
    };
    let (a, b, c) = (span("a"), span("b"), span("c"));
    assert!(
        a.1 <= b.0 && b.1 <= c.0,
        "jobs overlapped: {a:?} {b:?} {c:?}"
    );
    // Each job's children still ran side by side.
    assert_eq!(node.fake.peak("gated"), 4);
}
