//! Schedules on the in-memory store and a paused clock: `every` fires once
//! per tick, with its event; two nodes on one store fire each tick once;
//! missed ticks are skipped, or caught up (at most 10) after a restart;
//! cron expressions with seconds; manifests that are refused, and why.

mod common;

use std::sync::Arc;

use common::{BASE_MS, Node, archive, ms, secs};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;

/// When each call of `function` on these nodes started, in whole seconds
/// since the tests' epoch (`BASE_MS`), sorted.
fn seconds_of(nodes: &[&Node], function: &str) -> Vec<u64> {
    let mut at: Vec<u64> = nodes
        .iter()
        .flat_map(|n| {
            n.fake
                .calls_of(function)
                .into_iter()
                .map(|c| n.at(c.started).as_secs())
                .collect::<Vec<_>>()
        })
        .collect();
    at.sort();
    at
}

#[tokio::test(start_paused = true)]
async fn every_second_fires_once_per_tick_with_its_event() {
    let node = Node::start().await;
    node.deploy(
        "name = \"tick\"\nhandler = \"main:handler\"\n\
         [[schedule]]\nevery = \"1s\"\nevent = { kind = \"beat\", n = 1 }\n",
    )
    .await;
    node.pass(ms(10_500)).await;
    let calls = node.fake.calls_of("tick");
    // The schedule is followed from the deploy on (t = 0): ticks 1 to 10.
    assert_eq!(seconds_of(&[&node], "tick"), (1..=10).collect::<Vec<_>>());
    for c in &calls {
        let event: serde_json::Value = serde_json::from_str(&c.event).unwrap();
        assert_eq!(event, serde_json::json!({"kind": "beat", "n": 1}));
    }
    // Listed, with its next fire times.
    let listed = node.engine.schedules();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].function.as_str(), listed[0].index), ("tick", 0));
    let now = BASE_MS + 10_500;
    let want: Vec<u64> = (11..=15).map(|s| BASE_MS + s * 1000).collect();
    assert_eq!(listed[0].next_ms, want, "now {now}");
    // The claimed ticks are the node's own keys: a user's listing has none.
    let page = node.engine.kv_list("", None, 100).await.unwrap();
    assert!(page.entries.is_empty(), "{:?}", page.entries);
    // Ordinary async invocations: recorded, and succeeded.
    let record = node.wait_final(&calls[0].invocation_id).await;
    assert_eq!(record.function, "tick");
}

