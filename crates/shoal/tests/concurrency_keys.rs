//! End to end: concurrency keys. At most `concurrency_per_key` invocations
//! run at once per value of the key's event field, and one key's backlog
//! does not hold back the other keys (no tenant starves the others).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestNode, deploy};
use serde_json::{Value, json};
use shoal_client::protocol::{PutQueue, SendMessage};

const WORK: &str = r#"
import json, time

def handler(event, ctx):
    start = time.time()
    time.sleep(0.15)
    with open(event["path"], "a") as f:
        f.write(json.dumps({"tenant": event.get("tenant"), "n": event["n"], "start": start, "end": time.time()}) + "\n")
    return "ok"
"#;

#[derive(Debug, Clone)]
struct Run {
    tenant: Value,
    start: f64,
    end: f64,
}

fn runs(path: &Path) -> Vec<Run> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Run {
                tenant: v["tenant"].clone(),
                start: v["start"].as_f64().unwrap(),
                end: v["end"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The most runs of `tenant` that overlapped at any moment.
fn peak_overlap(runs: &[Run], tenant: &Value) -> usize {
    let mine: Vec<&Run> = runs.iter().filter(|r| &r.tenant == tenant).collect();
    mine.iter()
        .map(|r| {
            mine.iter()
                .filter(|o| o.start <= r.start && r.start < o.end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn wait_for(path: &Path, n: usize) -> Vec<Run> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = runs(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} runs after 60 s",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_backlog_does_not_starve_the_others() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("runs.ndjson");
    let p = path.to_str().unwrap();
    deploy(
        &c,
        "name = \"work\"\nconcurrency = 4\nconcurrency_key = \"tenant\"\nconcurrency_per_key = 1",
        WORK,
    )
    .await;
    // Warm the workers so start-up time does not blur the order.
    for n in 0..4 {
        c.invoke("work", &json!({"path": p, "n": -1 - n}).to_string())
            .await
            .unwrap();
    }
    std::fs::remove_file(&path).unwrap();

    // Tenant a queues 16 calls first, then b and c queue 3 each, and some
    // calls carry no tenant at all.
    for n in 0..16 {
        c.invoke_async(
            "work",
            &json!({"path": p, "tenant": "a", "n": n}).to_string(),
        )
        .await
        .unwrap();
    }
    for n in 0..3 {
        for tenant in ["b", "c"] {
            c.invoke_async(
                "work",
                &json!({"path": p, "tenant": tenant, "n": n}).to_string(),
            )
            .await
            .unwrap();
        }
    }
    for n in 0..2 {
        c.invoke_async("work", &json!({"path": p, "n": n}).to_string())
            .await
            .unwrap();
    }
    let got = wait_for(&path, 24).await;
    for tenant in ["a", "b", "c"] {
        assert_eq!(
            peak_overlap(&got, &json!(tenant)),
            1,
            "tenant {tenant}: {got:?}"
        );
    }
    // b and c went ahead of a's backlog: all their calls were done while a
    // still had most of its calls to run.
    let a_ends: Vec<f64> = {
        let mut v: Vec<f64> = got
            .iter()
            .filter(|r| r.tenant == json!("a"))
            .map(|r| r.end)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    for tenant in ["b", "c"] {
        let last = got
            .iter()
            .filter(|r| r.tenant == json!(tenant))
            .map(|r| r.end)
            .fold(0.0, f64::max);
        let a_done_before = a_ends.iter().filter(|e| **e <= last).count();
        assert!(
            a_done_before <= 6,
            "tenant {tenant} waited for {a_done_before} of a's calls: {got:?}"
        );
    }
    // Calls without the field are not held by any key.
    assert_eq!(got.iter().filter(|r| r.tenant.is_null()).count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_subscribers_keep_the_per_key_limit_and_bad_settings_are_refused() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("runs.ndjson");
    let p = path.to_str().unwrap();
    c.put_queue("jobs", &PutQueue::default()).await.unwrap();
    deploy(
        &c,
        "name = \"sub\"\nconcurrency = 4\nconcurrency_key = \"who.id\"\nconcurrency_per_key = 1\n[subscribe]\nqueue = \"jobs\"",
        &WORK.replace("event.get(\"tenant\")", "event[\"who\"][\"id\"]"),
    )
    .await;
    let messages: Vec<SendMessage> = (0..12)
        .map(|n| SendMessage {
            body: json!({"path": p, "who": {"id": n % 2}, "n": n}),
            delay: None,
            dedup_id: None,
        })
        .collect();
    c.send("jobs", messages).await.unwrap();
    let got = wait_for(&path, 12).await;
    for id in [json!(0), json!(1)] {
        // Without the key, 4 slots over 2 alternating keys would run 2 of
        // each at once.
        assert_eq!(peak_overlap(&got, &id), 1, "key {id}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limits_cap_async_calls_and_subscriptions() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let (async_path, sub_path) = (tmp.path().join("async"), tmp.path().join("sub"));
    deploy(&c, "name = \"capped\"\nconcurrency = 3", WORK).await;
    c.put_queue("work", &PutQueue::default()).await.unwrap();
    deploy(
        &c,
        "name = \"sub\"\nconcurrency = 4\n[subscribe]\nqueue = \"work\"\nconcurrency = 2",
        WORK,
    )
    .await;
    let p = async_path.to_str().unwrap();
    for n in 0..12 {
        c.invoke_async("capped", &json!({"path": p, "n": n}).to_string())
            .await
            .unwrap();
    }
    let p = sub_path.to_str().unwrap();
    let messages: Vec<SendMessage> = (0..10)
        .map(|n| SendMessage {
            body: json!({"path": p, "n": n}),
            delay: None,
            dedup_id: None,
        })
        .collect();
    c.send("work", messages).await.unwrap();
    // The function's concurrency (3) for its async calls, the
    // subscription's (2) for the queue: reached, never passed.
    let got = wait_for(&async_path, 12).await;
    assert_eq!(peak_overlap(&got, &Value::Null), 3, "{got:?}");
    let got = wait_for(&sub_path, 10).await;
    assert_eq!(peak_overlap(&got, &Value::Null), 2, "{got:?}");
}
