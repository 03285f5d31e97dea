//! Backoff between the attempts of an asynchronous invocation:
//! `retry_delay × 2^(n-1)` before retry n, with equal jitter (between half
//! and all of it), capped at 15 minutes. With a fixed `Random` the starts
//! of the attempts are exactly that far apart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BASE_MS, Jitter, Node, Script, secs};
use shoal_types::{FailureKind, InvocationStatus};

/// Deploys `always-fails` with these settings, runs one asynchronous
/// invocation to its end and returns the gaps between its attempts' starts.
async fn gaps(node: &Node, retries: u32, retry_delay: &str) -> Vec<Duration> {
    node.deploy(&format!(
        "name = \"always-fails\"\nretries = {retries}\nretry_delay = \"{retry_delay}\""
    ))
    .await;
    node.fake
        .script("always-fails", Script::fail(FailureKind::Raised));
    let id = node
        .engine
        .invoke_async("always-fails", "{}".into())
        .await
        .unwrap();
    // Waiting on the calls needs no polling through the long backoffs.
    let calls = node.ended("always-fails", retries as usize + 1).await;
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Failed);
    assert_eq!(r.attempts, retries + 1);
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, (1..=retries + 1).collect::<Vec<_>>());
    calls
        .windows(2)
        .map(|w| w[1].started - w[0].started)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn with_the_whole_jitter_retries_are_exactly_retry_delay_doubled() {
    let node = Node::with_random(Some(Arc::new(Jitter(1.0)))).await;
    assert_eq!(
        gaps(&node, 5, "2s").await,
        [secs(2), secs(4), secs(8), secs(16), secs(32)]
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_jitter_retries_wait_half_of_it() {
    let node = Node::with_random(Some(Arc::new(Jitter(0.0)))).await;
    assert_eq!(
        gaps(&node, 4, "2s").await,
        [secs(1), secs(2), secs(4), secs(8)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_jitter_lands_exactly_between_half_and_all() {
    // Half of the delay plus a quarter of the other half.
    let node = Node::with_random(Some(Arc::new(Jitter(0.25)))).await;
    assert_eq!(
        gaps(&node, 3, "800ms").await,
        [
            Duration::from_millis(500),
            Duration::from_millis(1000),
            Duration::from_millis(2000)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_retry_delay_is_not_rounded_up_to_the_idle_poll() {
    // Today: [1s, 1s, 1s], each retry waiting for the consumer's next
    // 1-second idle poll instead of its own due time.
    let node = Node::with_random(Some(Arc::new(Jitter(1.0)))).await;
    assert_eq!(
        gaps(&node, 3, "100ms").await,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn system_jitter_stays_within_half_and_all_of_the_delay() {
    let node = Node::with_random(None).await;
    let gaps = gaps(&node, 8, "1s").await;
    for (i, gap) in gaps.iter().enumerate() {
        let full = secs(1) * 2u32.pow(i as u32);
        assert!(
            *gap >= full / 2 && *gap <= full,
            "retry {}: {gap:?} is not within {:?}..={full:?} ({gaps:?})",
            i + 1,
            full / 2
        );
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped_at_fifteen_minutes() {
    let node = Node::with_random(Some(Arc::new(Jitter(1.0)))).await;
    // 10 min, then 20 and 40 min capped at 15.
    assert_eq!(
        gaps(&node, 3, "10m").await,
        [secs(600), secs(900), secs(900)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_invocation_waits_queued_with_its_next_attempt_time() {
    let node = Node::start().await;
    node.deploy("name = \"later\"\nretries = 1\nretry_delay = \"30s\"")
        .await;
    node.fake.script_seq(
        "later",
        [
            Script::fail(FailureKind::Raised),
            Script::ok(serde_json::json!(2)),
        ],
    );
    let id = node
        .engine
        .invoke_async("later", "{}".into())
        .await
        .unwrap();
    let first = node.ended("later", 1).await;
    let failed_at_ms = BASE_MS + node.at(first[0].ended.unwrap()).as_millis() as u64;
    let r = node.engine.invocation(&id).await.unwrap();
    assert_eq!(r.status, InvocationStatus::Queued, "{r:?}");
    assert_eq!(r.attempts, 1);
    assert_eq!(r.next_attempt_at_ms, Some(failed_at_ms + 30_000));
    assert_eq!(r.error.unwrap().kind, FailureKind::Raised);
    let r = node.wait_final(&id).await;
    assert_eq!(r.status, InvocationStatus::Succeeded);
    assert_eq!(r.next_attempt_at_ms, None);
    let calls = node.fake.calls_of("later");
    assert_eq!(
        calls[1].started - calls[0].ended.unwrap(),
        secs(30),
        "{calls:?}"
    );
}
