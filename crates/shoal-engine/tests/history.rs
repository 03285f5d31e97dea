//! Finding past invocations in the engine: the filtered list, the feed of
//! finished attempts (what `shoal logs --follow` streams), and retention
//! taking purged records out of the lists.

mod common;

use common::{Node, Script, archive, ms, secs, within};
use serde_json::json;

use shoal_engine::{FeedItem, InvocationFilter};
use shoal_types::{FunctionName, InvocationMode, InvocationStatus};

fn of(function: &str) -> InvocationFilter {
    InvocationFilter {
        function: Some(FunctionName::parse(function).unwrap()),
        ..InvocationFilter::default()
    }
}

/// Every finished attempt reaches a follower once its record is durable,
/// with its logs: sync calls, async ones, and each attempt of a retry.
#[tokio::test(start_paused = true)]
async fn followers_get_each_finished_attempt_with_its_logs() {
    let node = Node::start().await;
    node.deploy("name = \"f\"\nretries = 1\nretry_delay = \"1s\"")
        .await;
    let mut feed = node.engine.follow_invocations();
    node.fake
        .script("f", Script::ok(json!(1)).log("sync ran\n"));
    let sync = node.engine.invoke("f", "{}".into()).await.unwrap();
    let got = within("the sync attempt", feed.next()).await;
    let FeedItem::Attempt(a) = got else {
        panic!("want an attempt, got {got:?}");
    };
    assert_eq!(a.record.id, sync.id);
    assert_eq!(a.record.status, InvocationStatus::Succeeded);
    assert_eq!(a.logs, b"sync ran\n");
    // The record is durable by then: the list has it.
    let page = node
        .engine
        .list_invocations(&of("f"), None, 10)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);

    // An async invocation that fails once, then succeeds: two attempts.
    node.fake.script_seq(
        "f",
        vec![
            Script::raise("ValueError", "first").log("try 1\n"),
            Script::ok(json!(2)).log("try 2\n"),
        ],
    );
    let id = node.engine.invoke_async("f", "{}".into()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match within("the async attempts", feed.next()).await {
            FeedItem::Attempt(a) => {
                assert_eq!(a.record.id, id);
                seen.push((
                    a.record.status,
                    String::from_utf8_lossy(&a.logs).into_owned(),
                ));
            }
            other => panic!("want an attempt, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (InvocationStatus::Queued, "try 1\n".to_string()),
            (InvocationStatus::Succeeded, "try 2\n".to_string()),
        ]
    );
    let asyncs = InvocationFilter {
        mode: Some(InvocationMode::Async),
        ..of("f")
    };
    let page = node
        .engine
        .list_invocations(&asyncs, None, 10)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].attempts, 2);
}

/// A follower that does not keep up is told how many it missed, then
/// gets the newest ones; the dispatcher never waits for it.
#[tokio::test(start_paused = true)]
async fn a_slow_follower_is_told_it_lagged() {
    let node = Node::start().await;
    node.deploy("name = \"f\"").await;
    node.fake.script("f", Script::ok(json!(1)));
    let mut feed = node.engine.follow_invocations();
    let n = 1_100;
    for _ in 0..n {
        node.engine.invoke("f", "{}".into()).await.unwrap();
    }
    // Let the writes behind the answers land.
    tokio::time::sleep(ms(100)).await;
    let got = within("the lag notice", feed.next()).await;
    let FeedItem::Lagged(missed) = got else {
        panic!("want a lag notice, got {got:?}");
    };
    assert!(missed >= 1 && missed < n, "missed {missed}");
    let mut rest = 0;
    while let Ok(FeedItem::Attempt(_)) = tokio::time::timeout(ms(10), feed.next()).await {
        rest += 1;
    }
    assert_eq!(missed + rest, n);
}

/// Past the retention, a purged record leaves every list; the newer one
/// stays listed.
#[tokio::test(start_paused = true)]
async fn retention_takes_purged_records_out_of_the_lists() {
    let node = Node::with_options(|o| {
        o.retention = Some(secs(3600));
        o.retention_sweep = secs(60);
    })
    .await;
    node.engine.deploy(archive("name = \"f\"")).await.unwrap();
    node.fake.script("f", Script::raise("ValueError", "no"));
    let old = node.engine.invoke("f", "{}".into()).await.unwrap();
    let failed = InvocationFilter {
        status: Some(InvocationStatus::Failed),
        ..of("f")
    };
    let listed = |f: InvocationFilter| {
        let engine = node.engine.clone();
        async move {
            engine
                .list_invocations(&f, None, 10)
                .await
                .unwrap()
                .records
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    tokio::time::sleep(ms(10)).await;
    assert_eq!(listed(failed.clone()).await, vec![old.id.clone()]);
    // Kept an hour, swept every minute.
    tokio::time::sleep(secs(3000)).await;
    let newer = node.engine.invoke("f", "{}".into()).await.unwrap();
    tokio::time::sleep(secs(900)).await;
    assert_eq!(listed(failed).await, vec![newer.id.clone()]);
    assert_eq!(listed(of("f")).await, vec![newer.id]);
    assert_eq!(node.engine.stats().await.unwrap().invocations, 1);
}

/// A queue subscriber's runs are invocations too: listed with mode
/// `queue`, failed ones under `failed`, and followed like the others.
#[tokio::test(start_paused = true)]
async fn a_subscribers_runs_are_listed_and_followed() {
    let node = Node::start().await;
    node.engine
        .put_queue("inbox", shoal_engine::QueueSettings::default())
        .await
        .unwrap();
    node.deploy("name = \"worker\"\n[subscribe]\nqueue = \"inbox\"")
        .await;
    node.fake.script_seq(
        "worker",
        vec![
            Script::raise("ValueError", "bad message").log("first\n"),
            Script::ok(json!(1)).log("second\n"),
        ],
    );
    let mut feed = node.engine.follow_invocations();
    let message = |n: u32| shoal_engine::OutMessage {
        body: format!("{{\"n\": {n}}}"),
        delay: secs(0),
        dedup_id: None,
    };
    node.engine.send("inbox", vec![message(1)]).await.unwrap();
    let got = within("the subscriber's run", feed.next()).await;
    let FeedItem::Attempt(a) = got else {
        panic!("want an attempt, got {got:?}");
    };
    assert_eq!(a.record.mode, InvocationMode::Queue);
    assert_eq!(a.logs, b"first\n");
    let runs = InvocationFilter {
        mode: Some(InvocationMode::Queue),
        ..of("worker")
    };
    let page = node.engine.list_invocations(&runs, None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].status, InvocationStatus::Failed);
}
