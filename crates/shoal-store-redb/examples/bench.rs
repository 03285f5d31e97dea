//! A quick throughput check of the redb adapter (no criterion): prints, does
//! not assert. Run with
//! `cargo run -p shoal-store-redb --release --example bench [DIR]`
//! (DIR defaults to a temp dir; put it on the disk the node will use, since
//! the numbers are bound by fsync).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::conformance::sample_invocation;
use shoal_store::{Invocations, NewMessage, Queues};
use shoal_store_redb::RedbStore;

const N: usize = 10_000;

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>8.0} ops/s ({n} in {:.1} ms)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64() * 1e3
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let path = dir.join(format!("bench-{}.redb", std::process::id()));
    rt.block_on(run(&path));
    let _ = std::fs::remove_file(&path);
}

async fn run(path: &std::path::Path) {
    let store = RedbStore::open(path).unwrap();

    // Fsync cost alone: one write at a time.
    let t = Instant::now();
    for i in 0..200 {
        store
            .put_invocations(vec![sample_invocation(&format!("serial-{i}"), "f")])
            .await
            .unwrap();
    }
    println!(
        "serial awaited put_invocations:     {}",
        rate(200, t.elapsed())
    );

    // 10,000 concurrent callers, each awaiting its own durable write.
    let before = store.stats();
    let t = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
            tokio::spawn(async move {
                let rec = sample_invocation(&format!("inv-{i}"), "f");
                store.put_invocations(vec![rec]).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = t.elapsed();
    let after = store.stats();
    println!(
        "concurrent awaited put_invocations: {}  mean batch {:.0} over {} commits",
        rate(N, elapsed),
        (after.writes - before.writes) as f64 / (after.commits - before.commits) as f64,
        after.commits - before.commits
    );

    // Fire-and-forget (a sync invocation's record): issue, drop, then wait for the last.
    let t = Instant::now();
    for i in 0..N {
        drop(store.put_invocations(vec![sample_invocation(&format!("ff-{i}"), "f")]));
    }
    let issued = t.elapsed();
    store
        .put_invocations(vec![sample_invocation("ff-last", "f")])
        .await
        .unwrap();
    println!(
        "fire-and-forget put_invocations:    {}  (issuing alone: {:.1} µs/op)",
        rate(N, t.elapsed()),
        issued.as_secs_f64() * 1e6 / N as f64
    );

    // The async invocation path end to end: each of N callers sends one
    // durable message; two consumers lease, put a record, and ack.
    async_pipeline(&store, "bench-q", false).await;
    // The same with a deduplication key per message (user queues).
    async_pipeline(&store, "bench-dedup-q", true).await;

    // The writer's own cost per message, not bound by fsync: 1,000 per call.
    bulk(&store, false).await;
    bulk(&store, true).await;

    paced(&store, 3_000).await;

    reads(&store).await;
    println!("final stats: {:?}", store.stats());
}

async fn async_pipeline(store: &Arc<RedbStore>, queue: &'static str, dedup: bool) {
    const T: u64 = 1_700_000_000_000;
    let t = Instant::now();
    let producers: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
            tokio::spawn(async move {
                let m = NewMessage {
                    id: format!("m-{i}"),
                    body: format!("{{\"invocation\":\"a-{i}\"}}").into_bytes(),
                    due_ms: T,
                    sent_ms: T,
                    dedup: dedup.then(|| (format!("key-{i}"), T + 300_000)),
                    key: None,
                };
                store.send(queue, vec![m]).await.unwrap();
            })
        })
        .collect();
    // Taken by either consumer; they stop once all N are taken (not when
    // the queue looks empty, which it does before the first send commits).
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let taken = taken.clone();
            #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
            tokio::spawn(async move {
                let mut handled = 0usize;
                let mut inflight = tokio::task::JoinSet::new();
                while taken.load(std::sync::atomic::Ordering::Relaxed) < N {
                    let leased = store.lease(queue, T, 256, 60_000).await.unwrap();
                    if leased.deliveries.is_empty() {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    taken.fetch_add(
                        leased.deliveries.len(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    for d in leased.deliveries {
                        handled += 1;
                        let store = store.clone();
                        inflight.spawn(async move {
                            let mut rec = sample_invocation(&d.id, "f");
                            rec.status = shoal_types::InvocationStatus::Succeeded;
                            store.put_invocations(vec![rec]).await.unwrap();
                            store.ack(queue, vec![d.id]).await.unwrap();
                        });
                    }
                    while inflight.len() > 512 {
                        inflight.join_next().await;
                    }
                }
                while inflight.join_next().await.is_some() {}
                handled
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let sent = t.elapsed();
    let mut handled = 0;
    for c in consumers {
        handled += c.await.unwrap();
    }
    let label = if dedup {
        "  with dedup keys:                 "
    } else {
        "async pipeline send+lease+put+ack: "
    };
    println!(
        "{label} {}  (all sends durable after {:.1} ms, {handled} handled)",
        rate(N, t.elapsed()),
        sent.as_secs_f64() * 1e3
    );
    let c = store.counters(queue).await.unwrap();
    assert_eq!((c.sent, c.acked), (N as u64, N as u64));
}

async fn bulk(store: &Arc<RedbStore>, dedup: bool) {
    const T: u64 = 1_700_000_000_000;
    const M: usize = 100_000;
    const PER_CALL: usize = 1_000;
    let queue = if dedup { "bulk-dedup-q" } else { "bulk-q" };
    let t = Instant::now();
    for c in 0..M / PER_CALL {
        let messages = (0..PER_CALL)
            .map(|k| {
                let i = c * PER_CALL + k;
                NewMessage {
                    id: format!("b-{i:07}"),
                    body: format!("{{\"n\":{i}}}").into_bytes(),
                    due_ms: T,
                    sent_ms: T,
                    dedup: dedup.then(|| (format!("key-{i}"), T + 300_000)),
                    key: None,
                }
            })
            .collect();
        store.send(queue, messages).await.unwrap();
    }
    let sent = t.elapsed();
    let t = Instant::now();
    loop {
        let leased = store.lease(queue, T, PER_CALL, 60_000).await.unwrap();
        if leased.deliveries.is_empty() {
            break;
        }
        let ids = leased.deliveries.into_iter().map(|d| d.id).collect();
        store.ack(queue, ids).await.unwrap();
    }
    let acked = t.elapsed();
    println!(
        "bulk send {} / lease+ack {} ({PER_CALL}/call{})",
        rate(M, sent),
        rate(M, acked),
        if dedup { ", dedup keys" } else { "" }
    );
}

async fn reads(store: &Arc<RedbStore>) {
    const R: usize = 100_000;
    let t = Instant::now();
    for i in 0..R {
        let id = format!("inv-{}", i % N);
        assert!(store.invocation(&id).await.unwrap().is_some());
    }
    let inline = t.elapsed();
    let t = Instant::now();
    for i in 0..R {
        let store = store.clone();
        let id = format!("inv-{}", i % N);
        let found = tokio::task::spawn_blocking(move || {
            futures_util::FutureExt::now_or_never(store.invocation(&id)).unwrap()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(found.is_some());
    }
    let blocking = t.elapsed();
    println!(
        "invocation() read inline:            {:.2} µs/op; via spawn_blocking: {:.2} µs/op",
        inline.as_secs_f64() * 1e6 / R as f64,
        blocking.as_secs_f64() * 1e6 / R as f64
    );
    let t = Instant::now();
    for _ in 0..R {
        store.depth("bench-q").await.unwrap();
        store.lease("bench-q", 0, 16, 1).await.unwrap();
    }
    println!(
        "empty lease + depth:                 {:.2} µs/op",
        t.elapsed().as_secs_f64() * 1e6 / R as f64
    );
}

/// Latency of awaited writes under a steady offered load of `per_s` for 2 s.
async fn paced(store: &Arc<RedbStore>, per_s: u64) {
    let total = per_s as usize * 2;
    let before = store.stats();
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    let per_tick = per_s as usize / 1_000;
    let mut tasks = Vec::with_capacity(total);
    for tick in 0..total / per_tick {
        interval.tick().await;
        for k in 0..per_tick {
            let store = store.clone();
            #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let rec = sample_invocation(&format!("paced-{tick}-{k}"), "f");
                store.put_invocations(vec![rec]).await.unwrap();
                t.elapsed()
            }));
        }
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies.sort();
    let after = store.stats();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "paced {per_s}/s awaited puts latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; mean batch {:.1}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        (after.writes - before.writes) as f64 / (after.commits - before.commits) as f64
    );
}
