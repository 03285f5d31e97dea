//! The category and query benchmarks: batched durable document writes, a
//! repeated map/reduce over a million documents next to Python baselines on
//! the same data and the same function module ((a) a 2-process
//! `multiprocessing.Pool` forked after loading, (b) Ray with 2 actors), the
//! same query cold after a node restart, a CPU-heavy map, and the node's
//! peak memory against its `--query-cache-mb` budget, including one run with
//! a budget far smaller than the data.
//!
//! Every system must compute exactly the same result (the data are built so
//! that floating-point sums are exact in any order); a mismatch fails the
//! phase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use shoal_client::protocol::NDJSON_CONTENT_TYPE;

use crate::cpu::Usage;
use crate::data::{self, Docs};
use crate::functions::{BASELINES, QUERY_CPU, QUERY_SUM, QUERY_SUM_BATCH, Source};
use crate::node::{self, Node};
use crate::phases::Ctx;
use crate::report::Phase;
use crate::rss::{Peak, Sampler};
use crate::stats::{median, ms};

pub const SUM_NAME: &str = "bench-sum";
pub const BATCH_NAME: &str = "bench-sum-batch";
pub const CPU_NAME: &str = "bench-cpu";
const ORDERS: &str = "bench-orders";
const CPU_CATEGORY: &str = "bench-cpu-docs";
const POOL_SCRIPT: &str = "pool_baseline.py";
const RAY_SCRIPT: &str = "ray_baseline.py";
/// The longest one batch of documents may take to be written.
const WRITE_LIMIT: Duration = Duration::from_secs(120);
/// How often the memory of a process tree is sampled.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// Which of the query phases run.
#[derive(Clone, Copy, Default)]
pub struct Selected {
    pub writes: bool,
    pub queries: bool,
    pub cold: bool,
    pub cpu: bool,
    pub stream: bool,
}

impl Selected {
    pub fn any(&self) -> bool {
        self.writes || self.queries || self.cold || self.cpu || self.stream
    }

    /// The phases that query the million documents (and so need them written).
    fn needs_orders(&self) -> bool {
        self.writes || self.queries || self.cold || self.stream
    }

    fn needs_baselines(&self) -> bool {
        self.queries || self.cold
    }
}

/// Sizes of the query phases.
pub struct Plan {
    pub docs: usize,
    pub batch: usize,
    pub write_conns: usize,
    /// Measured repetitions of each warm query (after the first).
    pub reps: usize,
    pub cold_runs: usize,
    pub cpu_docs: usize,
    pub cpu_reps: usize,
    /// `--query-cache-mb` of the node in every phase but the streaming one.
    pub cache_mb: usize,
    pub stream_cache_mb: usize,
    /// Allowance over the budget for the node, the templates and idle workers.
    pub overhead_mb: usize,
    pub query_limit: Duration,
    pub baseline_limit: Duration,
    /// The interpreter of baseline (a): the one the node runs functions with.
    pub python: PathBuf,
    /// The interpreter of the venv with Ray (baseline (b)).
    pub ray_python: PathBuf,
    /// Why Ray is not installed, when the install failed.
    pub ray_missing: Option<String>,
}

impl Plan {
    pub fn new(quick: bool, ray_python: PathBuf) -> Plan {
        let base = Plan {
            docs: 1_000_000,
            batch: 10_000,
            write_conns: 4,
            reps: 5,
            cold_runs: 3,
            cpu_docs: 20_000,
            cpu_reps: 3,
            cache_mb: 2048,
            stream_cache_mb: 64,
            overhead_mb: 256,
            query_limit: Duration::from_secs(600),
            baseline_limit: Duration::from_secs(900),
            python: PathBuf::from("python3"),
            ray_python,
            ray_missing: None,
        };
        if quick {
            Plan {
                docs: 200_000,
                reps: 3,
                cold_runs: 1,
                cpu_docs: 4_000,
                cpu_reps: 2,
                ..base
            }
        } else {
            base
        }
    }

    /// The node's arguments in every phase but the streaming one.
    pub fn node_args(&self) -> Vec<String> {
        vec!["--query-cache-mb".into(), self.cache_mb.to_string()]
    }
}

// ------------------------------------------------------------------ results

pub struct Writes {
    pub docs: usize,
    pub bytes: usize,
    pub batch: usize,
    pub conns: usize,
    pub secs: f64,
    pub batch_p50_ms: f64,
    pub batch_max_ms: f64,
    /// Size of the store file after the writes.
    pub store_bytes: Option<u64>,
    pub cpu: Usage,
}

