//! Document throughput of the redb adapter (no criterion): prints, does not
//! assert. Run with
//! `cargo run -p shoal-store-redb --release --example bench_docs [DIR] [N]`
//! (DIR defaults to a temp dir, put it on the disk the node will use since
//! writes are bound by fsync; N documents per category, default 1,000,000).
//!
//! Documents are ~200 bytes of JSON, spread over 8 shards by a hash of the
//! id (as the engine does). Writes are `put_docs` calls of 10,000 documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::{DocWrite, Docs};
use shoal_store_redb::RedbStore;

const SHARDS: u32 = 8;
const BATCH: usize = 10_000;
const T: u64 = 1_700_000_000_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let n: usize = args.next().map_or(1_000_000, |n| n.parse().unwrap());
    let path = dir.join(format!("bench-docs-{}.redb", std::process::id()));
    rt.block_on(run(&path, n));
    let _ = std::fs::remove_file(&path);
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a, standing in for the engine's shard hash.
fn shard_of(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

/// A document of about 200 bytes.
fn doc(id: String, i: u64) -> DocWrite {
    let mut body = format!(
        r#"{{"id":"{id}","user":"user-{}","price":{}.{:02},"qty":{},"tags":["alpha","beta"],"note":""#,
        i % 9973,
        i % 1000,
        i % 100,
        i % 17
    );
    while body.len() < 198 {
        body.push('x');
    }
    body.push_str("\"}");
    DocWrite {
        shard: shard_of(&id),
        id,
        body: body.into_bytes(),
    }
}

fn sequential_id(i: u64) -> String {
    format!("doc-{i:010}")
}

fn random_id(i: u64) -> String {
    format!("{:016x}", splitmix(i))
}

fn batch(ids: impl Fn(u64) -> String, from: u64, n: usize) -> Vec<DocWrite> {
    (from..from + n as u64).map(|i| doc(ids(i), i)).collect()
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>9.0} docs/s ({n} in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let pct = |p: f64| ms(v[((v.len() - 1) as f64 * p) as usize]);
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    )
}

async fn run(path: &std::path::Path, n: usize) {
    let store = RedbStore::open(path).unwrap();
    println!(
        "{n} documents of ~200 bytes per category, {SHARDS} shards, put_docs of {BATCH}; file {}",
        path.display()
    );

    // 1. Sequential awaited batches, ids in ascending order.
    sequential(&store, "seq", sequential_id, n, "ascending ids").await;
    // 2. The same with random ids (every batch lands all over the tree).
    sequential(&store, "rand", random_id, n, "random ids   ").await;
    // 3. Concurrent batches.
    concurrent(&store, n).await;
    // 4. Replacing existing documents.
    let t = Instant::now();
    let replace = n.min(200_000);
    for from in (0..replace).step_by(BATCH) {
        let docs = batch(sequential_id, from as u64, BATCH.min(replace - from));
        store.put_docs("seq", docs).await.unwrap();
    }
    println!(
        "replace existing docs (seq):           {}",
        rate(replace, t.elapsed())
    );

    reads(&store, n).await;
    purge(&store, n).await;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "file size {:.0} MiB; final stats {:?}",
        size as f64 / (1 << 20) as f64,
        store.stats()
    );
}

async fn sequential(
    store: &Arc<RedbStore>,
    category: &str,
    ids: fn(u64) -> String,
    n: usize,
    label: &str,
) {
    store
        .create_category(category, SHARDS, 16, T)
        .await
        .unwrap();
    let before = store.stats();
    let mut latencies = Vec::new();
    let mut build = Duration::ZERO;
    let t = Instant::now();
    for from in (0..n).step_by(BATCH) {
        let b = Instant::now();
        let docs = batch(ids, from as u64, BATCH.min(n - from));
        build += b.elapsed();
        let w = Instant::now();
        store.put_docs(category, docs).await.unwrap();
        latencies.push(w.elapsed());
    }
    let total = t.elapsed();
    let after = store.stats();
    println!(
        "sequential awaited put_docs, {label}: {}  (store only: {:.0} docs/s; per call {}; {} commits)",
        rate(n, total),
        n as f64 / (total - build).as_secs_f64(),
        percentiles(latencies),
        after.commits - before.commits,
    );
}

