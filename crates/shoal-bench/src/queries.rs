//! The category and query phases: batched durable document writes
//! (`writes`), a repeated map/reduce over a million documents next to the
//! Python baselines on the same data and the same function module
//! (`queries`; `baseline.rs`), a CPU-heavy map (`query-cpu`), the same query
//! cold after node restarts (`query-cold`), and the node's peak memory
//! against its `--query-cache-mb` budget, also with a budget far smaller
//! than the data (`query-stream`).
//!
//! Every system must compute exactly the same result (the data are built so
//! that floating-point sums are exact in any order); a mismatch fails the
//! phase.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::baseline::{self, Baseline, Setup};
use crate::cpu::Usage;
use crate::data::{self, Docs};
use crate::functions::{QUERY_CPU, QUERY_SUM, QUERY_SUM_BATCH, Source};
use crate::node::{Ctx, Node};
use crate::report::{Figure, Section, one_line, peak_detail, secs, split};
use crate::rss::{Peak, Sampler};
use crate::stats::{fmt_ms, median, ms, thousands};

/// The phases of this module, in the order they run.
pub const PHASES: [&str; 5] = [
    "writes",
    "queries",
    "query-cpu",
    "query-cold",
    "query-stream",
];
const SUM_NAME: &str = "bench-sum";
const BATCH_NAME: &str = "bench-sum-batch";
const CPU_NAME: &str = "bench-cpu";
const ORDERS: &str = "bench-orders";
const CPU_CATEGORY: &str = "bench-cpu-docs";
/// The longest one batch of documents may take to be written.
const WRITE_LIMIT: Duration = Duration::from_secs(120);
/// Unmeasured rounds before the repeated queries are timed.
const WARMUP: usize = 2;
/// How often the memory of the node's process tree is sampled.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// Sizes of the query phases.
pub struct Plan {
    pub docs: usize,
    pub batch: usize,
    pub write_conns: usize,
    /// Measured repetitions of each warm query (after the warm-up).
    pub reps: usize,
    pub cold_runs: usize,
    pub cpu_docs: usize,
    pub cpu_reps: usize,
    /// `--query-cache-mb` of the node in every phase but the streaming one.
    pub cache_mb: usize,
    pub stream_cache_mb: usize,
    pub query_limit: Duration,
    pub baseline_limit: Duration,
    /// The interpreter with Ray (baseline (b)), and why Ray is missing.
    pub ray_python: PathBuf,
    pub ray_missing: Option<String>,
}

/// Which of the phases run.
#[derive(Clone, Copy)]
pub struct Selected {
    pub writes: bool,
    pub queries: bool,
    pub cpu: bool,
    pub cold: bool,
    pub stream: bool,
}

impl Plan {
    pub fn new(quick: bool, ray_python: PathBuf, ray_missing: Option<String>) -> Plan {
        Plan {
            docs: if quick { 200_000 } else { 1_000_000 },
            batch: 10_000,
            write_conns: 4,
            reps: if quick { 3 } else { 5 },
            cold_runs: if quick { 1 } else { 3 },
            cpu_docs: if quick { 4_000 } else { 20_000 },
            cpu_reps: if quick { 2 } else { 3 },
            cache_mb: 2048,
            stream_cache_mb: 64,
            query_limit: Duration::from_secs(600),
            baseline_limit: Duration::from_secs(900),
            ray_python,
            ray_missing,
        }
    }

    /// The node's arguments in every phase but the streaming one.
    pub fn node_args(&self) -> Vec<String> {
        cache_args(self.cache_mb)
    }
}

impl Selected {
    pub fn new(selected: impl Fn(&str) -> bool) -> Selected {
        Selected {
            writes: selected(PHASES[0]),
            queries: selected(PHASES[1]),
            cpu: selected(PHASES[2]),
            cold: selected(PHASES[3]),
            stream: selected(PHASES[4]),
        }
    }

    pub fn any(&self) -> bool {
        self.writes || self.queries || self.cold || self.cpu || self.stream
    }

    /// The phases that query the million documents (and so need them written).
    fn needs_orders(&self) -> bool {
        self.writes || self.queries || self.cold || self.stream
    }
}

// ------------------------------------------------------------------ results

struct Writes {
    docs: usize,
    bytes: usize,
    batch: usize,
    conns: usize,
    secs: f64,
    /// Each batch's latency, ms.
    batches_ms: Vec<f64>,
    /// Size of the store file after the writes.
    store_bytes: Option<u64>,
    cpu: Usage,
}

/// One query as the client saw it, with the node's own figures.
#[derive(Clone)]
struct QueryRun {
    wall_ms: f64,
    node_ms: f64,
    docs: u64,
    shards: u32,
    cached_shards: u32,
    result: Value,
}