/// One query as the client saw it, with the node's own figures.
#[derive(Clone)]
pub struct QueryRun {
    pub wall_ms: f64,
    pub node_ms: f64,
    pub docs: u64,
    pub shards: u32,
    pub cached_shards: u32,
    pub result: Value,
}

/// A series of the same query on Shoal.
pub struct ShoalSeries {
    pub first: QueryRun,
    pub reps: Vec<QueryRun>,
    pub cpu: Usage,
}

impl ShoalSeries {
    pub fn median_ms(&self) -> f64 {
        median(&self.reps.iter().map(|r| r.wall_ms).collect::<Vec<_>>())
    }
}

pub struct Load {
    /// Ray only: `ray.init` and starting the actors.
    pub start_s: f64,
    pub read_s: f64,
    pub parse_s: f64,
    pub distribute_s: f64,
    /// Read + parse + distribute.
    pub total_s: f64,
}

pub struct BaselineTask {
    /// The first (warm-up) run, when there was one.
    pub first_s: Option<f64>,
    pub times_s: Vec<f64>,
    pub result: Value,
}

impl BaselineTask {
    pub fn median_ms(&self) -> f64 {
        median(&self.times_s) * 1000.0
    }
}

pub struct Baseline {
    pub version: String,
    pub docs: u64,
    pub load: Load,
    pub tasks: HashMap<String, BaselineTask>,
    /// Peak RSS of the baseline's whole process tree over its run (Ray's own
    /// processes included).
    pub peak: Peak,
    pub wall_s: f64,
}

impl Baseline {
    pub fn task(&self, name: &str) -> Option<&BaselineTask> {
        self.tasks.get(name)
    }
}

pub struct Warm {
    pub docs: usize,
    pub bytes: usize,
    pub shards: u32,
    pub sum: ShoalSeries,
    pub batch: ShoalSeries,
    pub pool: Baseline,
    /// `Err`: why Ray could not be measured.
    pub ray: std::result::Result<Baseline, String>,
    /// Node + workers during the Shoal queries.
    pub peak: Peak,
    pub cache_mb: usize,
    pub expected: f64,
}

pub struct ColdRun {
    pub stop_s: f64,
    pub start_s: f64,
    pub query: QueryRun,
}

pub struct Cold {
    pub docs: usize,
    pub runs: Vec<ColdRun>,
    /// Load times of the baselines from the warm phase (same data).
    pub pool: Option<(f64, f64)>,
    pub ray: Option<(f64, f64, f64)>,
    pub ray_error: Option<String>,
    pub peak: Peak,
    pub cpu: Usage,
}

impl Cold {
    pub fn median_ms(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.query.wall_ms)
                .collect::<Vec<_>>(),
        )
    }
}

pub struct CpuHeavy {
    pub docs: usize,
    pub shoal: Vec<QueryRun>,
    pub pool: Baseline,
    pub ray: std::result::Result<Baseline, String>,
    pub cpu: Usage,
}

impl CpuHeavy {
    pub fn shoal_median_ms(&self) -> f64 {
        median(&self.shoal.iter().map(|r| r.wall_ms).collect::<Vec<_>>())
    }
}

pub struct Stream {
    pub docs: usize,
    pub bytes: usize,
    pub cache_mb: usize,
    pub runs: Vec<QueryRun>,
    pub peak: Peak,
    pub cpu: Usage,
}

pub struct Results {
    pub writes: Phase<Writes>,
    pub warm: Phase<Warm>,
    pub cold: Phase<Cold>,
    pub cpu_heavy: Phase<CpuHeavy>,
    pub stream: Phase<Stream>,
    pub plan_overhead_mb: usize,
}

impl Results {
    pub fn skipped(overhead_mb: usize) -> Results {
        Results {
            writes: Phase::Skipped,
            warm: Phase::Skipped,
            cold: Phase::Skipped,
            cpu_heavy: Phase::Skipped,
            stream: Phase::Skipped,
            plan_overhead_mb: overhead_mb,
        }
    }
}

// -------------------------------------------------------------- the driver

fn step(what: &str) {
    eprintln!("shoal-bench: {what}");
}

fn failed<T>(e: &anyhow::Error) -> Phase<T> {
    eprintln!("  failed: {e:#}");
    Phase::Failed(format!("{e:#}"))
}

fn outcome<T>(r: Result<T>) -> Phase<T> {
    match r {
        Ok(v) => Phase::Done(v),
        Err(e) => failed(&e),
    }
}

