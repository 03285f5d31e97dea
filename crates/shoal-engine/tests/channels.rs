//! Channels on the in-memory store and a paused clock: offsets in order,
//! resume without gaps, the explicit reset past the history, a slow
//! subscriber that fell out of the broadcast buffer catching up from the
//! store, coalescing, publishes atomic with blob operations, presence
//! (end to end over SSE/WebSocket and Redis in `crates/shoal/tests/channels.rs`).

mod common;

use std::time::Duration;

use common::Node;
use shoal_engine::{ChannelEvent, Position, Subscription};
use shoal_store::{ChannelSettings, NewChannelMessage, OpSpec};

fn msg(n: u64) -> NewChannelMessage {
    NewChannelMessage {
        binary: false,
        data: n.to_string().into_bytes(),
    }
}

async fn publish(node: &Node, channel: &str, values: std::ops::RangeInclusive<u64>) -> u64 {
    let mut last = 0;
    for n in values {
        last = node
            .engine
            .publish(channel, vec![msg(n)], None)
            .await
            .expect("publish")
            .last;
    }
    last
}

/// Next event, failing the test when none comes within a (virtual) second.
async fn next(sub: &mut Subscription) -> ChannelEvent {
    tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .expect("an event within a second")
        .expect("the subscription is open")
}

/// Collects message payloads (as numbers) until `count` arrived, checking
/// their offsets are consecutive from `after + 1`.
async fn take(sub: &mut Subscription, after: u64, count: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let mut offset = after;
    while got.len() < count {
        match next(sub).await {
            ChannelEvent::Messages { messages, .. } => {
                for m in messages.iter() {
                    assert_eq!(m.offset, offset + 1, "offsets are consecutive");
                    offset = m.offset;
                    got.push(String::from_utf8(m.data.clone()).unwrap().parse().unwrap());
                }
            }
            other => panic!("expected messages, got {other:?}"),
        }
    }
    got
}

