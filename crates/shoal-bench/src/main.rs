//! `shoal-bench`: the benchmark driver behind `scripts/bench`.
//!
//! Starts a real `shoal serve` (release build) on a fresh data directory,
//! deploys the bench functions and measures, over HTTP: warm sync latency,
//! sync throughput, cold start, asynchronous end-to-end throughput, how
//! fast a warm numpy function gets a new worker, queue throughput beside
//! Celery (`queue.rs`), rate-limit accuracy against a strict mock vendor
//! (`ratelimit.rs`), a 100,000-child fan-out with fan-in (`fanout.rs`), and
//! (`queries.rs`) batched document writes and map/reduce queries over a
//! million documents beside Python baselines (multiprocessing, Ray) on the
//! same data. Prints a Markdown section with each figure beside its target
//! and appends it to `docs/benchmarks.md`.
//!
//! The client side runs on one thread (tokio `current_thread`) so that it
//! takes as little as possible from the cores it shares with the node.

mod celery;
mod cpu;
mod data;
mod fanout;
mod functions;
mod http;
mod http_compare;
mod node;
mod phases;
mod queries;
mod queue;
mod ratelimit;
mod report;
mod rss;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use phases::Ctx;
use report::{Phase, Results};

const PHASES: [&str; 13] = [
    "latency",
    "throughput",
    "cold",
    "numpy",
    "async",
    "queue",
    "ratelimit",
    "fanout",
    "writes",
    "queries",
    "query-cpu",
    "query-cold",
    "query-stream",
];

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
    /// query-cold, query-stream.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
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
    /// Keep the node's data directory and log after the run.
    #[arg(long)]
    keep: bool,
    /// Log filter of the node (its log goes to a file in the data directory).
    #[arg(long, default_value = "warn")]
    node_log: String,
}