/// Runs the selected query phases against `node`, restarting it where a
/// phase needs that; `dir` is the bench's scratch directory. With
/// `restart_first` (other phases ran before) the node is restarted first, so
/// that their idle workers do not count in its memory.
pub async fn run(
    node: &mut Node,
    dir: &Path,
    plan: &Plan,
    sel: Selected,
    restart_first: bool,
) -> Results {
    let mut out = Results::skipped(plan.overhead_mb);
    if !sel.any() {
        return out;
    }
    let setup = async {
        if restart_first {
            step("restarting the node (no idle workers of the earlier phases)");
            node.restart(&plan.node_args())?;
        }
        setup(node, dir, plan, sel).await
    }
    .await;
    let (ctx, docs, files) = match setup {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("setup: {e:#}");
            eprintln!("  failed: {msg}");
            if sel.writes {
                out.writes = Phase::Failed(msg.clone());
            }
            if sel.queries {
                out.warm = Phase::Failed(msg.clone());
            }
            if sel.cold {
                out.cold = Phase::Failed(msg.clone());
            }
            if sel.cpu {
                out.cpu_heavy = Phase::Failed(msg.clone());
            }
            if sel.stream {
                out.stream = Phase::Failed(msg.clone());
            }
            return out;
        }
    };

    // Figure 4: the million documents, written in batches (also the data of
    // every later phase but the CPU-heavy one).
    let mut orders_ok: Result<(), String> = Ok(());
    if sel.needs_orders() {
        step(&format!(
            "document writes: {} documents ({:.0} MB of NDJSON) in batches of {} over {} connections",
            docs.len(),
            docs.ndjson.len() as f64 / 1e6,
            plan.batch,
            plan.write_conns
        ));
        let w = write_orders(&ctx, &docs, plan, dir).await;
        if let Err(e) = &w {
            orders_ok = Err(format!("writing the documents failed: {e:#}"));
        }
        out.writes = outcome(w);
        if let Phase::Done(w) = &out.writes {
            eprintln!(
                "  {:.0} docs/s, {:.1} MB/s",
                w.docs as f64 / w.secs,
                w.bytes as f64 / 1e6 / w.secs
            );
        }
    }
    let need = |ok: &Result<(), String>| ok.clone().map_err(|e| anyhow!(e));

    // Figures 1 and 5: repeated queries beside the baselines.
    if sel.queries || sel.cold {
        step("queries: Shoal, repeated, then the Python baselines on the same data");
        let r = match need(&orders_ok) {
            Ok(()) => warm(&ctx, &docs, plan, &files).await,
            Err(e) => Err(e),
        };
        out.warm = outcome(r);
        if let Phase::Done(w) = &out.warm {
            eprintln!(
                "  Shoal {:.0} ms / batch {:.0} ms; (a) {:.0} ms / {:.0} ms; peak RSS {:.0} MiB",
                w.sum.median_ms(),
                w.batch.median_ms(),
                w.pool
                    .task(SUM_NAME)
                    .map_or(f64::NAN, BaselineTask::median_ms),
                w.pool
                    .task(BATCH_NAME)
                    .map_or(f64::NAN, BaselineTask::median_ms),
                w.peak.total_mib()
            );
        }
    }

    // Figure 3: a CPU-heavy map.
    if sel.cpu {
        step(&format!(
            "query-cpu: {} documents, a CPU-heavy map",
            plan.cpu_docs
        ));
        out.cpu_heavy = outcome(cpu_heavy(&ctx, &docs, plan, &files).await);
        if let Phase::Done(c) = &out.cpu_heavy {
            eprintln!(
                "  Shoal {:.0} ms; (a) {:.0} ms",
                c.shoal_median_ms(),
                c.pool
                    .task(CPU_NAME)
                    .map_or(f64::NAN, BaselineTask::median_ms)
            );
        }
    }
    drop(ctx);

    // Figure 2: the same query cold, after restarts.
    if sel.cold {
        step(&format!(
            "query-cold: {} node restarts (SIGTERM, start), one query each",
            plan.cold_runs
        ));
        let r = match need(&orders_ok) {
            Ok(()) => cold(node, dir, plan, &docs, &out.warm).await,
            Err(e) => Err(e),
        };
        out.cold = outcome(r);
        if let Phase::Done(c) = &out.cold {
            eprintln!("  first query after a restart: {:.0} ms", c.median_ms());
        }
        if !sel.queries {
            // The baselines ran for the cold figure only.
            out.warm = Phase::Skipped;
        }
    }

    // Figure 5, second half: a budget far smaller than the data.
    if sel.stream {
        step(&format!(
            "query-stream: restart with --query-cache-mb {}, query twice",
            plan.stream_cache_mb
        ));
        let r = match need(&orders_ok) {
            Ok(()) => stream(node, dir, plan, &docs).await,
            Err(e) => Err(e),
        };
        out.stream = outcome(r);
        if let Phase::Done(s) = &out.stream {
            eprintln!(
                "  {:.0} ms, peak RSS {:.0} MiB",
                s.runs.last().map_or(f64::NAN, |r| r.wall_ms),
                s.peak.total_mib()
            );
        }
    }
    if !sel.writes {
        // Measured as the load step of the other phases, not asked for.
        if let Phase::Done(_) = out.writes {
            out.writes = Phase::Skipped;
        }
    }
    out
}

