//! Listing invocations: filters, newest-first order, cursor paging, and the
//! indexes following status changes, job writes and the retention purge.
//!
//! Each case works inside a time window of its own (`window`), far from
//! the other cases' times, so a filter without a function sees only the
//! case's records even on a shared store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_types::{InvocationMode, InvocationStatus};

use crate::{
    Backend, InvocationCursor, InvocationFilter, InvocationPage, InvocationRecord, JobRecord,
    ThenPlan,
};

use super::{msg, name, sample_invocation, unique};

/// Every filter alone and combined picks exactly the matching records,
/// newest first (equal times: the greater id first); `since` is inclusive,
/// `until` exclusive.
pub async fn list_invocations_filters(backend: &Backend) {
    let inv = &backend.invocations;
    let t = window();
    let (f, g) = (unique("conf-list-f"), unique("conf-list-g"));
    use InvocationMode::{Async, Queue, Sync};
    use InvocationStatus::{Failed, Queued, Succeeded};
    // (label, function, status, mode, created offset)
    let spec = [
        ("a", &f, Succeeded, Sync, 0),
        ("b", &f, Failed, Async, 10),
        ("c", &g, Failed, Sync, 20),
        ("d", &f, Failed, Queue, 30),
        ("e", &g, Queued, Async, 30),
        ("f", &f, Succeeded, Async, 40),
    ];
    let prefix = unique("conf-list");
    let records: Vec<InvocationRecord> = spec
        .iter()
        .map(|(label, function, status, mode, at)| InvocationRecord {
            status: *status,
            mode: *mode,
            created_at_ms: t + at,
            ..sample_invocation(&format!("{prefix}-{label}"), function)
        })
        .collect();
    inv.put_invocations(records).await.unwrap();

    let window_only = InvocationFilter {
        since_ms: Some(t),
        until_ms: Some(t + 1_000),
        ..InvocationFilter::default()
    };
    let check = |filter: InvocationFilter, want: &'static str| {
        let prefix = prefix.clone();
        async move {
            let page = inv.list_invocations(&filter, None, 100).await.unwrap();
            assert_eq!(labels(&page, &prefix), want, "filter {filter:?}");
            assert_eq!(page.next, None, "one page holds them all: {filter:?}");
        }
    };
    // Equal times (d, e at +30): the greater id first.
    check(window_only.clone(), "f e d c b a").await;
    let with = |function: Option<&str>,
                status: Option<InvocationStatus>,
                mode: Option<InvocationMode>| InvocationFilter {
        function: function.map(name),
        status,
        mode,
        ..window_only.clone()
    };
    check(with(Some(&f), None, None), "f d b a").await;
    check(with(Some(&g), None, None), "e c").await;
    check(with(None, Some(Failed), None), "d c b").await;
    check(with(Some(&f), Some(Failed), None), "d b").await;
    check(with(Some(&g), Some(Succeeded), None), "").await;
    check(with(None, None, Some(Async)), "f e b").await;
    check(with(Some(&f), None, Some(Async)), "f b").await;
    check(with(None, Some(Failed), Some(Sync)), "c").await;
    check(with(Some(&f), Some(Failed), Some(Queue)), "d").await;
    check(with(Some(&unique("conf-list-none")), None, None), "").await;
    // Time bounds: since inclusive, until exclusive.
    check(
        InvocationFilter {
            since_ms: Some(t + 10),
            until_ms: Some(t + 30),
            ..InvocationFilter::default()
        },
        "c b",
    )
    .await;
    check(
        InvocationFilter {
            function: Some(name(&f)),
            since_ms: Some(t + 30),
            ..InvocationFilter::default()
        },
        "f d",
    )
    .await;
    check(
        InvocationFilter {
            function: Some(name(&f)),
            status: Some(Failed),
            until_ms: Some(t + 30),
            ..InvocationFilter::default()
        },
        "b",
    )
    .await;
    // An empty or reversed window holds nothing.
    check(
        InvocationFilter {
            since_ms: Some(t + 30),
            until_ms: Some(t + 30),
            ..InvocationFilter::default()
        },
        "",
    )
    .await;
    check(
        InvocationFilter {
            since_ms: Some(t + 40),
            until_ms: Some(t + 10),
            ..InvocationFilter::default()
        },
        "",
    )
    .await;
    // A limit of 0 is an empty page.
    let page = inv.list_invocations(&window_only, None, 0).await.unwrap();
    assert_eq!(page, InvocationPage::default());
}

