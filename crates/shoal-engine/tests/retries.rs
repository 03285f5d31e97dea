//! Retries of failed invocations: asynchronous ones are retried up to
//! `retries` times and keep their failure once out of them; synchronous
//! ones never are.

mod common;

use common::{Node, Script, secs};
use serde_json::json;
use shoal_types::{FailureKind, InvocationStatus, Outcome};

#[tokio::test(start_paused = true)]
async fn an_async_invocation_that_fails_twice_succeeds_on_its_third_attempt() {
    let node = Node::start().await;
    node.deploy("name = \"flaky\"\nretries = 2\nretry_delay = \"1s\"")
        .await;
    node.fake.script_seq(
        "flaky",
        [
            Script::fail(FailureKind::Crashed),
            Script::fail(FailureKind::Raised),
            Script::ok(json!("done")),
        ],
    );
    let id = node
        .engine
        .invoke_async("flaky", r#"{"n": 1}"#.into())
        .await
        .unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded, "{r:?}");
    assert_eq!((r.attempts, r.max_attempts), (3, 3));
    assert_eq!(r.output.as_deref(), Some("\"done\""));
    assert_eq!(r.error, None);
    assert_eq!(r.next_attempt_at_ms, None);

    let calls = node.fake.calls_of("flaky");
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(calls.iter().all(|c| c.invocation_id == id));
    assert!(calls.iter().all(|c| c.event == r#"{"n": 1}"#));
    // Nothing runs it again later.
    node.pass(secs(3600)).await;
    assert_eq!(node.fake.calls_of("flaky").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn out_of_retries_an_async_invocation_fails_with_its_last_failure_kind() {
    let node = Node::start().await;
    node.deploy("name = \"doomed\"\nretries = 1\nretry_delay = \"1s\"")
        .await;
    node.fake.script_seq(
        "doomed",
        [
            Script::fail(FailureKind::Crashed),
            Script::fail_with(FailureKind::OutOfMemory, "ate everything"),
        ],
    );
    let id = node
        .engine
        .invoke_async("doomed", "{}".into())
        .await
        .unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Failed, "{r:?}");
    assert_eq!((r.attempts, r.max_attempts), (2, 2));
    let error = r.error.expect("the failure is kept");
    assert_eq!(error.kind, FailureKind::OutOfMemory);
    assert_eq!(error.message, "ate everything");
    assert_eq!(r.output, None);
    assert_eq!(r.next_attempt_at_ms, None);

    node.pass(secs(3600)).await;
    let attempts: Vec<u32> = node
        .fake
        .calls_of("doomed")
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_async_invocation_is_retried_and_ends_timed_out() {
    let node = Node::start().await;
    node.deploy("name = \"slow\"\nretries = 1\ntimeout = \"2s\"")
        .await;
    node.fake
        .script("slow", Script::ok(json!(1)).sleep(secs(10)));
    let id = node.engine.invoke_async("slow", "{}".into()).await.unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::TimedOut, "{r:?}");
    assert_eq!(r.attempts, 2);
    assert_eq!(r.error.unwrap().kind, FailureKind::TimedOut);
    let calls = node.fake.calls_of("slow");
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.duration() == secs(2)));
}

#[tokio::test(start_paused = true)]
async fn synchronous_calls_are_never_retried() {
    let node = Node::start().await;
    node.deploy("name = \"flaky\"\nretries = 2\nretry_delay = \"1s\"")
        .await;
    node.fake.script_seq(
        "flaky",
        [
            Script::fail_with(FailureKind::Crashed, "segfault"),
            Script::ok(json!("second call")),
        ],
    );
    let done = node.engine.invoke("flaky", "{}".into()).await.unwrap();
    let Outcome::Failed(f) = &done.outcome else {
        panic!("{done:?}")
    };
    assert_eq!(
        (f.kind, f.message.as_str()),
        (FailureKind::Crashed, "segfault")
    );
    node.pass(secs(3600)).await;
    let r = node.wait_final(&done.id).await;
    assert_eq!(r.status, InvocationStatus::Failed);
    assert_eq!((r.attempts, r.max_attempts), (1, 1));
    assert_eq!(r.error.unwrap().kind, FailureKind::Crashed);
    let calls = node.fake.calls_of("flaky");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].attempt, 1);

    // The next call is a call of its own.
    let next = node.engine.invoke("flaky", "{}".into()).await.unwrap();
    assert_eq!(next.outcome, Outcome::Succeeded("\"second call\"".into()));
    assert_ne!(next.id, done.id);
}

#[tokio::test(start_paused = true)]
async fn a_platform_failure_is_not_an_attempt_and_runs_again_after_platform_retry() {
    let node = Node::start().await;
    node.deploy("name = \"f\"\nretries = 0").await;
    node.fake.script_seq(
        "f",
        [
            Script::platform_error("the worker's pipe broke"),
            Script::ok(json!("ran")),
        ],
    );
    let id = node.engine.invoke_async("f", "{}".into()).await.unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded, "{r:?}");
    assert_eq!((r.attempts, r.max_attempts), (1, 1));
    let calls = node.fake.calls_of("f");
    assert_eq!(calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(calls[0].outcome, None);
    // Options::platform_retry: 1 s.
    assert_eq!(calls[1].started - calls[0].ended.unwrap(), secs(1));
}
