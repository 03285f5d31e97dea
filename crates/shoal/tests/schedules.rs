//! End to end: a schedule on a real `shoal serve` (python3) fires each tick
//! once, an ordinary async invocation, across a `kill -9` and a restart,
//! and with two nodes on one redis-server; `shoal schedules` lists it,
//! pauses and resumes it and shows its history.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestNode, deploy};
use shoal_client::Client;
use shoal_store_redis::testing::RedisServer;

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

/// The side effects of `tick` runs: per tick (the time in its invocation
/// id, which a tick's run is named after), how many runs incremented it.
async fn side_effects(c: &Client) -> BTreeMap<u64, i64> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.kv_list("tick.", cursor.as_deref(), 1000).await.unwrap();
        for e in &page.entries {
            let id = e.key.strip_prefix("tick.").unwrap();
            // UUIDv7: the first 48 bits are the time in ms.
            let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
            let tick = u64::from_str_radix(&hex, 16).unwrap();
            *out.entry(tick).or_default() += e.value.as_i64().unwrap();
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

/// Two nodes on one redis-server, a schedule every second: each tick's side
/// effect happens once (the tick is claimed once, and its run is named
/// after it), across several ticks; a pause on one node stops both, a
/// resume on the other starts both again; the history lists what fired.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_on_redis_fire_each_tick_once() {
    let redis = RedisServer::start(&[]);
    let on = |redis: &RedisServer| {
        TestNode::start_with(&["--store", &redis.url(), "--redis-namespace", "sched"])
    };
    let a = on(&redis);
    let b = on(&redis);
    let (ca, cb) = (a.client(), b.client());
    deploy(
        &ca,
        "name = \"tick\"\n[[schedule]]\nevery = \"1s\"\n",
        "def handler(e, ctx):\n    return ctx.kv_incr('tick.' + ctx.invocation_id)\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    common::wait_async_drained(&ca, "tick").await;
    let effects = side_effects(&cb).await;
    assert!(effects.len() >= 4, "{effects:?}");
    assert!(
        effects.values().all(|n| *n == 1),
        "a tick's side effect happened more than once: {effects:?}"
    );
    let ticks: Vec<u64> = effects.keys().copied().collect();
    assert!(ticks.iter().all(|t| t % 1000 == 0), "{ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1000),
        "every tick between the first and the last fired: {ticks:?}"
    );
    // One invocation per tick, whichever node fired it.
    let list = cb
        .list_invocations(&[("function", "tick"), ("limit", "1000")])
        .await
        .unwrap();
    let mut fired: Vec<u64> = list
        .invocations
        .iter()
        .map(|i| {
            let hex: String = i.id.chars().filter(|c| *c != '-').take(12).collect();
            u64::from_str_radix(&hex, 16).unwrap()
        })
        .collect();
    fired.sort_unstable();
    let n = fired.len();
    fired.dedup();
    assert_eq!(fired.len(), n, "two invocations for one tick: {fired:?}");
    assert!(ticks.iter().all(|t| fired.contains(t)), "{fired:?}");

    // The history, from either node: newest first, one item per tick.
    let h = cb.schedule_history("tick", 0, 1000, None).await.unwrap();
    let listed: Vec<u64> = h.items.iter().map(|t| t.tick_ms).collect();
    let mut newest_first = ticks.clone();
    newest_first.reverse();
    assert_eq!(
        listed[listed.len() - newest_first.len()..],
        newest_first[..]
    );
    assert!(h.items.iter().all(|t| !t.node.is_empty()), "{h:?}");
    let out = a.cli(&["schedules", "history", "tick", "--limit", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("TICK"), "{text}");
    assert!(text.contains("More: --cursor"), "{text}");

    // Paused through node A: neither node fires.
    let out = a.cli(&["schedules", "pause", "tick"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = cb.schedules().await.unwrap();
    assert!(v[0].paused, "{v:?}");
    // A pass of each node's loop sees the mark within a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    common::wait_async_drained(&ca, "tick").await;
    let before = side_effects(&ca).await.len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(side_effects(&ca).await.len(), before, "fired while paused");
    let text = String::from_utf8_lossy(&a.cli(&["schedules"]).stdout).to_string();
    assert!(text.contains("paused"), "{text}");

    // Resumed through node B: both go on, still once per tick.
    let out = b.cli(&["schedules", "resume", "tick", "0", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["paused"], false, "{v}");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    common::wait_async_drained(&ca, "tick").await;
    let effects = side_effects(&ca).await;
    assert!(effects.len() >= before + 2, "{before} then {effects:?}");
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
}
