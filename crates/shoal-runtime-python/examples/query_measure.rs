//! Prints (never asserts) what queries cost against the yardstick: the same
//! Python code in `multiprocessing.Pool(2)` whose processes already hold
//! their half of the documents as dicts (decoded in batches, like ours).
//!
//! `cargo run --release -p shoal-runtime-python --example query_measure [docs] [shards] [rounds]`
//!
//! Both sides get the same documents (~200 bytes of JSON each): the example
//! writes them to a file the pool's processes load from. Cases: `map` +
//! `reduce` (cold: streamed from the source; repeated: resident), the same
//! with `map_batch`, and a CPU-heavy pure-Python `map` over 20,000 documents.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use shoal_runtime::{
    Deployment, DocBatch, QueryEvent, QueryRequest, QueryResult, QueryShard, Runtime, ShardSource,
};
use shoal_runtime_python::{Options, PythonRuntime};
use shoal_types::Limits;

const SUM: &str = r#"
def map(doc):
    return doc["price"] * doc["qty"]

def reduce(a, b):
    return a + b
"#;

const SUM_BATCH: &str = r#"
def map_batch(docs):
    return [d["price"] * d["qty"] for d in docs]

def reduce(a, b):
    return a + b
"#;

const HEAVY: &str = r#"
def map(doc):
    # Pure-Python work, about 0.1 ms per document.
    x = doc["qty"]
    total = 0
    for i in range(400):
        total += (i * x) % 7
    return total * doc["price"]

def reduce(a, b):
    return a + b
"#;

/// The pool: each process loads its half, then runs a case per command
/// line on stdin and answers with one JSON line (seconds and result).
const BASELINE: &str = r#"
import json, multiprocessing as mp, sys, time

DOCS = None
HEAVY = None
BAR = None
FUNCS = {}

def init(bar, sources):
    global BAR
    BAR = bar
    for name, code in sources.items():
        ns = {}
        exec(code, ns)
        FUNCS[name] = ns

def load(args):
    global DOCS, HEAVY
    path, lo, hi, heavy_n = args
    BAR.wait()
    DOCS = []
    with open(path, "rb") as f:
        lines = f.readlines()[lo:hi]
    for i in range(0, len(lines), 1000):
        DOCS.extend(json.loads(b"[" + b",".join(lines[i:i + 1000]) + b"]"))
    HEAVY = [d for d in DOCS if int(d["id"][4:]) < heavy_n]
    return len(DOCS)

def run(name):
    ns = FUNCS[name]
    docs = HEAVY if name == "heavy" else DOCS
    BAR.wait()
    acc = None
    first = True
    r = ns["reduce"]
    if "map_batch" in ns:
        values = ns["map_batch"](docs)
    else:
        f = ns["map"]
        for doc in docs:
            v = f(doc)
            if v is not None:
                if first:
                    acc = v
                    first = False
                else:
                    acc = r(acc, v)
        return acc
    for v in values:
        if v is not None:
            if first:
                acc = v
                first = False
            else:
                acc = r(acc, v)
    return acc