#[tokio::test(start_paused = true)]
async fn two_nodes_on_one_store_fire_each_tick_once() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with_clock_at(BASE_MS, backend.clone()).await;
    let b = Node::with(None, backend).await;
    a.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\n")
        .await;
    a.pass(ms(20_500)).await;
    let at = seconds_of(&[&a, &b], "tick");
    let mut unique = at.clone();
    unique.dedup();
    assert_eq!(at, unique, "no tick fired twice");
    // B sees the function within a catalog poll; between them every tick
    // from the first second on fired.
    assert_eq!(at, (1..=20).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn cron_with_seconds_fires_on_its_seconds() {
    let node = Node::start().await;
    node.deploy(
        "name = \"cron\"\nhandler = \"main:handler\"\n\
         [[schedule]]\ncron = \"*/3 * * * * *\"\ntimezone = \"UTC\"\n",
    )
    .await;
    node.pass(ms(12_500)).await;
    // BASE_MS is a multiple of 3 s plus 1 s (1_750_000_000 s ≡ 1 mod 3).
    let offset = (3 - (BASE_MS / 1000) % 3) % 3;
    let want: Vec<u64> = (0..=12).filter(|s| *s >= 1 && (s % 3) == offset).collect();
    assert_eq!(seconds_of(&[&node], "cron"), want);
}

#[tokio::test(start_paused = true)]
async fn missed_ticks_are_skipped_by_default() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with_clock_at(BASE_MS, backend.clone()).await;
    a.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\n")
        .await;
    a.pass(ms(3_500)).await;
    assert_eq!(a.fake.calls_of("tick").len(), 3);
    let t0 = a.t0;
    a.stop().await;
    tokio::time::sleep(secs(30)).await;
    let b = restart(t0, backend).await;
    let started = b.t0 - t0;
    b.pass(ms(2_500)).await;
    // Only ticks after B started: none of the 30 missed.
    let at: Vec<_> = b
        .fake
        .calls_of("tick")
        .iter()
        .map(|c| c.started - t0)
        .collect();
    assert_eq!(at.len(), 2, "started {started:?}, calls at {at:?}");
    assert!(
        at.iter().all(|t| *t >= started),
        "started {started:?}, calls at {at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn catch_up_fires_at_most_the_last_ten_missed_ticks() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with_clock_at(BASE_MS, backend.clone()).await;
    a.deploy(
        "name = \"tick\"\nhandler = \"main:handler\"\n\
         [[schedule]]\nevery = \"1s\"\nmissed = \"catch_up\"\n",
    )
    .await;
    a.pass(ms(3_500)).await;
    // Ticks 0 (the deploy's, caught up when the schedule is first seen)
    // to 3.
    assert_eq!(a.fake.calls_of("tick").len(), 4);
    let t0 = a.t0;
    a.stop().await;

    // Down for 4 ticks: all 4 fire late.
    tokio::time::sleep(secs(4)).await;
    let b = restart(t0, backend.clone()).await;
    b.pass(ms(100)).await;
    assert_eq!(b.fake.calls_of("tick").len(), 4);
    b.stop().await;

    // Down for 30 ticks: the last 10.
    tokio::time::sleep(secs(30)).await;
    let c = restart(t0, backend).await;
    c.pass(ms(100)).await;
    assert_eq!(c.fake.calls_of("tick").len(), 10);
}

/// A node started now on `backend`, its clock agreeing with that of a
/// node started at `t0`.
async fn restart(t0: tokio::time::Instant, backend: Backend) -> Node {
    let elapsed = tokio::time::Instant::now() - t0;
    Node::with_clock_at(BASE_MS + elapsed.as_millis() as u64, backend).await
}

/// The error deploying `schedule` (a `[[schedule]]` table's body).
async fn refused(node: &Node, schedule: &str) -> String {
    let manifest =
        format!("name = \"bad\"\nhandler = \"main:handler\"\n[[schedule]]\n{schedule}\n");
    match node.engine.deploy(archive(&manifest)).await {
        Ok(_) => panic!("{schedule:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_schedule_is_refused_saying_what_to_fix() {
    let node = Node::start().await;
    let cases = [
        ("", "set `every = \"30s\"` or `cron"),
        (
            "every = \"1s\"\ncron = \"* * * * * *\"",
            "either `every` or `cron`",
        ),
        ("every = \"500ms\"", "at least 1s"),
        ("every = \"soon\"", "`every` must be a duration"),
        ("cron = \"*/5 * * * *\"", "six fields, seconds first"),
        ("cron = \"61 * * * * *\"", "cron \"61 * * * * *\""),
        (
            "every = \"1s\"\ntimezone = \"Europe/Paris\"",
            "`timezone = \"Europe/Paris\"` is for `cron`",
        ),
        (
            "cron = \"0 0 9 * * *\"\ntimezone = \"Mars/Olympus\"",
            "not a known time zone",
        ),
        (
            "every = \"1s\"\nmissed = \"later\"",
            "\"skip\" or \"catch_up\"",
        ),
        ("every = \"1s\"\nevry = 2", "unknown field `evry`"),
    ];
    for (schedule, want) in cases {
        let e = refused(&node, schedule).await;
        assert!(e.contains(want), "{schedule:?}: {e}");
        assert!(
            e.contains("[[schedule]] 1") || e.contains("unknown field"),
            "{e}"
        );
    }
    assert!(node.engine.function("bad").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn cron_follows_its_time_zone() {
    let node = Node::start().await;
    node.deploy(
        "name = \"paris\"\nhandler = \"main:handler\"\n\
         [[schedule]]\ncron = \"0 0 9 * * *\"\ntimezone = \"Europe/Paris\"\n\
         [[schedule]]\ncron = \"0 0 9 * * *\"\n",
    )
    .await;
    let listed = node.engine.schedules();
    // BASE_MS is 2025-06-15 15:06:40 UTC; 09:00 in Paris (summer time) is
    // 07:00 UTC.
    let paris_next = 1_750_057_200_000;
    assert_eq!(
        listed[0].next_ms[..2],
        [paris_next, paris_next + 86_400_000]
    );
    assert_eq!(listed[1].next_ms[0], paris_next + 2 * 3_600_000, "UTC");
    assert_eq!(listed[0].schedule.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(listed[1].schedule.timezone, None);
}

#[test]
fn cron_expressions_need_six_fields() {
    assert!(shoal_engine::parse_cron("*/5 * * * * *").is_ok());
    assert!(shoal_engine::parse_cron("0 0 12 * * MON-FRI").is_ok());
    assert!(shoal_engine::parse_cron("0 */5 * * *").is_err());
    assert!(shoal_engine::parse_cron("* * * * * * *").is_err());
    assert!(shoal_engine::parse_cron("x * * * * *").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_new_version_or_a_removal_changes_what_fires_at_once() {
    let node = Node::start().await;
    node.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\n")
        .await;
    node.pass(ms(3_500)).await;
    assert_eq!(seconds_of(&[&node], "tick"), vec![1, 2, 3]);
    // Every 2 s from now on (ticks 4, 6, 8).
    node.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"2s\"\n")
        .await;
    node.pass(ms(5_000)).await;
    assert_eq!(seconds_of(&[&node], "tick"), vec![1, 2, 3, 4, 6, 8]);
    node.engine.remove_function("tick").await.unwrap();
    node.pass(ms(5_000)).await;
    assert_eq!(
        seconds_of(&[&node], "tick").len(),
        6,
        "none after the removal"
    );
    assert!(node.engine.schedules().is_empty());
}
