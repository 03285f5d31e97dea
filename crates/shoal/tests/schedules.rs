//! End to end: a schedule on a real `shoal serve` (python3) fires each tick
//! once, an ordinary async invocation, across a `kill -9` and a restart;
//! `shoal schedules` lists it.

mod common;

use std::time::Duration;

use common::{TestNode, deploy};
use shoal_client::Client;

/// When each invocation of `tick` was created (its tick fired), in ms,
/// oldest first.
async fn fired(c: &Client) -> Vec<u64> {
    let list = c
        .list_invocations(&[("function", "tick"), ("limit", "1000")])
        .await
        .unwrap();
    let mut at: Vec<u64> = list.invocations.iter().map(|i| i.created_at_ms).collect();
    at.sort_unstable();
    at
}

/// Ticks fire right after their second: at most one invocation per second.
fn assert_once_per_tick(at: &[u64]) {
    let mut seconds: Vec<u64> = at.iter().map(|t| t / 1000).collect();
    seconds.dedup();
    assert_eq!(seconds.len(), at.len(), "a tick fired twice: {at:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tick_fires_once_across_a_kill9_and_restart() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"tick\"\n[[schedule]]\nevery = \"1s\"\nevent = { n = 1 }\n",
        "def handler(e, ctx):\n    return e['n']\n",
    )
    .await;
    // `shoal schedules` lists it, with its next fire time.
    let out = node.cli(&["schedules"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("FUNCTION  #  WHEN"), "{text}");
    assert!(text.contains("tick      0  every 1s  skip"), "{text}");
    let out = node.cli(&["schedules", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schedules"][0]["every_ms"], 1000, "{v}");
    assert_eq!(
        v["schedules"][0]["event"],
        serde_json::json!({"n": 1}),
        "{v}"
    );

    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let before = fired(&c).await;
    assert!(before.len() >= 2, "{before:?}");
    assert_once_per_tick(&before);

    node.kill9_and_restart();
    let c = node.client();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let after = fired(&c).await;
    assert!(after.len() >= before.len() + 2, "{before:?} then {after:?}");
    assert_once_per_tick(&after);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "kept across the restart"
    );
    // They ran, as ordinary async invocations.
    let list = c
        .list_invocations(&[("function", "tick"), ("limit", "1000")])
        .await
        .unwrap();
    let first = list.invocations.last().unwrap();
    let done = common::wait_final(&c, &first.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "succeeded");
    assert_eq!(done.output, Some(serde_json::json!(1)));
}
