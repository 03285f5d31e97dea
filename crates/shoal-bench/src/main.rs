//! `shoal-bench`: the benchmark driver behind `scripts/bench`.
//!
//! Starts a real `shoal serve` (release build) on a fresh data directory,
//! deploys the bench functions and measures, over HTTP, the phases of the
//! target table (`target.rs`): invocations (`invoke.rs`), queues beside
//! Celery (`queue.rs`), rate-limit accuracy against a strict mock vendor
//! (`ratelimit.rs`), a fan-out with fan-in (`fanout.rs`), and document
//! writes and map/reduce queries beside Python baselines (`queries.rs`),
//! and several nodes on one Redis beside Celery (`cluster.rs`), blob
//! transfers beside `dd` (`blobs.rs`), bitfield batches (`bitfield.rs`),
//! result-cache hits (`cache.rs`) and a ranged scan beside the memmap limit,
//! Dask and Ray (`scan.rs`), and pixel placements fanned out to live
//! subscribers beside idle subscribers' memory (`live.rs`), and the
//! dashboard's first load in headless Chromium (`ui.rs`).
//! Each phase renders its own section of the report (`report.rs`), which is
//! printed and appended to `docs/benchmarks.md`.
//!
//! With `--compare-shoal OLD`, a second node runs OLD, and every selected
//! phase runs on both builds, one after the other. Which build goes first
//! alternates from phase to phase. The report shows both side by side.
//!
//! The client side runs on one thread (tokio `current_thread`) so that it
//! takes as little as possible from the cores it shares with the node.

mod baseline;
mod bitfield;
mod blobs;
mod cache;
mod celery;
mod cluster;
mod counts;
mod cpu;
mod data;
mod fanout;
mod functions;
mod http;
mod invoke;
mod list;
mod live;
mod node;
mod queries;
mod queue;
mod ratelimit;
mod redis_node;
mod report;
mod rss;
mod scan;
mod stats;
mod target;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use node::{Ctx, Node};
use report::{Meta, Run, Section};

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Measures a real Shoal node and appends the figures to docs/benchmarks.md.",
    args_override_self = true
)]
struct Args {
    /// Fewer samples, shorter windows, 200k instead of 1M documents.
    #[arg(long)]
    quick: bool,
    /// Run only these phases (comma-separated): latency, throughput, cold,
    /// numpy, async, queue, ratelimit, fanout, writes, queries, query-cpu,
    /// query-cold, query-stream, list, stats, cluster, blobs, bitfield, cache, scan,
    /// live, ui.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also run every selected phase against this `shoal` binary (an older
    /// build), alternating with the current one, and report both side by
    /// side.
    #[arg(long, value_name = "PATH")]
    compare_shoal: Option<PathBuf>,
    /// The Python interpreter with Ray installed, for baseline (b) of the
    /// query phases (`scripts/bench` installs Ray into this venv).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    ray_python: PathBuf,
    /// Why Ray could not be installed (set by `scripts/bench`): baseline (b)
    /// is then reported as a miss with this reason.
    #[arg(long, env = "SHOAL_BENCH_RAY_MISSING")]
    ray_missing: Option<String>,
    /// The Python interpreter with celery[redis] installed, for the Celery
    /// side of the queue phase (`scripts/bench` installs it into this venv).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    celery_python: PathBuf,
    /// Why Celery or redis-server could not be installed (set by
    /// `scripts/bench`): the Celery figures are then misses with this reason.
    #[arg(long, env = "SHOAL_BENCH_CELERY_MISSING")]
    celery_missing: Option<String>,
    /// The `redis-server` binary Celery's broker runs on.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// The `shoal` binary (default: next to this one).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Where to append the Markdown section.
    #[arg(long, default_value = "docs/benchmarks.md")]
    output: PathBuf,
    /// Print the section without appending it.
    #[arg(long)]
    no_append: bool,
    /// Keep the nodes' data directories and logs after the run.
    #[arg(long)]
    keep: bool,
    /// Log filter of the node (its log goes to a file in the data directory).
    #[arg(long, default_value = "warn")]
    node_log: String,
}

