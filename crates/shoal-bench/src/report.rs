//! The Markdown section a run produces: machine, commit, each figure beside
//! its target with PASS/MISS, details, and where the CPU went.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cpu::Usage;
use crate::fanout::Fanout;
use crate::phases::{AsyncRun, ColdSample, Latency, Numpy, Throughput};
use crate::queries::{self, Baseline, BaselineTask};
use crate::queue::{self, QueueResults};
use crate::ratelimit::RateLimit;
use crate::rss::{self, Peak};
use crate::stats::{fmt_ms, max, median, min, thousands, utc};

/// What a phase produced: its result, an error, or nothing (not selected).
pub enum Phase<T> {
    Done(T),
    Failed(String),
    Skipped,
}

pub struct Results {
    pub command: String,
    pub quick: bool,
    pub load_before: String,
    pub latency: Phase<Latency>,
    pub throughput: Phase<Vec<Throughput>>,
    pub cold: Phase<(Vec<ColdSample>, Usage)>,
    pub async_run: Phase<AsyncRun>,
    pub numpy: Phase<Numpy>,
    pub queue: Phase<QueueResults>,
    pub rate_limit: Phase<RateLimit>,
    pub fanout: Phase<Fanout>,
    pub queries: queries::Results,
    pub total_s: f64,
}

struct Row {
    figure: String,
    target: &'static str,
    measured: String,
    verdict: Verdict,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Pass,
    Miss,
    /// A figure reported without a target.
    Info,
    /// The phase was not run.
    Skipped,
}

