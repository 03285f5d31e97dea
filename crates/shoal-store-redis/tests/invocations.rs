//! The invocations port on a real `redis-server`: the conformance suite's
//! invocation cases, one test each (all but `list_invocations_of_jobs`,
//! which needs the jobs port and runs with it), and what the suite does not
//! reach: the bound on entries a mode filter reads, records that change
//! function or time, times above 2^53, and the purge's bound per step.

use std::sync::Arc;

use shoal_store::conformance::{self, sample_invocation, unique};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, InvocationCursor, InvocationFilter, InvocationRecord, Invocations};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;
use shoal_types::{InvocationMode, InvocationStatus};

/// A store on `server`, connected and checked.
async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0
}

/// A backend whose catalog and invocations are on Redis (the other ports
/// are in memory: `write_order` uses queues too).
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(store(server).await);
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: store.clone(),
        invocations: store.clone(),
        queues: memory.clone(),
        docs: memory.clone(),
        jobs: memory.clone(),
        kv: memory.clone(),
        blobs: memory.clone(),
        channels: memory.clone(),
        usage: store,
    }
}

macro_rules! cases {
    ($area:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::$area::$case(&backend(&server).await).await;
            }
        )*
    };
}

cases!(invocations: invocations, logs, write_order, healthy, purge_invocations);

cases!(
    invocation_lists: list_invocations_filters,
    list_invocations_paging,
    list_invocations_follow_status,
    list_invocations_after_purge,
);

/// Every case twice against one store: the cases share a store between
/// runs (unique names, windows of their own).
#[tokio::test]
async fn the_cases_run_twice_on_one_store() {
    let server = RedisServer::start(&[]);
    let backend = backend(&server).await;
    for _ in 0..2 {
        conformance::invocations::invocations(&backend).await;
        conformance::invocations::logs(&backend).await;
        conformance::invocations::write_order(&backend).await;
        conformance::invocations::healthy(&backend).await;
        conformance::invocations::purge_invocations(&backend).await;
        conformance::invocation_lists::list_invocations_filters(&backend).await;
        conformance::invocation_lists::list_invocations_paging(&backend).await;
        conformance::invocation_lists::list_invocations_follow_status(&backend).await;
        conformance::invocation_lists::list_invocations_after_purge(&backend).await;
    }
}

/// A rare mode: one call reads at most 10,000 index entries, so the first
/// page ends short with a cursor where it stopped, and the next finds the
/// rest.
#[tokio::test]
async fn a_mode_filter_reads_a_bounded_number_of_entries() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let f = unique("mode-scan");
    let records: Vec<InvocationRecord> = (0..10_050u64)
        .map(|i| InvocationRecord {
            mode: if i < 10 {
                InvocationMode::Sync
            } else {
                InvocationMode::Async
            },
            created_at_ms: 1_000 + i,
            ..sample_invocation(&format!("{f}-{i:05}"), &f)
        })
        .collect();
    store.put_invocations(records).await.unwrap();
    let filter = InvocationFilter {
        function: Some(conformance::name(&f)),
        mode: Some(InvocationMode::Sync),
        ..InvocationFilter::default()
    };
    let first = store.list_invocations(&filter, None, 100).await.unwrap();
    assert!(first.records.is_empty());
    assert_eq!(
        first.next,
        Some(InvocationCursor {
            created_at_ms: 1_000 + 50,
            id: format!("{f}-00050"),
        })
    );
    let second = store
        .list_invocations(&filter, first.next.as_ref(), 100)
        .await
        .unwrap();
    let ids: Vec<String> = second.records.iter().map(|r| r.id.clone()).collect();
    let want: Vec<String> = (0..10).rev().map(|i| format!("{f}-{i:05}")).collect();
    assert_eq!(ids, want);
    assert_eq!(second.next, None);
    // Without a mode, a huge limit is cut at the same bound.
    let all = InvocationFilter {
        function: Some(conformance::name(&f)),
        ..InvocationFilter::default()
    };
    let page = store
        .list_invocations(&all, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 10_000);
    assert_eq!(page.next, page.records.last().map(InvocationCursor::after));
}

