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
/// Unmeasured rounds before the repeated queries are timed.
const WARMUP: usize = 2;
/// How often the memory of a baseline's process tree is sampled (less often:
/// it is not a target, and the sampler shares the cores).
const BASELINE_RSS_EVERY: Duration = Duration::from_millis(200);
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
        step("queries: rounds of Shoal, (a) and (b) in turn, on the same data");
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

/// A query timed with the CPU used meanwhile.
async fn timed_query(
    ctx: &Ctx,
    category: &str,
    function: &str,
    limit: Duration,
) -> Result<(QueryRun, Usage)> {
    let cpu0 = ctx.cpu();
    let r = query(ctx, category, function, limit).await?;
    Ok((r, cpu0.usage_until(&ctx.cpu())))
}

/// Runs `rounds` rounds of the same query, each round on Shoal and then on
/// every baseline, so that all systems see the same background load. The
/// first `warmup` rounds are not measured (Shoal's first query is kept as
/// `first`: its workers start and read the documents from the store).
#[allow(clippy::too_many_arguments)]
async fn rounds(
    ctx: &Ctx,
    category: &str,
    function: &str,
    warmup: usize,
    reps: usize,
    docs: usize,
    limit: Duration,
    baselines: &mut [&mut BaselineProc],
) -> Result<ShoalSeries> {
    let mut first = None;
    let mut out = Vec::with_capacity(reps);
    let mut usage = Vec::with_capacity(reps);
    for round in 0..warmup + reps {
        let (r, u) = timed_query(ctx, category, function, limit).await?;
        if r.docs != docs as u64 {
            bail!("{function} processed {} documents, not {docs}", r.docs);
        }
        let mut line = format!(
            "  {function} round {}: Shoal {:.0} ms",
            round + 1,
            r.wall_ms
        );
        if round == 0 {
            line.push_str(&format!(
                " ({}/{} shards cached)",
                r.cached_shards, r.shards
            ));
        }
        if round >= warmup {
            usage.push((r.wall_ms, u));
            out.push(r.clone());
        }
        if first.is_none() {
            first = Some(r);
        }
        for b in baselines.iter_mut() {
            if b.failed.is_some() {
                continue;
            }
            match b.run(function, limit).await {
                Ok(s) => line.push_str(&format!(", {} {:.0} ms", b.label, s * 1000.0)),
                Err(e) => {
                    eprintln!("  {}: {e:#}", b.label);
                    b.failed = Some(format!("{e:#}"));
                }
            }
        }
        eprintln!("{line}");
    }
    let first = first.context("no rounds")?;
    for r in &out {
        if r.result != first.result {
            bail!(
                "{function} gave {} after {}: the result changed between queries",
                r.result,
                first.result
            );
        }
    }
    Ok(ShoalSeries {
        first,
        reps: out,
        cpu: Usage::weighted(&usage),
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

fn task(name: &str, dir: &Path, mode: &str) -> Value {
    json!({"name": name, "dir": dir, "mode": mode})
}

/// Starts baseline (a) (it must work) and (b) (`Err` with the reason if not).
async fn start_baselines(
    plan: &Plan,
    files: &Files,
    limit: usize,
    tasks: &[Value],
) -> Result<(BaselineProc, std::result::Result<BaselineProc, String>)> {
    step("  baseline (a): loading the documents into multiprocessing.Pool(2)");
    let pool =
        BaselineProc::start("(a)", plan, files, &plan.python, POOL_SCRIPT, limit, tasks).await?;
    step("  baseline (b): starting Ray and loading the documents into 2 actors");
    let ray = BaselineProc::start(
        "(b)",
        plan,
        files,
        &plan.ray_python,
        RAY_SCRIPT,
        limit,
        tasks,
    )
    .await
    .map_err(|e| {
        eprintln!("  Ray: {e:#}");
        format!("{e:#}")
    });
    Ok((pool, ray))
}

/// Ends the baselines and collects what they measured.
async fn finish_baselines(
    pool: BaselineProc,
    ray: std::result::Result<BaselineProc, String>,
    warmup: usize,
) -> Result<(Baseline, std::result::Result<Baseline, String>)> {
    let ray = match ray {
        Ok(r) => r.finish(warmup).await,
        Err(e) => Err(e),
    };
    let pool = pool
        .finish(warmup)
        .await
        .map_err(|e| anyhow!("baseline (a): {e}"))?;
    Ok((pool, ray))
}

/// Compares every system's result of `task` with `expected`.
fn check_all(
    task: &str,
    expected: &Value,
    shoal: &[&QueryRun],
    pool: &Baseline,
    ray: &std::result::Result<Baseline, String>,
) -> Result<()> {
    let mut got: Vec<(&str, &Value)> = shoal.iter().map(|r| ("Shoal", &r.result)).collect();
    got.push((
        "(a) Pool",
        pool.task(task).map_or(&Value::Null, |t| &t.result),
    ));
    if let Ok(r) = ray {
        got.push(("(b) Ray", r.task(task).map_or(&Value::Null, |t| &t.result)));
    }
    check_results(task, expected, &got)
}

async fn warm(ctx: &Ctx, docs: &Docs, plan: &Plan, files: &Files) -> Result<Warm> {
    let n = plan.docs;
    let expected = json!(docs.total_of_first(n));
    let tasks = [
        task(SUM_NAME, &files.functions.join(SUM_NAME), "map"),
        task(BATCH_NAME, &files.functions.join(BATCH_NAME), "batch"),
    ];
    let (mut pool, mut ray) = start_baselines(plan, files, 0, &tasks).await?;
    let sampler = Sampler::start(ctx.node_pid, RSS_EVERY);
    let mut series = Vec::new();
    for function in [SUM_NAME, BATCH_NAME] {
        let mut procs: Vec<&mut BaselineProc> = vec![&mut pool];
        if let Ok(r) = &mut ray {
            procs.push(r);
        }
        let s = rounds(
            ctx,
            ORDERS,
            function,
            WARMUP,
            plan.reps,
            n,
            plan.query_limit,
            &mut procs,
        )
        .await;
        match s {
            Ok(s) => series.push(s),
            Err(e) => {
                sampler.finish();
                return Err(e);
            }
        }
    }
    let peak = sampler.finish();
    if let Some(e) = pool.failed.take() {
        bail!("baseline (a) failed: {e}");
    }
    let (pool, ray) = finish_baselines(pool, ray, WARMUP).await?;
    let batch = series.pop().context("no batch series")?;
    let sum = series.pop().context("no sum series")?;
    check_all(SUM_NAME, &expected, &[&sum.first], &pool, &ray)?;
    check_all(BATCH_NAME, &expected, &[&batch.first], &pool, &ray)?;
    Ok(Warm {
        docs: n,
        bytes: docs.bytes_of_first(n),
        shards: sum.first.shards,
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
    let tasks = [task(CPU_NAME, &files.functions.join(CPU_NAME), "map")];
    let (mut pool, mut ray) = start_baselines(plan, files, n, &tasks).await?;
    let mut procs: Vec<&mut BaselineProc> = vec![&mut pool];
    if let Ok(r) = &mut ray {
        procs.push(r);
    }
    // No warm-up: a run takes seconds; Shoal's first one includes starting
    // its query workers and reading the documents (a few tens of ms here).
    let s = rounds(
        ctx,
        CPU_CATEGORY,
        CPU_NAME,
        0,
        plan.cpu_reps,
        n,
        plan.query_limit,
        &mut procs,
    )
    .await?;
    if let Some(e) = pool.failed.take() {
        bail!("baseline (a) failed: {e}");
    }
    let (pool, ray) = finish_baselines(pool, ray, 0).await?;
    let shoal = s.reps;
    let reference = shoal[0].result.clone();
    let all: Vec<&QueryRun> = shoal.iter().collect();
    check_all(CPU_NAME, &reference, &all, &pool, &ray)?;
    Ok(CpuHeavy {
        docs: n,
        shoal,
        pool,
        ray,
        cpu: s.cpu,
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

/// A running baseline script: it loaded the documents and waits for tasks
/// on stdin (see `baselines/common.py`).
struct BaselineProc {
    label: &'static str,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pid: u32,
    sampler: Option<Sampler>,
    started: Instant,
    log: PathBuf,
    ready: Value,
    /// Every run of each task in order, warm-ups included: `(seconds, result)`.
    runs: HashMap<String, Vec<(f64, Value)>>,
    /// Set when a run failed; the baseline is not asked again.
    failed: Option<String>,
}

impl BaselineProc {
    /// Starts `python script` on the first `limit` documents (0: all) and
    /// waits until it has loaded them.
    async fn start(
        label: &'static str,
        plan: &Plan,
        files: &Files,
        python: &Path,
        script: &str,
        limit: usize,
        tasks: &[Value],
    ) -> Result<BaselineProc> {
        use tokio::io::AsyncBufReadExt;
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
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {script}", python.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut proc = BaselineProc {
            label,
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
            pid,
            sampler: Some(Sampler::start(pid, BASELINE_RSS_EVERY)),
            started,
            log: files.log.clone(),
            ready: Value::Null,
            runs: HashMap::new(),
            failed: None,
        };
        let line = proc.read_line(plan.baseline_limit).await;
        let ready = match line {
            Ok(v) => v.get("ready").cloned(),
            Err(e) => {
                proc.kill();
                return Err(e.context(format!("{script} did not load the documents")));
            }
        };
        match ready {
            Some(r) => proc.ready = r,
            None => {
                proc.kill();
                bail!("{script} did not report that it was ready");
            }
        }
        eprintln!(
            "  {label} loaded in {:.2} s",
            proc.ready["load"]["total_s"].as_f64().unwrap_or(f64::NAN)
        );
        Ok(proc)
    }

    /// The next JSON line on its stdout.
    async fn read_line(&mut self, limit: Duration) -> Result<Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
            .context("reading its stdout")?;
        match line {
            Some(l) => serde_json::from_str(&l).with_context(|| format!("reading {l:?}")),
            None => bail!("it exited; its log ends:\n{}", self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        node::tail(&text, 12)
    }

    /// Runs one query; returns its time in seconds.
    async fn run(&mut self, task: &str, limit: Duration) -> Result<f64> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().context("stdin is closed")?;
        let mut request = serde_json::to_vec(&json!({ "task": task }))?;
        request.push(b'\n');
        stdin.write_all(&request).await.context("writing a task")?;
        stdin.flush().await?;
        let answer = self.read_line(limit).await?;
        if let Some(e) = answer.get("error") {
            bail!("{task} failed: {e}");
        }
        let secs = answer["seconds"]
            .as_f64()
            .with_context(|| format!("unexpected answer {answer}"))?;
        let result = answer.get("result").cloned().unwrap_or(Value::Null);
        self.runs
            .entry(task.to_string())
            .or_default()
            .push((secs, result));
        Ok(secs)
    }

    fn kill(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }

    /// Closes its stdin, waits for it to exit (Ray shuts down) and returns
    /// what it measured; the first `warmup` runs of each task are warm-ups.
    async fn finish(mut self, warmup: usize) -> std::result::Result<Baseline, String> {
        drop(self.stdin.take());
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            self.kill();
        }
        let peak = self.sampler.take().map(Sampler::finish).unwrap_or_default();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let r = &self.ready;
        let f = |k: &str| r["load"][k].as_f64().unwrap_or(0.0);
        let version = match r.get("ray").and_then(Value::as_str) {
            Some(ray) => format!("Ray {ray}, Python {}", r["python"].as_str().unwrap_or("?")),
            None => format!("Python {}", r["python"].as_str().unwrap_or("?")),
        };
        let mut tasks = HashMap::new();
        for (name, runs) in std::mem::take(&mut self.runs) {
            let first_s = (warmup > 0).then(|| runs.first().map(|r| r.0)).flatten();
            let result = runs.first().map_or(Value::Null, |r| r.1.clone());
            if let Some(other) = runs.iter().find(|r| r.1 != result) {
                return Err(format!(
                    "{name} gave different results: {result} and {}",
                    other.1
                ));
            }
            tasks.insert(
                name,
                BaselineTask {
                    first_s,
                    times_s: runs.iter().skip(warmup).map(|r| r.0).collect(),
                    result,
                },
            );
        }
        Ok(Baseline {
            version,
            docs: r["docs"].as_u64().unwrap_or(0),
            load: Load {
                start_s: f("start_s"),
                read_s: f("read_s"),
                parse_s: f("parse_s"),
                distribute_s: f("distribute_s"),
                total_s: f("total_s"),
            },
            tasks,
            peak,
            wall_s: self.started.elapsed().as_secs_f64(),
        })
    }
}

impl Drop for BaselineProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
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
}
