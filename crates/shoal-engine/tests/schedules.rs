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
    let listed = node.engine.schedules().await.unwrap();
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
    let listed = node.engine.schedules().await.unwrap();
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
    assert!(node.engine.schedules().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_paused_schedule_skips_its_ticks_on_every_node_until_resumed() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with_clock_at(BASE_MS, backend.clone()).await;
    let b = Node::with(None, backend).await;
    a.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\n")
        .await;
    a.pass(ms(3_500)).await;
    assert_eq!(seconds_of(&[&a, &b], "tick"), vec![1, 2, 3]);
    // Paused on A: no node fires (B's next pass sees the mark).
    let v = a.engine.pause_schedule("tick", 0, true).await.unwrap();
    assert!(v.paused);
    let listed = b.engine.schedules().await.unwrap();
    assert!(listed[0].paused, "seen by the other node");
    a.pass(ms(5_000)).await;
    assert_eq!(seconds_of(&[&a, &b], "tick"), vec![1, 2, 3]);
    // Pausing twice is the same; resumed on B: the paused ticks are not
    // run (missed = "skip"), the next ones are.
    assert!(
        a.engine
            .pause_schedule("tick", 0, true)
            .await
            .unwrap()
            .paused
    );
    let v = b.engine.pause_schedule("tick", 0, false).await.unwrap();
    assert!(!v.paused);
    a.pass(ms(3_000)).await;
    assert_eq!(seconds_of(&[&a, &b], "tick"), vec![1, 2, 3, 9, 10, 11]);
    // Kept across a deploy of the function while the index stays.
    a.engine.pause_schedule("tick", 0, true).await.unwrap();
    a.deploy(
        "name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\nevent = { v = 2 }\n",
    )
    .await;
    a.pass(ms(3_000)).await;
    assert_eq!(seconds_of(&[&a, &b], "tick").len(), 6);
    assert!(a.engine.schedules().await.unwrap()[0].paused);
    // Unknown ones are not found, naming what is missing.
    let e = a.engine.pause_schedule("tick", 1, true).await.unwrap_err();
    assert!(
        matches!(
            e,
            shoal_engine::Error::NotFound {
                entity: shoal_engine::Entity::Schedule,
                ..
            }
        ),
        "{e:?}"
    );
    let e = a.engine.pause_schedule("nope", 0, true).await.unwrap_err();
    assert!(
        matches!(
            e,
            shoal_engine::Error::NotFound {
                entity: shoal_engine::Entity::Function,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_a_catch_up_schedule_runs_the_last_ten_paused_ticks() {
    let node = Node::start().await;
    node.deploy(
        "name = \"tick\"\nhandler = \"main:handler\"\n\
         [[schedule]]\nevery = \"1s\"\nmissed = \"catch_up\"\n",
    )
    .await;
    node.pass(ms(2_500)).await;
    // The deploy's tick (0), 1 and 2.
    assert_eq!(node.fake.calls_of("tick").len(), 3);
    node.engine.pause_schedule("tick", 0, true).await.unwrap();
    node.pass(ms(30_000)).await;
    assert_eq!(node.fake.calls_of("tick").len(), 3, "none while paused");
    node.engine.pause_schedule("tick", 0, false).await.unwrap();
    node.pass(ms(600)).await;
    // The last 10 of the 30 paused ticks (23..=32), late, once.
    assert_eq!(
        seconds_of(&[&node], "tick").len(),
        13,
        "{:?}",
        seconds_of(&[&node], "tick")
    );
    node.pass(ms(2_000)).await;
    assert_eq!(seconds_of(&[&node], "tick").len(), 15);
}

#[tokio::test(start_paused = true)]
async fn the_history_lists_fired_ticks_newest_first_with_their_invocations() {
    let node = Node::start().await;
    node.deploy("name = \"tick\"\nhandler = \"main:handler\"\n[[schedule]]\nevery = \"1s\"\n")
        .await;
    let none = node.engine.schedules().await.unwrap();
    assert_eq!(none[0].last, None);
    node.pass(ms(5_500)).await;
    let calls = node.fake.calls_of("tick");
    assert_eq!(calls.len(), 5);
    for c in &calls {
        node.wait_final(&c.invocation_id).await;
    }
    let tick = |s: u64| (BASE_MS / 1000 + s) * 1000;
    let (page, cursor) = node
        .engine
        .schedule_history("tick", 0, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|t| t.tick_ms).collect::<Vec<_>>(),
        vec![tick(5), tick(4)]
    );
    assert_eq!(cursor, Some(tick(4)));
    let (rest, end) = node
        .engine
        .schedule_history("tick", 0, cursor, 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|t| t.tick_ms).collect::<Vec<_>>(),
        vec![tick(3), tick(2), tick(1)]
    );
    assert_eq!(end, None);
    // Each names its invocation (the one that ran), the node, the status.
    let mut listed: Vec<String> = page
        .iter()
        .chain(&rest)
        .map(|t| t.invocation.clone())
        .collect();
    let mut ran: Vec<String> = calls.iter().map(|c| c.invocation_id.clone()).collect();
    listed.sort();
    ran.sort();
    assert_eq!(listed, ran);
    for t in page.iter().chain(&rest) {
        assert_eq!(t.status, Some(shoal_types::InvocationStatus::Succeeded));
        assert!(t.fired_at_ms >= t.tick_ms && t.fired_at_ms < t.tick_ms + 1000);
    }
    // The listing's `last` is the newest.
    let listed = node.engine.schedules().await.unwrap();
    let last = listed[0].last.clone().expect("a last tick");
    assert_eq!(last.tick_ms, tick(5));
    assert_eq!(last.invocation, page[0].invocation);
    // Limits are checked.
    assert!(
        node.engine
            .schedule_history("tick", 0, None, 0)
            .await
            .is_err()
    );
    assert!(
        node.engine
            .schedule_history("tick", 0, None, 1001)
            .await
            .is_err()
    );
}

/// The next fire times of `cron` in Paris, listed at `now_ms`, as UTC
/// RFC 3339 texts.
async fn paris_next(cron: &str, now_ms: u64) -> Vec<String> {
    let node =
        Node::with_clock_at(now_ms, Backend::from_adapter(Arc::new(MemoryStore::new()))).await;
    node.deploy(&format!(
        "name = \"dst\"\nhandler = \"main:handler\"\n\
         [[schedule]]\ncron = \"{cron}\"\ntimezone = \"Europe/Paris\"\n"
    ))
    .await;
    let listed = node.engine.schedules().await.unwrap();
    listed[0]
        .next_ms
        .iter()
        .map(|t| {
            jiff::Timestamp::from_millisecond(*t as i64)
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn cron_in_a_time_zone_across_daylight_saving_changes() {
    // 2025-03-29 23:30 UTC (00:30 in Paris): that night 02:00 CET becomes
    // 03:00 CEST, so 02:30 does not exist on the 30th.
    let spring = 1_743_291_000_000;
    // A time in the skipped hour fires once, at the end of the gap (03:00
    // CEST = 01:00 UTC); the days after at 02:30 CEST.
    assert_eq!(
        paris_next("0 30 2 * * *", spring).await[..3],
        [
            "2025-03-30T01:00:00Z",
            "2025-03-31T00:30:00Z",
            "2025-04-01T00:30:00Z"
        ]
    );
    // Hourly: once per real hour, none for the hour that does not exist.
    assert_eq!(
        paris_next("0 0 * * * *", spring).await[..3],
        [
            "2025-03-30T00:00:00Z",
            "2025-03-30T01:00:00Z",
            "2025-03-30T02:00:00Z"
        ]
    );
    // 2025-10-25 23:30 UTC (01:30 CEST): at 03:00 CEST the clocks go back to
    // 02:00 CET, so 02:00 to 03:00 happens twice.
    let autumn = 1_761_435_000_000;
    // A time in the repeated hour fires once, at its first occurrence
    // (02:30 CEST = 00:30 UTC), not again an hour later.
    assert_eq!(
        paris_next("0 30 2 * * *", autumn).await[..2],
        ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]
    );
    // Hourly: every real hour, so both 02:00s.
    assert_eq!(
        paris_next("0 0 * * * *", autumn).await[..3],
        [
            "2025-10-26T00:00:00Z",
            "2025-10-26T01:00:00Z",
            "2025-10-26T02:00:00Z"
        ]
    );
}