/// Sizes of one run.
struct Plan {
    invoke: invoke::Plan,
    queue: queue::Plan,
    ratelimit: ratelimit::Plan,
    ratelimit_limit: Duration,
    fanout_n: usize,
    fanout_limit: Duration,
    queries: queries::Plan,
    list: list::Plan,
    counts: counts::Plan,
    cluster: cluster::Plan,
    blobs: blobs::Plan,
    bitfield: bitfield::Plan,
    cache: cache::Plan,
    scan: scan::Plan,
    live: live::Plan,
    ui: ui::Plan,
    redis_server: PathBuf,
    redis_missing: Option<String>,
    node_log: String,
}

/// One `shoal` binary under test, with its node.
struct Build {
    label: String,
    shoal: PathBuf,
    dir: tempfile::TempDir,
    node: Node,
    ctx: Ctx,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        fn either<T>(quick: bool, q: T, full: T) -> T {
            if quick { q } else { full }
        }
        let q = args.quick;
        let pick = |quick: usize, full: usize| either(q, quick, full);
        let secs = |quick: u64, full: u64| Duration::from_secs(either(q, quick, full));
        let present = |r: &Option<String>| r.clone().filter(|r| !r.trim().is_empty());
        Plan {
            invoke: invoke::Plan {
                latency_n: pick(2000, 5000),
                latency_warmup: pick(200, 500),
                conns: vec![8, 16, 32],
                warm: Duration::from_millis(either(q, 300, 500)),
                window: secs(2, 5),
                cold_runs: pick(3, 21),
                async_m: pick(5000, 20_000),
                async_conns: 16,
                async_limit: secs(60, 120),
                numpy_rounds: pick(1, 2),
            },
            queue: queue::Plan {
                celery_n: pick(5_000, 20_000),
                single_n: pick(20_000, 50_000),
                batched_n: pick(50_000, 200_000),
                limit: secs(180, 300),
                python: absolute(&args.celery_python),
                redis_server: args.redis_server.clone(),
                celery_missing: present(&args.celery_missing),
            },
            ratelimit: ratelimit::Plan {
                limit: 50,
                seconds: either(q, 6, 12),
            },
            ratelimit_limit: secs(60, 90),
            fanout_n: pick(20_000, 100_000),
            fanout_limit: secs(300, 600),
            queries: queries::Plan::new(q, absolute(&args.ray_python), present(&args.ray_missing)),
            list: list::Plan {
                records: either(q, 200_000, 1_000_000),
                functions: 200,
                calls: 200,
            },
            counts: counts::Plan {
                records: either(q, 200_000, 1_000_000),
                functions: 200,
                calls: either(q, 20, 100),
            },
            cluster: cluster::Plan::new(
                q,
                absolute(&args.celery_python),
                args.redis_server.clone(),
                present(&args.celery_missing),
                args.node_log.clone(),
            ),
            blobs: blobs::Plan {
                bytes: either(q, 512, 4096) << 20,
                redis_bytes: either(q, 256, 1024) << 20,
                range: 16 << 20,
                in_flight: 4,
            },
            bitfield: bitfield::Plan {
                batch: 1000,
                clients: 4,
                window: secs(3, 5),
                calls: 4,
                batches: pick(15, 50),
            },
            cache: cache::Plan {
                n: pick(2000, 5000),
                warmup: 200,
            },
            scan: scan::Plan {
                bytes: either(q, 256, 2048) << 20,
                chunk: 64 << 20,
                warm: pick(3, 5),
                cold: pick(1, 3),
                python: absolute(&args.ray_python),
                ray_missing: present(&args.ray_missing),
                limit: secs(300, 600),
            },
            live: live::Plan {
                subscribers: 1000,
                reconnecting: 100,
                away: Duration::from_millis(300),
                publishers: 64,
                window: secs(2, 3),
                paced_rate: 2000.0,
                slow_rate: 500.0,
                paced_window: secs(2, 4),
                idle: 10_000,
                concurrency: 64,
                coalesce_ms: vec![10, 0],
            },
            ui: ui::Plan {
                records: pick(1000, 5000),
                runs: pick(3, 7),
            },
            redis_server: args.redis_server.clone(),
            redis_missing: present(&args.celery_missing),
            node_log: args.node_log.clone(),
        }
    }
}

impl Plan {
    /// How a phase starts its node on Redis, for `build`.
    fn redis(&self, build: &Build) -> redis_node::Spec {
        redis_node::Spec {
            shoal: build.shoal.clone(),
            redis_server: self.redis_server.clone(),
            missing: self.redis_missing.clone(),
            node_log: self.node_log.clone(),
        }
    }
}