if __name__ == "__main__":
    path, n, heavy_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sources = json.loads(sys.stdin.readline())
    mp.set_start_method("fork")
    bar = mp.Barrier(2)
    with mp.Pool(2, initializer=init, initargs=(bar, sources)) as pool:
        pool.map(load, [(path, 0, n // 2, heavy_n), (path, n // 2, n, heavy_n)], chunksize=1)
        print("ready", flush=True)
        for line in sys.stdin:
            name = line.strip()
            t = time.perf_counter()
            res = pool.map(run, [name, name], chunksize=1)
            elapsed = time.perf_counter() - t
            print(json.dumps({"seconds": elapsed, "result": res[0] + res[1]}), flush=True)
"#;

struct MemSource {
    shards: Vec<DocBatch>,
}

impl ShardSource for MemSource {
    fn scan(
        &self,
        shard: u32,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'static, Result<DocBatch, String>> {
        let docs = &self.shards[shard as usize];
        let start = match &after {
            None => 0,
            Some(after) => docs.partition_point(|(id, _)| id.as_str() <= after.as_str()),
        };
        let batch: DocBatch = docs[start..].iter().take(limit).cloned().collect();
        Box::pin(async move { Ok(batch) })
    }
}

fn make_doc(i: usize) -> String {
    let categories = ["tools", "toys", "food", "books"];
    let tags = [
        "\"alpha\"",
        "\"alpha\",\"beta\"",
        "\"alpha\",\"beta\",\"gamma\"",
    ];
    format!(
        r#"{{"id":"doc-{i:08}","price":{:.2},"qty":{},"name":"product number {i} of the catalogue","category":"{}","tags":[{}],"in_stock":{},"rating":{:.1},"sku":"SKU-{:010}-X","warehouse":"eu-west-{}"}}"#,
        (i % 1000) as f64 * 0.37 + 1.5,
        i % 7 + 1,
        categories[i % 4],
        tags[i % 3],
        i.is_multiple_of(2),
        (i % 50) as f64 / 10.0,
        (i as u64 * 7919) % 10_000_000_000,
        i % 3,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1_000_000, |a| a.parse().unwrap());
    let shard_count: usize = args.next().map_or(8, |a| a.parse().unwrap());
    let heavy_n = 20_000.min(n);
    let rounds: usize = args.next().map_or(7, |a| a.parse().unwrap());

    let dir = tempfile::tempdir().unwrap();
    // Shard s holds documents i with i % shards == s, in id order; the file
    // holds them in the same order, so each pool process gets the same half
    // as each of our two workers when the shard count is even.
    let mut shards: Vec<DocBatch> = vec![Vec::new(); shard_count];
    for i in 0..n {
        shards[i % shard_count].push((format!("doc-{i:08}"), make_doc(i).into_bytes()));
    }
    let raw: usize = shards.iter().flatten().map(|(_, d)| d.len()).sum();
    println!(
        "{n} documents, {:.0} bytes each on average, {shard_count} shards",
        raw as f64 / n as f64
    );
    let data = dir.path().join("docs.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
        for half in [0, 1] {
            for (s, shard) in shards.iter().enumerate() {
                if s % 2 == half {
                    for (_, doc) in shard {
                        f.write_all(doc).unwrap();
                        f.write_all(b"\n").unwrap();
                    }
                }
            }
        }
    }
    let source = Arc::new(MemSource { shards });

    let mut options = Options::new(dir.path().join("work"));
    options.query_workers = 2;
    let rt = PythonRuntime::new(options).unwrap();

    // The pool loads first and waits; then each round runs our query and
    // the pool's in turn, so that both see the same machine.
    let sources = serde_json::json!({"sum": SUM, "sum_batch": SUM_BATCH, "heavy": HEAVY});
    let script = dir.path().join("baseline.py");
    std::fs::write(&script, BASELINE).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(&data)
        .arg(n.to_string())
        .arg(heavy_n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_pool = child.stdin.take().unwrap();
    let mut from_pool = std::io::BufReader::new(child.stdout.take().unwrap());
    writeln!(to_pool, "{sources}").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut from_pool, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut pool_run = |name: &str| -> (Duration, serde_json::Value) {
        writeln!(to_pool, "{name}").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut from_pool, &mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        (
            Duration::from_secs_f64(v["seconds"].as_f64().unwrap()),
            v["result"].clone(),
        )
    };

    println!(
        "{:<10} {:>9} {:>20} {:>20} {:>7}   result (ours / pool)",
        "case", "cold ms", "repeated ms", "pool ms", "ratio*"
    );
    for (name, code) in [("sum", SUM), ("sum_batch", SUM_BATCH), ("heavy", HEAVY)] {
        let dep = deploy(&dir, name, code);
        let heavy = name == "heavy";
        let src = if heavy {
            // The documents with a number below `heavy_n`, in the same shards.
            Arc::new(MemSource {
                shards: source
                    .shards
                    .iter()
                    .map(|s| {
                        s.iter()
                            .filter(|(id, _)| {
                                id["doc-".len()..].parse::<usize>().unwrap() < heavy_n
                            })
                            .cloned()
                            .collect()
                    })
                    .collect(),
            })
        } else {
            source.clone()
        };
        let dataset = format!("items-{}", if heavy { heavy_n } else { n });
        let shards: Vec<QueryShard> = src
            .shards
            .iter()
            .enumerate()
            .map(|(i, docs)| QueryShard {
                shard: i as u32,
                version: 1,
                docs: docs.len() as u64,
            })
            .collect();
        let (cold, (result, _)) = run(&rt, &dep, &dataset, &src, &shards).await;
        let mut repeated = Vec::new();
        let mut pool_times = Vec::new();
        let mut pool_result = serde_json::Value::Null;
        for _ in 0..rounds {
            let (t, (r, cached)) = run(&rt, &dep, &dataset, &src, &shards).await;
            assert_eq!(cached, shards.len() as u32, "every shard resident");
            assert_eq!(r, result);
            repeated.push(t);
            let (t, r) = pool_run(name);
            pool_times.push(t);
            pool_result = r;
        }
        // Each round ran both back to back: the median of the rounds'
        // ratios is robust to the machine's load changing between rounds.
        let mut ratios: Vec<f64> = repeated
            .iter()
            .zip(&pool_times)
            .map(|(ours, pool)| ms(*ours) / ms(*pool))
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "{name:<10} {:>9.1} {:>7.1} (med {:>6.1}) {:>7.1} (med {:>6.1}) {:>6.2}x   {result} / {pool_result}",
            ms(cold),
            ms(min(&repeated)),
            ms(median(&repeated)),
            ms(min(&pool_times)),
            ms(median(&pool_times)),
            ratios[ratios.len() / 2],
        );
        rt.retire(&dep.key);
    }
    println!("* median over the rounds of (our time / the pool's time in the same round)");
    drop(to_pool);
    let _ = child.wait();
    rt.shutdown();
}

async fn run(
    rt: &Arc<PythonRuntime>,
    dep: &Deployment,
    dataset: &str,
    source: &Arc<MemSource>,
    shards: &[QueryShard],
) -> (Duration, (String, u32)) {
    let (events, mut rx) = mpsc::channel(1024);
    // Awaited below, once the query has dropped its sender.
    #[allow(clippy::disallowed_methods)]
    let drain = tokio::spawn(async move {
        while let Some(QueryEvent::Progress { .. } | QueryEvent::Values(_)) = rx.recv().await {}
    });
    let request = QueryRequest {
        query_id: "measure".into(),
        dataset: dataset.into(),
        shards: shards.to_vec(),
        skip_errors: false,
        source: source.clone(),
        events,
    };
    let t = Instant::now();
    let outcome = rt.query(dep, request).await.unwrap();
    let elapsed = t.elapsed();
    drain.await.unwrap();
    let QueryResult::Reduced(Some(result)) = outcome.result else {
        panic!("query failed: {:?}", outcome.result);
    };
    (elapsed, (result, outcome.cached_shards))
}

fn deploy(dir: &tempfile::TempDir, key: &str, code: &str) -> Deployment {
    let code_dir = dir.path().join(key);
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("main.py"), code).unwrap();
    Deployment {
        key: key.into(),
        code_dir,
        handler: "main:handler".into(),
        env_dir: None,
        limits: Limits {
            timeout: Duration::from_secs(60),
            memory_mb: 512,
            concurrency: 2,
        },
        network: shoal_types::Network::Host,
        code_digest: None,
        env: Default::default(),
        max_invocations_per_worker: None,
    }
}

fn min(times: &[Duration]) -> Duration {
    times.iter().min().copied().unwrap_or_default()
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
