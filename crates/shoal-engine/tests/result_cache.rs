//! The result cache (`[cache]`): an identical event (same canonical JSON)
//! to the same version within the TTL is answered without running the
//! function; failures are not cached; entries expire, are evicted by size,
//! and a deploy drops them.

mod common;

use common::{Node, secs};
use shoal_engine::Completed;
use shoal_types::{FailureKind, Outcome};

fn manifest(ttl: &str, max_mb: u32) -> String {
    format!("name = \"hello\"\n[cache]\nttl = \"{ttl}\"\nmax_mb = {max_mb}\n")
}

async fn call(node: &Node, event: &str) -> Completed {
    node.engine.invoke("hello", event.into()).await.unwrap()
}

fn runs(node: &Node) -> usize {
    node.fake.calls_of("hello").len()
}

fn output(c: &Completed) -> &str {
    match &c.outcome {
        Outcome::Succeeded(json) => json,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_identical_event_is_answered_from_the_cache() {
    let node = Node::start().await;
    node.deploy(&manifest("60s", 64)).await;
    let first = call(&node, r#"{"a":1,"b":[1,2]}"#).await;
    assert_eq!(runs(&node), 1);
    // Other key order and whitespace: the same canonical JSON.
    let second = call(&node, "{ \"b\": [1, 2],\n \"a\": 1 }").await;
    assert_eq!(runs(&node), 1, "the second call did not run");
    assert_eq!(output(&second), output(&first));
    assert_ne!(second.id, first.id, "a hit is an invocation of its own");
    let record = node.engine.invocation(&second.id).await.unwrap();
    assert!(record.cache_hit, "{record:?}");
    assert_eq!(record.attempts, 0);
    assert_eq!(record.output.as_deref(), Some(output(&first)));
    let ran = node.engine.invocation(&first.id).await.unwrap();
    assert!(!ran.cache_hit);
    // A different event runs.
    call(&node, r#"{"a":2,"b":[1,2]}"#).await;
    assert_eq!(runs(&node), 2);
    // Array order matters.
    call(&node, r#"{"a":1,"b":[2,1]}"#).await;
    assert_eq!(runs(&node), 3);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_cache_every_call_runs() {
    let node = Node::start().await;
    node.deploy("name = \"hello\"\n").await;
    call(&node, "{}").await;
    call(&node, "{}").await;
    assert_eq!(runs(&node), 2);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_ttl() {
    let node = Node::start().await;
    node.deploy(&manifest("10s", 64)).await;
    call(&node, "{}").await;
    tokio::time::sleep(secs(9)).await;
    call(&node, "{}").await;
    assert_eq!(runs(&node), 1, "fresh at 9s");
    tokio::time::sleep(secs(2)).await;
    call(&node, "{}").await;
    assert_eq!(runs(&node), 2, "expired at 11s");
    call(&node, "{}").await;
    assert_eq!(runs(&node), 2, "stored again");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_entries_are_evicted_by_size() {
    let node = Node::start().await;
    node.deploy(&manifest("60s", 1)).await;
    // Each event (echoed back) takes ~2 × 150 KB: three fit in 1 MiB, not four.
    let big = |n: u32| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(150_000));
    for n in 0..3 {
        call(&node, &big(n)).await;
    }
    assert_eq!(runs(&node), 3);
    call(&node, &big(0)).await; // a hit: 0 is now the most recent
    assert_eq!(runs(&node), 3);
    call(&node, &big(3)).await; // evicts 1, the least recent
    assert_eq!(runs(&node), 4);
    call(&node, &big(0)).await;
    call(&node, &big(3)).await;
    assert_eq!(runs(&node), 4, "0 and 3 are cached");
    call(&node, &big(1)).await;
    assert_eq!(runs(&node), 5, "1 was evicted");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deploy_drops_the_cache() {
    let node = Node::start().await;
    let v1 = node.deploy(&manifest("60s", 64)).await;
    call(&node, "{}").await;
    call(&node, "{}").await;
    assert_eq!(runs(&node), 1);
    let v2 = node.deploy(&manifest("120s", 64)).await;
    assert_ne!(v1.version, v2.version);
    let done = call(&node, "{}").await;
    assert_eq!(runs(&node), 2, "the new version runs");
    assert_eq!(
        node.engine.invocation(&done.id).await.unwrap().version,
        v2.version
    );
    call(&node, "{}").await;
    assert_eq!(runs(&node), 2);
    node.engine.rollback("hello", None).await.unwrap();
    call(&node, "{}").await;
    assert_eq!(runs(&node), 3, "a rollback drops it too");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failures_are_not_cached() {
    let node = Node::start().await;
    node.deploy(&manifest("60s", 64)).await;
    node.fake.script_seq(
        "hello",
        [
            common::Script::fail(FailureKind::Raised),
            common::Script::ok(serde_json::json!("fine")),
        ],
    );
    let failed = call(&node, "{}").await;
    assert!(matches!(failed.outcome, Outcome::Failed(_)), "{failed:?}");
    let ok = call(&node, "{}").await;
    assert_eq!(output(&ok), "\"fine\"");
    assert_eq!(runs(&node), 2);
    let hit = call(&node, "{}").await;
    assert_eq!(output(&hit), "\"fine\"");
    assert_eq!(runs(&node), 2);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn asynchronous_invocations_always_run() {
    let node = Node::start().await;
    node.deploy(&manifest("60s", 64)).await;
    call(&node, "{}").await;
    let id = node
        .engine
        .invoke_async("hello", "{}".into())
        .await
        .unwrap();
    let r = node.wait_final(&id).await;
    assert!(!r.cache_hit);
    assert_eq!(runs(&node), 2);
    node.stop().await;
}
