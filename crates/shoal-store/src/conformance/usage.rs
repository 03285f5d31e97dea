//! Usage rollups: changed with the record write that makes an invocation
//! final, once per invocation; exact counts on the indexes.

use shoal_types::InvocationStatus;

use crate::usage::{self, Grain, RollupQuery, RollupRow};
use crate::{Backend, InvocationFilter, InvocationRecord};

use super::{T, msg, name, sample_invocation, unique};

/// A final record of `function`, created at `at`.
fn finished(
    id: &str,
    function: &str,
    status: InvocationStatus,
    at: u64,
    token: Option<&str>,
) -> InvocationRecord {
    InvocationRecord {
        status,
        attempts: 1,
        created_at_ms: at,
        started_at_ms: Some(at + 1),
        finished_at_ms: Some(at + 20),
        duration_ms: Some(12.5),
        billed_gb_s: 0.001_562_5,
        cold_start: status == InvocationStatus::Succeeded,
        token: token.map(str::to_string),
        ..sample_invocation(id, function)
    }
}

async fn rows(
    backend: &Backend,
    grain: Grain,
    function: &str,
    token: Option<&str>,
) -> Vec<RollupRow> {
    backend
        .usage
        .rollups(&RollupQuery {
            grain,
            since_ms: 0,
            until_ms: u64::MAX,
            function: Some(function.to_string()),
            each_function: false,
            token: token.map(str::to_string),
        })
        .await
        .unwrap()
}

/// A record counts once, in the write that makes it final: not while
/// queued or running, not again when a final record is written again
/// (a redelivery), per minute and per day, by function and token.
pub async fn usage_rollups_once_per_final_record(backend: &Backend) {
    let f = unique("conf-use-fn");
    let inv = &backend.invocations;
    let (a, b, c) = (unique("conf-use"), unique("conf-use"), unique("conf-use"));
    let t0 = T + 7 * 60_000 + 1_234;

    let queued = InvocationRecord {
        created_at_ms: t0,
        token: Some("tok-a".to_string()),
        ..sample_invocation(&a, &f)
    };
    inv.put_invocations(vec![queued.clone()]).await.unwrap();
    let running = InvocationRecord {
        status: InvocationStatus::Running,
        ..queued.clone()
    };
    inv.put_invocations(vec![running]).await.unwrap();
    assert!(rows(backend, Grain::Minute, &f, None).await.is_empty());

    let done = finished(&a, &f, InvocationStatus::Succeeded, t0, Some("tok-a"));
    inv.put_invocations(vec![done.clone()]).await.unwrap();
    // Written again final (a redelivery, a second settle): adds nothing,
    // even with another final status or in the same batch as another.
    let again = InvocationRecord {
        status: InvocationStatus::Failed,
        ..done.clone()
    };
    let other = finished(&b, &f, InvocationStatus::Failed, t0 + 60_000, Some("tok-a"));
    inv.put_invocations(vec![again, other.clone(), other.clone()])
        .await
        .unwrap();
    // No token, and a record final from its first write (a sync call).
    let c_rec = finished(&c, &f, InvocationStatus::TimedOut, t0, None);
    inv.put_invocations(vec![c_rec]).await.unwrap();

    let minutes = rows(backend, Grain::Minute, &f, None).await;
    let summary: Vec<(u64, &str, u64, u64, u64)> = minutes
        .iter()
        .map(|r| {
            (
                r.start_ms,
                r.token.as_str(),
                r.rollup.invocations(),
                r.rollup.of_status(InvocationStatus::Succeeded),
                r.rollup.failed(),
            )
        })
        .collect();
    let m0 = Grain::Minute.start(t0);
    assert_eq!(
        summary,
        vec![
            (m0, "", 1, 0, 1),
            (m0, "tok-a", 1, 1, 0),
            (m0 + 60_000, "tok-a", 1, 0, 1),
        ]
    );
    let hour = rows(backend, Grain::Hour, &f, Some("tok-a")).await;
    assert_eq!(hour.len(), 1);
    assert_eq!(hour[0].start_ms, Grain::Hour.start(t0));
    assert_eq!(hour[0].rollup.invocations(), 2);
    let day = rows(backend, Grain::Day, &f, Some("tok-a")).await;
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].start_ms, Grain::Day.start(t0));
    assert_eq!(day[0].rollup.invocations(), 2);
    assert_eq!(day[0].rollup.cold_starts(), 1);
    assert_eq!(day[0].rollup.fields[usage::GB_NS], 2 * 1_562_500);
    assert!((day[0].rollup.gb_s() - 0.003_125).abs() < 1e-12);
    let p50 = day[0].rollup.quantile_ms(0.5).unwrap();
    assert!((11.0..14.5).contains(&p50), "p50 {p50}");
    // Only the work no token started.
    let none = rows(backend, Grain::Day, &f, Some("")).await;
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].rollup.of_status(InvocationStatus::TimedOut), 1);

    // The rows of every function together (other cases share the store:
    // at least these), and every function's own rows.
    let all = backend
        .usage
        .rollups(&RollupQuery {
            grain: Grain::Minute,
            since_ms: m0,
            until_ms: m0 + 60_000,
            function: None,
            each_function: false,
            token: Some("tok-a".to_string()),
        })
        .await
        .unwrap();
    assert!(
        all.iter().all(|r| r.function == usage::ALL_FUNCTIONS),
        "{all:?}"
    );
    assert!(all.iter().map(|r| r.rollup.invocations()).sum::<u64>() >= 1);
    let each = backend
        .usage
        .rollups(&RollupQuery {
            grain: Grain::Minute,
            since_ms: m0,
            until_ms: m0 + 120_000,
            function: None,
            each_function: true,
            token: Some("tok-a".to_string()),
        })
        .await
        .unwrap();
    assert!(each.iter().all(|r| r.function != usage::ALL_FUNCTIONS));
    assert_eq!(each.iter().filter(|r| r.function == f).count(), 2);

    // A time range takes buckets by their start.
    let q = RollupQuery {
        grain: Grain::Minute,
        since_ms: m0 + 1,
        until_ms: m0 + 120_000,
        function: Some(f.clone()),
        each_function: false,
        token: None,
    };
    let later = backend.usage.rollups(&q).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].start_ms, m0 + 60_000);
}