/// A record written again under another function and time is listed under
/// the new ones only, and counted once.
#[tokio::test]
async fn a_record_that_changes_function_or_time_moves() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let (f, g) = (unique("move-f"), unique("move-g"));
    let id = unique("move");
    let record = InvocationRecord {
        created_at_ms: 5_000,
        ..sample_invocation(&id, &f)
    };
    store.put_invocations(vec![record.clone()]).await.unwrap();
    let moved = InvocationRecord {
        function: conformance::name(&g),
        created_at_ms: 7_000,
        status: InvocationStatus::Running,
        ..record
    };
    store.put_invocations(vec![moved.clone()]).await.unwrap();
    let list = |function: &str, status: Option<InvocationStatus>, since: Option<u64>| {
        let filter = InvocationFilter {
            function: Some(conformance::name(function)),
            status,
            since_ms: since,
            ..InvocationFilter::default()
        };
        let store = store.clone();
        async move {
            store
                .list_invocations(&filter, None, 10)
                .await
                .unwrap()
                .records
        }
    };
    assert!(list(&f, None, None).await.is_empty());
    assert!(
        list(&f, Some(InvocationStatus::Queued), None)
            .await
            .is_empty()
    );
    assert_eq!(list(&g, None, None).await, vec![moved.clone()]);
    assert_eq!(
        list(&g, Some(InvocationStatus::Running), Some(7_000)).await,
        vec![moved.clone()]
    );
    assert!(list(&g, None, Some(7_001)).await.is_empty());
    assert_eq!(store.count_invocations().await.unwrap(), 1);
}

/// Times above 2^53 keep their exact order (a double score would not).
#[tokio::test]
async fn times_above_2_pow_53_keep_their_order() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let f = unique("big-times");
    let base = u64::MAX - 10;
    let records: Vec<InvocationRecord> = (0..5u64)
        .map(|i| InvocationRecord {
            created_at_ms: base + i,
            ..sample_invocation(&format!("{f}-{i}"), &f)
        })
        .collect();
    store.put_invocations(records).await.unwrap();
    let filter = InvocationFilter {
        function: Some(conformance::name(&f)),
        since_ms: Some(base + 1),
        until_ms: Some(base + 4),
        ..InvocationFilter::default()
    };
    let page = store.list_invocations(&filter, None, 10).await.unwrap();
    let times: Vec<u64> = page.records.iter().map(|r| r.created_at_ms).collect();
    assert_eq!(times, vec![base + 3, base + 2, base + 1]);
}

/// One purge step looks at 10,000 ids at most, whatever `scan` says, and
/// hands back a cursor; the next step goes on from it.
#[tokio::test]
async fn a_purge_step_is_bounded() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let f = unique("purge-bound");
    let records: Vec<InvocationRecord> = (0..10_005u64)
        .map(|i| InvocationRecord {
            status: InvocationStatus::Succeeded,
            finished_at_ms: Some(2_000),
            ..sample_invocation(&format!("{f}-{i:05}"), &f)
        })
        .collect();
    store.put_invocations(records).await.unwrap();
    store
        .put_logs(&format!("{f}-00000"), b"x".to_vec())
        .await
        .unwrap();
    let first = store
        .purge_invocations(3_000, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(first.deleted, 10_000);
    assert_eq!(first.next, Some(format!("{f}-09999")));
    assert_eq!(store.logs(&format!("{f}-00000")).await.unwrap(), None);
    let second = store
        .purge_invocations(3_000, first.next.as_deref(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(second.deleted, 5);
    assert_eq!(second.next, None);
    assert_eq!(store.count_invocations().await.unwrap(), 0);
    let all = InvocationFilter::default();
    let page = store.list_invocations(&all, None, 10).await.unwrap();
    assert!(page.records.is_empty());
}