impl Build {
    fn start(
        label: String,
        shoal: PathBuf,
        primary: bool,
        args: &Args,
        extra: &[String],
    ) -> Result<Build> {
        let dir = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
        let node = Node::start(&shoal, dir.path(), &args.node_log, extra)?;
        eprintln!(
            "shoal-bench: {label}: node {} (pid {}), data in {}",
            node.url,
            node.pid(),
            dir.path().display()
        );
        let ctx = Ctx::for_node(&node, primary)?;
        Ok(Build {
            label,
            shoal,
            dir,
            node,
            ctx,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let phases = target::phases();
    if let Some(p) = args.only.iter().find(|p| !phases.contains(&p.as_str())) {
        bail!("unknown phase {p:?}; choose from {}", phases.join(", "));
    }
    let selected = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let plan = Plan::new(&args);
    let this = match &args.shoal {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating this binary's directory")?
            .join("shoal"),
    };
    let load_before = report::load_average();
    let started = Instant::now();
    let query_sel = queries::Selected::new(selected);
    let node_args = if query_sel.any() {
        plan.queries.node_args()
    } else {
        Vec::new()
    };

    let mut builds = vec![Build::start(
        "this build".into(),
        this,
        true,
        &args,
        &node_args,
    )?];
    if let Some(old) = &args.compare_shoal {
        builds.push(Build::start(
            label(old),
            old.clone(),
            false,
            &args,
            &node_args,
        )?);
    }
    let mut sections: Vec<Vec<Section>> = builds.iter().map(|_| Vec::new()).collect();
    let node_phases: Vec<&'static str> = phases
        .iter()
        .copied()
        .filter(|p| selected(p) && !queries::PHASES.contains(p))
        .collect();
    for (i, &phase) in node_phases.iter().enumerate() {
        for b in order(i, builds.len()) {
            sections[b].push(run_phase(phase, &builds[b], &plan).await);
        }
    }
    if query_sel.any() {
        // The query phases restart the node (its idle workers would count in
        // its memory). Stop every node first, so that no other node runs
        // while one build's queries are measured.
        let restart = !node_phases.is_empty() || builds.len() > 1;
        if restart {
            for b in &mut builds {
                b.node.stop(Duration::from_secs(10));
            }
        }
        for b in order(node_phases.len(), builds.len()) {
            let build = &mut builds[b];
            step(&format!("query phases on {}", build.label));
            let dir = build.dir.path();
            let s = queries::run(
                &mut build.node,
                dir,
                &plan.queries,
                query_sel,
                restart,
                b == 0,
            )
            .await;
            print_figures(&s);
            sections[b].extend(s);
            build.node.stop(Duration::from_secs(10));
        }
    }

    let mut runs = Vec::new();
    for (b, sections) in builds.iter_mut().zip(sections) {
        b.node.stop(Duration::from_secs(10));
        warn_of_node_log(&b.label, &b.node.log_path);
        runs.push(Run {
            label: b.label.clone(),
            sections,
        });
    }
    let mut command = String::from("scripts/bench");
    if args.quick {
        command.push_str(" --quick");
    }
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    if let Some(old) = &args.compare_shoal {
        command.push_str(&format!(" --compare-shoal {}", old.display()));
    }
    let meta = Meta {
        command,
        quick: args.quick,
        load_before,
        total_s: started.elapsed().as_secs_f64(),
        builds: if builds.len() > 1 {
            let path = |b: &Build| b.shoal.display().to_string();
            builds.iter().map(|b| (b.label.clone(), path(b))).collect()
        } else {
            Vec::new()
        },
    };
    let section = report::render(&meta, &runs);
    println!("{section}");
    if !args.no_append {
        report::append(&args.output, &section)?;
        eprintln!("shoal-bench: appended to {}", args.output.display());
    }
    for b in builds {
        if args.keep {
            eprintln!("shoal-bench: kept {}", b.dir.keep().display());
        }
    }
    Ok(())
}

/// Runs one of the phases outside `queries.rs` on one build.
async fn run_phase(phase: &'static str, b: &Build, plan: &Plan) -> Section {
    step(&format!("{phase} on {}", b.label));
    let (ctx, p) = (&b.ctx, &plan.invoke);
    let r = match phase {
        "latency" => invoke::latency(ctx, p).await,
        "throughput" => invoke::throughput(ctx, p).await,
        "cold" => invoke::cold(ctx, p.cold_runs).await,
        "numpy" => invoke::numpy(ctx, p.numpy_rounds).await,
        "async" => invoke::async_e2e(ctx, p).await,
        "queue" => queue::run(ctx, &plan.queue, b.dir.path()).await,
        "ratelimit" => ratelimit::run(ctx, &plan.ratelimit, plan.ratelimit_limit).await,
        "fanout" => fanout::run(ctx, plan.fanout_n, plan.fanout_limit).await,
        "list" => list::run(&b.shoal, &plan.list).await,
        "stats" => counts::run(&b.shoal, &plan.counts).await,
        "cluster" => cluster::run(ctx, &b.shoal, b.dir.path(), &plan.cluster).await,
        "blobs" => blobs::run(ctx, &plan.blobs, &plan.redis(b), b.dir.path()).await,
        "bitfield" => bitfield::run(ctx, &plan.bitfield, &plan.redis(b), b.dir.path()).await,
        "cache" => cache::run(ctx, &plan.cache).await,
        "scan" => scan::run(ctx, &plan.scan, b.dir.path()).await,
        "live" => live::run(ctx, &plan.live, &b.shoal, b.dir.path(), &plan.node_log).await,
        "ui" => ui::run(ctx, &b.node.url, &b.node.token, &plan.ui).await,
        other => Err(anyhow::anyhow!("no phase {other} outside the query phases")),
    };
    let s = r.unwrap_or_else(|e| Section::failed(phase, &format!("{e:#}")));
    print_figures(std::slice::from_ref(&s));
    s
}

/// A build's name in the report: its directory's name for `DIR/shoal`
/// (`bench-before` for `/work/bench-before/shoal`), else its file name.
fn label(shoal: &Path) -> String {
    let dir = shoal.parent().and_then(Path::file_name);
    let name = match (shoal.file_name(), dir) {
        (Some(f), Some(d)) if f == "shoal" => d,
        (Some(f), _) => f,
        _ => shoal.as_os_str(),
    };
    name.to_string_lossy().into_owned()
}

/// The order in which the builds run the `i`-th phase: alternating.
fn order(i: usize, builds: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..builds).collect();
    if i % 2 == 1 {
        o.reverse();
    }
    o
}

fn print_figures(sections: &[Section]) {
    for f in sections.iter().flat_map(|s| &s.figures) {
        let (measured, verdict) = f.judged();
        eprintln!("  {}: {measured} ({verdict:?})", f.id);
    }
}

fn warn_of_node_log(label: &str, log: &Path) {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    if warnings > 0 {
        eprintln!(
            "shoal-bench: the node of {label} logged {warnings} warnings or errors; the last \
             ones:\n{}",
            node::tail(&log, 10)
        );
    }
}

/// `path` made absolute (the baselines run from another directory).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() || path.components().count() == 1 {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A progress line on stderr.
fn step(what: &str) {
    eprintln!("shoal-bench: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_named_after_their_directory() {
        assert_eq!(label(Path::new("/work/bench-before/shoal")), "bench-before");
        assert_eq!(label(Path::new("/tmp/shoal-old")), "shoal-old");
    }

    #[test]
    fn builds_take_turns_going_first() {
        assert_eq!(order(0, 1), [0]);
        assert_eq!(order(1, 1), [0]);
        assert_eq!(order(0, 2), [0, 1]);
        assert_eq!(order(1, 2), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
    }

    #[test]
    fn every_phase_is_run_by_someone() {
        // The phases of the table that `run_phase` does not know are the
        // query phases, and those are all in the table.
        for p in queries::PHASES {
            assert!(target::phases().contains(&p), "{p}");
        }
        let known = [
            "latency",
            "throughput",
            "cold",
            "numpy",
            "async",
            "queue",
            "ratelimit",
            "fanout",
            "list",
            "stats",
            "cluster",
            "blobs",
            "bitfield",
            "cache",
            "scan",
            "live",
            "ui",
        ];
        for p in target::phases() {
            assert!(known.contains(&p) || queries::PHASES.contains(&p), "{p}");
        }
    }
}