/// Pages of `limit` records follow each other through the cursor: every
/// record once, in order, and `next` is `None` exactly on the last page.
/// A cursor from one filter works with a narrower window too.
pub async fn list_invocations_paging(backend: &Backend) {
    let inv = &backend.invocations;
    let t = window();
    let f = unique("conf-page-f");
    let prefix = unique("conf-page");
    // 25 records, pairs sharing a time, so ties fall across page ends.
    let records: Vec<InvocationRecord> = (0..25u64)
        .map(|i| InvocationRecord {
            status: if i % 3 == 0 {
                InvocationStatus::Failed
            } else {
                InvocationStatus::Succeeded
            },
            created_at_ms: t + i / 2,
            ..sample_invocation(&format!("{prefix}-{i:02}"), &f)
        })
        .collect();
    inv.put_invocations(records.clone()).await.unwrap();
    let mut want: Vec<&InvocationRecord> = records.iter().collect();
    want.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));

    for filter in [
        InvocationFilter {
            function: Some(name(&f)),
            ..InvocationFilter::default()
        },
        InvocationFilter {
            since_ms: Some(t),
            until_ms: Some(t + 1_000),
            ..InvocationFilter::default()
        },
    ] {
        let mut got = Vec::new();
        let mut after: Option<InvocationCursor> = None;
        let mut pages = 0;
        loop {
            let page = inv
                .list_invocations(&filter, after.as_ref(), 10)
                .await
                .unwrap();
            pages += 1;
            assert!(page.records.len() <= 10);
            got.extend(page.records.iter().map(|r| r.id.clone()));
            match page.next {
                Some(next) => {
                    assert_eq!(page.records.len(), 10, "only the last page is short");
                    assert_eq!(
                        Some(&next),
                        page.records.last().map(InvocationCursor::after).as_ref()
                    );
                    after = Some(next);
                }
                None => break,
            }
            assert!(pages < 10, "paging does not end");
        }
        let want_ids: Vec<String> = want.iter().map(|r| r.id.clone()).collect();
        assert_eq!(got, want_ids, "filter {filter:?}");
        assert_eq!(pages, 3);
    }

    // Exactly `limit` records left: the page is full and says no more.
    let failed = InvocationFilter {
        function: Some(name(&f)),
        status: Some(InvocationStatus::Failed),
        ..InvocationFilter::default()
    };
    let page = inv.list_invocations(&failed, None, 9).await.unwrap();
    assert_eq!(page.records.len(), 9);
    assert_eq!(page.next, None);
    assert!(
        page.records
            .iter()
            .all(|r| r.status == InvocationStatus::Failed)
    );
    // A cursor with an until below it: the until wins.
    let first = inv.list_invocations(&failed, None, 2).await.unwrap();
    let narrower = InvocationFilter {
        until_ms: Some(t + 3),
        ..failed.clone()
    };
    let page = inv
        .list_invocations(&narrower, first.next.as_ref(), 100)
        .await
        .unwrap();
    assert!(page.records.iter().all(|r| r.created_at_ms < t + 3));
    assert_eq!(page.records.len(), 2, "records 0 and 3 (times +0, +1)");
}