/// Where the baselines and their inputs live.
struct Files {
    data: PathBuf,
    baselines: PathBuf,
    functions: PathBuf,
    ray_tmp: PathBuf,
    log: PathBuf,
}

async fn setup(
    node: &Node,
    dir: &Path,
    plan: &Plan,
    sel: Selected,
) -> Result<(Ctx, Arc<Docs>, Files)> {
    let n = if sel.needs_orders() {
        plan.docs
    } else {
        plan.cpu_docs
    };
    step(&format!("generating {n} documents"));
    let docs = Arc::new(data::generate(n.max(plan.cpu_docs)));
    let files = Files {
        data: dir.join("docs.ndjson"),
        baselines: dir.join("baselines"),
        functions: dir.join("baselines").join("functions"),
        ray_tmp: dir.join("ray"),
        log: dir.join("baselines.log"),
    };
    if sel.needs_baselines() || sel.cpu {
        std::fs::write(&files.data, &docs.ndjson)
            .with_context(|| format!("writing {}", files.data.display()))?;
        std::fs::create_dir_all(&files.functions)?;
        for (name, text) in BASELINES {
            std::fs::write(files.baselines.join(name), text)?;
        }
        for (src, name) in functions() {
            src.write(&files.functions.join(name), name, None)?;
        }
    }
    let ctx = Ctx::for_node(node, dir.join("functions"))?;
    step("deploying the query functions");
    for (src, name) in functions() {
        src.deploy(&ctx.client, &ctx.scratch, name, None).await?;
    }
    Ok((ctx, docs, files))
}

fn functions() -> [(&'static Source, &'static str); 3] {
    [
        (&QUERY_SUM, SUM_NAME),
        (&QUERY_SUM_BATCH, BATCH_NAME),
        (&QUERY_CPU, CPU_NAME),
    ]
}

// ------------------------------------------------------------------ writes

async fn write_orders(ctx: &Ctx, docs: &Arc<Docs>, plan: &Plan, dir: &Path) -> Result<Writes> {
    ctx.client
        .create_category(ORDERS, None)
        .await
        .context("creating the category")?;
    let n = plan.docs;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let lat = write_docs(ctx, ORDERS, docs, n, plan.batch, plan.write_conns).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let view = ctx.client.category(ORDERS).await?;
    if view.docs != n as u64 {
        bail!(
            "the category holds {} documents after writing {n}",
            view.docs
        );
    }
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Writes {
        docs: n,
        bytes: docs.bytes_of_first(n),
        batch: plan.batch,
        conns: plan.write_conns,
        secs,
        batch_p50_ms: median(&lat),
        batch_max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        store_bytes: std::fs::metadata(dir.join("data").join("shoal.redb"))
            .ok()
            .map(|m| m.len()),
        cpu,
    })
}