#[tokio::test(start_paused = true)]
async fn a_live_subscriber_gets_every_message_in_order() {
    let node = Node::start().await;
    publish(&node, "board", 1..=3).await;
    let mut sub = node.engine.subscribe("board", None).await.unwrap();
    let ChannelEvent::Ready { epoch, offset } = next(&mut sub).await else {
        panic!("ready first")
    };
    assert_eq!(offset, 3, "live from the head");
    assert!(!epoch.is_empty());
    publish(&node, "board", 4..=200).await;
    assert_eq!(take(&mut sub, 3, 197).await, (4..=200).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_resume_answers_every_missed_message_then_goes_live() {
    let node = Node::start().await;
    publish(&node, "c", 1..=2500).await;
    let position = node.engine.channel_position("c").await.unwrap();
    let mut sub = node
        .engine
        .subscribe(
            "c",
            Some(Position {
                epoch: position.epoch.clone(),
                offset: 10,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut sub).await,
        ChannelEvent::Ready {
            epoch: position.epoch,
            offset: 10
        }
    );
    // More than one page of history, then live ones.
    let mut publisher = tokio::task::JoinSet::new();
    {
        let engine = node.engine.clone();
        publisher.spawn(async move {
            for n in 2501..=2600 {
                engine.publish("c", vec![msg(n)], None).await.unwrap();
            }
        });
    }
    assert_eq!(
        take(&mut sub, 10, 2590).await,
        (11..=2600).collect::<Vec<_>>()
    );
    publisher.join_next().await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_resume_past_the_history_is_an_explicit_reset() {
    let node = Node::start().await;
    node.engine
        .configure_channel(
            "short",
            ChannelSettings {
                history_len: 5,
                ..ChannelSettings::default()
            },
        )
        .await
        .unwrap();
    publish(&node, "short", 1..=20).await;
    let epoch = node.engine.channel_position("short").await.unwrap().epoch;
    let mut sub = node
        .engine
        .subscribe(
            "short",
            Some(Position {
                epoch: epoch.clone(),
                offset: 3,
            }),
        )
        .await
        .unwrap();
    match next(&mut sub).await {
        ChannelEvent::Reset {
            offset,
            epoch: e,
            reason,
        } => {
            assert_eq!((offset, e), (20, epoch.clone()));
            assert!(
                reason.contains("no longer in the channel's history"),
                "{reason}"
            );
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    publish(&node, "short", 21..=22).await;
    assert_eq!(take(&mut sub, 20, 2).await, vec![21, 22]);

    // Within the history: no reset.
    let mut sub = node
        .engine
        .subscribe(
            "short",
            Some(Position {
                epoch: epoch.clone(),
                offset: 18,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(
        next(&mut sub).await,
        ChannelEvent::Ready { offset: 18, .. }
    ));
    assert_eq!(take(&mut sub, 18, 4).await, vec![19, 20, 21, 22]);

    // Another epoch: a reset too.
    let mut sub = node
        .engine
        .subscribe(
            "short",
            Some(Position {
                epoch: "other".into(),
                offset: 21,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(
        next(&mut sub).await,
        ChannelEvent::Reset { offset: 22, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_behind_the_broadcast_buffer_catches_up_from_the_store() {
    let node = Node::start().await;
    let mut slow = node.engine.subscribe("fast", None).await.unwrap();
    assert!(matches!(
        next(&mut slow).await,
        ChannelEvent::Ready { offset: 0, .. }
    ));
    // Far more frames than the hub buffers, while `slow` reads nothing.
    publish(&node, "fast", 1..=6000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        take(&mut slow, 0, 6000).await,
        (1..=6000).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_publishers_are_delivered_in_offset_order() {
    let node = Node::start().await;
    let mut sub = node.engine.subscribe("many", None).await.unwrap();
    next(&mut sub).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let engine = node.engine.clone();
        tasks.spawn(async move {
            for n in 0..50 {
                engine
                    .publish("many", vec![msg(t * 1000 + n)], None)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // `take` checks the offsets are consecutive; every value arrives once.
    let mut got = take(&mut sub, 0, 400).await;
    got.sort();
    let mut want: Vec<u64> = (0..8u64)
        .flat_map(|t| (0..50).map(move |n| t * 1000 + n))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn coalescing_gathers_a_burst_into_one_frame() {
    let node = Node::start().await;
    node.engine
        .configure_channel(
            "burst",
            ChannelSettings {
                coalesce_ms: 50,
                ..ChannelSettings::default()
            },
        )
        .await
        .unwrap();
    let mut sub = node.engine.subscribe("burst", None).await.unwrap();
    next(&mut sub).await;
    publish(&node, "burst", 1..=30).await;
    match next(&mut sub).await {
        ChannelEvent::Messages { messages, .. } => assert_eq!(messages.len(), 30, "one frame"),
        other => panic!("expected messages, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_publish_with_blob_operations_is_one_step() {
    let node = Node::start().await;
    node.engine
        .blob_create_fixed("px", 8, false)
        .await
        .unwrap()
        .unwrap();
    let set = |offset: &str, value: i64| {
        serde_json::from_value::<OpSpec>(serde_json::json!(
            {"op": "set", "type": "u4", "offset": offset, "value": value}
        ))
        .unwrap()
        .parse()
        .unwrap()
    };
    let done = node
        .engine
        .publish(
            "pixels",
            vec![msg(1)],
            Some(("px".into(), vec![set("#3", 9)])),
        )
        .await
        .unwrap();
    assert_eq!(done.first, 1);
    assert_eq!(done.applied.unwrap().results, vec![Some(0)]);
    // Refused ops publish nothing and use no offset.
    let err = node
        .engine
        .publish(
            "pixels",
            vec![msg(2)],
            Some(("px".into(), vec![set("#99", 1)])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    let err = node
        .engine
        .publish(
            "pixels",
            vec![msg(2)],
            Some(("absent".into(), vec![set("#0", 1)])),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, shoal_engine::Error::NotFound { .. }), "{err}");
    assert_eq!(
        node.engine.channel_position("pixels").await.unwrap().offset,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn names_and_feeds_are_checked() {
    let node = Node::start().await;
    for bad in ["", "a b", "é", &"x".repeat(201)] {
        assert!(
            node.engine.publish(bad, vec![msg(1)], None).await.is_err(),
            "{bad:?}"
        );
    }
    let err = node
        .engine
        .publish("_docs.x", vec![msg(1)], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("feeds"), "{err}");
    assert!(node.engine.subscribe("_docs.x", None).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn presence_counts_this_nodes_subscribers() {
    let node = Node::start().await;
    let a = node.engine.subscribe("room", None).await.unwrap();
    let b = node.engine.subscribe("room", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.engine.channel("room").await.unwrap().presence, 2);
    drop(a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.engine.channel("room").await.unwrap().presence, 1);
    drop(b);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.engine.channel("room").await.unwrap().presence, 0);
}

/// Next messages' payloads as JSON, skipping nothing.
async fn json_messages(sub: &mut Subscription, count: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while got.len() < count {
        match next(sub).await {
            ChannelEvent::Messages { messages, .. } => got.extend(
                messages
                    .iter()
                    .map(|m| serde_json::from_slice(&m.data).unwrap()),
            ),
            other => panic!("expected messages, got {other:?}"),
        }
    }
    got
}

#[tokio::test(start_paused = true)]
async fn the_docs_feed_tells_writes_and_deletes_once_wanted() {
    let node = Node::start().await;
    node.engine.create_category("orders", None).await.unwrap();
    // Not wanted yet: nothing is recorded.
    let doc = |id: &str| shoal_engine::NewDoc {
        id: Some(id.to_string()),
        body: b"{\"n\":1}".to_vec(),
    };
    node.engine
        .write_docs("orders", vec![doc("before")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        node.engine
            .channel_position("_docs.orders")
            .await
            .unwrap()
            .offset,
        0
    );

    let mut sub = node.engine.subscribe("_docs.orders", None).await.unwrap();
    assert!(matches!(
        next(&mut sub).await,
        ChannelEvent::Ready { offset: 0, .. }
    ));
    node.engine
        .write_docs("orders", vec![doc("a"), doc("b")])
        .await
        .unwrap();
    node.engine.delete_doc("orders", "a").await.unwrap();
    assert_eq!(
        json_messages(&mut sub, 3).await,
        vec![
            serde_json::json!({"op": "put", "id": "a"}),
            serde_json::json!({"op": "put", "id": "b"}),
            serde_json::json!({"op": "delete", "id": "a"}),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_invocations_feed_tells_each_finished_invocation() {
    let node = Node::start().await;
    node.deploy("name = \"f\"\nretries = 0").await;
    node.fake
        .script("f", common::Script::ok(serde_json::json!(1)));
    let mut sub = node.engine.subscribe("_invocations.f", None).await.unwrap();
    next(&mut sub).await;
    // The feed follows the node's attempts once its wanting is seen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = node.engine.invoke("f", "{}".to_string()).await.unwrap();
    let got = json_messages(&mut sub, 1).await;
    assert_eq!(got[0]["id"], serde_json::json!(done.id));
    assert_eq!(got[0]["function"], "f");
    assert_eq!(got[0]["status"], "succeeded");
}

#[tokio::test(start_paused = true)]
async fn the_job_feed_tells_progress_until_the_job_is_done() {
    let node = Node::start().await;
    node.deploy("name = \"child\"\nretries = 0\nconcurrency = 1")
        .await;
    node.fake.script(
        "child",
        common::Script::ok(serde_json::json!(1)).sleep(common::ms(300)),
    );
    let job = node
        .engine
        .start_job(shoal_engine::JobSpec {
            function: "child".into(),
            events: (0..3).map(|n| n.to_string()).collect(),
            then: None,
            max_in_flight: None,
        })
        .await
        .unwrap();
    let mut sub = node
        .engine
        .subscribe(&format!("_jobs.{job}"), None)
        .await
        .unwrap();
    next(&mut sub).await;
    // One message per change of the counts, the last one the finished job.
    let mut seen = Vec::new();
    loop {
        let m = json_messages(&mut sub, 1).await.remove(0);
        seen.push(m["succeeded"].as_u64().unwrap());
        if m["status"] == "finished" {
            assert_eq!(m["total"], 3);
            assert_eq!(m["pending"], 0);
            break;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {seen:?}"
    );
    assert!(seen.len() >= 2, "progress came in steps: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn the_queue_feed_tells_the_depth_when_it_changes() {
    let node = Node::start().await;
    node.engine
        .put_queue("inbox", shoal_engine::QueueSettings::default())
        .await
        .unwrap();
    let mut sub = node.engine.subscribe("_queues.inbox", None).await.unwrap();
    next(&mut sub).await;
    let first = json_messages(&mut sub, 1).await.remove(0);
    assert_eq!(first["waiting"], 0);
    let out = |n: u32| shoal_engine::OutMessage {
        body: n.to_string(),
        delay: Duration::ZERO,
        dedup_id: None,
    };
    node.engine
        .send("inbox", vec![out(1), out(2)])
        .await
        .unwrap();
    let second = json_messages(&mut sub, 1).await.remove(0);
    assert_eq!(second["waiting"], 2, "{second}");
    // Unchanged: nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), sub.next())
            .await
            .is_err(),
        "no message while the depth stays"
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_is_encoded_once_for_all_its_subscribers_and_bursts_are_ready_at_once() {
    let node = Node::start().await;
    let mut a = node.engine.subscribe("wide", None).await.unwrap();
    let mut b = node.engine.subscribe("wide", None).await.unwrap();
    next(&mut a).await;
    next(&mut b).await;
    publish(&node, "wide", 1..=1).await;
    let encoded = |e: ChannelEvent| match e {
        ChannelEvent::Messages { encoded, .. } => encoded,
        other => panic!("expected messages, got {other:?}"),
    };
    let first = encoded(next(&mut a).await).get_or_init(|| bytes::Bytes::from_static(b"once"));
    assert_eq!(first, "once");
    let again = encoded(next(&mut b).await).get_or_init(|| panic!("encoded a second time"));
    assert_eq!(again, "once");
    // Several runs handed over while nobody read: all ready without waiting.
    publish(&node, "wide", 2..=5).await;
    let _ = next(&mut a).await;
    let mut ready = 0;
    while a.try_next().is_some() {
        ready += 1;
    }
    assert_eq!(ready, 3, "the rest of the burst is ready at once");
}
