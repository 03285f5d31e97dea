//! A message delivered again after its lease lapsed (the node stopped or
//! was killed mid-run) is the invocation's next attempt, not its first again.

mod common;

use std::sync::Arc;

use std::time::Duration;

use common::{Latch, Node, Script, secs};
use serde_json::json;
use shoal_engine::{OutMessage, QueueSettings};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::InvocationStatus;

#[tokio::test(start_paused = true)]
async fn a_run_cut_short_by_the_node_stopping_is_redelivered_as_attempt_2() {
    let store = Arc::new(MemoryStore::new());
    let first = Node::with(None, Backend::from_adapter(store.clone())).await;
    first
        .deploy("name = \"f\"\nretries = 2\nretry_delay = \"1s\"\ntimeout = \"10s\"")
        .await;
    // The first run never ends on its own: the node goes away under it.
    let never = Latch::new();
    first
        .fake
        .script("f", Script::ok(json!("first")).wait(&never));
    let id = first.engine.invoke_async("f", "{}".into()).await.unwrap();
    let calls = first.started("f", 1).await;
    assert_eq!(calls[0].attempt, 1);
    first.stop().await;

    // The same store, a new node: the message comes back once its lease
    // lapses.
    let second = Node::with(None, Backend::from_adapter(store.clone())).await;
    second.fake.script("f", Script::ok(json!("second")));
    let r = second.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded, "{r:?}");
    assert_eq!(r.output.as_deref(), Some("\"second\""));
    assert_eq!((r.attempts, r.max_attempts), (2, 3));
    let calls = second.fake.calls_of("f");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].attempt, 2, "the redelivery is the second attempt");
    // And it ran only after the first lease lapsed, not at once.
    assert!(second.at(calls[0].started) >= secs(1), "{calls:?}");
}

/// A queue subscription's run cut short the same way: the message comes
/// back as the second attempt, and a message that keeps dying with the
/// node runs out of attempts like one that keeps failing.
#[tokio::test(start_paused = true)]
async fn a_subscription_run_cut_short_by_the_node_stopping_is_redelivered_as_attempt_2() {
    let store = Arc::new(MemoryStore::new());
    let first = Node::with(None, Backend::from_adapter(store.clone())).await;
    first
        .engine
        .put_queue(
            "work",
            QueueSettings {
                max_attempts: Some(3),
                retry_delay: Some(secs(1)),
                visibility: Some(secs(5)),
                dedup_window: None,
            },
        )
        .await
        .unwrap();
    first
        .deploy("name = \"worker\"\ntimeout = \"10s\"\n[subscribe]\nqueue = \"work\"")
        .await;
    let never = Latch::new();
    first
        .fake
        .script("worker", Script::ok(json!("first")).wait(&never));
    let message = OutMessage {
        body: "1".into(),
        delay: Duration::ZERO,
        dedup_id: None,
    };
    first.engine.send("work", vec![message]).await.unwrap();
    let calls = first.started("worker", 1).await;
    assert_eq!(calls[0].attempt, 1);
    first.stop().await;

    let second = Node::with(None, Backend::from_adapter(store.clone())).await;
    second.fake.script("worker", Script::ok(json!("second")));
    let calls = second.ended("worker", 1).await;
    assert_eq!(calls[0].attempt, 2, "the redelivery is the second attempt");
    assert!(
        second.at(calls[0].started) >= secs(5),
        "after the lease: {calls:?}"
    );
    second
        .until("the message is acked", async || {
            let depth = second.engine.queue("work").await.unwrap().depth;
            depth.waiting == 0 && depth.in_flight == 0
        })
        .await;
}