/// A series of the same query on Shoal.
struct Series {
    first: QueryRun,
    reps: Vec<QueryRun>,
    cpu: Usage,
}

struct Warm {
    docs: usize,
    bytes: usize,
    sum: Series,
    batch: Series,
    pool: Baseline,
    /// `Err`: why Ray could not be measured.
    ray: Result<Baseline, String>,
    /// Node + workers during the Shoal queries.
    peak: Peak,
    cache_mb: usize,
    expected: f64,
}

struct CpuHeavy {
    docs: usize,
    shoal: Vec<QueryRun>,
    pool: Baseline,
    ray: Result<Baseline, String>,
    cpu: Usage,
}

struct Cold {
    docs: usize,
    /// Each with one query.
    runs: Vec<Restart>,
    /// From the `queries` phase (same data), or why they are missing.
    loads: Result<Loads, String>,
}

/// How the baselines loaded the file, in seconds.
struct Loads {
    /// (a): loading, then its first query.
    pool: (f64, f64),
    /// (b): loading, its first query, starting Ray; or why it is missing.
    ray: Result<(f64, f64, f64), String>,
}

struct Stream {
    docs: usize,
    bytes: usize,
    cache_mb: usize,
    /// With two queries.
    run: Restart,
}

// -------------------------------------------------------------- the driver

/// Runs the selected phases against `node`, restarting it where a phase
/// needs that; `dir` is the bench's scratch directory. With `restart_first`
/// (other phases ran before) the node is restarted first, so that their idle
/// workers do not count in its memory. One section per selected phase.
pub async fn run(
    node: &mut Node,
    dir: &Path,
    plan: &Plan,
    sel: Selected,
    restart_first: bool,
    primary: bool,
) -> Vec<Section> {
    let mut out = Vec::new();
    let chosen = [sel.writes, sel.queries, sel.cpu, sel.cold, sel.stream];
    let ready = async {
        if restart_first {
            crate::step("restarting the node (no idle workers of the earlier phases)");
            node.restart(&plan.node_args())?;
        }
        setup(node, dir, plan, sel, primary).await
    };
    let (ctx, docs, files) = match ready.await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("setup: {e:#}");
            eprintln!("  failed: {why}");
            for (phase, _) in PHASES.iter().zip(chosen).filter(|(_, c)| *c) {
                out.push(Section::failed(phase, &why));
            }
            return out;
        }
    };
    let section = |phase: &'static str, r: Result<Section>| match r {
        Ok(s) => s,
        Err(e) => {
            eprintln!("  failed: {e:#}");
            Section::failed(phase, &format!("{e:#}"))
        }
    };

    // The million documents, written in batches: the data of every later
    // phase but the CPU-heavy one.
    let mut orders: Result<(), String> = Ok(());
    if sel.needs_orders() {
        crate::step(&format!(
            "document writes: {} documents ({:.0} MB of NDJSON) in batches of {} over {} connections",
            plan.docs,
            docs.bytes_of_first(plan.docs) as f64 / 1e6,
            plan.batch,
            plan.write_conns
        ));
        let w = write_orders(&ctx, &docs, plan, dir).await;
        if let Err(e) = &w {
            orders = Err(format!("writing the documents failed: {e:#}"));
        }
        if sel.writes {
            out.push(section("writes", w.map(|w| writes_section(&w))));
        }
    }
    let need = || orders.clone().map_err(|e| anyhow!(e));

    // Repeated queries beside the baselines (whose loading `query-cold`
    // reports too).
    let mut warm_r = Err("not run".to_string());
    if sel.queries || sel.cold {
        crate::step("queries: rounds of Shoal, (a) and (b) in turn, on the same data");
        let w = match need() {
            Ok(()) => warm(&ctx, &docs, plan, &files).await,
            Err(e) => Err(e),
        };
        warm_r = match &w {
            Ok(w) => Ok(baseline_loads(w)),
            Err(e) => Err(format!("the baselines failed: {e:#}")),
        };
        if sel.queries {
            out.push(section("queries", w.map(|w| warm_section(&w))));
        }
    }
    if sel.cpu {
        crate::step(&format!(
            "query-cpu: {} documents, a CPU-heavy map",
            plan.cpu_docs
        ));
        let c = cpu_heavy(&ctx, &docs, plan, &files).await;
        out.push(section("query-cpu", c.map(|c| cpu_section(&c))));
    }
    drop(ctx);
    if sel.cold {
        crate::step(&format!(
            "query-cold: {} node restarts (SIGTERM, start), one query each",
            plan.cold_runs
        ));
        let c = match need() {
            Ok(()) => cold(node, plan, &docs, warm_r).await,
            Err(e) => Err(e),
        };
        out.push(section("query-cold", c.map(|c| cold_section(&c))));
    }
    if sel.stream {
        crate::step(&format!(
            "query-stream: restart with --query-cache-mb {}, query twice",
            plan.stream_cache_mb
        ));
        let s = match need() {
            Ok(()) => stream(node, plan, &docs).await,
            Err(e) => Err(e),
        };
        out.push(section("query-stream", s.map(|s| stream_section(&s))));
    }
    out
}