/// The other writes that make records final count the same way, once:
/// a record written with the ack of its message, and a job's children.
pub async fn usage_rollups_of_combined_writes(backend: &Backend) {
    let f = unique("conf-use-fn");
    let queue = unique("conf-use-q");
    let a = unique("conf-use");
    let queued = InvocationRecord {
        created_at_ms: T,
        ..sample_invocation(&a, &f)
    };
    backend
        .put_and_send(vec![queued], &queue, vec![msg(&a, b"{}", T)], 1_000)
        .await
        .unwrap();
    assert!(rows(backend, Grain::Day, &f, None).await.is_empty());
    let done = finished(&a, &f, InvocationStatus::Succeeded, T, None);
    backend
        .put_and_ack(vec![done.clone()], &queue, vec![a.clone()])
        .await
        .unwrap();
    // Redelivered after a crash before the ack: settled again.
    backend
        .put_and_ack(vec![done], &queue, vec![a.clone()])
        .await
        .unwrap();
    let day = rows(backend, Grain::Day, &f, None).await;
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].rollup.invocations(), 1);
}

/// Exact counts of stored records per filter, by creation time.
pub async fn usage_count_indexed(backend: &Backend) {
    let f = unique("conf-use-fn");
    let g = unique("conf-use-fn");
    let mut records = Vec::new();
    for i in 0..10u64 {
        let status = if i % 3 == 0 {
            InvocationStatus::Queued
        } else {
            InvocationStatus::Succeeded
        };
        let fun = if i < 7 { &f } else { &g };
        let mut r = finished(&unique("conf-use"), fun, status, T + i * 1_000, None);
        if status == InvocationStatus::Queued {
            r = InvocationRecord {
                created_at_ms: T + i * 1_000,
                ..sample_invocation(&r.id, fun)
            };
        }
        records.push(r);
    }
    backend.invocations.put_invocations(records).await.unwrap();
    let count = |function: Option<&str>, status, since, until| {
        let filter = InvocationFilter {
            function: function.map(name),
            status,
            mode: None,
            since_ms: since,
            until_ms: until,
        };
        let usage = backend.usage.clone();
        async move { usage.count_indexed(&filter).await.unwrap() }
    };
    assert_eq!(count(Some(&f), None, None, None).await, 7);
    assert_eq!(count(Some(&g), None, None, None).await, 3);
    assert_eq!(
        count(Some(&f), Some(InvocationStatus::Queued), None, None).await,
        3
    );
    assert_eq!(
        count(Some(&f), None, Some(T + 2_000), Some(T + 5_000)).await,
        3
    );
    assert_eq!(
        count(
            Some(&g),
            Some(InvocationStatus::Succeeded),
            Some(T + 7_000),
            None
        )
        .await,
        2
    );
    assert_eq!(
        count(Some(&f), None, Some(T + 5_000), Some(T + 5_000)).await,
        0
    );
    // Without a function: the whole store's range (other cases share it),
    // so at least these.
    assert!(count(None, None, Some(T), Some(T + 10_000)).await >= 10);
    assert!(
        count(
            None,
            Some(InvocationStatus::Queued),
            Some(T),
            Some(T + 10_000)
        )
        .await
            >= 4
    );
}