/// Writes the first `n` documents in batches over `conns` connections;
/// returns each batch's latency (ms).
async fn write_docs(
    ctx: &Ctx,
    category: &str,
    docs: &Arc<Docs>,
    n: usize,
    batch: usize,
    conns: usize,
) -> Result<Vec<f64>> {
    let batches = n.div_ceil(batch);
    let next = Arc::new(AtomicUsize::new(0));
    let path = format!("/v1/categories/{category}/docs?return_ids=false");
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns.min(batches) {
        clients.push(ctx.target.connect().await?);
    }
    let mut set = JoinSet::new();
    for mut conn in clients {
        let (docs, next, path) = (docs.clone(), next.clone(), path.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(lat);
                }
                let (from, to) = (b * batch, ((b + 1) * batch).min(n));
                let t = Instant::now();
                let reply = tokio::time::timeout(
                    WRITE_LIMIT,
                    conn.post_as(&path, NDJSON_CONTENT_TYPE, docs.lines(from, to)),
                )
                .await
                .map_err(|_| {
                    anyhow!("writing documents {from}..{to} took more than {WRITE_LIMIT:?}")
                })??;
                if !reply.is_success() {
                    bail!(
                        "writing documents {from}..{to} answered HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
                let written = serde_json::from_slice::<Value>(reply.body)
                    .ok()
                    .and_then(|v| v["written"].as_u64());
                if written != Some((to - from) as u64) {
                    bail!(
                        "writing documents {from}..{to} answered {}",
                        reply.body_text()
                    );
                }
                lat.push(ms(t.elapsed()));
            }
        });
    }
    let mut lat = Vec::with_capacity(batches);
    while let Some(r) = set.join_next().await {
        lat.extend(r.context("a writer task panicked")??);
    }
    Ok(lat)
}

// ----------------------------------------------------------------- queries

/// Runs one query and reads its final line.
async fn query(ctx: &Ctx, category: &str, function: &str, limit: Duration) -> Result<QueryRun> {
    let mut conn = ctx.target.connect().await?;
    let body = serde_json::to_vec(&json!({ "function": function }))?;
    let path = format!("/v1/categories/{category}/query");
    let t = Instant::now();
    let reply = tokio::time::timeout(limit, conn.post(&path, &body))
        .await
        .map_err(|_| anyhow!("the query of {function} took more than {limit:?}"))??;
    let wall_ms = ms(t.elapsed());
    if !reply.is_success() {
        bail!(
            "the query of {function} answered HTTP {}: {}",
            reply.status,
            reply.body_text()
        );
    }
    let last = reply
        .body
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .context("the query answered nothing")?;
    let line: Value = serde_json::from_slice(last).context("the query's last line")?;
    if let Some(e) = line.get("error") {
        bail!("the query of {function} failed: {e}");
    }
    let done = line
        .get("done")
        .with_context(|| format!("the query's last line is neither done nor error: {line}"))?;
    let num = |k: &str| done.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    Ok(QueryRun {
        wall_ms,
        node_ms: num("duration_ms"),
        docs: done["docs"].as_u64().unwrap_or(0),
        shards: done["shards"].as_u64().unwrap_or(0) as u32,
        cached_shards: done["cached_shards"].as_u64().unwrap_or(0) as u32,
        result: done.get("result").cloned().unwrap_or(Value::Null),
    })
}