/// A record written again with a new status is found under its new
/// status only; the count of records does not grow with rewrites.
pub async fn list_invocations_follow_status(backend: &Backend) {
    let inv = &backend.invocations;
    let t = window();
    let f = unique("conf-status-f");
    let id = unique("conf-status");
    let count = inv.count_invocations().await.unwrap();
    let mut record = InvocationRecord {
        created_at_ms: t,
        ..sample_invocation(&id, &f)
    };
    let by = |status| InvocationFilter {
        function: Some(name(&f)),
        status: Some(status),
        ..InvocationFilter::default()
    };
    let listed = |filter: InvocationFilter| async move {
        let page = inv.list_invocations(&filter, None, 10).await.unwrap();
        page.records
    };
    for status in [
        InvocationStatus::Queued,
        InvocationStatus::Running,
        InvocationStatus::Queued,
        InvocationStatus::Running,
        InvocationStatus::TimedOut,
    ] {
        record.status = status;
        record.attempts += 1;
        inv.put_invocations(vec![record.clone()]).await.unwrap();
        for other in InvocationStatus::ALL {
            let found = listed(by(other)).await;
            if other == status {
                assert_eq!(found, vec![record.clone()], "under {status:?}");
            } else {
                assert!(
                    found.is_empty(),
                    "{other:?} still lists it after {status:?}"
                );
            }
        }
        let all = listed(InvocationFilter {
            function: Some(name(&f)),
            ..InvocationFilter::default()
        })
        .await;
        assert_eq!(all, vec![record.clone()], "listed once");
    }
    assert_eq!(inv.count_invocations().await.unwrap(), count + 1);

    // Two updates issued together, the first not awaited: the index
    // follows the last one, as the record does.
    let first = inv.put_invocations(vec![InvocationRecord {
        status: InvocationStatus::Failed,
        ..record.clone()
    }]);
    inv.put_invocations(vec![InvocationRecord {
        status: InvocationStatus::Succeeded,
        ..record.clone()
    }])
    .await
    .unwrap();
    first.await.unwrap();
    assert!(listed(by(InvocationStatus::Failed)).await.is_empty());
    assert_eq!(listed(by(InvocationStatus::Succeeded)).await.len(), 1);
}

/// Records written by job operations (children at creation, the fan-in
/// when the last child finishes) are listed like any other, and move
/// when they are written again.
pub async fn list_invocations_of_jobs(backend: &Backend) {
    let t = window();
    let (child_fn, then_fn) = (unique("conf-jl-child"), unique("conf-jl-then"));
    let job_id = unique("conf-jl-job");
    let queue = unique("conf-jl-q");
    let then_q = unique("conf-jl-thenq");
    let children: Vec<InvocationRecord> = (0..2)
        .map(|i| InvocationRecord {
            created_at_ms: t + i,
            ..sample_invocation(&format!("{job_id}-c{i}"), &child_fn)
        })
        .collect();
    let then_id = format!("{job_id}-then");
    let job = JobRecord {
        id: job_id.clone(),
        function: name(&child_fn),
        then: Some(name(&then_fn)),
        total: 2,
        invocation: None,
        parent: None,
        continues: None,
        created_at_ms: t,
        then_plan: Some(ThenPlan {
            record: InvocationRecord {
                created_at_ms: t + 5,
                ..sample_invocation(&then_id, &then_fn)
            },
            queue: then_q.clone(),
            body: "{}".to_string(),
        }),
    };
    let messages = children.iter().map(|c| msg(&c.id, b"{}", t)).collect();
    backend
        .jobs
        .create_job(job, children.clone(), &queue, messages)
        .await
        .unwrap();
    let of = |f: &str, status: Option<InvocationStatus>| InvocationFilter {
        function: Some(name(f)),
        status,
        ..InvocationFilter::default()
    };
    let ids =
        |page: InvocationPage| -> Vec<String> { page.records.into_iter().map(|r| r.id).collect() };
    let inv = &backend.invocations;
    let queued = inv
        .list_invocations(&of(&child_fn, Some(InvocationStatus::Queued)), None, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(queued),
        vec![format!("{job_id}-c1"), format!("{job_id}-c0")]
    );
    // The children finish: their records move to succeeded.
    for (i, c) in children.iter().enumerate() {
        inv.put_invocations(vec![InvocationRecord {
            status: InvocationStatus::Succeeded,
            finished_at_ms: Some(t + 10),
            ..c.clone()
        }])
        .await
        .unwrap();
        backend
            .jobs
            .finish_child(
                &job_id,
                crate::ChildResult {
                    index: i as u64,
                    invocation: c.id.clone(),
                    status: InvocationStatus::Succeeded,
                    output: Some("1".to_string()),
                    error: None,
                    finished_at_ms: t + 10,
                },
                t + 10,
            )
            .await
            .unwrap();
    }
    let queued = inv
        .list_invocations(&of(&child_fn, Some(InvocationStatus::Queued)), None, 10)
        .await
        .unwrap();
    assert!(queued.records.is_empty());
    let done = inv
        .list_invocations(&of(&child_fn, Some(InvocationStatus::Succeeded)), None, 10)
        .await
        .unwrap();
    assert_eq!(done.records.len(), 2);
    // The fan-in, written by the last child's write, is listed.
    let then = inv
        .list_invocations(&of(&then_fn, None), None, 10)
        .await
        .unwrap();
    assert_eq!(ids(then), vec![then_id]);
}

