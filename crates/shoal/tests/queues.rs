//! End to end: named durable queues with subscribed functions — delivery,
//! retries with backoff, dead letters and redrive, delay, deduplication,
//! visibility extension, statistics — through a real node.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestNode, deploy, until};
use serde_json::{Value, json};
use shoal_client::Client;
use shoal_client::protocol::{PutQueue, SendMessage};

/// Appends one JSON line per delivery to the file named in the message.
const RECORDER: &str = r#"
import json, os, time

def handler(event, ctx):
    with open(event["path"], "a") as f:
        f.write(json.dumps({"n": event.get("n"), "t": time.time(), "attempt": ctx.attempt}) + "\n")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail_while") and os.path.exists(event["fail_while"]):
        raise RuntimeError("flag file present")
    return event.get("n")
"#;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn msg(body: Value) -> SendMessage {
    SendMessage {
        body,
        delay: None,
        dedup_id: None,
    }
}

async fn queue_setup(c: &Client, name: &str, settings: PutQueue, function: &str, extra: &str) {
    c.put_queue(name, &settings).await.unwrap();
    deploy(
        c,
        &format!(
            "name = \"{function}\"\nconcurrency = 4\n{extra}\n[subscribe]\nqueue = \"{name}\""
        ),
        RECORDER,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_delivered_once_each_and_acked() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    queue_setup(&c, "jobs", PutQueue::default(), "worker", "").await;
    let p = path.to_str().unwrap();
    let ids = c
        .send(
            "jobs",
            (0..50).map(|n| msg(json!({"n": n, "path": p}))).collect(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 50);
    until("50 acks", Duration::from_secs(30), async || {
        c.queue("jobs").await.unwrap().counters.acked == 50
    })
    .await;
    let mut seen: Vec<i64> = lines(&path)
        .iter()
        .map(|l| l["n"].as_i64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    let q = c.queue("jobs").await.unwrap();
    assert_eq!(
        (q.depth.waiting, q.depth.in_flight, q.depth.dead),
        (0, 0, 0)
    );
    assert_eq!(q.counters.sent, 50);
    assert_eq!(q.subscriber.as_deref(), Some("worker"));

    // The CLI sees the same.
    let out = node.cli(&["queues"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker"));
    let out = node.cli(&[
        "queues",
        "send",
        "jobs",
        &json!({"n": 99, "path": p}).to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("the CLI's message", Duration::from_secs(30), async || {
        lines(&path).len() == 51
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_backoff_then_dead_letter_and_redrive() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    let flag = tmp.path().join("fail");
    std::fs::write(&flag, "").unwrap();
    queue_setup(
        &c,
        "flaky",
        PutQueue {
            max_attempts: Some(3),
            retry_delay: Some("100ms".into()),
            ..PutQueue::default()
        },
        "picky",
        "",
    )
    .await;
    let body =
        json!({"n": 1, "path": path.to_str().unwrap(), "fail_while": flag.to_str().unwrap()});
    c.send("flaky", vec![msg(body.clone())]).await.unwrap();
    until("a dead letter", Duration::from_secs(30), async || {
        c.queue("flaky").await.unwrap().depth.dead == 1
    })
    .await;
    let attempts = lines(&path);
    let q = c.queue("flaky").await.unwrap();
    let dl = c.dead_letters("flaky", None, 10).await.unwrap();
    assert_eq!(attempts.len(), 3, "{attempts:?} {q:?} {dl:?}");
    let t: Vec<f64> = attempts.iter().map(|a| a["t"].as_f64().unwrap()).collect();
    // Backoff with equal jitter: the first retry after 50-100 ms, the second
    // after 100-200 ms.
    assert!(t[1] - t[0] >= 0.05, "{t:?}");
    assert!(t[2] - t[1] >= 0.1, "{t:?}");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let page = c.dead_letters("flaky", None, 10).await.unwrap();
    assert_eq!(page.dead_letters.len(), 1);
    let dead = &page.dead_letters[0];
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.body, body);
    assert!(
        dead.reason.contains("raised") && dead.reason.contains("flag file present"),
        "{}",
        dead.reason
    );
    let q = c.queue("flaky").await.unwrap();
    assert_eq!(
        (
            q.counters.retried,
            q.counters.dead_lettered,
            q.counters.acked
        ),
        (2, 1, 0)
    );

    // Fix the cause, redrive: it goes through.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(c.redrive("flaky", None).await.unwrap(), 1);
    until(
        "the redriven message",
        Duration::from_secs(30),
        async || c.queue("flaky").await.unwrap().counters.acked == 1,
    )
    .await;
    assert_eq!(c.queue("flaky").await.unwrap().depth.dead, 0);

    // Purge of dead letters.
    std::fs::write(&flag, "").unwrap();
    c.send("flaky", vec![msg(body.clone()), msg(body)])
        .await
        .unwrap();
    until("two dead letters", Duration::from_secs(30), async || {
        c.queue("flaky").await.unwrap().depth.dead == 2
    })
    .await;
    assert_eq!(c.purge_dead("flaky", None).await.unwrap(), 2);
    assert_eq!(c.queue("flaky").await.unwrap().depth.dead, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_and_deduplication() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    let p = path.to_str().unwrap();
    queue_setup(&c, "later", PutQueue::default(), "recorder", "").await;

    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    c.send(
        "later",
        vec![SendMessage {
            body: json!({"n": 1, "path": p}),
            delay: Some("1s".into()),
            dedup_id: None,
        }],
    )
    .await
    .unwrap();
    until("the delayed message", Duration::from_secs(30), async || {
        lines(&path).len() == 1
    })
    .await;
    let ran_at = lines(&path)[0]["t"].as_f64().unwrap();
    assert!(
        ran_at - sent_at >= 0.95,
        "ran {:.3}s after sending",
        ran_at - sent_at
    );

    // Three sends with one dedup id: delivered once; a different id goes through.
    for _ in 0..3 {
        c.send(
            "later",
            vec![SendMessage {
                body: json!({"n": 2, "path": p}),
                delay: None,
                dedup_id: Some("order-2".into()),
            }],
        )
        .await
        .unwrap();
    }
    c.send(
        "later",
        vec![SendMessage {
            body: json!({"n": 3, "path": p}),
            delay: None,
            dedup_id: Some("order-3".into()),
        }],
    )
    .await
    .unwrap();
    until("all acks", Duration::from_secs(30), async || {
        c.queue("later").await.unwrap().counters.acked == 3
    })
    .await;
    let mut ns: Vec<i64> = lines(&path)
        .iter()
        .map(|l| l["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![1, 2, 3]);
    assert_eq!(c.queue("later").await.unwrap().counters.sent, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_handler_keeps_its_message_invisible() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    // Visibility 300 ms, handler 1.2 s: without extension it would be
    // delivered again (concurrency 4 leaves free consumers).
    queue_setup(
        &c,
        "slow",
        PutQueue {
            visibility_timeout: Some("300ms".into()),
            ..PutQueue::default()
        },
        "sleeper",
        "timeout = \"10s\"",
    )
    .await;
    c.send(
        "slow",
        vec![msg(
            json!({"n": 1, "path": path.to_str().unwrap(), "sleep": 1.2}),
        )],
    )
    .await
    .unwrap();
    until("the ack", Duration::from_secs(30), async || {
        c.queue("slow").await.unwrap().counters.acked == 1
    })
    .await;
    assert_eq!(lines(&path).len(), 1, "delivered more than once");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_history_and_bad_requests() {
    let node = TestNode::start_with(&["--queue-sample-interval", "100ms"]);
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    queue_setup(&c, "measured", PutQueue::default(), "rec", "").await;
    let p = path.to_str().unwrap();
    c.send(
        "measured",
        (0..10).map(|n| msg(json!({"n": n, "path": p}))).collect(),
    )
    .await
    .unwrap();
    until(
        "samples showing the acks",
        Duration::from_secs(30),
        async || {
            let s = c.queue_stats("measured", None).await.unwrap();
            s.samples.last().is_some_and(|x| x.counters.acked == 10)
        },
    )
    .await;
    let s = c.queue_stats("measured", None).await.unwrap();
    assert!(s.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert!(
        s.samples.iter().any(|x| x.acked_per_s > 0.0),
        "{:?}",
        s.samples
    );
    let metrics = c.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"shoal_queue_totals{queue="measured",event="acked"} 10"#),
        "{metrics}"
    );

    // Settings change at run time.
    let q = c
        .put_queue(
            "measured",
            &PutQueue {
                max_attempts: Some(7),
                ..PutQueue::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(q.max_attempts, 7);
    // Function `rec` subscribes to it: removed only when forced.
    let refused = c.delete_queue("measured").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(shoal_client::protocol::ErrorCode::ForceRequired),
        "{refused}"
    );
    assert!(refused.to_string().contains("`rec`"), "{refused}");
    c.delete_queue_with("measured", shoal_client::Removal::Force)
        .await
        .unwrap();
    assert_eq!(c.queue("measured").await.unwrap_err().status(), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_survive_kill9() {
    let mut node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    let p = path.to_str().unwrap();
    c.put_queue("durable", &PutQueue::default()).await.unwrap();
    // No subscriber yet: messages wait.
    c.send(
        "durable",
        (0..20).map(|n| msg(json!({"n": n, "path": p}))).collect(),
    )
    .await
    .unwrap();
    node.kill9_and_restart();
    let c = node.client();
    assert_eq!(c.queue("durable").await.unwrap().depth.waiting, 20);
    deploy(
        &c,
        "name = \"late\"\n[subscribe]\nqueue = \"durable\"",
        RECORDER,
    )
    .await;
    until("20 acks", Duration::from_secs(30), async || {
        c.queue("durable").await.unwrap().counters.acked == 20
    })
    .await;
    let mut ns: Vec<i64> = lines(&path)
        .iter()
        .map(|l| l["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..20).collect::<Vec<_>>());
}