/// The first query (workers start, data from the store), then `reps` more.
async fn series(
    ctx: &Ctx,
    category: &str,
    function: &str,
    reps: usize,
    docs: usize,
    limit: Duration,
) -> Result<ShoalSeries> {
    let cpu0 = ctx.cpu();
    let first = query(ctx, category, function, limit).await?;
    eprintln!(
        "  {function}: first {:.0} ms (node {:.0} ms, {}/{} shards cached)",
        first.wall_ms, first.node_ms, first.cached_shards, first.shards
    );
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let r = query(ctx, category, function, limit).await?;
        if r.result != first.result {
            bail!(
                "{function} gave {} after {}: the result changed between queries",
                r.result,
                first.result
            );
        }
        out.push(r);
    }
    let times: Vec<String> = out.iter().map(|r| format!("{:.0}", r.wall_ms)).collect();
    eprintln!("  {function}: then {} ms", times.join(", "));
    for r in std::iter::once(&first).chain(&out) {
        if r.docs != docs as u64 {
            bail!("{function} processed {} documents, not {docs}", r.docs);
        }
    }
    Ok(ShoalSeries {
        first,
        reps: out,
        cpu: cpu0.usage_until(&ctx.cpu()),
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Fails unless every `(system, result)` equals `expected` exactly.
fn check_results(what: &str, expected: &Value, got: &[(&str, &Value)]) -> Result<()> {
    let want = as_f64(expected);
    let bad: Vec<String> = got
        .iter()
        .filter(|(_, v)| as_f64(v).is_none() || as_f64(v) != want)
        .map(|(s, v)| format!("{s} = {v}"))
        .collect();
    if !bad.is_empty() {
        let all: Vec<String> = got.iter().map(|(s, v)| format!("{s} = {v}")).collect();
        bail!(
            "RESULT MISMATCH for {what}: expected {expected}; {} (all: {})",
            bad.join(", "),
            all.join(", ")
        );
    }
    Ok(())
}

fn task(name: &str, dir: &Path, mode: &str, warmup: usize, reps: usize) -> Value {
    json!({"name": name, "dir": dir, "mode": mode, "warmup": warmup, "reps": reps})
}

async fn warm(ctx: &Ctx, docs: &Docs, plan: &Plan, files: &Files) -> Result<Warm> {
    let n = plan.docs;
    let expected = json!(docs.total_of_first(plan.docs));
    let sampler = Sampler::start(ctx.node_pid, RSS_EVERY);
    let sum = series(ctx, ORDERS, SUM_NAME, plan.reps, n, plan.query_limit).await;
    let batch = match &sum {
        Ok(_) => series(ctx, ORDERS, BATCH_NAME, plan.reps, n, plan.query_limit).await,
        Err(_) => Err(anyhow!("not run")),
    };
    let peak = sampler.finish();
    let (sum, batch) = (sum?, batch?);
    let shards = sum.first.shards;

    let tasks = [
        task(
            SUM_NAME,
            &files.functions.join(SUM_NAME),
            "map",
            2,
            plan.reps,
        ),
        task(
            BATCH_NAME,
            &files.functions.join(BATCH_NAME),
            "batch",
            2,
            plan.reps,
        ),
    ];
    step("  baseline (a): multiprocessing.Pool(2), forked after loading");
    let pool = baseline(plan, files, &plan.python, POOL_SCRIPT, 0, &tasks).await?;
    step("  baseline (b): Ray, 2 actors");
    let ray = baseline(plan, files, &plan.ray_python, RAY_SCRIPT, 0, &tasks)
        .await
        .map_err(|e| {
            eprintln!("  Ray: {e:#}");
            format!("{e:#}")
        });

    for (name, series) in [(SUM_NAME, &sum), (BATCH_NAME, &batch)] {
        let mut got: Vec<(&str, &Value)> = vec![("Shoal", &series.first.result)];
        let pool_r = pool.task(name).map(|t| &t.result);
        got.push(("(a) Pool", pool_r.unwrap_or(&Value::Null)));
        if let Ok(r) = &ray {
            got.push(("(b) Ray", r.task(name).map_or(&Value::Null, |t| &t.result)));
        }
        check_results(name, &expected, &got)?;
    }
    Ok(Warm {
        docs: n,
        bytes: docs.bytes_of_first(n),
        shards,
        sum,
        batch,
        pool,
        ray,
        peak,
        cache_mb: plan.cache_mb,
        expected: docs.total_of_first(n),
    })
}

async fn cpu_heavy(ctx: &Ctx, docs: &Arc<Docs>, plan: &Plan, files: &Files) -> Result<CpuHeavy> {
    let n = plan.cpu_docs;
    ctx.client
        .create_category(CPU_CATEGORY, None)
        .await
        .context("creating the category")?;
    write_docs(ctx, CPU_CATEGORY, docs, n, plan.batch, 1).await?;
    let cpu0 = ctx.cpu();
    let mut shoal = Vec::with_capacity(plan.cpu_reps);
    for _ in 0..plan.cpu_reps {
        let r = query(ctx, CPU_CATEGORY, CPU_NAME, plan.query_limit).await?;
        if r.docs != n as u64 {
            bail!("{CPU_NAME} processed {} documents, not {n}", r.docs);
        }
        eprintln!(
            "  Shoal: {:.0} ms ({}/{} shards cached)",
            r.wall_ms, r.cached_shards, r.shards
        );
        shoal.push(r);
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    let tasks = [task(
        CPU_NAME,
        &files.functions.join(CPU_NAME),
        "map",
        0,
        plan.cpu_reps,
    )];
    step("  baseline (a): multiprocessing.Pool(2)");
    let pool = baseline(plan, files, &plan.python, POOL_SCRIPT, n, &tasks).await?;
    step("  baseline (b): Ray, 2 actors (one run)");
    let ray_tasks = [task(CPU_NAME, &files.functions.join(CPU_NAME), "map", 0, 1)];
    let ray = baseline(plan, files, &plan.ray_python, RAY_SCRIPT, n, &ray_tasks)
        .await
        .map_err(|e| {
            eprintln!("  Ray: {e:#}");
            format!("{e:#}")
        });
    let reference = shoal[0].result.clone();
    let mut got: Vec<(&str, &Value)> = shoal.iter().map(|r| ("Shoal", &r.result)).collect();
    got.push((
        "(a) Pool",
        pool.task(CPU_NAME).map_or(&Value::Null, |t| &t.result),
    ));
    if let Ok(r) = &ray {
        got.push((
            "(b) Ray",
            r.task(CPU_NAME).map_or(&Value::Null, |t| &t.result),
        ));
    }
    check_results(CPU_NAME, &reference, &got)?;
    Ok(CpuHeavy {
        docs: n,
        shoal,
        pool,
        ray,
        cpu,
    })
}

async fn cold(
    node: &mut Node,
    dir: &Path,
    plan: &Plan,
    docs: &Docs,
    warm: &Phase<Warm>,
) -> Result<Cold> {
    let expected = json!(docs.total_of_first(plan.docs));
    let mut runs = Vec::with_capacity(plan.cold_runs);
    let mut peak = Peak::default();
    let mut cpu = Usage::default();
    for i in 0..plan.cold_runs {
        let (stop, start) = node.restart(&plan.node_args())?;
        let ctx = Ctx::for_node(node, dir.join("functions"))?;
        let sampler = Sampler::start(ctx.node_pid, RSS_EVERY);
        let cpu0 = ctx.cpu();
        let q = query(&ctx, ORDERS, SUM_NAME, plan.query_limit).await;
        let usage = cpu0.usage_until(&ctx.cpu());
        peak = peak.max(sampler.finish());
        let q = q?;
        check_results(SUM_NAME, &expected, &[("Shoal (cold)", &q.result)])?;
        if q.docs != plan.docs as u64 {
            bail!("the cold query processed {} documents", q.docs);
        }
        eprintln!(
            "  restart {}: stop {:.2} s, start {:.2} s, query {:.0} ms ({}/{} shards cached)",
            i + 1,
            stop.as_secs_f64(),
            start.as_secs_f64(),
            q.wall_ms,
            q.cached_shards,
            q.shards
        );
        if i == 0 {
            cpu = usage;
        }
        runs.push(ColdRun {
            stop_s: stop.as_secs_f64(),
            start_s: start.as_secs_f64(),
            query: q,
        });
    }
    let (pool, ray, ray_error) = match warm {
        Phase::Done(w) => {
            let first = |b: &Baseline| b.task(SUM_NAME).and_then(|t| t.first_s).unwrap_or(f64::NAN);
            let pool = Some((w.pool.load.total_s, first(&w.pool)));
            match &w.ray {
                Ok(r) => (pool, Some((r.load.total_s, first(r), r.load.start_s)), None),
                Err(e) => (pool, None, Some(e.clone())),
            }
        }
        Phase::Failed(e) => (None, None, Some(format!("the baselines failed: {e}"))),
        Phase::Skipped => (None, None, None),
    };
    Ok(Cold {
        docs: plan.docs,
        runs,
        pool,
        ray,
        ray_error,
        peak,
        cpu,
    })
}

async fn stream(node: &mut Node, dir: &Path, plan: &Plan, docs: &Docs) -> Result<Stream> {
    let args = vec![
        "--query-cache-mb".to_string(),
        plan.stream_cache_mb.to_string(),
    ];
    node.restart(&args)?;
    let ctx = Ctx::for_node(node, dir.join("functions"))?;
    let expected = json!(docs.total_of_first(plan.docs));
    let sampler = Sampler::start(ctx.node_pid, RSS_EVERY);
    let cpu0 = ctx.cpu();
    let mut runs = Vec::new();
    let mut failure = None;
    for _ in 0..2 {
        match query(&ctx, ORDERS, SUM_NAME, plan.query_limit).await {
            Ok(q) => {
                eprintln!(
                    "  {:.0} ms ({}/{} shards cached)",
                    q.wall_ms, q.cached_shards, q.shards
                );
                runs.push(q);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    let peak = sampler.finish();
    if let Some(e) = failure {
        return Err(e);
    }
    for q in &runs {
        check_results(SUM_NAME, &expected, &[("Shoal (small budget)", &q.result)])?;
    }
    Ok(Stream {
        docs: plan.docs,
        bytes: docs.bytes_of_first(plan.docs),
        cache_mb: plan.stream_cache_mb,
        runs,
        peak,
        cpu,
    })
}

// --------------------------------------------------------------- baselines

/// Runs a baseline script on the first `limit` documents (0: all) and reads
/// its JSON report, sampling the peak RSS of its process tree meanwhile.
async fn baseline(
    plan: &Plan,
    files: &Files,
    python: &Path,
    script: &str,
    limit: usize,
    tasks: &[Value],
) -> Result<Baseline> {
    if script == RAY_SCRIPT {
        if let Some(reason) = &plan.ray_missing {
            bail!("Ray could not be installed: {reason}");
        }
        if python.components().count() > 1 && !python.exists() {
            bail!(
                "{} does not exist: Ray is not installed (scripts/bench installs it)",
                python.display()
            );
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(files.baselines.join(script))
        .arg("--data")
        .arg(&files.data)
        .arg("--limit")
        .arg(limit.to_string())
        .arg("--tasks")
        .arg(serde_json::to_string(tasks)?)
        .env("SHOAL_BENCH_RAY_TMP", &files.ray_tmp)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let t = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} {script}", python.display()))?;
    let pid = child.id().unwrap_or(0);
    let sampler = Sampler::start(pid, RSS_EVERY);
    let waited = tokio::time::timeout(plan.baseline_limit, child.wait_with_output()).await;
    let peak = sampler.finish();
    let wall_s = t.elapsed().as_secs_f64();
    let log_tail = || {
        let text = std::fs::read_to_string(&files.log).unwrap_or_default();
        node::tail(&text, 12)
    };
    let output = match waited {
        Ok(r) => r.with_context(|| format!("waiting for {script}"))?,
        Err(_) => {
            if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            bail!(
                "{script} did not finish within {:?}; its log ends:\n{}",
                plan.baseline_limit,
                log_tail()
            );
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rfind(|l| l.starts_with('{'));
    let report: Value = match (output.status.success(), last) {
        (true, Some(line)) => {
            serde_json::from_str(line).with_context(|| format!("reading the report of {script}"))?
        }
        _ => bail!(
            "{} {script} failed ({}); its log ends:\n{}",
            python.display(),
            output.status,
            log_tail()
        ),
    };
    parse_report(&report, peak, wall_s)
}

fn parse_report(v: &Value, peak: Peak, wall_s: f64) -> Result<Baseline> {
    let f = |o: &Value, k: &str| o.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let load = &v["load"];
    let mut tasks = HashMap::new();
    for (name, t) in v["tasks"].as_object().context("the report has no tasks")? {
        let times_s: Vec<f64> = t["times_s"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        tasks.insert(
            name.clone(),
            BaselineTask {
                first_s: t.get("first_s").and_then(Value::as_f64),
                times_s,
                result: t.get("result").cloned().unwrap_or(Value::Null),
            },
        );
    }
    let version = match v.get("ray").and_then(Value::as_str) {
        Some(ray) => format!("Ray {ray}, Python {}", v["python"].as_str().unwrap_or("?")),
        None => format!("Python {}", v["python"].as_str().unwrap_or("?")),
    };
    Ok(Baseline {
        version,
        docs: v["docs"].as_u64().unwrap_or(0),
        load: Load {
            start_s: f(load, "start_s"),
            read_s: f(load, "read_s"),
            parse_s: f(load, "parse_s"),
            distribute_s: f(load, "distribute_s"),
            total_s: f(load, "total_s"),
        },
        tasks,
        peak,
        wall_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_must_match_exactly() {
        let e = json!(10.25);
        assert!(check_results("x", &e, &[("a", &json!(10.25)), ("b", &json!(10.25))]).is_ok());
        let err = check_results("x", &e, &[("a", &json!(10.25)), ("b", &json!(10.5))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MISMATCH") && err.contains("b = 10.5"),
            "{err}"
        );
        assert!(check_results("x", &json!(3), &[("a", &json!(3.0))]).is_ok());
        assert!(check_results("x", &e, &[("a", &Value::Null)]).is_err());
    }

    #[test]
    fn reads_a_baseline_report() {
        let v = json!({"system": "ray", "python": "3.11.7", "ray": "2.60.0", "docs": 10,
            "load": {"start_s": 4.0, "read_s": 0.1, "parse_s": 0.2, "distribute_s": 0.0, "total_s": 0.3},
            "tasks": {"bench-sum": {"mode": "map", "first_s": 0.5, "times_s": [0.2, 0.1, 0.3], "result": 12.5}}});
        let b = parse_report(&v, Peak::default(), 1.0).unwrap();
        assert_eq!(b.version, "Ray 2.60.0, Python 3.11.7");
        assert_eq!(b.load.start_s, 4.0);
        let t = b.task("bench-sum").unwrap();
        assert_eq!(t.median_ms(), 200.0);
        assert_eq!(t.result, json!(12.5));
    }
}
