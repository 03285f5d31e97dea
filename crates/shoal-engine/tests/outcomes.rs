//! The outcome hook: every invocation that reaches a final status is
//! handed to the registered sinks once its record's write is issued —
//! after its last attempt, not after a retried one — whatever its mode.

mod common;

use std::sync::{Arc, Mutex};

use common::{Node, Script, secs};
use futures_util::future::BoxFuture;
use serde_json::json;
use shoal_engine::OutcomeSink;
use shoal_store::InvocationRecord;
use shoal_types::{FailureKind, InvocationStatus};

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, InvocationStatus, u32)>>,
}

impl OutcomeSink for Recorder {
    fn finished(&self, r: &InvocationRecord) -> Option<BoxFuture<'static, Result<(), String>>> {
        self.seen
            .lock()
            .unwrap()
            .push((r.id.clone(), r.status, r.attempts));
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_async_invocation_reaches_the_sinks_once_with_its_final_status() {
    let node = Node::start().await;
    let rec = Arc::new(Recorder::default());
    node.engine.outcomes().register(rec.clone());
    node.deploy("name = \"flaky\"\nretries = 2\nretry_delay = \"1s\"")
        .await;
    node.fake.script_seq(
        "flaky",
        [Script::fail(FailureKind::Raised), Script::ok(json!("done"))],
    );
    let id = node
        .engine
        .invoke_async("flaky", "{}".into())
        .await
        .unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded);
    node.pass(secs(60)).await;
    assert_eq!(
        *rec.seen.lock().unwrap(),
        [(id, InvocationStatus::Succeeded, 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn sync_and_failed_invocations_reach_the_sinks_and_nothing_else_does() {
    let node = Node::start().await;
    node.deploy("name = \"f\"\nretries = 0").await;
    // Before any sink: not seen later.
    node.fake.script("f", Script::ok(json!(1)));
    node.engine.invoke("f", "{}".into()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    node.engine.outcomes().register(rec.clone());
    let ok = node.engine.invoke("f", "{}".into()).await.unwrap();
    node.fake.script("f", Script::fail(FailureKind::Raised));
    let failed = node.engine.invoke_async("f", "{}".into()).await.unwrap();
    node.wait_final(&failed).await;
    node.pass(secs(5)).await;
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (ok.id, InvocationStatus::Succeeded, 1),
            (failed, InvocationStatus::Failed, 1)
        ]
    );
}

/// A sink whose work fails the first time: the message is not acknowledged,
/// comes back once its lease lapses, and the sink is asked again — the
/// function itself does not run again.
struct FailsOnce {
    calls: Mutex<u32>,
}

impl OutcomeSink for FailsOnce {
    fn finished(&self, _: &InvocationRecord) -> Option<BoxFuture<'static, Result<(), String>>> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let first = *calls == 1;
        Some(Box::pin(async move {
            if first {
                Err("the store said no".to_string())
            } else {
                Ok(())
            }
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn the_acknowledgement_waits_for_what_the_outcome_causes() {
    let node = Node::start().await;
    let sink = Arc::new(FailsOnce {
        calls: Mutex::new(0),
    });
    node.engine.outcomes().register(sink.clone());
    node.deploy("name = \"f\"\nretries = 0\ntimeout = \"2s\"")
        .await;
    node.fake.script("f", Script::ok(json!("done")));
    let id = node.engine.invoke_async("f", "{}".into()).await.unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded);
    node.pass(secs(1)).await;
    assert_eq!(*sink.calls.lock().unwrap(), 1);
    // Not acknowledged: back after its lease, handed over again, then done.
    node.pass(secs(120)).await;
    assert_eq!(*sink.calls.lock().unwrap(), 2);
    node.pass(secs(600)).await;
    assert_eq!(
        *sink.calls.lock().unwrap(),
        2,
        "acknowledged the second time"
    );
    assert_eq!(node.fake.calls_of("f").len(), 1, "the function ran once");
}