impl From<bool> for Verdict {
    fn from(pass: bool) -> Verdict {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

pub fn render(r: &Results) -> String {
    let mut rows = Vec::new();
    let mut details: Vec<String> = Vec::new();
    let mut cpu: Vec<(String, Usage)> = Vec::new();

    // Warm latency.
    match &r.latency {
        Phase::Done(l) => {
            rows.push(Row {
                figure: format!(
                    "Warm sync invoke latency, p50 (1 client, keep-alive, n = {})",
                    thousands(l.n as f64)
                ),
                target: "≤ 1 ms",
                measured: format!("{} (p99 {})", fmt_ms(l.p50_ms), fmt_ms(l.p99_ms)),
                verdict: (l.p50_ms <= 1.0).into(),
            });
            details.push(format!(
                "Warm latency: p50 {}, p90 {}, p99 {}, max {}, mean {} over {} sequential calls; \
                 the client used {:.0} µs of CPU per call.",
                fmt_ms(l.p50_ms),
                fmt_ms(l.p90_ms),
                fmt_ms(l.p99_ms),
                fmt_ms(l.max_ms),
                fmt_ms(l.mean_ms),
                thousands(l.n as f64),
                l.cpu.client_cpu_s * 1e6 / l.n as f64
            ));
            cpu.push(("warm latency".into(), l.cpu.clone()));
        }
        other => rows.push(missing("Warm sync invoke latency, p50", "≤ 1 ms", other)),
    }

    // Sync throughput.
    match &r.throughput {
        Phase::Done(runs) if !runs.is_empty() => {
            let best = runs
                .iter()
                .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
                .expect("non-empty");
            let all: Vec<String> = runs
                .iter()
                .map(|t| format!("{}: {}/s", t.conns, thousands(t.per_sec)))
                .collect();
            rows.push(Row {
                figure: "Sync invocations/s, best over concurrent keep-alive clients".into(),
                target: "≥ 3,000/s",
                measured: format!(
                    "{}/s with {} clients ({})",
                    thousands(best.per_sec),
                    best.conns,
                    all.join(", ")
                ),
                verdict: (best.per_sec >= 3000.0).into(),
            });
            let counts: Vec<String> = runs
                .iter()
                .map(|t| {
                    format!(
                        "{} clients: {} calls, {} errors, client CPU {:.0} µs per call",
                        t.conns,
                        thousands(t.ok as f64),
                        t.errors,
                        t.cpu.client_cpu_s * 1e6 / t.ok.max(1) as f64
                    )
                })
                .collect();
            details.push(format!(
                "Sync throughput, answers within the measured window: {}.",
                counts.join("; ")
            ));
            for t in runs {
                cpu.push((
                    format!("sync throughput, {} clients", t.conns),
                    t.cpu.clone(),
                ));
            }
        }
        Phase::Done(_) => rows.push(missing(
            "Sync invocations/s",
            "≥ 3,000/s",
            &Phase::<()>::Skipped,
        )),
        other => rows.push(missing("Sync invocations/s", "≥ 3,000/s", other)),
    }

    // Cold start.
    match &r.cold {
        Phase::Done((samples, usage)) => {
            let wall: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
            let queued: Vec<f64> = samples.iter().filter_map(|s| s.queued_ms).collect();
            let dur: Vec<f64> = samples.iter().filter_map(|s| s.duration_ms).collect();
            let deploy: Vec<f64> = samples.iter().map(|s| s.deploy_ms).collect();
            let flagged = samples.iter().filter(|s| s.cold_start).count();
            rows.push(Row {
                figure: format!(
                    "Cold start: first call of a new version, median of {}",
                    samples.len()
                ),
                target: "≤ 150 ms",
                measured: format!(
                    "{} (min {}, max {}; queued_ms median {})",
                    fmt_ms(median(&wall)),
                    fmt_ms(min(&wall)),
                    fmt_ms(max(&wall)),
                    fmt_ms(median(&queued))
                ),
                verdict: (median(&wall) <= 150.0).into(),
            });
            details.push(format!(
                "Cold start: client-side wall times {}; the node's queued_ms {} and duration_ms {}; \
                 {flagged} of {} flagged cold_start; deploy took {} (median).",
                list_ms(&wall),
                list_ms(&queued),
                list_ms(&dur),
                samples.len(),
                fmt_ms(median(&deploy))
            ));
            cpu.push(("cold starts (with deploys)".into(), usage.clone()));
        }
        other => rows.push(missing("Cold start", "≤ 150 ms", other)),
    }

    // Async end to end.
    match &r.async_run {
        Phase::Done(a) => {
            let done = a.completed + a.failed;
            let per_s = done as f64 / a.total_s;
            rows.push(Row {
                figure: format!(
                    "Async invocations/s end to end ({} submitted by {} clients)",
                    thousands(a.m as f64),
                    a.conns
                ),
                target: "≥ 2,000/s",
                measured: if a.timed_out {
                    format!(
                        "{}/s: only {} of {} finished in {:.1} s",
                        thousands(per_s),
                        thousands(done as f64),
                        thousands(a.m as f64),
                        a.total_s
                    )
                } else {
                    format!(
                        "{}/s ({} in {:.2} s; accepted {}/s)",
                        thousands(per_s),
                        thousands(a.m as f64),
                        a.total_s,
                        thousands(a.m as f64 / a.accept_s)
                    )
                },
                verdict: (!a.timed_out && a.failed == 0 && per_s >= 2000.0).into(),
            });
            details.push(format!(
                "Async: all {} accepted after {:.2} s ({}/s), when {} had finished; last one finished at {:.2} s; \
                 {} succeeded, {} failed; the last accepted invocation reads `{}`.",
                thousands(a.m as f64),
                a.accept_s,
                thousands(a.m as f64 / a.accept_s),
                thousands(a.done_at_accept as f64),
                a.total_s,
                thousands(a.completed as f64),
                thousands(a.failed as f64),
                a.last_status
            ));
            cpu.push(("async end to end".into(), a.cpu.clone()));
        }
        other => rows.push(missing(
            "Async invocations/s end to end",
            "≥ 2,000/s",
            other,
        )),
    }

    // New numpy worker.
    match &r.numpy {
        Phase::Done(n) => {
            let (new, how) = n.new_worker_ms();
            let cold = n.cold_median_ms();
            let med = median(&new);
            rows.push(Row {
                figure: format!(
                    "New worker for a warm numpy function: queued_ms, median of {} (concurrency {})",
                    new.len(),
                    n.concurrency
                ),
                target: "≤ 20 ms",
                measured: format!(
                    "{} (max {}; cold start of that function {})",
                    fmt_ms(med),
                    fmt_ms(max(&new)),
                    fmt_ms(cold)
                ),
                verdict: (!new.is_empty() && med <= 20.0).into(),
            });
            for (i, round) in n.rounds.iter().enumerate() {
                let wave: Vec<String> = round
                    .wave
                    .iter()
                    .map(|(q, c)| {
                        format!("{}{}", fmt_ms(*q), if *c { " (cold_start)" } else { "" })
                    })
                    .collect();
                details.push(format!(
                    "Numpy round {}: first call {} wall (queued_ms {}); {} overlapping 300 ms calls waited {}.",
                    i + 1,
                    fmt_ms(round.cold_wall_ms),
                    round.cold_queued_ms.map_or("n/a".into(), fmt_ms),
                    round.wave.len(),
                    wave.join(", ")
                ));
            }
            details.push(format!(
                "Numpy: new-worker figures are {how}; the first deploy (pip install numpy into the function's \
                 virtualenv) took {}.",
                fmt_ms(n.deploy_ms)
            ));
            cpu.push(("numpy pool growth".into(), n.cpu.clone()));
        }
        other => rows.push(missing(
            "New worker for a warm numpy function",
            "≤ 20 ms",
            other,
        )),
    }

    render_queue(&r.queue, &mut rows, &mut details, &mut cpu);
    render_rate_limit(&r.rate_limit, &mut rows, &mut details, &mut cpu);
    render_fanout(&r.fanout, &mut rows, &mut details, &mut cpu);
    render_queries(&r.queries, &mut rows, &mut details, &mut cpu);

    let mut out = String::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi) = utc(now);
    let _ = writeln!(
        out,
        "## {y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC, commit {}\n",
        git_commit()
    );
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), Linux {}, {}; load average before the run: {}.  ",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        kernel(),
        python_version(),
        r.load_before
    );
    let _ = writeln!(
        out,
        "Run: `{}`{}; {:.0} s in all. Client, node and Python workers share the machine.\n",
        r.command,
        if r.quick {
            " (quick: fewer samples)"
        } else {
            ""
        },
        r.total_s
    );
    let _ = writeln!(out, "| Figure | Target | Measured | Result |");
    let _ = writeln!(out, "|---|---|---|---|");
    for row in &rows {
        let verdict = match row.verdict {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "info",
            Verdict::Skipped => "skipped",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.figure, row.target, row.measured, verdict
        );
    }
    if !details.is_empty() {
        let _ = writeln!(out, "\nDetails:\n");
        for d in &details {
            let _ = writeln!(out, "- {d}");
        }
    }
    if !cpu.is_empty() {
        let _ = writeln!(
            out,
            "\nCPU during each phase, as a share of the whole machine ({} cores = 100 %): the bench client \
             (its CPU includes the kernel's loopback TCP work for what it sends), the `shoal serve` process, \
             its descendants (Python templates and workers, pip), and everything else on the machine.\n",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(out, "| Phase | Busy | Client | Node | Python | Other |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for (name, u) in &cpu {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                pct(u.busy),
                pct(u.client),
                pct(u.node),
                pct(u.python),
                pct(u.other)
            );
        }
    }
    out
}

fn missing<T>(figure: &str, target: &'static str, phase: &Phase<T>) -> Row {
    let (measured, verdict) = match phase {
        Phase::Failed(e) => (format!("not measured: {}", one_line(e)), Verdict::Miss),
        _ => ("not run (see --only)".into(), Verdict::Skipped),
    };
    Row {
        figure: figure.into(),
        target,
        measured,
        verdict,
    }
}