async fn setup(
    node: &Node,
    dir: &Path,
    plan: &Plan,
    sel: Selected,
    primary: bool,
) -> Result<(Ctx, Arc<Docs>, Setup)> {
    let n = if sel.needs_orders() {
        plan.docs
    } else {
        plan.cpu_docs
    };
    crate::step(&format!("generating {n} documents"));
    let docs = Arc::new(data::generate(n.max(plan.cpu_docs)));
    let files = Setup {
        python: PathBuf::from("python3"),
        ray_python: plan.ray_python.clone(),
        ray_missing: plan.ray_missing.clone(),
        limit: plan.baseline_limit,
        data: dir.join("docs.ndjson"),
        dir: dir.join("baselines"),
        ray_tmp: dir.join("ray"),
        log: dir.join("baselines.log"),
    };
    if sel.queries || sel.cold || sel.cpu {
        std::fs::write(&files.data, &docs.ndjson)
            .with_context(|| format!("writing {}", files.data.display()))?;
        files.write(&functions())?;
    }
    let ctx = Ctx::for_node(node, primary)?;
    crate::step("deploying the query functions");
    for (src, name) in functions() {
        src.deploy(&ctx.client, &ctx.scratch, name, None, &[])
            .await?;
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

fn cache_args(mb: usize) -> Vec<String> {
    vec!["--query-cache-mb".into(), mb.to_string()]
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
    let batches_ms = write_docs(ctx, ORDERS, docs, n, plan.batch, plan.write_conns).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let view = ctx.client.category(ORDERS).await?;
    if view.docs != n as u64 {
        bail!(
            "the category holds {} documents after writing {n}",
            view.docs
        );
    }
    Ok(Writes {
        docs: n,
        bytes: docs.bytes_of_first(n),
        batch: plan.batch,
        conns: plan.write_conns,
        secs,
        batches_ms,
        store_bytes: std::fs::metadata(dir.join("data").join("shoal.redb"))
            .ok()
            .map(|m| m.len()),
        cpu,
    })
}

/// Writes the first `n` documents in batches, `conns` at a time; returns
/// each batch's latency (ms).
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
    let mut set = JoinSet::new();
    for _ in 0..conns.min(batches) {
        let (client, docs, next) = (ctx.client.clone(), docs.clone(), next.clone());
        let category = category.to_string();
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(lat);
                }
                let (from, to) = (b * batch, ((b + 1) * batch).min(n));
                let body = docs.lines(from, to).to_vec();
                let t = Instant::now();
                let written = tokio::time::timeout(
                    WRITE_LIMIT,
                    client.write_docs(&category, body, true, false),
                )
                .await
                .map_err(|_| anyhow!("writing documents {from}..{to} took over {WRITE_LIMIT:?}"))?
                .with_context(|| format!("writing documents {from}..{to}"))?;
                if written.written != (to - from) as u64 {
                    bail!("writing documents {from}..{to} wrote {}", written.written);
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

fn writes_section(w: &Writes) -> Section {
    let mut s = Section::new("writes");
    s.add(
        Figure::new("writes.docs", w.docs as f64 / w.secs)
            .setting(format!(
                "{} docs (~{} B each), batches of {}, {} connections",
                thousands(w.docs as f64),
                w.bytes / w.docs.max(1),
                thousands(w.batch as f64),
                w.conns
            ))
            .paren(format!(
                "{:.1} MB/s; {} in {}",
                w.bytes as f64 / 1e6 / w.secs,
                thousands(w.docs as f64),
                secs(w.secs)
            )),
    );
    s.detail(format!(
        "Writes: {:.0} MB of NDJSON; a batch took {} (median, max {}); the store file was {} \
         afterwards.",
        w.bytes as f64 / 1e6,
        fmt_ms(median(&w.batches_ms)),
        fmt_ms(crate::stats::max(&w.batches_ms)),
        w.store_bytes
            .map_or("unknown".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
    ));
    s.cpu("document writes", &w.cpu);
    s
}

// ----------------------------------------------------------------- queries

/// Runs one query and reads its final line.
async fn query(ctx: &Ctx, category: &str, function: &str, limit: Duration) -> Result<QueryRun> {
    let t = Instant::now();
    let last = tokio::time::timeout(limit, async {
        let mut lines = ctx.client.query(category, function, false, false).await?;
        let mut last = None;
        while let Some(line) = lines.next_line().await? {
            if !line.is_empty() {
                last = Some(line);
            }
        }
        anyhow::Ok(last)
    })
    .await
    .map_err(|_| anyhow!("the query of {function} took more than {limit:?}"))?
    .with_context(|| format!("the query of {function}"))?;
    let wall_ms = ms(t.elapsed());
    let last = last.context("the query answered nothing")?;
    let line: Value = serde_json::from_slice(&last).context("the query's last line")?;
    if let Some(e) = line.get("error") {
        bail!("the query of {function} failed: {e}");
    }
    let done = line
        .get("done")
        .with_context(|| format!("the query's last line is neither done nor error: {line}"))?;
    let num = |k: &str| done[k].as_u64().unwrap_or(0);
    Ok(QueryRun {
        wall_ms,
        node_ms: done["duration_ms"].as_f64().unwrap_or(f64::NAN),
        docs: num("docs"),
        shards: num("shards") as u32,
        cached_shards: num("cached_shards") as u32,
        result: done.get("result").cloned().unwrap_or(Value::Null),
    })
}

/// Runs `warmup + reps` rounds of `function`, each round on Shoal and then
/// on every baseline, so that all systems see the same background load.
/// Shoal's first query is kept as `first` (its workers start and read the
/// documents from the store); the warm-up rounds are not measured.
async fn rounds(
    ctx: &Ctx,
    b: &Beside<'_>,
    function: &str,
    limit: Duration,
    baselines: &mut [&mut baseline::Proc],
) -> Result<Series> {
    let (warmup, reps, docs) = (b.warmup, b.reps, b.docs);
    let mut first = None;
    let mut out = Vec::with_capacity(reps);
    let mut usage = Vec::with_capacity(reps);
    for round in 0..warmup + reps {
        let cpu0 = ctx.cpu();
        let r = query(ctx, b.category, function, limit).await?;
        let u = cpu0.usage_until(&ctx.cpu());
        if r.docs != docs as u64 {
            bail!("{function} processed {} documents, not {docs}", r.docs);
        }
        let mut line = format!(
            "  {function} round {}: Shoal {:.0} ms ({}/{} shards cached)",
            round + 1,
            r.wall_ms,
            r.cached_shards,
            r.shards
        );
        if round >= warmup {
            usage.push((r.wall_ms, u));
            out.push(r.clone());
        }
        first.get_or_insert(r);
        for p in baselines.iter_mut().filter(|p| p.failed.is_none()) {
            match p.run(function).await {
                Ok(s) => line.push_str(&format!(", {} {:.0} ms", p.label, s * 1000.0)),
                Err(e) => {
                    eprintln!("  {}: {e:#}", p.label);
                    p.failed = Some(format!("{e:#}"));
                }
            }
        }
        eprintln!("{line}");
    }
    let first = first.context("no rounds")?;
    if let Some(r) = out.iter().find(|r| r.result != first.result) {
        bail!(
            "{function} gave {} after {}: the result changed between queries",
            r.result,
            first.result
        );
    }
    Ok(Series {
        first,
        reps: out,
        cpu: Usage::weighted(&usage),
    })
}

/// Fails unless every `(system, result)` equals `expected` exactly.
fn check_results(what: &str, expected: &Value, got: &[(&str, &Value)]) -> Result<()> {
    let want = expected.as_f64();
    let show = |(s, v): &(&str, &Value)| format!("{s} = {v}");
    let bad: Vec<String> = got
        .iter()
        .filter(|(_, v)| v.as_f64().is_none() || v.as_f64() != want)
        .map(show)
        .collect();
    if !bad.is_empty() {
        let all: Vec<String> = got.iter().map(show).collect();
        bail!(
            "RESULT MISMATCH for {what}: expected {expected}; {} (all: {})",
            bad.join(", "),
            all.join(", ")
        );
    }
    Ok(())
}

/// Compares every system's result of `task` with `expected`.
fn check_all(
    task: &str,
    expected: &Value,
    shoal: &[&QueryRun],
    pool: &Baseline,
    ray: &Result<Baseline, String>,
) -> Result<()> {
    let mut got: Vec<(&str, &Value)> = shoal.iter().map(|r| ("Shoal", &r.result)).collect();
    got.push(("(a) Pool", pool.result(task)));
    if let Ok(r) = ray {
        got.push(("(b) Ray", r.result(task)));
    }
    check_results(task, expected, &got)
}

/// One query phase beside the baselines.
struct Beside<'a> {
    category: &'a str,
    /// `(function, mode)` of each query, in turn.
    tasks: &'a [(&'a str, &'a str)],
    /// The documents of the category: the first `docs` of the file.
    docs: usize,
    warmup: usize,
    reps: usize,
    /// Whether to sample the node's memory during the rounds.
    rss: bool,
}

/// Starts the baselines on the same documents, runs the rounds of each task
/// and ends them. Every system's first result must equal `expected`, or by
/// default Shoal's first.
async fn beside_baselines(
    ctx: &Ctx,
    files: &Setup,
    b: &Beside<'_>,
    limit: Duration,
    expected: Option<&Value>,
) -> Result<(Vec<Series>, Baseline, Result<Baseline, String>, Peak)> {
    let tasks: Vec<Value> = b
        .tasks
        .iter()
        .map(|(f, mode)| files.task(f, mode))
        .collect();
    let (mut pool, mut ray) = files.start(b.docs, &tasks).await?;
    let sampler = b.rss.then(|| Sampler::start(ctx.node_pid, RSS_EVERY));
    let mut series = Vec::new();
    for (function, _) in b.tasks {
        let mut procs: Vec<&mut baseline::Proc> = vec![&mut pool];
        procs.extend(ray.as_mut().ok());
        series.push(rounds(ctx, b, function, limit, &mut procs).await?);
    }
    let peak = sampler.map(Sampler::finish).unwrap_or_default();
    if let Some(e) = pool.failed.take() {
        bail!("baseline (a) failed: {e}");
    }
    let (pool, ray) = baseline::finish(pool, ray, b.warmup).await?;
    for ((function, _), s) in b.tasks.iter().zip(&series) {
        let want = expected.unwrap_or(&s.first.result);
        check_all(function, want, &[&s.first], &pool, &ray)?;
    }
    Ok((series, pool, ray, peak))
}

async fn warm(ctx: &Ctx, docs: &Docs, plan: &Plan, files: &Setup) -> Result<Warm> {
    let n = plan.docs;
    let b = Beside {
        category: ORDERS,
        tasks: &[(SUM_NAME, "map"), (BATCH_NAME, "batch")],
        docs: n,
        warmup: WARMUP,
        reps: plan.reps,
        rss: true,
    };
    let expected = json!(docs.total_of_first(n));
    let (mut series, pool, ray, peak) =
        beside_baselines(ctx, files, &b, plan.query_limit, Some(&expected)).await?;
    let batch = series.pop().context("no batch series")?;
    let sum = series.pop().context("no sum series")?;
    Ok(Warm {
        docs: n,
        bytes: docs.bytes_of_first(n),
        sum,
        batch,
        pool,
        ray,
        peak,
        cache_mb: plan.cache_mb,
        expected: docs.total_of_first(n),
    })
}

fn baseline_loads(w: &Warm) -> Loads {
    let first = |b: &Baseline| {
        b.tasks
            .get(SUM_NAME)
            .and_then(|t| t.first_s)
            .unwrap_or(f64::NAN)
    };
    Loads {
        pool: (w.pool.load.total_s, first(&w.pool)),
        ray: match &w.ray {
            Ok(r) => Ok((r.load.total_s, first(r), r.load.start_s)),
            Err(e) => Err(e.clone()),
        },
    }
}

fn series_detail(name: &str, s: &Series) -> String {
    let list = |f: fn(&QueryRun) -> String| -> String {
        s.reps.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    format!(
        "Shoal `{name}`: first query (workers start, documents read from the store) {} (node {}, \
         {}/{} shards cached); then {} (node's duration_ms {}; cached shards {}).",
        fmt_ms(s.first.wall_ms),
        fmt_ms(s.first.node_ms),
        s.first.cached_shards,
        s.first.shards,
        list(|r| fmt_ms(r.wall_ms)),
        list(|r| fmt_ms(r.node_ms)),
        list(|r| format!("{}/{}", r.cached_shards, r.shards))
    )
}

fn median_ms(runs: &[QueryRun]) -> f64 {
    median(&runs.iter().map(|r| r.wall_ms).collect::<Vec<_>>())
}

/// `(b) Ray 190 ms`, or that it was not measured.
fn ray_note(ray: &Result<Baseline, String>, task: &str) -> String {
    match ray {
        Ok(r) => format!("(b) Ray {}", fmt_ms(r.median_ms(task))),
        Err(_) => "(b) Ray not measured".into(),
    }
}

fn warm_section(w: &Warm) -> Section {
    let mut s = Section::new("queries");
    let docs = thousands(w.docs as f64);
    for (id, task, series) in [
        ("queries.map", SUM_NAME, &w.sum),
        ("queries.map_batch", BATCH_NAME, &w.batch),
    ] {
        s.add(
            Figure::new(id, median_ms(&series.reps))
                .vs(Ok(w.pool.median_ms(task)))
                .setting(format!("{docs} docs, {} rounds", series.reps.len()))
                .note(ray_note(&w.ray, task)),
        );
    }
    let ray = w.ray.as_ref().map(|r| r.median_ms(SUM_NAME));
    let mut ray_figure = Figure::of("queries.ray", ray);
    if let Ok(r) = &w.ray {
        ray_figure = ray_figure.note(format!(
            "`map_batch` {}; {}",
            fmt_ms(r.median_ms(BATCH_NAME)),
            r.version
        ));
    }
    s.add(ray_figure);
    s.add(
        Figure::new("queries.rss", w.peak.total_mib())
            .vs(Ok(w.cache_mb as f64))
            .setting(format!(
                "{docs} docs, {:.0} MB of JSON, `--query-cache-mb {}`",
                w.bytes as f64 / 1e6,
                w.cache_mb
            ))
            .paren(split(&w.peak))
            .flaw_if(w.peak.samples == 0, "no memory sample"),
    );
    s.detail(format!(
        "Queries: {docs} documents in {} shards, the same function modules \
         (`crates/shoal-bench/functions/`) for every system, the same expected total {} (exact: \
         prices are multiples of 0.25). (a) is `multiprocessing.Pool(2)` forked after the parent \
         parsed the file (worker k maps half k, the parent reduces the two partial results); (b) \
         is a local Ray instance with 2 actors that parsed their half of the lines. Each round ran \
         the query on Shoal, then (a), then (b), so that all three saw the same background load \
         (the other two sat idle meanwhile); the first {WARMUP} rounds were not timed (Shoal's \
         first query reads the store, (a)'s first runs copy pages shared with the parent).",
        w.sum.first.shards, w.expected
    ));
    s.detail(series_detail(SUM_NAME, &w.sum));
    s.detail(series_detail(BATCH_NAME, &w.batch));
    let both = [SUM_NAME, BATCH_NAME];
    s.detail(w.pool.detail("(a) Pool", &both));
    s.detail(match &w.ray {
        Ok(r) => r.detail("(b) Ray", &both),
        Err(e) => format!("(b) Ray was not measured: {}", one_line(e)),
    });
    s.detail(format!(
        "Memory during the Shoal queries: {}; RSS counts pages shared by forked workers once per \
         process.",
        peak_detail(&w.peak)
    ));
    s.cpu("repeated queries, `map` (Shoal)", &w.sum.cpu);
    s.cpu("repeated queries, `map_batch` (Shoal)", &w.batch.cpu);
    s
}

// -------------------------------------------------------- CPU-heavy map

async fn cpu_heavy(ctx: &Ctx, docs: &Arc<Docs>, plan: &Plan, files: &Setup) -> Result<CpuHeavy> {
    let n = plan.cpu_docs;
    ctx.client
        .create_category(CPU_CATEGORY, None)
        .await
        .context("creating the category")?;
    write_docs(ctx, CPU_CATEGORY, docs, n, plan.batch, 1).await?;
    // No warm-up: a run takes seconds; Shoal's first one includes starting
    // its query workers and reading the documents (a few tens of ms here).
    let b = Beside {
        category: CPU_CATEGORY,
        tasks: &[(CPU_NAME, "map")],
        docs: n,
        warmup: 0,
        reps: plan.cpu_reps,
        rss: false,
    };
    let (mut series, pool, ray, _) =
        beside_baselines(ctx, files, &b, plan.query_limit, None).await?;
    let s = series.pop().context("no series")?;
    Ok(CpuHeavy {
        docs: n,
        shoal: s.reps,
        pool,
        ray,
        cpu: s.cpu,
    })
}

fn cpu_section(c: &CpuHeavy) -> Section {
    let a = c.pool.median_ms(CPU_NAME);
    let mut s = Section::new("query-cpu");
    s.add(
        Figure::new("query-cpu.map", median_ms(&c.shoal))
            .vs(Ok(a))
            .setting(format!(
                "{} docs, ~{:.1} ms per doc in (a), {} rounds",
                thousands(c.docs as f64),
                a * 2.0 / c.docs as f64,
                c.shoal.len()
            ))
            .note(ray_note(&c.ray, CPU_NAME)),
    );
    let runs: Vec<String> = c
        .shoal
        .iter()
        .map(|q| {
            format!(
                "{} (node {}, {}/{} cached)",
                fmt_ms(q.wall_ms),
                fmt_ms(q.node_ms),
                q.cached_shards,
                q.shards
            )
        })
        .collect();
    s.detail(format!(
        "CPU-heavy: Shoal {} (the first run starts the workers).",
        runs.join(", ")
    ));
    s.detail(c.pool.detail("(a) Pool", &[CPU_NAME]));
    s.detail(match &c.ray {
        Ok(b) => b.detail("(b) Ray", &[CPU_NAME]),
        Err(e) => format!("(b) Ray was not measured: {}", one_line(e)),
    });
    s.cpu("CPU-heavy map (Shoal)", &c.cpu);
    s
}

// ------------------------------------------------------ after a restart

/// A restart of the node, then queries of the sum over the documents.
struct Restart {
    stop_s: f64,
    start_s: f64,
    runs: Vec<QueryRun>,
    peak: Peak,
    cpu: Usage,
}

/// Stops the node with SIGTERM, starts it with `args` on the same data and
/// runs the sum `queries` times, checking each result.
async fn restart(
    node: &mut Node,
    plan: &Plan,
    args: &[String],
    queries: usize,
    docs: &Docs,
) -> Result<Restart> {
    let (stop, start) = node.restart(args)?;
    let ctx = Ctx::for_node(node, true)?;
    let sampler = Sampler::start(ctx.node_pid, RSS_EVERY);
    let cpu0 = ctx.cpu();
    let runs = async {
        let mut runs = Vec::with_capacity(queries);
        for _ in 0..queries {
            runs.push(query(&ctx, ORDERS, SUM_NAME, plan.query_limit).await?);
        }
        anyhow::Ok(runs)
    }
    .await;
    let cpu = cpu0.usage_until(&ctx.cpu());
    let peak = sampler.finish();
    let expected = json!(docs.total_of_first(plan.docs));
    let runs = runs?;
    for q in &runs {
        check_results(SUM_NAME, &expected, &[("Shoal", &q.result)])?;
        if q.docs != plan.docs as u64 {
            bail!(
                "the query processed {} documents, not {}",
                q.docs,
                plan.docs
            );
        }
    }
    Ok(Restart {
        stop_s: stop.as_secs_f64(),
        start_s: start.as_secs_f64(),
        runs,
        peak,
        cpu,
    })
}

async fn cold(
    node: &mut Node,
    plan: &Plan,
    docs: &Docs,
    loads: Result<Loads, String>,
) -> Result<Cold> {
    let mut runs = Vec::with_capacity(plan.cold_runs);
    for _ in 0..plan.cold_runs {
        runs.push(restart(node, plan, &plan.node_args(), 1, docs).await?);
    }
    Ok(Cold {
        docs: plan.docs,
        runs,
        loads,
    })
}

fn cold_section(c: &Cold) -> Section {
    let beside = match &c.loads {
        Err(e) => format!("baselines not measured ({})", one_line(e)),
        Ok(Loads {
            pool: (load, first),
            ray,
        }) => {
            let a = format!(
                "(a) loads the file in {} (first query then {})",
                secs(*load),
                fmt_ms(first * 1000.0)
            );
            match ray {
                Ok((load, first, start)) => format!(
                    "{a}; (b) in {} (first query then {}; starting Ray {})",
                    secs(*load),
                    fmt_ms(first * 1000.0),
                    secs(*start)
                ),
                Err(e) => format!("{a}; (b) not measured ({})", one_line(e)),
            }
        }
    };
    let queries: Vec<QueryRun> = c.runs.iter().flat_map(|r| r.runs.clone()).collect();
    let mut s = Section::new("query-cold");
    s.add(
        Figure::new("query-cold.first", median_ms(&queries))
            .setting(format!(
                "{} docs, {} restarts",
                thousands(c.docs as f64),
                c.runs.len()
            ))
            .note(beside),
    );
    let runs: Vec<String> = c
        .runs
        .iter()
        .zip(&queries)
        .map(|(r, q)| {
            format!(
                "stop {} + start {} then query {} (node {}, {}/{} shards cached)",
                secs(r.stop_s),
                secs(r.start_s),
                fmt_ms(q.wall_ms),
                fmt_ms(q.node_ms),
                q.cached_shards,
                q.shards
            )
        })
        .collect();
    let peak = c.runs.iter().fold(Peak::default(), |p, r| p.max(r.peak));
    s.detail(format!(
        "Cold: {}; peak RSS {}.",
        runs.join("; "),
        peak_detail(&peak)
    ));
    if let Some(first) = c.runs.first() {
        s.cpu("first query after a restart (Shoal)", &first.cpu);
    }
    s
}

// ---------------------------------------------------- a small budget

async fn stream(node: &mut Node, plan: &Plan, docs: &Docs) -> Result<Stream> {
    let run = restart(node, plan, &cache_args(plan.stream_cache_mb), 2, docs).await?;
    Ok(Stream {
        docs: plan.docs,
        bytes: docs.bytes_of_first(plan.docs),
        cache_mb: plan.stream_cache_mb,
        run,
    })
}

fn stream_section(st: &Stream) -> Section {
    let runs: Vec<String> = st
        .run
        .runs
        .iter()
        .map(|r| {
            format!(
                "{} ({}/{} shards cached)",
                fmt_ms(r.wall_ms),
                r.cached_shards,
                r.shards
            )
        })
        .collect();
    let mut s = Section::new("query-stream");
    s.add(
        Figure::new("query-stream.rss", st.run.peak.total_mib())
            .vs(Ok(st.cache_mb as f64))
            .setting(format!(
                "`--query-cache-mb {}` over {} docs, {:.0} MB of JSON",
                st.cache_mb,
                thousands(st.docs as f64),
                st.bytes as f64 / 1e6
            ))
            .paren(split(&st.run.peak))
            .note(format!("queries took {}", runs.join(", then ")))
            .flaw_if(st.run.peak.samples == 0, "no memory sample"),
    );
    s.detail(format!(
        "Small budget: after a restart with `--query-cache-mb {}`, two queries: {}; peak RSS {}.",
        st.cache_mb,
        runs.join(", "),
        peak_detail(&st.run.peak)
    ));
    s.cpu(
        format!("queries with a {} MiB budget (Shoal)", st.cache_mb),
        &st.run.cpu,
    );
    s
}

/// The sections from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let run = |ms: f64, cached: u32| QueryRun {
        wall_ms: ms,
        node_ms: ms - 1.0,
        docs: 1000,
        shards: 8,
        cached_shards: cached,
        result: json!(12.5),
    };
    let series = |ms: f64| Series {
        first: run(ms * 10.0, 0),
        reps: vec![run(ms, 8), run(ms + 10.0, 8), run(ms - 10.0, 8)],
        cpu: Usage::default(),
    };
    let mut pool = Baseline::example(SUM_NAME, &[0.2, 0.19, 0.21], json!(12.5));
    let batch = Baseline::example(BATCH_NAME, &[0.18], json!(12.5));
    pool.tasks.extend(batch.tasks);
    let peak = Peak {
        total: 900 << 20,
        root: 100 << 20,
        descendants: 800 << 20,
        processes: 4,
        samples: 40,
    };
    let writes = Writes {
        docs: 1_000_000,
        bytes: 206_000_000,
        batch: 10_000,
        conns: 4,
        secs: 5.0,
        batches_ms: vec![180.0, 400.0],
        store_bytes: Some(300_000_000),
        cpu: Usage::default(),
    };
    let warm = Warm {
        docs: 1_000_000,
        bytes: 206_000_000,
        sum: series(280.0),
        batch: series(230.0),
        pool,
        ray: Err("Ray could not be installed: no wheel | for this Python".into()),
        peak,
        cache_mb: 2048,
        expected: 12.5,
    };
    let cpu = CpuHeavy {
        docs: 20_000,
        shoal: vec![run(10_500.0, 0), run(10_400.0, 8)],
        pool: Baseline::example(CPU_NAME, &[10.0, 10.2], json!(12.5)),
        ray: Ok(Baseline::example(CPU_NAME, &[10.8], json!(12.5))),
        cpu: Usage::default(),
    };
    let restart = |runs, total| Restart {
        stop_s: 0.2,
        start_s: 0.3,
        runs,
        peak: Peak { total, ..peak },
        cpu: Usage::default(),
    };
    let cold = Cold {
        docs: 1_000_000,
        runs: vec![restart(vec![run(4000.0, 0)], 900 << 20)],
        loads: Ok(Loads {
            pool: (5.7, 1.0),
            ray: Err("not installed".into()),
        }),
    };
    let stream = Stream {
        docs: 1_000_000,
        bytes: 206_000_000,
        cache_mb: 64,
        run: restart(vec![run(4100.0, 0), run(3900.0, 0)], 200 << 20),
    };
    vec![
        writes_section(&writes),
        warm_section(&warm),
        cpu_section(&cpu),
        cold_section(&cold),
        stream_section(&stream),
    ]
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
    fn figures_read_as_measured() {
        let all = examples();
        let cells: Vec<String> = all
            .iter()
            .flat_map(|s| &s.figures)
            .map(|f| f.judged().0)
            .collect();
        assert_eq!(cells[0], "200,000 docs/s (41.2 MB/s; 1,000,000 in 5.00 s)");
        assert_eq!(
            cells[1],
            "Shoal 280 ms vs (a) 200 ms: 1.40×; (b) Ray not measured"
        );
        assert!(
            cells[3].contains("no wheel \\| for this Python"),
            "{}",
            cells[3]
        );
        assert_eq!(
            cells[4],
            "900 MiB, budget 2,048 MiB (node 100 MiB, workers 800 MiB)"
        );
        assert!(
            cells[6].starts_with("4,000 ms; (a) loads the file in 5.70 s"),
            "{}",
            cells[6]
        );
        assert_eq!(all.iter().map(|s| s.cpu.len()).sum::<usize>(), 6);
    }
}
