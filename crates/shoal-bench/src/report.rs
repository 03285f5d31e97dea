//! The Markdown section a run produces: machine, commit, each figure beside
//! its target with PASS/MISS, details, and where the CPU went.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cpu::Usage;
use crate::phases::{AsyncRun, ColdSample, Latency, Numpy, Throughput};
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
    pub total_s: f64,
}

struct Row {
    figure: String,
    target: &'static str,
    measured: String,
    /// `None`: the phase was not run.
    pass: Option<bool>,
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
                pass: Some(l.p50_ms <= 1.0),
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
                pass: Some(best.per_sec >= 3000.0),
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
                pass: Some(median(&wall) <= 150.0),
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
                pass: Some(!a.timed_out && a.failed == 0 && per_s >= 2000.0),
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
                pass: Some(!new.is_empty() && med <= 20.0),
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
        let verdict = match row.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "skipped",
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
    let (measured, pass) = match phase {
        Phase::Failed(e) => (format!("not measured: {}", one_line(e)), Some(false)),
        _ => ("not run (see --only)".into(), None),
    };
    Row {
        figure: figure.into(),
        target,
        measured,
        pass,
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

    scripts/bench            # the full run (about a minute after the build)
    scripts/bench --quick    # fewer samples (about 30 s)
    scripts/bench --help     # other flags (--only, --no-append, ...)

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