/// An error on one table-safe line.
fn one_line(e: &str) -> String {
    let s: String = e
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn list_ms(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.iter().map(|x| fmt_ms(*x)).collect::<Vec<_>>().join(", ")
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

fn git_commit() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "`{c}`{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown".into(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown model".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn python_version() -> String {
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3 not found".into())
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

const HEADER: &str = "# Benchmarks

Figures measured by `scripts/bench` on a real node: it builds release
binaries, starts `shoal serve` on a fresh data directory, deploys the bench
functions (`crates/shoal-bench/functions/`), drives the node over HTTP with
keep-alive connections from a single-threaded client, prints a section like
the ones below and appends it here. Newest runs last.

    scripts/bench            # the full run (about 5 minutes after the build)
    scripts/bench --quick    # fewer samples, 200k instead of 1M documents
    scripts/bench --only writes,queries,query-cpu,query-cold,query-stream
    scripts/bench --help     # other flags (--no-append, --keep, ...)

The client, the node and the Python workers share the machine's cores, so the
CPU table of each run says where the time went. Other work running on the
machine at the same time (a build) skews the figures: see \"Other\" there.
";

/// Appends `section` to `path`, creating the file with its header if needed.
pub fn append(path: &Path, section: &str) -> Result<()> {
    use std::io::Write;
    let exists = path.exists();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !exists {
        writeln!(f, "{HEADER}")?;
    }
    writeln!(f, "{section}")?;
    Ok(())
}

// ----------------------------------------------------- queues, limits, jobs

/// Shoal's rate beside Celery's: the Measured cell and whether Shoal is at
/// least `times` as fast.
fn beside_celery(
    shoal: std::result::Result<(f64, bool), &str>,
    celery: std::result::Result<f64, &str>,
    celery_label: &str,
    times: f64,
) -> (String, Verdict) {
    match (shoal, celery) {
        (Err(e), _) => (format!("not measured: {}", one_line(e)), Verdict::Miss),
        (Ok((s, ok)), Ok(c)) => {
            let r = s / c;
            (
                format!(
                    "Shoal {}/s vs {celery_label} {}/s: {r:.1}×",
                    thousands(s),
                    thousands(c)
                ),
                (ok && r >= times).into(),
            )
        }
        (Ok((s, _)), Err(e)) => (
            format!(
                "Shoal {}/s; {celery_label} not measured: {}",
                thousands(s),
                one_line(e)
            ),
            Verdict::Miss,
        ),
    }
}

fn render_queue(
    q: &Phase<QueueResults>,
    rows: &mut Vec<Row>,
    details: &mut Vec<String>,
    cpu: &mut Vec<(String, Usage)>,
) {
    let q = match q {
        Phase::Done(q) => q,
        other => {
            for figure in [
                "Queue end to end, one message per invocation, vs Celery",
                "Queue end to end, batched invocations, vs Celery",
                "The queue alone vs Celery's broker alone",
            ] {
                rows.push(missing(figure, "≥ 3× Celery", other));
            }
            return;
        }
    };
    let n = match &q.celery {
        Ok(c) => thousands(c.n as f64),
        Err(_) => "n/a".into(),
    };
    let celery_rate = q.celery.as_ref().map(|c| c.per_s()).map_err(String::as_str);
    for (run, how) in [
        (&q.single, "one message per invocation"),
        (&q.batched, "a batch of messages per invocation"),
    ] {
        let shoal = run
            .as_ref()
            .map(|e| (e.per_s(), !e.timed_out && e.dead == 0))
            .map_err(String::as_str);
        let (measured, verdict) = beside_celery(shoal, celery_rate, "Celery", 3.0);
        let setting = match run {
            Ok(e) => format!(
                "{} messages, `batch_size = {}`, subscriber concurrency {}",
                thousands(e.n as f64),
                e.batch_size,
                e.concurrency
            ),
            Err(_) => how.to_string(),
        };
        rows.push(Row {
            figure: format!(
                "Queue end to end (send in batches of {} → trivial Python handler → ack), {how} ({setting}) vs \
                 Celery: {n} tasks, 2 prefork workers, Redis without persistence",
                thousands(queue::SEND_BATCH as f64)
            ),
            target: "≥ 3× Celery",
            measured,
            verdict,
        });
        if let Ok(e) = run {
            details.push(format!(
                "Queue end to end, Shoal, `batch_size = {}`: {} messages sent in {:.2} s, all acked after {:.2} s \
                 ({}/s){}; {} retried, {} dead-lettered; the node counted {} invocations of the subscriber ({} \
                 succeeded). Timed from the first send until `GET /v1/queues/{{name}}` counts them acked (polled \
                 every 10 ms), after 200 warm-up messages.",
                e.batch_size,
                thousands(e.n as f64),
                e.send_s,
                e.total_s,
                thousands(e.per_s()),
                if e.timed_out {
                    format!(" — only {} acked before the time limit", thousands(e.acked as f64))
                } else {
                    String::new()
                },
                e.retried,
                e.dead,
                thousands(e.invocations as f64),
                thousands(e.succeeded as f64)
            ));
            cpu.push((
                format!("queue end to end, Shoal, batch_size {}", e.batch_size),
                e.cpu.clone(),
            ));
        }
    }
    match &q.celery {
        Ok(c) => {
            details.push(format!(
                "Celery ({}): {n} tasks sent with `apply_async` over one producer connection in {:.2} s, all run after \
                 {:.2} s ({}/s); worker `--pool prefork --concurrency 2`, `task_acks_late` (acked after the task ran, \
                 as Shoal acks after the handler), prefetch multiplier 4, results ignored; each task increments a \
                 Redis counter that the client polls; 200 warm-up tasks first. Redis {}. Celery's processes and \
                 Redis count as \"Other\" in the CPU table.",
                c.version,
                c.send_s,
                c.total_s,
                thousands(c.per_s()),
                crate::celery::REDIS_SETTINGS
            ));
            cpu.push(("queue end to end, Celery (in Other)".into(), c.cpu.clone()));
        }
        Err(e) => details.push(format!("Celery was not measured: {}", one_line(e))),
    }

    let store = q
        .store
        .as_ref()
        .map(|s| (s.per_s(), true))
        .map_err(String::as_str);
    let broker = q.broker.as_ref().map(|b| b.per_s()).map_err(String::as_str);
    let (measured, verdict) = beside_celery(store, broker, "kombu", 3.0);
    let store_n = q
        .store
        .as_ref()
        .map_or("n/a".into(), |s| thousands(s.n as f64));
    rows.push(Row {
        figure: format!(
            "The queue alone, no handler: messages sent, then consumed and acked; Shoal's embedded store \
             in-process ({store_n} messages, sent in batches of {}, leases of ≤ {}, one ack per lease, every write \
             durable) vs Celery's broker alone (kombu, {n} messages, on Redis without persistence)",
            thousands(queue::SEND_BATCH as f64),
            queue::LEASE_MAX
        ),
        target: "≥ 3× Celery",
        measured,
        verdict,
    });
    if let Ok(s) = &q.store {
        details.push(format!(
            "Queue alone, Shoal (`RedbStore` in the bench process, a fresh file; `Queues::send` awaited per batch of \
             {}, then `lease` ≤ {} and `ack` per lease with up to {} acks in flight): send {:.2} s ({}/s), lease + ack \
             {:.2} s ({}/s) in {} leases; {} group commits (fsyncs) in all.",
            thousands(queue::SEND_BATCH as f64),
            queue::LEASE_MAX,
            queue::ACKS_IN_FLIGHT,
            s.send_s,
            thousands(s.n as f64 / s.send_s),
            s.drain_s,
            thousands(s.n as f64 / s.drain_s),
            thousands(s.leases as f64),
            thousands(s.commits as f64)
        ));
        cpu.push((
            "queue alone, Shoal's store (in Client)".into(),
            s.cpu.clone(),
        ));
    }
    match &q.broker {
        Ok(b) => {
            let drain = b.drain_s.unwrap_or(f64::NAN);
            details.push(format!(
                "Queue alone, Celery's broker ({}): kombu `Producer.publish` of {n} messages one by one in {:.2} s \
                 ({}/s), then a kombu `Consumer` (prefetch 100) received and acked each in {:.2} s ({}/s).",
                b.version,
                b.send_s,
                thousands(b.n as f64 / b.send_s),
                drain,
                thousands(b.n as f64 / drain)
            ));
            cpu.push(("queue alone, kombu (in Other)".into(), b.cpu.clone()));
        }
        Err(e) => details.push(format!(
            "Celery's broker alone was not measured: {}",
            one_line(e)
        )),
    }
}

fn render_rate_limit(
    r: &Phase<RateLimit>,
    rows: &mut Vec<Row>,
    details: &mut Vec<String>,
    cpu: &mut Vec<(String, Usage)>,
) {
    let r = match r {
        Phase::Done(r) => r,
        other => {
            rows.push(missing(
                "Rate limit: peak requests at the vendor in any 1 s window",
                "≤ the limit, no 429",
                other,
            ));
            rows.push(missing(
                "Rate limit: achieved rate as a share of the limit",
                "≥ 0.9 × the limit",
                other,
            ));
            return;
        }
    };
    let m = thousands(r.messages as f64);
    rows.push(Row {
        figure: format!(
            "Rate limit: most requests the mock vendor saw in any 1 s window (it allows {}/s; limiter {}/s, \
             burst 1; {m} queue messages, one vendor call each, subscriber concurrency {})",
            r.limit, r.limit, r.concurrency
        ),
        target: "≤ the limit, no 429",
        measured: format!(
            "{} in 1 s, {} answered 429",
            r.peak_1s,
            thousands(r.too_many as f64)
        ),
        verdict: (r.peak_1s <= u64::from(r.limit) && r.too_many == 0 && !r.timed_out).into(),
    });
    rows.push(Row {
        figure: format!(
            "Rate limit: achieved rate, the vendor's mean accepted rate from the first to the last of {m} calls, \
             as a share of {}/s",
            r.limit
        ),
        target: "≥ 0.9 × the limit",
        measured: format!("{:.1}/s: {:.2}×", r.mean_rate, r.share()),
        verdict: (r.share() >= 0.9 && !r.timed_out).into(),
    });
    details.push(format!(
        "Rate limit: `examples/vendor-pipeline/vendor.py --limit {} --fail-rate 0 --broken-every 0` saw {} requests \
         ({} ok, {} × 429), at most {} in any 1 s window ({} accepted); all {m} messages were acked {:.2} s after \
         they were sent{}. The handler GETs the URL in its message with urllib and returns the status (a 429 is \
         not retried, so the vendor counts each message once).",
        r.limit,
        thousands(r.requests as f64),
        thousands(r.ok as f64),
        thousands(r.too_many as f64),
        r.peak_1s,
        r.peak_accepted_1s,
        r.total_s,
        if r.timed_out {
            " — NOT all acked before the time limit"
        } else {
            ""
        }
    ));
    cpu.push(("rate limit".into(), r.cpu.clone()));
}

fn render_fanout(
    f: &Phase<Fanout>,
    rows: &mut Vec<Row>,
    details: &mut Vec<String>,
    cpu: &mut Vec<(String, Usage)>,
) {
    let f = match f {
        Phase::Done(f) => f,
        other => {
            rows.push(missing(
                "Fan-out with fan-in: fan-in start − parent start",
                "≤ 60 s",
                other,
            ));
            return;
        }
    };
    let n = thousands(f.n as f64);
    let complete = f.failed == 0 && f.succeeded == f.n as u64 && f.fanin_count == f.n as u64;
    rows.push(Row {
        figure: format!(
            "Fan-out: a parent's `ctx.map` of {n} trivial children with a fan-in (child concurrency {}): fan-in \
             start − parent start",
            f.child_concurrency
        ),
        target: "≤ 60 s",
        measured: format!(
            "{:.1} s (`ctx.map` took {:.2} s; children {}/s){}",
            f.fanin_s,
            f.mapped_s,
            thousands(f.children_per_s()),
            if complete {
                String::new()
            } else {
                format!(
                    "; {} succeeded, {} failed, fan-in count {}",
                    f.succeeded, f.failed, f.fanin_count
                )
            }
        ),
        verdict: (complete && f.fanin_s <= 60.0).into(),
    });
    details.push(format!(
        "Fan-out, seconds after the parent's `t0` (`time.time()` in the parent and in the fan-in): events built \
         {:.2}, `ctx.map` returned {:.2} (the job, {n} invocation records and {n} queue messages in one store \
         write), job finished {:.2} (the node's `finished_at_ms`), fan-in started {:.2}; {} succeeded, {} failed or \
         cancelled; the fan-in got count {}; the synchronous parent call took {:.2} s.",
        f.built_s,
        f.mapped_s,
        f.finished_s,
        f.fanin_s,
        thousands(f.succeeded as f64),
        thousands(f.failed as f64),
        thousands(f.fanin_count as f64),
        f.parent_wall_s
    ));
    cpu.push(("fan-out".into(), f.cpu.clone()));
}

// ------------------------------------------------------------ query figures

fn secs(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.2} s")
    } else {
        "n/a".into()
    }
}

fn mib(p: &Peak) -> String {
    format!("{} MiB", thousands(p.total_mib()))
}

fn peak_detail(p: &Peak) -> String {
    format!(
        "{} (root process {} MiB + descendants {} MiB, {} processes; {} samples)",
        mib(p),
        thousands(rss::mib(p.root)),
        thousands(rss::mib(p.descendants)),
        p.processes,
        p.samples
    )
}

/// `(a) 190 ms`-style cell for a baseline task.
fn baseline_ms(b: &Baseline, task: &str) -> f64 {
    b.task(task).map_or(f64::NAN, BaselineTask::median_ms)
}

fn ratio(shoal: f64, base: f64) -> f64 {
    shoal / base
}

fn baseline_detail(label: &str, b: &Baseline, tasks: &[&str]) -> String {
    let mut parts = Vec::new();
    for t in tasks {
        if let Some(x) = b.task(t) {
            let times: Vec<String> = x.times_s.iter().map(|s| fmt_ms(s * 1000.0)).collect();
            parts.push(format!(
                "`{t}` {} (first run {})",
                times.join(", "),
                x.first_s.map_or("n/a".into(), |s| fmt_ms(s * 1000.0))
            ));
        }
    }
    let start = if b.load.start_s > 0.0 {
        format!(
            "starting Ray and the actors took {}; ",
            secs(b.load.start_s)
        )
    } else {
        String::new()
    };
    format!(
        "{label} ({}, {} documents): {start}loading took {} (read {}, json.loads {}, distribute {}); runs: {}; \
         peak RSS of its process tree {}; {} in all.",
        b.version,
        thousands(b.docs as f64),
        secs(b.load.total_s),
        secs(b.load.read_s),
        secs(b.load.parse_s),
        secs(b.load.distribute_s),
        parts.join("; "),
        peak_detail(&b.peak),
        secs(b.wall_s)
    )
}

fn series_detail(name: &str, s: &queries::ShoalSeries) -> String {
    let wall: Vec<String> = s.reps.iter().map(|r| fmt_ms(r.wall_ms)).collect();
    let node: Vec<String> = s.reps.iter().map(|r| fmt_ms(r.node_ms)).collect();
    let cached: Vec<String> = s
        .reps
        .iter()
        .map(|r| format!("{}/{}", r.cached_shards, r.shards))
        .collect();
    format!(
        "Shoal `{name}`: first query (workers start, documents read from the store) {} (node {}, {}/{} shards cached); \
         then {} (node's duration_ms {}; cached shards {}).",
        fmt_ms(s.first.wall_ms),
        fmt_ms(s.first.node_ms),
        s.first.cached_shards,
        s.first.shards,
        wall.join(", "),
        node.join(", "),
        cached.join(", ")
    )
}

fn render_queries(
    q: &queries::Results,
    rows: &mut Vec<Row>,
    details: &mut Vec<String>,
    cpu: &mut Vec<(String, Usage)>,
) {
    let overhead = q.plan_overhead_mb as f64;

    // Writes.
    match &q.writes {
        Phase::Done(w) => {
            let per_s = w.docs as f64 / w.secs;
            rows.push(Row {
                figure: format!(
                    "Batched durable document writes: {} docs (~{} B each) as NDJSON, batches of {}, {} connections",
                    thousands(w.docs as f64),
                    w.bytes / w.docs.max(1),
                    thousands(w.batch as f64),
                    w.conns
                ),
                target: "≥ 100,000 docs/s",
                measured: format!(
                    "{} docs/s, {:.1} MB/s ({} in {})",
                    thousands(per_s),
                    w.bytes as f64 / 1e6 / w.secs,
                    thousands(w.docs as f64),
                    secs(w.secs)
                ),
                verdict: (per_s >= 100_000.0).into(),
            });
            details.push(format!(
                "Writes: {:.0} MB of NDJSON; a batch took {} (median, max {}); the store file was {} afterwards.",
                w.bytes as f64 / 1e6,
                fmt_ms(w.batch_p50_ms),
                fmt_ms(w.batch_max_ms),
                w.store_bytes
                    .map_or("unknown".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
            ));
            cpu.push(("document writes".into(), w.cpu.clone()));
        }
        other => rows.push(missing(
            "Batched durable document writes",
            "≥ 100,000 docs/s",
            other,
        )),
    }

    // Repeated queries and the baselines.
    match &q.warm {
        Phase::Done(w) => {
            let ray_ms = |task: &str| match &w.ray {
                Ok(r) => format!("(b) Ray {}", fmt_ms(baseline_ms(r, task))),
                Err(_) => "(b) Ray not measured".into(),
            };
            for (task, series, target, limit, how) in [
                (
                    queries::SUM_NAME,
                    &w.sum,
                    "≤ 1.5× (a)",
                    1.5,
                    "`map` + `reduce` per document",
                ),
                (
                    queries::BATCH_NAME,
                    &w.batch,
                    "≤ 1.2× (a)",
                    1.2,
                    "`map_batch` + `reduce`",
                ),
            ] {
                let shoal = series.median_ms();
                let a = baseline_ms(&w.pool, task);
                let r = ratio(shoal, a);
                rows.push(Row {
                    figure: format!(
                        "Repeated query, {} docs, {how}: Shoal vs (a) `multiprocessing.Pool(2)` holding the documents (medians of {})",
                        thousands(w.docs as f64),
                        series.reps.len()
                    ),
                    target,
                    measured: format!(
                        "Shoal {} vs (a) {}: {r:.2}×; {}",
                        fmt_ms(shoal),
                        fmt_ms(a),
                        ray_ms(task)
                    ),
                    verdict: (r <= limit).into(),
                });
            }
            rows.push(match &w.ray {
                Ok(r) => Row {
                    figure: "(b) Ray, 2 actors holding the documents, beside (a)".into(),
                    target: "measured",
                    measured: format!(
                        "{}: per document {}, `map_batch` {}",
                        r.version,
                        fmt_ms(baseline_ms(r, queries::SUM_NAME)),
                        fmt_ms(baseline_ms(r, queries::BATCH_NAME))
                    ),
                    verdict: Verdict::Pass,
                },
                Err(e) => Row {
                    figure: "(b) Ray, 2 actors holding the documents, beside (a)".into(),
                    target: "measured",
                    measured: format!("not measured: {}", one_line(e)),
                    verdict: Verdict::Miss,
                },
            });
            let budget = w.cache_mb as f64;
            rows.push(Row {
                figure: format!(
                    "Peak RSS of the node and its workers during the {}-doc queries ({:.0} MB of JSON)",
                    thousands(w.docs as f64),
                    w.bytes as f64 / 1e6
                ),
                target: "≤ budget + 256 MiB",
                measured: format!(
                    "{} with `--query-cache-mb {}` (node {} MiB, workers {} MiB)",
                    mib(&w.peak),
                    w.cache_mb,
                    thousands(rss::mib(w.peak.root)),
                    thousands(rss::mib(w.peak.descendants))
                ),
                verdict: (w.peak.samples > 0 && w.peak.total_mib() <= budget + overhead).into(),
            });
            details.push(format!(
                "Queries: {} documents in {} shards, the same function modules (`crates/shoal-bench/functions/`) \
                 for every system, the same expected total {} (exact: prices are multiples of 0.25). (a) is \
                 `multiprocessing.Pool(2)` forked after the parent parsed the file (worker k maps half k, the parent \
                 reduces the two partial results); (b) is a local Ray instance with 2 actors that parsed their half \
                 of the lines. Each round ran the query on Shoal, then (a), then (b), so that all three saw the same \
                 background load (the other two sat idle meanwhile); the first 2 rounds were not timed (Shoal's first \
                 query reads the store, (a)'s first runs copy pages shared with the parent).",
                thousands(w.docs as f64),
                w.shards,
                w.expected
            ));
            details.push(series_detail(queries::SUM_NAME, &w.sum));
            details.push(series_detail(queries::BATCH_NAME, &w.batch));
            details.push(baseline_detail(
                "(a) Pool",
                &w.pool,
                &[queries::SUM_NAME, queries::BATCH_NAME],
            ));
            match &w.ray {
                Ok(r) => details.push(baseline_detail(
                    "(b) Ray",
                    r,
                    &[queries::SUM_NAME, queries::BATCH_NAME],
                )),
                Err(e) => details.push(format!("(b) Ray was not measured: {}", one_line(e))),
            }
            details.push(format!(
                "Memory during the Shoal queries: {}; RSS counts pages shared by forked workers once per process.",
                peak_detail(&w.peak)
            ));
            cpu.push(("repeated queries, `map` (Shoal)".into(), w.sum.cpu.clone()));
            cpu.push((
                "repeated queries, `map_batch` (Shoal)".into(),
                w.batch.cpu.clone(),
            ));
        }
        other => {
            rows.push(missing(
                "Repeated query, `map` + `reduce` per document, vs (a)",
                "≤ 1.5× (a)",
                other,
            ));
            rows.push(missing(
                "Repeated query, `map_batch` + `reduce`, vs (a)",
                "≤ 1.2× (a)",
                other,
            ));
            rows.push(missing(
                "Peak RSS of the node and its workers during the queries",
                "≤ budget + 256 MiB",
                other,
            ));
        }
    }

    // Cold.
    match &q.cold {
        Phase::Done(c) => {
            let mut beside = Vec::new();
            if let Some((load, first)) = c.pool {
                beside.push(format!(
                    "(a) loads the file in {} (first query then {})",
                    secs(load),
                    fmt_ms(first * 1000.0)
                ));
            }
            if let Some((load, first, start)) = c.ray {
                beside.push(format!(
                    "(b) in {} (first query then {}; starting Ray {})",
                    secs(load),
                    fmt_ms(first * 1000.0),
                    secs(start)
                ));
            } else if let Some(e) = &c.ray_error {
                beside.push(format!("(b) not measured ({})", one_line(e)));
            }
            rows.push(Row {
                figure: format!(
                    "First query after a node restart (SIGTERM, start on the same data), {} docs, median of {}",
                    thousands(c.docs as f64),
                    c.runs.len()
                ),
                target: "beside (a), (b) loading the file",
                measured: format!(
                    "Shoal {}; {}",
                    fmt_ms(c.median_ms()),
                    if beside.is_empty() {
                        "baselines not run".into()
                    } else {
                        beside.join("; ")
                    }
                ),
                verdict: Verdict::Info,
            });
            let runs: Vec<String> = c
                .runs
                .iter()
                .map(|r| {
                    format!(
                        "stop {} + start {} then query {} (node {}, {}/{} shards cached)",
                        secs(r.stop_s),
                        secs(r.start_s),
                        fmt_ms(r.query.wall_ms),
                        fmt_ms(r.query.node_ms),
                        r.query.cached_shards,
                        r.query.shards
                    )
                })
                .collect();
            details.push(format!(
                "Cold: {}; peak RSS {}.",
                runs.join("; "),
                peak_detail(&c.peak)
            ));
            cpu.push(("first query after a restart (Shoal)".into(), c.cpu.clone()));
        }
        other => rows.push(missing(
            "First query after a node restart",
            "beside (a), (b) loading the file",
            other,
        )),
    }

    // CPU-heavy map.
    match &q.cpu_heavy {
        Phase::Done(c) => {
            let shoal = c.shoal_median_ms();
            let a = baseline_ms(&c.pool, queries::CPU_NAME);
            let r = ratio(shoal, a);
            let ray = match &c.ray {
                Ok(b) => format!("(b) Ray {}", fmt_ms(baseline_ms(b, queries::CPU_NAME))),
                Err(_) => "(b) Ray not measured".into(),
            };
            rows.push(Row {
                figure: format!(
                    "{} docs, CPU-heavy pure-Python `map` (~{:.1} ms per doc in (a)): Shoal vs (a), medians of {}",
                    thousands(c.docs as f64),
                    a * 2.0 / c.docs as f64,
                    c.shoal.len()
                ),
                target: "≤ 1.1× (a)",
                measured: format!(
                    "Shoal {} vs (a) {}: {r:.2}×; {ray}",
                    fmt_ms(shoal),
                    fmt_ms(a)
                ),
                verdict: (r <= 1.1).into(),
            });
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
            details.push(format!(
                "CPU-heavy: Shoal {} (the first run starts the workers).",
                runs.join(", ")
            ));
            details.push(baseline_detail("(a) Pool", &c.pool, &[queries::CPU_NAME]));
            match &c.ray {
                Ok(b) => details.push(baseline_detail("(b) Ray", b, &[queries::CPU_NAME])),
                Err(e) => details.push(format!("(b) Ray was not measured: {}", one_line(e))),
            }
            cpu.push(("CPU-heavy map (Shoal)".into(), c.cpu.clone()));
        }
        other => rows.push(missing(
            "CPU-heavy pure-Python `map`: Shoal vs (a)",
            "≤ 1.1× (a)",
            other,
        )),
    }

    // A small budget.
    match &q.stream {
        Phase::Done(s) => {
            let budget = s.cache_mb as f64;
            let runs: Vec<String> = s
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
            rows.push(Row {
                figure: format!(
                    "Query with `--query-cache-mb {}` over {} docs ({:.0} MB of JSON): peak RSS of node + workers",
                    s.cache_mb,
                    thousands(s.docs as f64),
                    s.bytes as f64 / 1e6
                ),
                target: "≤ budget + 256 MiB",
                measured: format!(
                    "{} (node {} MiB, workers {} MiB); queries took {}",
                    mib(&s.peak),
                    thousands(rss::mib(s.peak.root)),
                    thousands(rss::mib(s.peak.descendants)),
                    runs.join(", then ")
                ),
                verdict: (s.peak.samples > 0 && s.peak.total_mib() <= budget + overhead).into(),
            });
            details.push(format!(
                "Small budget: after a restart with `--query-cache-mb {}`, two queries: {}; peak RSS {}.",
                s.cache_mb,
                runs.join(", "),
                peak_detail(&s.peak)
            ));
            cpu.push((
                format!("queries with a {} MiB budget (Shoal)", s.cache_mb),
                s.cpu.clone(),
            ));
        }
        other => rows.push(missing(
            "Query with a budget far smaller than the data: peak RSS",
            "≤ budget + 256 MiB",
            other,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::queries::{ColdRun, CpuHeavy, Load, QueryRun, ShoalSeries, Stream, Warm, Writes};

    fn run(ms: f64, cached: u32) -> QueryRun {
        QueryRun {
            wall_ms: ms,
            node_ms: ms - 1.0,
            docs: 1000,
            shards: 8,
            cached_shards: cached,
            result: json!(12.5),
        }
    }

    fn baseline(task: &str, times: &[f64]) -> Baseline {
        let mut tasks = HashMap::new();
        tasks.insert(
            task.to_string(),
            BaselineTask {
                first_s: Some(1.0),
                times_s: times.to_vec(),
                result: json!(12.5),
            },
        );
        Baseline {
            version: "Python 3.11.7".into(),
            docs: 1000,
            load: Load {
                start_s: 0.0,
                read_s: 0.5,
                parse_s: 5.0,
                distribute_s: 0.2,
                total_s: 5.7,
            },
            tasks,
            peak: Peak {
                total: 3 << 30,
                root: 1 << 30,
                descendants: 2 << 30,
                processes: 3,
                samples: 10,
            },
            wall_s: 9.0,
        }
    }

    #[test]
    fn renders_the_queue_limit_and_fanout_figures() {
        use crate::queue::{CeleryRun, E2e, StoreAlone};
        let e2e = |batch_size: u32, total_s: f64| E2e {
            batch_size,
            concurrency: 4,
            n: 10_000,
            invocations: 10_000 / u64::from(batch_size),
            succeeded: 10_000 / u64::from(batch_size),
            send_s: 0.1,
            total_s,
            acked: 10_000,
            retried: 0,
            dead: 0,
            timed_out: false,
            cpu: Usage::default(),
        };
        let celery = |total_s: f64| CeleryRun {
            n: 1_000,
            send_s: 0.5,
            drain_s: Some(0.5),
            total_s,
            version: "Celery 5".into(),
            cpu: Usage::default(),
        };
        let q = Phase::Done(QueueResults {
            single: Ok(e2e(1, 2.0)),      // 5,000/s vs 1,000/s: 5×
            batched: Ok(e2e(100, 100.0)), // 100/s: a miss
            celery: Ok(celery(1.0)),
            store: Ok(StoreAlone {
                n: 10_000,
                send_s: 0.1,
                drain_s: 0.1,
                leases: 100,
                commits: 30,
                cpu: Usage::default(),
            }),
            broker: Err("kombu | failed".into()),
        });
        let r = Phase::Done(RateLimit {
            limit: 50,
            messages: 600,
            concurrency: 4,
            total_s: 12.5,
            timed_out: false,
            requests: 600,
            ok: 599,
            too_many: 1,
            peak_1s: 51,
            peak_accepted_1s: 50,
            mean_rate: 47.0,
            cpu: Usage::default(),
        });
        let f = Phase::Done(Fanout {
            n: 100_000,
            child_concurrency: 4,
            built_s: 0.05,
            mapped_s: 2.0,
            finished_s: 15.0,
            fanin_s: 15.2,
            parent_wall_s: 2.1,
            succeeded: 100_000,
            failed: 0,
            fanin_count: 100_000,
            cpu: Usage::default(),
        });
        let (mut rows, mut details, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        render_queue(&q, &mut rows, &mut details, &mut cpu);
        render_rate_limit(&r, &mut rows, &mut details, &mut cpu);
        render_fanout(&f, &mut rows, &mut details, &mut cpu);
        let verdicts: Vec<Verdict> = rows.iter().map(|r| r.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pass, // 5.0× Celery
                Verdict::Miss, // 0.1× Celery
                Verdict::Miss, // the broker was not measured
                Verdict::Miss, // 51 in a second and a 429
                Verdict::Pass, // 0.94 of the limit
                Verdict::Pass, // 15.2 s
            ]
        );
        let text: Vec<&str> = rows.iter().map(|r| r.measured.as_str()).collect();
        assert_eq!(text[0], "Shoal 5,000/s vs Celery 1,000/s: 5.0×");
        assert!(
            text[2].contains("kombu not measured: kombu \\| failed"),
            "{}",
            text[2]
        );
        assert_eq!(text[3], "51 in 1 s, 1 answered 429");
        assert!(text[5].starts_with("15.2 s"), "{}", text[5]);
        assert_eq!(cpu.len(), 6);
        let skipped = Phase::<QueueResults>::Skipped;
        let mut rows = Vec::new();
        render_queue(&skipped, &mut rows, &mut details, &mut cpu);
        assert!(rows.iter().all(|r| r.verdict == Verdict::Skipped) && rows.len() == 3);
    }

    #[test]
    fn renders_the_query_figures() {
        let series = |ms: f64| ShoalSeries {
            first: run(ms * 10.0, 0),
            reps: vec![run(ms, 8), run(ms + 10.0, 8), run(ms - 10.0, 8)],
            cpu: Usage::default(),
        };
        let mut pool = baseline(queries::SUM_NAME, &[0.2, 0.19, 0.21]);
        pool.tasks.insert(
            queries::BATCH_NAME.into(),
            BaselineTask {
                first_s: None,
                times_s: vec![0.18],
                result: json!(12.5),
            },
        );
        let peak = Peak {
            total: 900 << 20,
            root: 100 << 20,
            descendants: 800 << 20,
            processes: 4,
            samples: 40,
        };
        let q = queries::Results {
            writes: Phase::Done(Writes {
                docs: 1_000_000,
                bytes: 206_000_000,
                batch: 10_000,
                conns: 4,
                secs: 5.0,
                batch_p50_ms: 180.0,
                batch_max_ms: 400.0,
                store_bytes: Some(300_000_000),
                cpu: Usage::default(),
            }),
            warm: Phase::Done(Warm {
                docs: 1_000_000,
                bytes: 206_000_000,
                shards: 8,
                sum: series(280.0),
                batch: series(230.0),
                pool,
                ray: Err("Ray could not be installed: no wheel | for this Python".into()),
                peak,
                cache_mb: 2048,
                expected: 12.5,
            }),
            cold: Phase::Done(queries::Cold {
                docs: 1_000_000,
                runs: vec![ColdRun {
                    stop_s: 0.2,
                    start_s: 0.3,
                    query: run(4000.0, 0),
                }],
                pool: Some((5.7, 1.0)),
                ray: None,
                ray_error: Some("not installed".into()),
                peak,
                cpu: Usage::default(),
            }),
            cpu_heavy: Phase::Done(CpuHeavy {
                docs: 20_000,
                shoal: vec![run(10_500.0, 0), run(10_400.0, 8)],
                pool: baseline(queries::CPU_NAME, &[10.0, 10.2]),
                ray: Ok(baseline(queries::CPU_NAME, &[10.8])),
                cpu: Usage::default(),
            }),
            stream: Phase::Done(Stream {
                docs: 1_000_000,
                bytes: 206_000_000,
                cache_mb: 64,
                runs: vec![run(4100.0, 0), run(3900.0, 0)],
                peak: Peak {
                    total: 200 << 20,
                    ..peak
                },
                cpu: Usage::default(),
            }),
            plan_overhead_mb: 256,
        };
        let (mut rows, mut details, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        render_queries(&q, &mut rows, &mut details, &mut cpu);
        let verdicts: Vec<Verdict> = rows.iter().map(|r| r.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pass, // 200,000 docs/s
                Verdict::Pass, // per doc: 280 ms vs 200 ms = 1.4×
                Verdict::Miss, // batch: 230 ms vs 180 ms = 1.28×
                Verdict::Miss, // Ray not installed
                Verdict::Pass, // 900 MiB ≤ 2048 + 256 MiB
                Verdict::Info, // cold: no target
                Verdict::Pass, // 10,450 ms vs 10,100 ms
                Verdict::Pass, // 200 MiB ≤ 64 + 256 MiB
            ]
        );
        let table: Vec<String> = rows
            .iter()
            .map(|r| format!("| {} | {} | {} |", r.figure, r.target, r.measured))
            .collect();
        let text = table.join("\n");
        assert!(text.contains("Shoal 280 ms vs (a) 200 ms: 1.40×"), "{text}");
        assert!(text.contains("no wheel \\| for this Python"), "{text}");
        assert!(text.contains("200,000 docs/s, 41.2 MB/s"), "{text}");
        assert!(!details.is_empty() && cpu.len() == 6);
    }
}