async fn concurrent(store: &Arc<RedbStore>, n: usize) {
    for (category, ids) in [
        ("conc-seq", sequential_id as fn(u64) -> String),
        ("conc-rand", random_id),
    ] {
        store
            .create_category(category, SHARDS, 16, T)
            .await
            .unwrap();
        // Built up front: this measures the store, not the JSON formatting.
        let batches: Vec<Vec<DocWrite>> = (0..n)
            .step_by(BATCH)
            .map(|from| batch(ids, from as u64, BATCH.min(n - from)))
            .collect();
        let calls = batches.len();
        let before = store.stats();
        let t = Instant::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|docs| {
                let store = store.clone();
                #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
                tokio::spawn(async move {
                    let t = Instant::now();
                    store.put_docs(category, docs).await.unwrap();
                    t.elapsed()
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.push(task.await.unwrap());
        }
        let total = t.elapsed();
        let after = store.stats();
        println!(
            "{calls} concurrent put_docs ({category}):  {}  ({} commits; per call {})",
            rate(n, total),
            after.commits - before.commits,
            percentiles(latencies)
        );
    }
}

async fn reads(store: &Arc<RedbStore>, n: usize) {
    // One page of 10,000 from the start and from the middle of a shard.
    for (label, after) in [("first", None), ("middle", Some("doc-0000500000"))] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let page = store.scan_shard("seq", 3, after, BATCH).await.unwrap();
            times.push(t.elapsed());
            assert_eq!(page.len(), BATCH.min(n / SHARDS as usize));
        }
        println!(
            "scan_shard of {BATCH} docs ({label} page):      {}",
            percentiles(times)
        );
    }

    // Every document, shard by shard, pages of 10,000.
    for category in ["seq", "rand"] {
        let t = Instant::now();
        let mut total = 0;
        let mut bytes = 0;
        for shard in 0..SHARDS {
            total += scan_shard_fully(store, category, shard, &mut bytes).await;
        }
        let serial = t.elapsed();
        assert_eq!(total, n);
        // The shards in parallel (2 worker threads).
        let t = Instant::now();
        let tasks: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let store = store.clone();
                #[allow(clippy::disallowed_methods)] // the benchmark awaits every handle
                tokio::spawn(async move {
                    let mut bytes = 0;
                    scan_shard_fully(&store, category, shard, &mut bytes).await
                })
            })
            .collect();
        let mut parallel_total = 0;
        for task in tasks {
            parallel_total += task.await.unwrap();
        }
        assert_eq!(parallel_total, n);
        println!(
            "full scan of {category:>4} ({n} docs, {:.0} MiB): {:.0} ms one shard after another, {:.0} ms shards in parallel",
            bytes as f64 / (1 << 20) as f64,
            ms(serial),
            ms(t.elapsed())
        );
    }

    const R: u64 = 100_000;
    let t = Instant::now();
    for i in 0..R {
        let id = random_id(splitmix(i) % n as u64);
        let found = store.get_doc("rand", shard_of(&id), &id).await.unwrap();
        assert!(found.is_some());
    }
    println!(
        "get_doc at random ids:                  {:.2} µs/op",
        t.elapsed().as_secs_f64() * 1e6 / R as f64
    );
    let t = Instant::now();
    for _ in 0..10_000 {
        store.shard_stats("rand").await.unwrap();
    }
    println!(
        "shard_stats ({SHARDS} shards):                 {:.2} µs/op",
        t.elapsed().as_secs_f64() * 1e6 / 10_000.0
    );
}

async fn scan_shard_fully(
    store: &RedbStore,
    category: &str,
    shard: u32,
    bytes: &mut usize,
) -> usize {
    let mut after: Option<String> = None;
    let mut total = 0;
    loop {
        let page = store
            .scan_shard(category, shard, after.as_deref(), BATCH)
            .await
            .unwrap();
        total += page.len();
        *bytes += page.iter().map(|d| d.body.len()).sum::<usize>();
        match page.last() {
            Some(last) if page.len() == BATCH => after = Some(last.id.clone()),
            _ => return total,
        }
    }
}

/// Deleting a category of `n` documents: the call, then small awaited
/// writes while the purge runs behind them.
async fn purge(store: &Arc<RedbStore>, n: usize) {
    store.create_category("small", 1, 16, T).await.unwrap();
    let before = store.stats();
    let t = Instant::now();
    assert!(store.delete_category("rand").await.unwrap());
    let deleted = t.elapsed();
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while store.stats().purge_backlog > 0 {
        let w = Instant::now();
        let docs = vec![DocWrite {
            shard: 0,
            id: format!("small-{i}"),
            body: b"{\"n\":1}".to_vec(),
        }];
        store.put_docs("small", docs).await.unwrap();
        latencies.push(w.elapsed());
        i += 1;
    }
    let purged = t.elapsed();
    let after = store.stats();
    println!(
        "delete_category of {n} docs: {:.2} ms; purged in {:.2} s over {} commits; \
         {} awaited 1-doc puts meanwhile: {}",
        ms(deleted),
        purged.as_secs_f64(),
        after.commits - before.commits,
        latencies.len(),
        percentiles(latencies)
    );
}