/// Sizes of one run.
struct Plan {
    latency_n: usize,
    latency_warmup: usize,
    conns: Vec<usize>,
    warm: Duration,
    window: Duration,
    cold_runs: usize,
    async_m: usize,
    async_conns: usize,
    async_limit: Duration,
    numpy_rounds: usize,
    /// Celery's tasks (and kombu's messages) in the queue figures.
    celery_n: usize,
    /// Shoal's messages, one per invocation.
    queue_single_n: usize,
    /// Shoal's messages, batched invocations, and through the store alone.
    queue_batched_n: usize,
    queue_limit: Duration,
    ratelimit: ratelimit::Plan,
    ratelimit_limit: Duration,
    fanout_n: usize,
    fanout_limit: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                latency_n: 2000,
                latency_warmup: 200,
                conns: vec![8, 16, 32],
                warm: Duration::from_millis(300),
                window: Duration::from_secs(2),
                cold_runs: 3,
                async_m: 5000,
                async_conns: 16,
                async_limit: Duration::from_secs(60),
                numpy_rounds: 1,
                celery_n: 5_000,
                queue_single_n: 20_000,
                queue_batched_n: 50_000,
                queue_limit: Duration::from_secs(180),
                ratelimit: ratelimit::Plan {
                    limit: 50,
                    seconds: 6,
                },
                ratelimit_limit: Duration::from_secs(60),
                fanout_n: 20_000,
                fanout_limit: Duration::from_secs(300),
            }
        } else {
            Plan {
                latency_n: 5000,
                latency_warmup: 500,
                conns: vec![8, 16, 32],
                warm: Duration::from_millis(500),
                window: Duration::from_secs(5),
                cold_runs: 7,
                async_m: 20_000,
                async_conns: 16,
                async_limit: Duration::from_secs(120),
                numpy_rounds: 2,
                celery_n: 20_000,
                queue_single_n: 50_000,
                queue_batched_n: 200_000,
                queue_limit: Duration::from_secs(300),
                ratelimit: ratelimit::Plan {
                    limit: 50,
                    seconds: 12,
                },
                ratelimit_limit: Duration::from_secs(90),
                fanout_n: 100_000,
                fanout_limit: Duration::from_secs(600),
            }
        }
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
    for p in &args.only {
        if !PHASES.contains(&p.as_str()) && p != "http-client" {
            bail!("unknown phase {p:?}; choose from {}", PHASES.join(", "));
        }
    }
    let selected = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let plan = Plan::new(args.quick);
    let shoal = match &args.shoal {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating this binary's directory")?
            .join("shoal"),
    };
    let load_before = report::load_average();
    let started = Instant::now();

    let mut query_plan = queries::Plan::new(args.quick, ray_python(&args.ray_python));
    query_plan.ray_missing = args.ray_missing.clone().filter(|r| !r.trim().is_empty());
    let query_sel = queries::Selected {
        writes: selected("writes"),
        queries: selected("queries"),
        cold: selected("query-cold"),
        cpu: selected("query-cpu"),
        stream: selected("query-stream"),
    };
    let node_args = if query_sel.any() {
        query_plan.node_args()
    } else {
        Vec::new()
    };

    let tmp = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
    let mut node = node::Node::start(&shoal, tmp.path(), &args.node_log, &node_args)?;
    eprintln!(
        "shoal-bench: node {} (pid {}), data in {}",
        node.url,
        node.pid(),
        tmp.path().display()
    );
    let ctx = Ctx::for_node(&node, tmp.path().join("functions"))?;

    let echo_ready = if selected("latency")
        || selected("throughput")
        || args.only.iter().any(|o| o == "http-client")
    {
        step("deploying bench-echo");
        phases::deploy_echo(&ctx, phases::ECHO_NAME)
            .await
            .map_err(|e| format!("{e:#}"))
    } else {
        Ok(())
    };
    let needs_echo = |phase: &str| -> Option<String> {
        echo_ready
            .as_ref()
            .err()
            .filter(|_| selected(phase))
            .cloned()
    };

    if args.only.iter().any(|o| o == "http-client") {
        step("http clients: http.rs vs shoal-client, alternating, 3 rounds");
        let table = http_compare::run(
            &ctx,
            3,
            plan.latency_n,
            &plan.conns,
            plan.warm,
            plan.window,
        )
        .await?;
        println!("{table}");
    }

    let latency = if !selected("latency") {
        Phase::Skipped
    } else if let Some(e) = needs_echo("latency") {
        Phase::Failed(e)
    } else {
        step(&format!(
            "warm latency: {} sequential calls",
            plan.latency_n
        ));
        outcome(phases::latency(&ctx, plan.latency_n, plan.latency_warmup).await)
    };
    if let Phase::Done(l) = &latency {
        eprintln!("  p50 {:.3} ms, p99 {:.3} ms", l.p50_ms, l.p99_ms);
    }

    let throughput = if !selected("throughput") {
        Phase::Skipped
    } else if let Some(e) = needs_echo("throughput") {
        Phase::Failed(e)
    } else {
        let mut runs = Vec::new();
        let mut failure = None;
        for &c in &plan.conns {
            step(&format!(
                "sync throughput: {c} clients for {:?}",
                plan.window
            ));
            match phases::throughput(&ctx, c, plan.warm, plan.window).await {
                Ok(t) => {
                    eprintln!("  {:.0}/s ({} errors)", t.per_sec, t.errors);
                    runs.push(t);
                }
                Err(e) => {
                    failure = Some(format!("{c} clients: {e:#}"));
                    break;
                }
            }
        }
        match failure {
            Some(e) if runs.is_empty() => Phase::Failed(e),
            _ => Phase::Done(runs),
        }
    };

    let cold = if selected("cold") {
        step(&format!("cold start: {} new versions", plan.cold_runs));
        outcome(phases::cold_start(&ctx, plan.cold_runs).await)
    } else {
        Phase::Skipped
    };
    if let Phase::Done((s, _)) = &cold {
        let wall: Vec<String> = s.iter().map(|s| format!("{:.1}", s.wall_ms)).collect();
        eprintln!("  first calls (ms): {}", wall.join(", "));
    }

    let numpy = if selected("numpy") {
        step("numpy: deploying (pip install numpy), then growing the pool");
        outcome(phases::numpy(&ctx, plan.numpy_rounds).await)
    } else {
        Phase::Skipped
    };
    if let Phase::Done(n) = &numpy {
        let (q, _) = n.new_worker_ms();
        eprintln!("  new workers waited (ms): {q:.1?}");
    }

    let async_run = if selected("async") {
        step("deploying bench-async");
        match phases::deploy_echo(&ctx, phases::ASYNC_NAME).await {
            Err(e) => Phase::Failed(format!("{e:#}")),
            Ok(()) => {
                step(&format!(
                    "async end to end: {} invocations from {} clients",
                    plan.async_m, plan.async_conns
                ));
                outcome(
                    phases::async_e2e(&ctx, plan.async_m, plan.async_conns, plan.async_limit).await,
                )
            }
        }
    } else {
        Phase::Skipped
    };
    if let Phase::Done(a) = &async_run {
        eprintln!(
            "  accepted in {:.2} s, finished in {:.2} s ({} ok, {} failed)",
            a.accept_s, a.total_s, a.completed, a.failed
        );
    }

    let queue = if selected("queue") {
        let queue_plan = queue::Plan {
            celery_n: plan.celery_n,
            single_n: plan.queue_single_n,
            batched_n: plan.queue_batched_n,
            limit: plan.queue_limit,
            python: ray_python(&args.celery_python),
            redis_server: args.redis_server.clone(),
            celery_missing: args.celery_missing.clone().filter(|r| !r.trim().is_empty()),
        };
        Phase::Done(queue::run(&ctx, &queue_plan, tmp.path()).await)
    } else {
        Phase::Skipped
    };

    let rate_limit = if selected("ratelimit") {
        step(&format!(
            "rate limit: {} messages through a {}/s limiter to a vendor allowing {}/s",
            plan.ratelimit.messages(),
            plan.ratelimit.limit,
            plan.ratelimit.limit
        ));
        outcome(ratelimit::run(&ctx, &plan.ratelimit, plan.ratelimit_limit).await)
    } else {
        Phase::Skipped
    };
    if let Phase::Done(r) = &rate_limit {
        eprintln!(
            "  peak {} in 1 s, mean {:.1}/s, {} answered 429",
            r.peak_1s, r.mean_rate, r.too_many
        );
    }

    let fanout = if selected("fanout") {
        step(&format!(
            "fan-out: ctx.map of {} children with a fan-in",
            plan.fanout_n
        ));
        outcome(fanout::run(&ctx, plan.fanout_n, plan.fanout_limit).await)
    } else {
        Phase::Skipped
    };
    if let Phase::Done(f) = &fanout {
        eprintln!(
            "  fan-in started {:.2} s after the parent (ctx.map {:.2} s)",
            f.fanin_s, f.mapped_s
        );
    }

    drop(ctx);
    // Last: these restart the node.
    let others_ran = PHASES
        .iter()
        .take_while(|p| **p != "writes")
        .any(|p| selected(p));
    let query_results =
        queries::run(&mut node, tmp.path(), &query_plan, query_sel, others_ran).await;

    node.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    if warnings > 0 {
        eprintln!(
            "shoal-bench: the node logged {warnings} warnings or errors; the last ones:\n{}",
            node::tail(&log, 10)
        );
    }

    let mut command = String::from("scripts/bench");
    if args.quick {
        command.push_str(" --quick");
    }
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    let results = Results {
        command,
        quick: args.quick,
        load_before,
        latency,
        throughput,
        cold,
        async_run,
        numpy,
        queue,
        rate_limit,
        fanout,
        queries: query_results,
        total_s: started.elapsed().as_secs_f64(),
    };
    let section = report::render(&results);
    println!("{section}");
    if !args.no_append {
        report::append(&args.output, &section)?;
        eprintln!("shoal-bench: appended to {}", args.output.display());
    }
    if args.keep {
        let kept = tmp.keep();
        eprintln!("shoal-bench: kept {}", kept.display());
    }
    Ok(())
}

/// `path` made absolute (the baselines run from another directory).
fn ray_python(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() || path.components().count() == 1 {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn step(what: &str) {
    eprintln!("shoal-bench: {what}");
}

fn outcome<T>(r: Result<T>) -> Phase<T> {
    match r {
        Ok(v) => Phase::Done(v),
        Err(e) => {
            eprintln!("  failed: {e:#}");
            Phase::Failed(format!("{e:#}"))
        }
    }
}