/// The retention purge takes purged records out of every list and the
/// count; kept records stay listed.
pub async fn list_invocations_after_purge(backend: &Backend) {
    let inv = &backend.invocations;
    let f = unique("conf-lpurge-f");
    // Times far below every other case's but above those `purge_invocations`
    // deletes (before 5,000), so neither case's count sees the other's.
    let (created, cutoff) = (10_000, 20_000);
    let record = |status, finished: Option<u64>| InvocationRecord {
        status,
        created_at_ms: created,
        finished_at_ms: finished,
        ..sample_invocation(&unique("conf-lpurge"), &f)
    };
    let old = record(InvocationStatus::Failed, Some(15_000));
    let kept = record(InvocationStatus::Failed, Some(cutoff));
    let running = record(InvocationStatus::Running, None);
    inv.put_invocations(vec![old.clone(), kept.clone(), running.clone()])
        .await
        .unwrap();
    let before = inv.count_invocations().await.unwrap();
    let mut after: Option<String> = None;
    loop {
        let step = inv
            .purge_invocations(cutoff, after.as_deref(), 1_000)
            .await
            .unwrap();
        after = step.next;
        if after.is_none() {
            break;
        }
    }
    assert!(inv.count_invocations().await.unwrap() < before);
    assert_eq!(inv.invocation(&old.id).await.unwrap(), None);
    for filter in [
        InvocationFilter {
            function: Some(name(&f)),
            ..InvocationFilter::default()
        },
        InvocationFilter {
            function: Some(name(&f)),
            status: Some(InvocationStatus::Failed),
            ..InvocationFilter::default()
        },
        InvocationFilter {
            since_ms: Some(created),
            until_ms: Some(created + 1),
            status: Some(InvocationStatus::Failed),
            ..InvocationFilter::default()
        },
        InvocationFilter {
            since_ms: Some(created),
            until_ms: Some(created + 1),
            ..InvocationFilter::default()
        },
    ] {
        let page = inv.list_invocations(&filter, None, 100).await.unwrap();
        let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
        assert!(
            !ids.contains(&old.id.as_str()),
            "{filter:?} lists a purged record"
        );
        assert!(
            ids.contains(&kept.id.as_str()),
            "{filter:?} lost a kept record"
        );
    }
    // Written again after the purge, an id is listed again.
    inv.put_invocations(vec![old.clone()]).await.unwrap();
    let page = inv
        .list_invocations(
            &InvocationFilter {
                function: Some(name(&f)),
                status: Some(InvocationStatus::Failed),
                ..InvocationFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(page.records.len(), 2);
    assert_eq!(running.status, InvocationStatus::Running);
}

/// A time window no other case (or run) uses: 10,000 ms wide, above every
/// fixed time of the suite.
fn window() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    4_000_000_000_000_000 + ((micros % 1_000_000_000_000) * 16 + n % 16) * 10_000
}

/// The labels (`a`..`f`) of a page's records, in order.
fn labels(page: &InvocationPage, prefix: &str) -> String {
    page.records
        .iter()
        .map(|r| {
            r.id.strip_prefix(&format!("{prefix}-"))
                .expect("only this case's records")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
