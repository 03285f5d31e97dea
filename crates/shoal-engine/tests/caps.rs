//! Caps a node keeps on what it holds (issue 9, item 8): waiting messages
//! per queue, children per job, and how long finished invocation records
//! and their logs are kept.

mod common;

use std::time::Duration;

use common::{Latch, Node, Script, archive, ms, secs, within};
use serde_json::json;

use shoal_engine::{Entity, Error, JobSpec, OutMessage, QueueSettings};
use shoal_types::InvocationStatus;

fn message(n: u32) -> OutMessage {
    OutMessage {
        body: format!("{{\"n\": {n}}}"),
        delay: Duration::ZERO,
        dedup_id: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_queue_takes_no_more_than_its_cap_and_takes_again_once_drained() {
    let node = Node::with_options(|o| o.max_queue_messages = 5).await;
    node.engine
        .put_queue("inbox", QueueSettings::default())
        .await
        .unwrap();
    node.engine
        .send("inbox", (0..4).map(message).collect())
        .await
        .unwrap();
    // 4 + 2 > 5: the whole batch is refused, and says why.
    let e = node
        .engine
        .send("inbox", (4..6).map(message).collect())
        .await
        .unwrap_err();
    let Error::QueueFull(text) = &e else {
        panic!("want QueueFull, got {e:?}");
    };
    assert!(
        text.contains("queue `inbox` holds 4 messages")
            && text.contains("at most 5")
            && text.contains("--max-queue-messages"),
        "{text}"
    );
    assert_eq!(node.engine.queue("inbox").await.unwrap().depth.waiting, 4);
    // One more fits exactly.
    node.engine.send("inbox", vec![message(4)]).await.unwrap();
    assert!(matches!(
        node.engine.send("inbox", vec![message(5)]).await,
        Err(Error::QueueFull(_))
    ));
    node.engine
        .purge_queue("inbox", shoal_engine::Removal::Force)
        .await
        .unwrap();
    node.engine.send("inbox", vec![message(6)]).await.unwrap();

    // A function's queue of asynchronous invocations has the same cap.
    node.engine
        .deploy(archive("name = \"slow\"\nconcurrency = 1"))
        .await
        .unwrap();
    let gate = Latch::new();
    node.fake.script("slow", Script::ok(json!(1)).wait(&gate));
    for _ in 0..5 {
        node.engine.invoke_async("slow", "{}".into()).await.unwrap();
    }
    let e = node
        .engine
        .invoke_async("slow", "{}".into())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::QueueFull(t) if t.contains("the queue of function `slow`")),
        "{e:?}"
    );
    // A job whose children do not fit is refused whole.
    let e = node
        .engine
        .start_job(JobSpec {
            function: "slow".into(),
            events: vec!["{}".into(); 2],
            then: None,
            max_in_flight: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::QueueFull(_)), "{e:?}");
    gate.open();
    within("the queue to drain", async {
        while node.engine.invoke_async("slow", "{}".into()).await.is_err() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_job_has_at_most_the_nodes_children() {
    let node = Node::with_options(|o| o.max_job_children = 3).await;
    node.engine
        .deploy(archive("name = \"child\""))
        .await
        .unwrap();
    node.fake.script("child", Script::ok(json!(1)));
    let spec = |n: usize| JobSpec {
        function: "child".into(),
        events: vec!["{}".into(); n],
        then: None,
        max_in_flight: None,
    };
    let e = node.engine.start_job(spec(4)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(
        text.contains("at most 3 children") && text.contains("not 4"),
        "{text}"
    );
    node.engine.start_job(spec(3)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn finished_records_and_their_logs_go_after_the_retention() {
    let node = Node::with_options(|o| {
        o.retention = Some(secs(3600));
        o.retention_sweep = secs(60);
    })
    .await;
    node.engine
        .deploy(archive("name = \"f\"\nconcurrency = 2"))
        .await
        .unwrap();
    node.fake
        .script("f", Script::ok(json!("done")).log("printed\n"));
    let sync = node.engine.invoke("f", "{}".into()).await.unwrap();
    let sync_id = sync.id.clone();
    let async_id = node.engine.invoke_async("f", "{}".into()).await.unwrap();
    within("the async invocation to finish", async {
        while !node
            .engine
            .invocation(&async_id)
            .await
            .unwrap()
            .status
            .is_final()
        {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    assert_eq!(node.engine.logs(&async_id).await.unwrap(), b"printed\n");

    // Within the retention: kept.
    tokio::time::sleep(secs(3000)).await;
    for id in [&sync_id, &async_id] {
        let r = node.engine.invocation(id).await.unwrap();
        assert_eq!(r.status, InvocationStatus::Succeeded);
    }
    // Past it (plus one sweep): gone, logs too.
    tokio::time::sleep(secs(600 + 120)).await;
    for id in [&sync_id, &async_id] {
        let e = node.engine.invocation(id).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotFound {
                    entity: Entity::Invocation,
                    ..
                }
            ),
            "{id}: {e:?}"
        );
        assert!(node.engine.logs(id).await.is_err(), "{id}: logs kept");
    }
    // (Records not final are never deleted, however old: the store's
    // conformance case `purge_invocations` shows it.)
}

#[tokio::test(start_paused = true)]
async fn dead_letters_redriven_must_fit_the_queue() {
    let node = Node::with_options(|o| o.max_queue_messages = 3).await;
    node.engine
        .deploy(archive("name = \"worker\"\n[subscribe]\nqueue = \"q\""))
        .await
        .unwrap();
    node.engine
        .put_queue(
            "q",
            QueueSettings {
                max_attempts: Some(1),
                ..QueueSettings::default()
            },
        )
        .await
        .unwrap();
    let held = Latch::new();
    node.fake.script_seq(
        "worker",
        [
            Script::fail(shoal_types::FailureKind::Raised),
            Script::fail(shoal_types::FailureKind::Raised),
            Script::fail(shoal_types::FailureKind::Raised),
            Script::ok(json!(1)).wait(&held),
            Script::ok(json!(1)).wait(&held),
        ],
    );
    for n in 0..3 {
        node.engine.send("q", vec![message(n)]).await.unwrap();
        within("the message to be dead-lettered", async {
            while node.engine.queue("q").await.unwrap().depth.dead < u64::from(n) + 1 {
                tokio::time::sleep(ms(10)).await;
            }
        })
        .await;
    }
    // Two more, held by the worker: the queue holds 2 of its 3.
    node.engine
        .send("q", vec![message(3), message(4)])
        .await
        .unwrap();
    let e = node.engine.redrive("q", None).await.unwrap_err();
    assert!(
        matches!(&e, Error::QueueFull(t) if t.contains("holds 2 messages") && t.contains("3 more do not fit")),
        "{e:?}"
    );
    assert_eq!(node.engine.queue("q").await.unwrap().depth.dead, 3);
    let one = node.engine.dead_letters("q", None, 1).await.unwrap();
    assert_eq!(
        node.engine
            .redrive("q", Some(vec![one[0].id.clone()]))
            .await
            .unwrap(),
        1
    );
    held.open();
}
