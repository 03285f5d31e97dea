//! End to end: a named rate limiter shared by two functions holds across
//! both, work over the limit waits (nothing fails or is dropped), sync calls
//! wait their turn, and limits change at run time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestNode, deploy};
use serde_json::json;
use shoal_client::protocol::{PutQueue, SendMessage};

const STAMP: &str = r#"
import time

def handler(event, ctx):
    with open(event["path"], "a") as f:
        f.write(f"{time.time()}\n")
    return "ok"
"#;

fn stamps(path: &Path) -> Vec<f64> {
    let mut t: Vec<f64> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// The most calls that started within any one-second window.
fn peak_per_second(t: &[f64]) -> usize {
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + 1.0).count())
        .max()
        .unwrap_or(0)
}

fn msg(path: &str) -> SendMessage {
    SendMessage {
        body: json!({"path": path}),
        delay: None,
        dedup_id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_limiter_holds_across_two_functions() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("stamps");
    let p = path.to_str().unwrap();

    c.put_limiter("vendor", 5.0, Some(2)).await.unwrap();
    for (f, q) in [("fetch-a", "qa"), ("fetch-b", "qb")] {
        c.put_queue(q, &PutQueue::default()).await.unwrap();
        deploy(
            &c,
            &format!("name = \"{f}\"\nconcurrency = 4\nlimiter = \"vendor\"\n[subscribe]\nqueue = \"{q}\""),
            STAMP,
        )
        .await;
    }
    // Warm both functions up first: a cold start between taking a token and
    // running the handler would bunch the first calls together in the log.
    let warm = tmp.path().join("warm");
    for f in ["fetch-a", "fetch-b"] {
        c.invoke(f, &json!({"path": warm.to_str().unwrap()}).to_string())
            .await
            .unwrap();
    }
    for q in ["qa", "qb"] {
        c.send(q, (0..10).map(|_| msg(p)).collect()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stamps(&path).len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 ran",
            stamps(&path).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = stamps(&path);
    assert_eq!(t.len(), 20);
    // 5 per second, bursts of 2: never more than 7 in any second.
    let peak = peak_per_second(&t);
    assert!(peak <= 7, "peak {peak} per second: {t:?}");
    for q in ["qa", "qb"] {
        // The ack follows the handler's return: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.queue(q).await.unwrap().counters.acked < 10 {
            assert!(Instant::now() < deadline, "{q}: not all acked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let info = c.queue(q).await.unwrap();
        assert_eq!(
            (info.counters.acked, info.depth.dead, info.counters.retried),
            (10, 0, 0)
        );
    }

    // Raised at run time: the next messages flow at the new rate.
    c.put_limiter("vendor", 1000.0, Some(100)).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    c.send("qa", (0..40).map(|_| msg(p)).collect())
        .await
        .unwrap();
    let start = Instant::now();
    while stamps(&path).len() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "raised limit not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        peak_per_second(&stamps(&path)) > 7,
        "the new limit should allow more than the old one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_calls_over_the_limit_wait_instead_of_failing() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("stamps");
    let p = path.to_str().unwrap().to_string();
    c.put_limiter("slow-api", 4.0, Some(1)).await.unwrap();
    deploy(
        &c,
        "name = \"call\"\nconcurrency = 8\nlimiter = \"slow-api\"",
        STAMP,
    )
    .await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let body = json!({"path": p}).to_string();
            #[allow(clippy::disallowed_methods)] // the test awaits every handle
            tokio::spawn(async move { c.invoke("call", &body).await })
        })
        .collect();
    for call in calls {
        let done = call.await.unwrap().unwrap();
        assert_eq!(done.result.unwrap(), json!("ok"));
    }
    let t = stamps(&path);
    assert_eq!(t.len(), 8);
    let peak = peak_per_second(&t);
    assert!(peak <= 5, "peak {peak} per second: {t:?}");
}
