//! Concurrency limits: a function's `concurrency` caps its running calls,
//! a subscription's its runs from the queue, and `concurrency_key` with
//! `concurrency_per_key` caps each key's running calls while other keys go
//! ahead (no starvation).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Node, Script, secs};
use serde_json::json;
use shoal_engine::{OutMessage, QueueSettings};
use shoal_runtime::fake::Call;

#[tokio::test(start_paused = true)]
async fn concurrency_caps_running_async_calls_and_every_slot_is_used() {
    let node = Node::start().await;
    node.deploy("name = \"capped\"\nconcurrency = 2").await;
    node.fake.script("capped", Script::echo().sleep(secs(1)));
    for i in 0..10 {
        node.engine
            .invoke_async("capped", i.to_string())
            .await
            .unwrap();
    }
    let calls = node.ended("capped", 10).await;
    assert_eq!(node.fake.peak("capped"), 2);
    // Two at a time, back to back: 5 s in all.
    let mut starts = node.starts(&calls);
    starts.sort();
    let expected: Vec<Duration> = (0..10).map(|i| secs(i / 2)).collect();
    assert_eq!(starts, expected);
}

#[tokio::test(start_paused = true)]
async fn a_subscription_runs_at_most_its_concurrency_from_the_queue() {
    let node = Node::start().await;
    node.engine
        .put_queue("work", QueueSettings::default())
        .await
        .unwrap();
    node.deploy(
        "name = \"worker\"\nconcurrency = 6\n[subscribe]\nqueue = \"work\"\nconcurrency = 3",
    )
    .await;
    node.fake.script("worker", Script::echo().sleep(secs(2)));
    let messages = (0..12)
        .map(|i| OutMessage {
            body: i.to_string(),
            delay: Duration::ZERO,
            dedup_id: None,
        })
        .collect();
    node.engine.send("work", messages).await.unwrap();
    let calls = node.ended("worker", 12).await;
    assert_eq!(node.fake.peak("worker"), 3);
    assert_eq!(
        node.at(calls.iter().filter_map(|c| c.ended).max().unwrap()),
        secs(8)
    );
}

fn tenant(c: &Call) -> String {
    c.event_json()["tenant"].as_str().unwrap().to_string()
}

/// Per tenant: its calls' start and end, from the engine's start.
fn by_tenant(node: &Node, calls: &[Call]) -> BTreeMap<String, Vec<(Duration, Duration)>> {
    let mut out: BTreeMap<String, Vec<(Duration, Duration)>> = BTreeMap::new();
    for c in calls {
        out.entry(tenant(c))
            .or_default()
            .push((node.at(c.started), node.at(c.ended.unwrap())));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn one_tenant_at_a_time_while_other_tenants_go_ahead() {
    let node = Node::start().await;
    node.deploy(
        "name = \"keyed\"\nconcurrency = 4\nconcurrency_key = \"tenant\"\nconcurrency_per_key = 1",
    )
    .await;
    node.fake.script("keyed", Script::echo().sleep(secs(1)));
    // A big tenant's backlog is queued first.
    let mut events = Vec::new();
    for i in 0..10 {
        events.push(json!({"tenant": "big", "i": i}));
    }
    for i in 0..3 {
        for t in ["a", "b", "c"] {
            events.push(json!({"tenant": t, "i": i}));
        }
    }
    for e in &events {
        node.engine
            .invoke_async("keyed", e.to_string())
            .await
            .unwrap();
    }
    let calls = node.ended("keyed", events.len()).await;
    for t in ["big", "a", "b", "c"] {
        let peak = node
            .fake
            .peak_of(|c| c.function == "keyed" && tenant(c) == t);
        assert_eq!(peak, 1, "tenant {t} ran {peak} at once");
    }
    assert_eq!(node.fake.peak("keyed"), 4);
    let spans = by_tenant(&node, &calls);
    // The small tenants ran beside the big one, one call each per second,
    // and were done after 3 s; the big one took its 10 s, one at a time.
    for t in ["a", "b", "c"] {
        let starts: Vec<Duration> = spans[t].iter().map(|s| s.0).collect();
        assert_eq!(starts, [secs(0), secs(1), secs(2)], "tenant {t}");
    }
    let big: Vec<Duration> = spans["big"].iter().map(|s| s.0).collect();
    assert_eq!(big, (0..10).map(secs).collect::<Vec<_>>());
    // Each tenant's calls ran in the order they were sent.
    for t in ["big", "a", "b", "c"] {
        let order: Vec<i64> = calls
            .iter()
            .filter(|c| tenant(c) == t)
            .map(|c| c.event_json()["i"].as_i64().unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "tenant {t}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_subscription_keeps_the_per_key_limit() {
    let node = Node::start().await;
    node.engine
        .put_queue("orders", QueueSettings::default())
        .await
        .unwrap();
    node.deploy(
        "name = \"keyed\"\nconcurrency = 4\nconcurrency_key = \"customer.id\"\nconcurrency_per_key = 2\n[subscribe]\nqueue = \"orders\"",
    )
    .await;
    node.fake.script("keyed", Script::echo().sleep(secs(1)));
    let mut messages = Vec::new();
    for i in 0..8 {
        messages.push(json!({"customer": {"id": "x"}, "i": i}));
    }
    for i in 0..2 {
        messages.push(json!({"customer": {"id": "y"}, "i": i}));
    }
    let out = messages
        .iter()
        .map(|m| OutMessage {
            body: m.to_string(),
            delay: Duration::ZERO,
            dedup_id: None,
        })
        .collect();
    node.engine.send("orders", out).await.unwrap();
    let calls = node.ended("keyed", 10).await;
    let customer = |c: &Call| {
        c.event_json()["customer"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(node.fake.peak_of(|c| customer(c) == "x"), 2);
    assert_eq!(node.fake.peak_of(|c| customer(c) == "y"), 2);
    // y's two went at once, beside x's first two.
    let y_starts: Vec<Duration> = calls
        .iter()
        .filter(|c| customer(c) == "y")
        .map(|c| node.at(c.started))
        .collect();
    assert_eq!(y_starts, [secs(0), secs(0)]);
    let end = calls.iter().filter_map(|c| c.ended).max().unwrap();
    assert_eq!(node.at(end), secs(4));
}
