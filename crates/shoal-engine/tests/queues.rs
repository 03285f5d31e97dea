//! A function subscribed to a user queue: a long run keeps its message
//! invisible (the lease is extended while it runs), a failed run is
//! delivered again after backoff, and out of `max_attempts` the message
//! lands in the dead letters with the reason.

mod common;

use common::{Node, Script, secs};
use serde_json::json;
use shoal_engine::{OutMessage, QueueSettings};
use shoal_types::FailureKind;

fn message(body: serde_json::Value) -> OutMessage {
    OutMessage {
        body: body.to_string(),
        delay: secs(0),
        dedup_id: None,
    }
}

/// A queue with these settings and `worker` subscribed to it.
async fn subscribed(node: &Node, queue: &str, settings: QueueSettings, extra: &str) {
    node.engine.put_queue(queue, settings).await.unwrap();
    node.deploy(&format!(
        "name = \"worker\"\ntimeout = \"15m\"\n{extra}\n[subscribe]\nqueue = \"{queue}\""
    ))
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_running_three_visibility_timeouts_is_delivered_once() {
    let node = Node::start().await;
    subscribed(
        &node,
        "slow",
        QueueSettings {
            visibility: Some(secs(10)),
            ..QueueSettings::default()
        },
        "",
    )
    .await;
    node.fake
        .script("worker", Script::ok(json!("done")).sleep(secs(30)));
    node.engine
        .send("slow", vec![message(json!({"n": 1}))])
        .await
        .unwrap();
    let calls = node.ended("worker", 1).await;
    assert_eq!(calls[0].duration(), secs(30));
    // The function has 4 slots: an expired lease would have been taken
    // again at once. Long after, still one delivery, acknowledged.
    node.pass(secs(600)).await;
    let calls = node.fake.calls_of("worker");
    assert_eq!(calls.len(), 1, "delivered again: {calls:?}");
    assert_eq!(node.fake.peak("worker"), 1);
    let q = node.engine.queue("slow").await.unwrap();
    assert_eq!((q.counters.acked, q.counters.nacked), (1, 0), "{q:?}");
    assert_eq!((q.depth.waiting, q.depth.in_flight), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_delivered_again_after_backoff() {
    let node = Node::start().await;
    subscribed(
        &node,
        "flaky",
        QueueSettings {
            max_attempts: Some(3),
            retry_delay: Some(secs(2)),
            ..QueueSettings::default()
        },
        "",
    )
    .await;
    node.fake.script_seq(
        "worker",
        [Script::fail(FailureKind::Crashed), Script::ok(json!(1))],
    );
    node.engine
        .send("flaky", vec![message(json!({"n": 1}))])
        .await
        .unwrap();
    let calls = node.ended("worker", 2).await;
    assert_eq!(calls[1].started - calls[0].ended.unwrap(), secs(2));
    assert_eq!(calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2]);
    assert!(calls.iter().all(|c| c.event == r#"{"n":1}"#));
    node.pass(secs(60)).await;
    assert_eq!(node.fake.calls_of("worker").len(), 2);
    let q = node.engine.queue("flaky").await.unwrap();
    assert_eq!(
        (
            q.counters.acked,
            q.counters.nacked,
            q.counters.dead_lettered
        ),
        (1, 1, 0)
    );
    assert_eq!(q.depth.dead, 0);
}

#[tokio::test(start_paused = true)]
async fn a_short_retry_delay_redelivers_on_time() {
    let node = Node::start().await;
    subscribed(
        &node,
        "quick",
        QueueSettings {
            max_attempts: Some(3),
            retry_delay: Some(common::ms(300)),
            ..QueueSettings::default()
        },
        "",
    )
    .await;
    node.fake
        .script("worker", Script::fail(FailureKind::Raised));
    node.engine
        .send("quick", vec![message(json!(1))])
        .await
        .unwrap();
    let calls = node.ended("worker", 3).await;
    let gaps: Vec<_> = calls
        .windows(2)
        .map(|w| w[1].started - w[0].ended.unwrap())
        .collect();
    assert_eq!(gaps, [common::ms(300), common::ms(600)]);
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_a_message_is_dead_lettered_with_the_reason() {
    let node = Node::start().await;
    subscribed(
        &node,
        "doomed",
        QueueSettings {
            max_attempts: Some(3),
            retry_delay: Some(secs(2)),
            ..QueueSettings::default()
        },
        "",
    )
    .await;
    node.fake
        .script("worker", Script::raise("ValueError", "no such order"));
    let body = json!({"order": 7});
    let ids = node
        .engine
        .send("doomed", vec![message(body.clone())])
        .await
        .unwrap();
    let calls = node.ended("worker", 3).await;
    let gaps: Vec<_> = calls
        .windows(2)
        .map(|w| w[1].started - w[0].ended.unwrap())
        .collect();
    assert_eq!(gaps, [secs(2), secs(4)]);
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    node.until("the dead letter", || async {
        node.engine.queue("doomed").await.unwrap().depth.dead == 1
    })
    .await;
    let dead = node.engine.dead_letters("doomed", None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, ids[0]);
    assert_eq!(dead[0].reason, "raised: no such order");
    assert_eq!(dead[0].body, body.to_string().into_bytes());
    assert_eq!(
        dead[0].failures, 2,
        "two retried deliveries before the last"
    );
    // Never delivered again.
    node.pass(secs(3600)).await;
    assert_eq!(node.fake.calls_of("worker").len(), 3);
    let q = node.engine.queue("doomed").await.unwrap();
    assert_eq!(
        (
            q.counters.acked,
            q.counters.nacked,
            q.counters.dead_lettered
        ),
        (0, 2, 1)
    );
    assert_eq!(
        (q.depth.waiting, q.depth.in_flight, q.depth.dead),
        (0, 0, 1)
    );
}
