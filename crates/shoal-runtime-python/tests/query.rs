//! Queries against a real python3: map/reduce over in-memory shards, resident
//! documents, back-pressure, failures, and coexistence with invocations.

// Every task spawned here is awaited before the code that spawned it ends.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use shoal_runtime::{
    Deployment, DocBatch, QueryEvent, QueryOutcome, QueryRequest, QueryResult, QueryShard, Request,
    Runtime, ShardSource,
};
use shoal_runtime_python::{Options, PythonRuntime};
use shoal_types::{FailureKind, Outcome};

mod common;

/// Two query workers, whatever the machine has.
fn fixture_with(configure: impl FnOnce(&mut Options)) -> Fixture {
    common::fixture_with(|o| {
        o.query_workers = 2;
        configure(o);
    })
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

use common::{Fixture, limits};

impl Fixture {}

/// Shards in memory, sorted by id; counts the scans.
struct MemSource {
    shards: Mutex<Vec<DocBatch>>,
    versions: Mutex<Vec<u64>>,
    scans: Vec<AtomicUsize>,
    /// A shard whose scans fail.
    broken: Mutex<Option<u32>>,
}

impl MemSource {
    fn new(shards: Vec<Vec<Value>>) -> Arc<MemSource> {
        let n = shards.len();
        let source = Arc::new(MemSource {
            shards: Mutex::new(Vec::new()),
            versions: Mutex::new(vec![1; n]),
            scans: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            broken: Mutex::new(None),
        });
        for (i, docs) in shards.into_iter().enumerate() {
            source.replace(i, docs, false);
        }
        source
    }

    /// Generated documents: `n` per shard with ids `s{shard}-{i:05}`.
    fn generated(shards: usize, n: usize, doc: impl Fn(usize, usize) -> Value) -> Arc<MemSource> {
        MemSource::new(
            (0..shards)
                .map(|s| {
                    (0..n)
                        .map(|i| {
                            let mut d = doc(s, i);
                            d["id"] = json!(format!("s{s}-{i:05}"));
                            d
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// Replaces a shard's documents (each has an "id"); bumps its version.
    fn replace(&self, shard: usize, docs: Vec<Value>, bump: bool) {
        let mut docs: DocBatch = docs
            .into_iter()
            .map(|d| {
                let id = d["id"].as_str().unwrap().to_string();
                (id, serde_json::to_vec(&d).unwrap())
            })
            .collect();
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut shards = self.shards.lock().unwrap();
        if shards.len() <= shard {
            shards.resize_with(shard + 1, Vec::new);
        }
        shards[shard] = docs;
        if bump {
            self.versions.lock().unwrap()[shard] += 1;
        }
    }

    fn query_shards(&self) -> Vec<QueryShard> {
        let shards = self.shards.lock().unwrap();
        let versions = self.versions.lock().unwrap();
        shards
            .iter()
            .enumerate()
            .map(|(i, docs)| QueryShard {
                shard: i as u32,
                version: versions[i],
                docs: docs.len() as u64,
            })
            .collect()
    }

    fn scans(&self) -> Vec<usize> {
        self.scans
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    /// Every document's id, in document order.
    fn ids(&self) -> Vec<String> {
        let shards = self.shards.lock().unwrap();
        shards.iter().flatten().map(|(id, _)| id.clone()).collect()
    }
}

impl ShardSource for MemSource {
    fn scan(
        &self,
        shard: u32,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'static, Result<DocBatch, String>> {
        self.scans[shard as usize].fetch_add(1, Ordering::SeqCst);
        if *self.broken.lock().unwrap() == Some(shard) {
            return Box::pin(async { Err("the disk is on fire".to_string()) });
        }
        let shards = self.shards.lock().unwrap();
        let docs = &shards[shard as usize];
        let start = match &after {
            None => 0,
            Some(after) => docs.partition_point(|(id, _)| id.as_str() <= after.as_str()),
        };
        let batch: DocBatch = docs[start..].iter().take(limit).cloned().collect();
        Box::pin(async move { Ok(batch) })
    }
}

/// What a query produced, events included.
struct Ran {
    outcome: QueryOutcome,
    values: Vec<Value>,
    progress: HashMap<u32, u64>,
}

impl Ran {
    #[track_caller]
    fn reduced(&self) -> Value {
        match &self.outcome.result {
            QueryResult::Reduced(Some(json)) => serde_json::from_str(json).unwrap(),
            other => panic!("expected a reduced result, got {other:?}"),
        }
    }

    #[track_caller]
    fn failure(&self) -> (Option<&str>, &shoal_types::Failure) {
        match &self.outcome.result {
            QueryResult::Failed { doc_id, failure } => (doc_id.as_deref(), failure),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

async fn query(
    rt: &Arc<PythonRuntime>,
    dep: &Deployment,
    dataset: &str,
    source: &Arc<MemSource>,
    skip_errors: bool,
    capacity: usize,
) -> Ran {
    let (events, mut rx) = mpsc::channel(capacity);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: dataset.into(),
        shards: source.query_shards(),
        skip_errors,
        source: source.clone(),
        events,
    };
    let running = rt.query(dep, request);
    let collect = tokio::spawn(async move {
        let mut values = Vec::new();
        let mut progress: HashMap<u32, u64> = HashMap::new();
        while let Some(event) = rx.recv().await {
            match event {
                QueryEvent::Values(ndjson) => {
                    assert!(ndjson.ends_with(b"\n"), "NDJSON lines end with a newline");
                    for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        values.push(serde_json::from_slice(line).unwrap());
                    }
                }
                QueryEvent::Progress { shard, docs } => *progress.entry(shard).or_default() += docs,
            }
        }
        (values, progress)
    });
    let outcome = running.await.unwrap();
    let (values, progress) = collect.await.unwrap();
    Ran {
        outcome,
        values,
        progress,
    }
}

const SUM: &str = r#"
def map(doc):
    return doc["price"] * doc["qty"]

def reduce(a, b):
    return a + b
"#;

fn priced(s: usize, i: usize) -> Value {
    json!({"price": (s * 1000 + i) % 97, "qty": i % 5 + 1, "name": format!("item {i}")})
}

fn expected_sum(source: &MemSource) -> i64 {
    let shards = source.shards.lock().unwrap();
    shards
        .iter()
        .flatten()
        .map(|(_, d)| {
            let d: Value = serde_json::from_slice(d).unwrap();
            d["price"].as_i64().unwrap() * d["qty"].as_i64().unwrap()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reduce_sums_and_repeats_from_resident_shards() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let source = MemSource::generated(4, 700, priced);
    let first = query(&fx.rt, &dep, "items@1", &source, false, 64).await;
    assert_eq!(first.reduced(), json!(expected_sum(&source)));
    assert_eq!(first.outcome.docs, 2800);
    assert_eq!(first.outcome.cached_shards, 0);
    assert_eq!(first.progress.values().sum::<u64>(), 2800);
    let scans = source.scans();
    assert!(scans.iter().all(|n| *n >= 2), "{scans:?}");

    let second = query(&fx.rt, &dep, "items@1", &source, false, 64).await;
    assert_eq!(second.reduced(), json!(expected_sum(&source)));
    assert_eq!(second.outcome.cached_shards, 4);
    assert_eq!(second.outcome.docs, 2800);
    assert_eq!(source.scans(), scans, "a repeated query reads no storage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_sees_document_order() {
    // Concatenation is associative but not commutative.
    let fx = fixture();
    let dep = fx.deploy(
        "concat@1",
        "def map(doc):\n    return [doc['id']]\n\ndef reduce(a, b):\n    return a + b\n",
    );
    let source = MemSource::generated(5, 300, |_, _| json!({}));
    for _ in 0..2 {
        let ran = query(&fx.rt, &dep, "ids@1", &source, false, 8).await;
        assert_eq!(ran.reduced(), json!(source.ids()));
    }
}

const PICK: &str = r#"
def map(doc):
    if doc["n"] % 3 == 0:
        return None
    return {"id": doc["id"], "pad": doc["pad"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_values_stream_in_document_order_under_back_pressure() {
    let fx = fixture();
    let dep = fx.deploy("pick@1", PICK);
    // Shards of several batches each, and values big enough that a worker
    // ahead of the emitted shard has to stall.
    let pad = "x".repeat(8 * 1024);
    let source = MemSource::generated(3, 3000, |_, i| json!({"n": i, "pad": pad}));
    let expected: Vec<String> = source
        .ids()
        .into_iter()
        .filter(|id| id.rsplit('-').next().unwrap().parse::<usize>().unwrap() % 3 != 0)
        .collect();
    for round in 0..2 {
        // A channel of one event: every send waits for the reader.
        let ran = query(&fx.rt, &dep, "big@1", &source, false, 1).await;
        assert_eq!(ran.outcome.result, QueryResult::Mapped);
        assert_eq!(ran.outcome.docs, 9000);
        assert_eq!(ran.outcome.cached_shards, if round == 0 { 0 } else { 3 });
        let ids: Vec<&str> = ran
            .values
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), expected.len());
        assert!(
            ids.iter().zip(&expected).all(|(a, b)| a == b),
            "values out of order"
        );
        assert!(
            ran.values
                .iter()
                .all(|v| v["pad"].as_str().unwrap().len() == pad.len())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_batch_with_and_without_reduce() {
    let fx = fixture();
    let reduced = fx.deploy(
        "batch-sum@1",
        r#"
def map_batch(docs):
    return [None if d["qty"] == 1 else d["price"] * d["qty"] for d in docs]

def reduce(a, b):
    return a + b
"#,
    );
    let mapped = fx.deploy(
        "batch-map@1",
        "def map_batch(docs):\n    return [d['id'] if d['qty'] > 1 else None for d in docs]\n",
    );
    let source = MemSource::generated(3, 900, priced);
    let expected: i64 = {
        let shards = source.shards.lock().unwrap();
        shards
            .iter()
            .flatten()
            .map(|(_, d)| {
                let d: Value = serde_json::from_slice(d).unwrap();
                let qty = d["qty"].as_i64().unwrap();
                if qty == 1 {
                    0
                } else {
                    d["price"].as_i64().unwrap() * qty
                }
            })
            .sum()
    };
    for round in 0..2 {
        let ran = query(&fx.rt, &reduced, "priced@1", &source, false, 16).await;
        assert_eq!(ran.reduced(), json!(expected));
        assert_eq!(ran.outcome.cached_shards, if round == 0 { 0 } else { 3 });

        let ran = query(&fx.rt, &mapped, "priced@1", &source, false, 16).await;
        assert_eq!(ran.outcome.result, QueryResult::Mapped);
        let ids: Vec<String> = {
            let shards = source.shards.lock().unwrap();
            shards
                .iter()
                .flatten()
                .filter(|(_, d)| serde_json::from_slice::<Value>(d).unwrap()["qty"] != 1)
                .map(|(id, _)| id.clone())
                .collect()
        };
        assert_eq!(
            ran.values,
            ids.iter().map(|id| json!(id)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_batch_failures_are_pinned_on_their_documents() {
    let fx = fixture();
    let dep = fx.deploy(
        "batch-bad@1",
        r#"
def map_batch(docs):
    out = []
    for d in docs:
        if d.get("bad"):
            raise ValueError("bad document " + d["id"])
        out.append(1)
    return out

def reduce(a, b):
    return a + b
"#,
    );
    let source = MemSource::generated(2, 500, |s, i| json!({"bad": s == 1 && i % 100 == 7}));
    let ran = query(&fx.rt, &dep, "bad@1", &source, false, 16).await;
    let (doc_id, failure) = ran.failure();
    assert_eq!(doc_id, Some("s1-00007"));
    assert_eq!(failure.kind, FailureKind::Raised);
    assert_eq!(failure.exception.as_deref(), Some("ValueError"));

    let ran = query(&fx.rt, &dep, "bad@1", &source, true, 16).await;
    assert_eq!(ran.reduced(), json!(995));
    assert_eq!(ran.outcome.errors, 5);
    let ids: Vec<&str> = ran.outcome.failures.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(
        ids,
        ["s1-00007", "s1-00107", "s1-00207", "s1-00307", "s1-00407"]
    );
}

const FRAGILE: &str = r#"
import os

def helper(doc):
    raise KeyError("no field for " + doc["id"])

def map(doc):
    if doc.get("bad"):
        helper(doc)
    return 1

def reduce(a, b):
    return a + b

def handler(event, ctx):
    return int(os.readlink('/proc/self'))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_map_fails_the_query_with_the_document_and_traceback() {
    let fx = fixture();
    let dep = fx.deploy("fragile@1", FRAGILE);
    let good = MemSource::generated(4, 400, |_, _| json!({}));
    let warm = query(&fx.rt, &dep, "good@1", &good, false, 16).await;
    assert_eq!(warm.reduced(), json!(1600));

    let bad = MemSource::generated(4, 400, |s, i| json!({"bad": s == 2 && i == 123}));
    let ran = query(&fx.rt, &dep, "bad@1", &bad, false, 16).await;
    let (doc_id, failure) = ran.failure();
    assert_eq!(doc_id, Some("s2-00123"));
    assert_eq!(failure.kind, FailureKind::Raised);
    assert_eq!(failure.exception.as_deref(), Some("KeyError"));
    assert!(
        failure.message.contains("no field for s2-00123"),
        "{}",
        failure.message
    );
    let traceback = failure.traceback.as_deref().unwrap();
    assert!(traceback.contains("in helper"), "{traceback}");
    assert!(traceback.contains("in map"), "{traceback}");
    assert!(
        !traceback.contains("_shoal_runner"),
        "runner frames are hidden: {traceback}"
    );

    // The other workers were stopped, not killed: their shards are still resident.
    let scans = good.scans();
    let again = query(&fx.rt, &dep, "good@1", &good, false, 16).await;
    assert_eq!(again.reduced(), json!(1600));
    assert_eq!(again.outcome.cached_shards, 4);
    assert_eq!(good.scans(), scans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_errors_counts_and_lists_failures_and_reduces_the_rest() {
    let fx = fixture();
    let dep = fx.deploy("fragile@1", FRAGILE);
    // 150 failing documents: all counted, the first 100 listed in document order.
    let source = MemSource::generated(3, 400, |s, i| json!({"bad": s >= 1 && i % 5 == 0}));
    for round in 0..2 {
        let ran = query(&fx.rt, &dep, "mixed@1", &source, true, 16).await;
        assert_eq!(ran.reduced(), json!(1200 - 160));
        assert_eq!(ran.outcome.errors, 160);
        assert_eq!(ran.outcome.docs, 1200);
        assert_eq!(ran.outcome.failures.len(), 100);
        assert_eq!(ran.outcome.cached_shards, if round == 0 { 0 } else { 3 });
        let first = &ran.outcome.failures[0];
        assert_eq!(first.id, "s1-00000");
        assert_eq!(first.failure.kind, FailureKind::Raised);
        assert_eq!(first.failure.exception.as_deref(), Some("KeyError"));
        assert!(
            first
                .failure
                .traceback
                .as_deref()
                .unwrap()
                .contains("in helper")
        );
        assert_eq!(ran.outcome.failures[80].id, "s2-00000");
        assert_eq!(ran.outcome.failures[99].id, "s2-00095");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_without_map_cannot_be_queried() {
    let fx = fixture();
    let dep = fx.deploy(
        "nomap@1",
        "def handler(event, ctx):\n    return 1\n\ndef reduce(a, b):\n    return a + b\n",
    );
    let source = MemSource::generated(2, 10, |_, _| json!({}));
    let ran = query(&fx.rt, &dep, "x@1", &source, false, 4).await;
    let (doc_id, failure) = ran.failure();
    assert_eq!(doc_id, None);
    assert_eq!(failure.kind, FailureKind::LoadFailed);
    assert!(failure.message.contains("map(doc)"), "{}", failure.message);
    assert!(failure.message.contains("map_batch"), "{}", failure.message);
    assert_eq!(source.scans(), [0, 0]);

    // An import error is a load failure too.
    let broken = fx.deploy("broken@1", "import no_such_module_anywhere\n");
    let ran = query(&fx.rt, &broken, "x@1", &source, false, 4).await;
    let (_, failure) = ran.failure();
    assert_eq!(failure.kind, FailureKind::LoadFailed);
    assert_eq!(failure.exception.as_deref(), Some("ModuleNotFoundError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_only_module_serves_queries_and_refuses_invocations() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let source = MemSource::generated(2, 50, priced);
    let ran = query(&fx.rt, &dep, "items@1", &source, false, 4).await;
    assert_eq!(ran.reduced(), json!(expected_sum(&source)));
    let response = fx.rt.invoke(&dep, invocation("1")).await.unwrap();
    match response.outcome {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::LoadFailed);
            assert_eq!(f.exception.as_deref(), Some("AttributeError"));
            assert!(f.message.contains("handler"), "{}", f.message);
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queries_and_empty_shards() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let none = MemSource::new(Vec::new());
    let ran = query(&fx.rt, &dep, "none@1", &none, false, 4).await;
    assert_eq!(ran.outcome.result, QueryResult::Reduced(None));
    assert_eq!(ran.outcome.docs, 0);

    let hollow = MemSource::new(vec![Vec::new(), Vec::new(), Vec::new()]);
    for round in 0..2 {
        let ran = query(&fx.rt, &dep, "hollow@1", &hollow, false, 4).await;
        assert_eq!(ran.outcome.result, QueryResult::Reduced(None));
        assert_eq!(ran.outcome.cached_shards, if round == 0 { 0 } else { 3 });
    }
    // Only None values: nothing to reduce.
    let dropper = fx.deploy(
        "drop@1",
        "def map(doc):\n    return None\n\ndef reduce(a, b):\n    return a + b\n",
    );
    let source = MemSource::generated(2, 100, |_, _| json!({}));
    let ran = query(&fx.rt, &dropper, "d@1", &source, false, 4).await;
    assert_eq!(ran.outcome.result, QueryResult::Reduced(None));
    assert_eq!(ran.outcome.docs, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_a_shard_is_fetched_again_and_only_that_shard() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let source = MemSource::generated(4, 600, priced);
    let first = query(&fx.rt, &dep, "items@1", &source, false, 16).await;
    assert_eq!(first.reduced(), json!(expected_sum(&source)));
    let after_first = source.scans();

    // A write to shard 2: new documents, new version.
    let changed: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("s2-{i:05}"), "price": 1000, "qty": 1}))
        .collect();
    source.replace(2, changed, true);
    let second = query(&fx.rt, &dep, "items@1", &source, false, 16).await;
    assert_eq!(second.reduced(), json!(expected_sum(&source)));
    assert_eq!(second.outcome.cached_shards, 3);
    let after_second = source.scans();
    for shard in [0, 1, 3] {
        assert_eq!(
            after_second[shard], after_first[shard],
            "shard {shard} was resident"
        );
    }
    assert!(after_second[2] > after_first[2]);

    let third = query(&fx.rt, &dep, "items@1", &source, false, 16).await;
    assert_eq!(third.reduced(), json!(expected_sum(&source)));
    assert_eq!(third.outcome.cached_shards, 4);
    assert_eq!(source.scans(), after_second);

    // Another data set of the same name (deleted and created again) is not
    // mistaken for this one.
    let other = MemSource::generated(4, 600, |_, _| json!({"price": 1, "qty": 1}));
    let ran = query(&fx.rt, &dep, "items@2", &other, false, 16).await;
    assert_eq!(ran.reduced(), json!(2400));
    assert_eq!(ran.outcome.cached_shards, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_evicts_and_results_stay_right() {
    // Room for about one shard per worker: 4 shards of ~600 KB decoded.
    let fx = fixture_with(|o| o.query_cache_bytes = 2 * 1024 * 1024);
    let dep = fx.deploy("sum@1", SUM);
    let pad = "p".repeat(200);
    let source = MemSource::generated(4, 1000, |s, i| {
        let mut d = priced(s, i);
        d["pad"] = json!(pad);
        d
    });
    let mut cached = Vec::new();
    for _ in 0..3 {
        let before = source.scans();
        let ran = query(&fx.rt, &dep, "padded@1", &source, false, 16).await;
        assert_eq!(ran.reduced(), json!(expected_sum(&source)));
        cached.push(ran.outcome.cached_shards);
        let after = source.scans();
        assert!(
            after.iter().zip(&before).any(|(a, b)| a > b),
            "not everything fits: the source is read again"
        );
    }
    assert!(cached[1] >= 1 && cached[1] < 4, "{cached:?}");

    // Another data set pushes the first one out; both stay correct.
    let other = MemSource::generated(2, 1000, |s, i| {
        let mut d = priced(s, i);
        d["pad"] = json!(pad);
        d
    });
    let ran = query(&fx.rt, &dep, "other@1", &other, false, 16).await;
    assert_eq!(ran.reduced(), json!(expected_sum(&other)));
    let ran = query(&fx.rt, &dep, "padded@1", &source, false, 16).await;
    assert_eq!(ran.reduced(), json!(expected_sum(&source)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crash_fails_the_query_and_the_next_one_works() {
    let fx = fixture();
    let dep = fx.deploy(
        "crash@1",
        r#"
import ctypes

def map(doc):
    if doc.get("crash"):
        ctypes.string_at(0)
    return 1

def reduce(a, b):
    return a + b
"#,
    );
    let good = MemSource::generated(4, 200, |_, _| json!({}));
    assert_eq!(
        query(&fx.rt, &dep, "good@1", &good, false, 8)
            .await
            .reduced(),
        json!(800)
    );
    let bad = MemSource::generated(4, 200, |s, i| json!({"crash": s == 1 && i == 50}));
    let ran = query(&fx.rt, &dep, "bad@1", &bad, false, 8).await;
    let (_, failure) = ran.failure();
    assert_eq!(failure.kind, FailureKind::Crashed);
    assert!(failure.message.contains("SIGSEGV"), "{}", failure.message);

    // The crashed worker is replaced; the other kept its resident shards.
    let ran = query(&fx.rt, &dep, "good@1", &good, false, 8).await;
    assert_eq!(ran.reduced(), json!(800));
    assert_eq!(ran.outcome.cached_shards, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_that_hangs_times_out_and_the_next_query_works() {
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(400);
    let dep = fx.deploy_with(
        "hang@1",
        r#"
def map(doc):
    while doc.get("hang"):
        pass
    return 1

def reduce(a, b):
    return a + b
"#,
        lim,
    );
    let bad = MemSource::generated(2, 300, |s, i| json!({"hang": s == 0 && i == 250}));
    let ran = query(&fx.rt, &dep, "bad@1", &bad, false, 8).await;
    let (_, failure) = ran.failure();
    assert_eq!(failure.kind, FailureKind::TimedOut);
    assert!(failure.message.contains("400ms"), "{}", failure.message);

    let good = MemSource::generated(2, 300, |_, _| json!({}));
    assert_eq!(
        query(&fx.rt, &dep, "good@1", &good, false, 8)
            .await
            .reduced(),
        json!(600)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_reports_progress_and_does_not_time_out() {
    // Each document is fast, the whole is longer than the timeout: only a
    // silent worker times out.
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(300);
    let dep = fx.deploy_with(
        "slowish@1",
        r#"
import time

def map(doc):
    time.sleep(0.0005)
    return 1

def reduce(a, b):
    return a + b
"#,
        lim,
    );
    let source = MemSource::generated(2, 1200, |_, _| json!({}));
    for _ in 0..2 {
        let ran = query(&fx.rt, &dep, "slow@1", &source, false, 1024).await;
        assert_eq!(ran.reduced(), json!(2400));
        assert_eq!(ran.progress.values().sum::<u64>(), 2400);
        assert!(ran.progress.values().all(|docs| *docs == 1200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_query_stops_and_leaves_the_workers_usable() {
    let fx = fixture();
    let dep = fx.deploy(
        "slow@1",
        r#"
import os, time

def map(doc):
    if doc.get("slow"):
        time.sleep(0.01)
    return int(os.readlink('/proc/self'))
"#,
    );
    let fast = MemSource::generated(2, 100, |_, _| json!({}));
    let first = query(&fx.rt, &dep, "fast@1", &fast, false, 64).await;
    let mut pids: Vec<i64> = first.values.iter().map(|v| v.as_i64().unwrap()).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 2);

    // A slow query (about 20 s): the caller goes away at its first values.
    let slow = MemSource::generated(2, 2000, |_, _| json!({"slow": true}));
    let (events, mut rx) = mpsc::channel(4);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: "slow@1".into(),
        shards: slow.query_shards(),
        skip_errors: false,
        source: slow.clone(),
        events,
    };
    let running = fx.rt.query(&dep, request);
    tokio::select! {
        _ = running => panic!("the slow query finished"),
        event = async {
            loop {
                match rx.recv().await {
                    Some(QueryEvent::Values(v)) => break v,
                    Some(_) => {}
                    None => panic!("no values"),
                }
            }
        } => assert!(!event.is_empty()),
    }

    // The next query waits for the cleanup, then runs on the same workers
    // with their resident shards.
    let again = query(&fx.rt, &dep, "fast@1", &fast, false, 64).await;
    assert_eq!(again.outcome.cached_shards, 2);
    let mut again_pids: Vec<i64> = again.values.iter().map(|v| v.as_i64().unwrap()).collect();
    again_pids.sort();
    again_pids.dedup();
    assert_eq!(again_pids, pids, "the workers were aborted, not killed");
}

fn invocation(event: &str) -> Request {
    Request {
        invocation_id: "inv".into(),
        function: "fn".into(),
        version: 1,
        attempt: 1,
        event: event.into(),
        host: None,

        gate: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_invocations_of_one_deployment_run_at_once() {
    let fx = fixture();
    let dep = fx.deploy(
        "both@1",
        r#"
import os

def handler(event, ctx):
    return {"pid": int(os.readlink('/proc/self')), "double": event * 2}

def map(doc):
    return doc["price"] * doc["qty"]

def reduce(a, b):
    return a + b
"#,
    );
    let source = MemSource::generated(4, 3000, priced);
    let rt = fx.rt.clone();
    let queried = {
        let dep = dep.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let mut sums = Vec::new();
            for _ in 0..3 {
                sums.push(
                    query(&rt, &dep, "items@1", &source, false, 16)
                        .await
                        .reduced(),
                );
            }
            sums
        })
    };
    let mut invoked = Vec::new();
    for i in 0..30 {
        let response = fx
            .rt
            .invoke(&dep, invocation(&i.to_string()))
            .await
            .unwrap();
        match response.outcome {
            Outcome::Succeeded(json) => invoked.push(serde_json::from_str::<Value>(&json).unwrap()),
            Outcome::Failed(f) => panic!("invocation failed: {f:?}"),
        }
    }
    for (i, value) in invoked.iter().enumerate() {
        assert_eq!(value["double"], json!(i * 2));
    }
    let sums = queried.await.unwrap();
    assert!(sums.iter().all(|s| *s == json!(expected_sum(&source))));
    // Invocation workers are not query workers: the pool's counts are its own.
    let stats = &fx.rt.stats()[0];
    assert_eq!(stats.busy, 0);
    assert!(stats.idle >= 1 && stats.idle <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_output_and_bad_values_are_handled() {
    let fx = fixture();
    let dep = fx.deploy(
        "noisy@1",
        r#"
import os, sys

def map(doc):
    print("printing is fine", doc["id"])
    os.write(2, b"raw output too\n" * 50)
    if doc.get("object"):
        return object()
    return doc["id"]
"#,
    );
    let source = MemSource::generated(2, 300, |_, i| json!({"object": i == 123}));
    let ran = query(&fx.rt, &dep, "noisy@1", &source, false, 8).await;
    let (doc_id, failure) = ran.failure();
    assert!(
        doc_id.is_some_and(|id| id.ends_with("-00123")),
        "{doc_id:?}"
    );
    assert_eq!(failure.kind, FailureKind::BadResult);
    assert!(failure.message.contains("not JSON"), "{}", failure.message);

    let ran = query(&fx.rt, &dep, "noisy@1", &source, true, 8).await;
    assert_eq!(ran.outcome.result, QueryResult::Mapped);
    assert_eq!(ran.outcome.errors, 2);
    assert_eq!(ran.values.len(), 598);
    assert!(
        ran.outcome
            .failures
            .iter()
            .all(|f| f.failure.kind == FailureKind::BadResult)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_out_of_memory_fails_the_query() {
    let fx = fixture_with(|o| o.query_cache_bytes = 4 * 1024 * 1024);
    let mut lim = limits();
    lim.memory_mb = 64;
    let dep = fx.deploy_with(
        "oom@1",
        r#"
def map(doc):
    if doc.get("big"):
        return len(bytearray(1024 * 1024 * 1024))
    return 1

def reduce(a, b):
    return a + b
"#,
        lim,
    );
    let bad = MemSource::generated(2, 100, |s, i| json!({"big": s == 0 && i == 10}));
    let ran = query(&fx.rt, &dep, "bad@1", &bad, false, 8).await;
    let (_, failure) = ran.failure();
    assert_eq!(failure.kind, FailureKind::OutOfMemory);
    assert_eq!(failure.exception.as_deref(), Some("MemoryError"));
    assert!(failure.message.contains("64 MiB"), "{}", failure.message);

    let good = MemSource::generated(2, 100, |_, _| json!({}));
    assert_eq!(
        query(&fx.rt, &dep, "good@1", &good, false, 8)
            .await
            .reduced(),
        json!(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_documents_after_fast_ones_do_not_time_out() {
    // Steps grow while documents are fast; then 20 documents of 50 ms each
    // fall into one step of a second. The timeout (300 ms) is per document.
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(300);
    let dep = fx.deploy_with(
        "uneven@1",
        r#"
import time

def map(doc):
    if doc.get("slow"):
        time.sleep(0.05)
    return 1

def reduce(a, b):
    return a + b
"#,
        lim,
    );
    let source = MemSource::generated(1, 10_000, |_, i| json!({"slow": (5000..5020).contains(&i)}));
    for _ in 0..2 {
        let ran = query(&fx.rt, &dep, "uneven@1", &source, false, 64).await;
        assert_eq!(ran.reduced(), json!(10_000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reduce_query_does_not_wait_for_its_events_to_be_read() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let source = MemSource::generated(8, 2000, priced);
    let (events, mut rx) = mpsc::channel(1);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: "items@1".into(),
        shards: source.query_shards(),
        skip_errors: false,
        source: source.clone(),
        events,
    };
    // Nobody reads the events until the outcome is in.
    let outcome = fx.rt.query(&dep, request).await.unwrap();
    assert_eq!(
        outcome.result,
        QueryResult::Reduced(Some(expected_sum(&source).to_string()))
    );
    assert_eq!(outcome.docs, 16_000);
    assert!(matches!(rx.recv().await, Some(QueryEvent::Progress { .. })));
}

/// True while the process exists and is not a zombie.
fn running(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Polls a condition another process makes true, up to 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PIDS: &str = "import os\n\ndef map(doc):\n    return int(os.readlink('/proc/self'))\n";

async fn query_pids(fx: &Fixture, dep: &Deployment, source: &Arc<MemSource>) -> (Vec<i64>, u32) {
    let ran = query(&fx.rt, dep, "p@1", source, false, 64).await;
    let mut pids: Vec<i64> = ran.values.iter().map(|v| v.as_i64().unwrap()).collect();
    pids.sort();
    pids.dedup();
    (pids, ran.outcome.cached_shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_query_workers_are_reaped_with_their_documents() {
    let fx = fixture_with(|o| o.idle_timeout = Duration::from_millis(300));
    let dep = fx.deploy("pids@1", PIDS);
    let source = MemSource::generated(2, 50, |_, _| json!({}));
    let (pids, _) = query_pids(&fx, &dep, &source).await;
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        eventually("the idle query worker is reaped", || !running(*pid)).await;
    }
    let (again, cached) = query_pids(&fx, &dep, &source).await;
    assert_eq!(cached, 0, "the resident documents went with the workers");
    assert!(again.iter().all(|p| !pids.contains(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_and_shutdown_stop_the_query_workers() {
    let fx = fixture();
    let dep = fx.deploy("pids@1", PIDS);
    let source = MemSource::generated(2, 50, |_, _| json!({}));
    let (pids, _) = query_pids(&fx, &dep, &source).await;
    fx.rt.retire(&dep.key);
    for pid in &pids {
        eventually("the retired query worker is gone", || !running(*pid)).await;
    }
    let (pids, cached) = query_pids(&fx, &dep, &source).await;
    assert_eq!(cached, 0);
    fx.rt.shutdown();
    for pid in &pids {
        eventually("the query worker is gone after shutdown", || !running(*pid)).await;
    }
    let (events, _rx) = mpsc::channel(1);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: "p@1".into(),
        shards: source.query_shards(),
        skip_errors: false,
        source: source.clone(),
        events,
    };
    let err = fx.rt.query(&dep, request).await.unwrap_err();
    assert!(matches!(err, shoal_runtime::Error::ShuttingDown), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_is_a_platform_error_and_the_next_query_works() {
    let fx = fixture();
    let dep = fx.deploy("sum@1", SUM);
    let source = MemSource::generated(4, 2000, priced);
    *source.broken.lock().unwrap() = Some(3);
    let (events, _rx) = mpsc::channel(64);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: "items@1".into(),
        shards: source.query_shards(),
        skip_errors: false,
        source: source.clone(),
        events,
    };
    let err = fx.rt.query(&dep, request).await.unwrap_err();
    assert!(
        matches!(&err, shoal_runtime::Error::Platform(m) if m.contains("the disk is on fire") && m.contains("shard 3")),
        "{err}"
    );
    *source.broken.lock().unwrap() = None;
    let ran = query(&fx.rt, &dep, "items@1", &source, false, 64).await;
    assert_eq!(ran.reduced(), json!(expected_sum(&source)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_shards_are_spread_by_size_and_stay_put_when_repeated() {
    let fx = fixture();
    let dep = fx.deploy("uneven@1", PIDS);
    // Shard 0 holds as many documents as the other three together: it gets
    // a worker to itself, and the three small shards share the other.
    let sizes = [300, 100, 100, 100];
    let source = MemSource::new(
        sizes
            .iter()
            .enumerate()
            .map(|(s, n)| {
                (0..*n)
                    .map(|i| json!({"id": format!("s{s}-{i:05}")}))
                    .collect()
            })
            .collect(),
    );
    for round in 0..2 {
        let ran = query(&fx.rt, &dep, "uneven@1", &source, false, 64).await;
        let pids: Vec<i64> = ran.values.iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(pids.len(), 600);
        // Values come in document order: shard 0's 300 first.
        let big: std::collections::HashSet<i64> = pids[..300].iter().copied().collect();
        let small: std::collections::HashSet<i64> = pids[300..].iter().copied().collect();
        assert_eq!(big.len(), 1, "round {round}: shard 0 on one worker");
        assert_eq!(small.len(), 1, "round {round}: shards 1-3 on one worker");
        assert!(
            big.is_disjoint(&small),
            "round {round}: the big shard has a worker to itself"
        );
        if round == 1 {
            assert_eq!(
                ran.outcome.cached_shards, 4,
                "the repeated query finds every shard resident"
            );
        }
    }
}
