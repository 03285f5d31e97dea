//! The Markdown section a run produces: machine and commit, one row per
//! target (`target.rs`) with what was measured and PASS/MISS, then details
//! and where the CPU went. Each phase renders its own `Section` from its
//! measurements; this module lays the sections out, for one build or for
//! two side by side (`--compare-shoal`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cpu::Usage;
use crate::rss::{self, Peak};
use crate::stats::{fmt_ms, thousands, utc};
use crate::target::{self, TARGETS, Target, Verdict};

/// What one phase measured, rendered.
pub struct Section {
    pub phase: &'static str,
    pub figures: Vec<Figure>,
    /// Bullet points under the table.
    pub details: Vec<String>,
    /// Rows of the CPU table.
    pub cpu: Vec<(String, Usage)>,
}

/// One figure, reported against its target.
pub struct Figure {
    pub id: &'static str,
    /// This run's sizes and settings, after the target's wording.
    pub setting: String,
    pub value: Result<f64, String>,
    /// What a ratio or an allowance is taken against, when the target has one.
    pub reference: Result<f64, String>,
    /// More of what was measured, after the figure, each with what
    /// separates it from what comes before (`; ` or ` (`...`)`).
    pub notes: Vec<String>,
    /// Why the figure cannot pass whatever its value (timed out, failures).
    pub flaws: Vec<String>,
}

/// One build's sections.
pub struct Run {
    pub label: String,
    pub sections: Vec<Section>,
}

/// What the heading says about the run.
pub struct Meta {
    pub command: String,
    pub quick: bool,
    pub load_before: String,
    pub total_s: f64,
    /// `(label, binary)` of each build, when more than one was measured.
    pub builds: Vec<(String, String)>,
}

impl Section {
    pub fn new(phase: &'static str) -> Section {
        Section {
            phase,
            figures: Vec::new(),
            details: Vec::new(),
            cpu: Vec::new(),
        }
    }

    /// A phase that failed: none of its targets was measured.
    pub fn failed(phase: &'static str, why: &str) -> Section {
        let mut s = Section::new(phase);
        for t in TARGETS.iter().filter(|t| t.phase() == phase) {
            s.figures.push(Figure::unmeasured(t.id, why));
        }
        s
    }

    pub fn add(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn detail(&mut self, text: String) {
        self.details.push(text);
    }

    pub fn cpu(&mut self, label: impl Into<String>, usage: &Usage) {
        self.cpu.push((label.into(), usage.clone()));
    }

    /// The figure of target `id`, if this section has it.
    fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }
}

impl Figure {
    pub fn new(id: &'static str, value: f64) -> Figure {
        Figure {
            id,
            setting: String::new(),
            value: Ok(value),
            reference: Err("not measured".into()),
            notes: Vec::new(),
            flaws: Vec::new(),
        }
    }

    pub fn unmeasured(id: &'static str, why: &str) -> Figure {
        Figure {
            value: Err(why.to_string()),
            ..Figure::new(id, f64::NAN)
        }
    }

    /// The figure, or why it was not measured.
    pub fn of(id: &'static str, value: Result<f64, &String>) -> Figure {
        match value {
            Ok(v) => Figure::new(id, v),
            Err(e) => Figure::unmeasured(id, e),
        }
    }

    /// The reference of a ratio or an allowance, or why it is missing.
    pub fn vs(mut self, reference: Result<f64, &String>) -> Figure {
        self.reference = reference.map_err(String::clone);
        self
    }

    pub fn setting(mut self, text: impl Into<String>) -> Figure {
        self.setting = text.into();
        self
    }

    /// `; text` after the figure.
    pub fn note(mut self, text: impl AsRef<str>) -> Figure {
        self.notes.push(format!("; {}", text.as_ref()));
        self
    }

    /// ` (text)` after the figure.
    pub fn paren(mut self, text: impl AsRef<str>) -> Figure {
        self.notes.push(format!(" ({})", text.as_ref()));
        self
    }

    /// Makes the figure a miss when `bad`, saying why.
    pub fn flaw_if(mut self, bad: bool, why: impl Into<String>) -> Figure {
        if bad {
            self.flaws.push(why.into());
        }
        self
    }

    /// The Measured cell and the verdict.
    pub fn judged(&self) -> (String, Verdict) {
        let t = target::get(self.id);
        let value = match &self.value {
            Ok(v) => *v,
            Err(e) => return (format!("not measured: {}", one_line(e)), Verdict::Miss),
        };
        let (head, mut verdict) = match (t.reference(), &self.reference) {
            (Some(name), Err(e)) => (
                format!(
                    "Shoal {}; {name} not measured: {}",
                    t.unit.fmt(value),
                    one_line(e)
                ),
                Verdict::Miss,
            ),
            (_, r) => {
                let r = *r.as_ref().unwrap_or(&f64::NAN);
                (t.measured(value, r), t.judge(value, r))
            }
        };
        if !self.flaws.is_empty() {
            verdict = Verdict::Miss;
        }
        let mut text = head + &self.notes.concat();
        for flaw in &self.flaws {
            text = text + "; " + flaw;
        }
        (text, verdict)
    }
}

/// The section of a run of one or more builds.
pub fn render(meta: &Meta, runs: &[Run]) -> String {
    let mut out = String::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi) = utc(now);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "## {y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC, commit {}\n",
        git_commit()
    );
    let _ = writeln!(
        out,
        "Machine: {cores} CPUs ({}), Linux {}, {}; load average before the run: {}.  ",
        cpu_model(),
        kernel(),
        python_version(),
        meta.load_before
    );
    let _ = writeln!(
        out,
        "Run: `{}`{}; {:.0} s in all. Client, node and Python workers share the machine.",
        meta.command,
        if meta.quick {
            " (quick: fewer samples)"
        } else {
            ""
        },
        meta.total_s
    );
    if !meta.builds.is_empty() {
        let builds: Vec<String> = meta
            .builds
            .iter()
            .map(|(label, path)| format!("{label} = `{path}`"))
            .collect();
        let _ = writeln!(
            out,
            "Builds: {}. Each phase ran on one build, then on the other; which one went first \
             alternated from phase to phase.",
            builds.join(", ")
        );
    }
    out.push('\n');
    out.push_str(&table(runs));
    for run in runs {
        let details: Vec<&String> = run.sections.iter().flat_map(|s| &s.details).collect();
        if details.is_empty() {
            continue;
        }
        let _ = if runs.len() > 1 {
            writeln!(out, "\nDetails, {}:\n", run.label)
        } else {
            writeln!(out, "\nDetails:\n")
        };
        for d in details {
            let _ = writeln!(out, "- {d}");
        }
    }
    if runs
        .iter()
        .any(|r| r.sections.iter().any(|s| !s.cpu.is_empty()))
    {
        let _ = writeln!(
            out,
            "\nCPU during each phase, as a share of the whole machine ({cores} cores = 100 %): the \
             bench client (its CPU includes the kernel's loopback TCP work for what it sends), the \
             `shoal serve` process, its descendants (Python templates and workers, pip), and \
             everything else on the machine.\n"
        );
        let _ = writeln!(out, "| Phase | Busy | Client | Node | Python | Other |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for run in runs {
            for (name, u) in run.sections.iter().flat_map(|s| &s.cpu) {
                let name = if runs.len() > 1 {
                    format!("{}: {name}", run.label)
                } else {
                    name.clone()
                };
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
    }
    out
}

/// One row per target; a Measured and a Result column per build.
fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    if runs.len() == 1 {
        let _ = writeln!(out, "| Figure | Target | Measured | Result |");
        let _ = writeln!(out, "|---|---|---|---|");
    } else {
        let heads: Vec<String> = runs
            .iter()
            .map(|r| format!("{} | Result", r.label))
            .collect();
        let _ = writeln!(out, "| Figure | Target | {} |", heads.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---|---|".repeat(runs.len()));
    }
    for t in TARGETS {
        let cells: Vec<(Option<&Figure>, String, Verdict)> =
            runs.iter().map(|r| cell(r, t)).collect();
        let setting = cells
            .iter()
            .filter_map(|c| c.0)
            .map(|f| f.setting.as_str())
            .find(|s| !s.is_empty());
        let figure = match setting {
            Some(s) => format!("{} ({s})", t.what),
            None => t.what.to_string(),
        };
        let measured: Vec<String> = cells
            .iter()
            .map(|(_, m, v)| format!("{m} | {}", verdict(*v)))
            .collect();
        let _ = writeln!(
            out,
            "| {figure} | {} (issue {}) | {} |",
            t.text(),
            t.issue,
            measured.join(" | ")
        );
    }
    out
}

fn cell<'r>(run: &'r Run, t: &Target) -> (Option<&'r Figure>, String, Verdict) {
    let Some(section) = run.sections.iter().find(|s| s.phase == t.phase()) else {
        return (None, "not run (see --only)".into(), Verdict::Skipped);
    };
    match section.figure(t.id) {
        Some(f) => {
            let (m, v) = f.judged();
            (Some(f), m, v)
        }
        None => (
            None,
            "not measured for this build (see details)".into(),
            Verdict::Skipped,
        ),
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Miss => "MISS",
        Verdict::Info => "info",
        Verdict::Skipped => "skipped",
    }
}

// ---------------------------------------------------- shared formatting

/// An error on one table-safe line.
pub fn one_line(e: &str) -> String {
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

/// `1.20 ms, 3.40 ms`, or `n/a`.
pub fn list_ms(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.iter().map(|x| fmt_ms(*x)).collect::<Vec<_>>().join(", ")
}

pub fn secs(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.2} s")
    } else {
        "n/a".into()
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// `node 159 MiB, workers 2,187 MiB`.
pub fn split(p: &Peak) -> String {
    format!(
        "node {} MiB, workers {} MiB",
        thousands(rss::mib(p.root)),
        thousands(rss::mib(p.descendants))
    )
}

/// A peak with how it was sampled, for the details.
pub fn peak_detail(p: &Peak) -> String {
    format!(
        "{} MiB (root process {} MiB + descendants {} MiB, {} processes; {} samples)",
        thousands(p.total_mib()),
        thousands(rss::mib(p.root)),
        thousands(rss::mib(p.descendants)),
        p.processes,
        p.samples
    )
}

// -------------------------------------------------------------- machine

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
            let dirty = if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            };
            format!("`{c}`{dirty}")
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
the ones below and appends it here. Newest runs last. The targets are the
table in `crates/shoal-bench/src/target.rs`.

    scripts/bench            # the full run
    scripts/bench --quick    # fewer samples, 200k instead of 1M documents
    scripts/bench --only writes,queries,query-cpu,query-cold,query-stream
    scripts/bench --compare-shoal OLD/shoal   # this build and OLD side by side
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every phase's sections, rendered from fixed measurements.
    fn examples() -> Vec<Section> {
        let mut all = crate::invoke::examples();
        all.extend(crate::queue::examples());
        all.extend(crate::ratelimit::examples());
        all.extend(crate::fanout::examples());
        all.extend(crate::queries::examples());
        all.extend(crate::list::examples());
        all.extend(crate::counts::examples());
        all.extend(crate::cluster::examples());
        all.extend(crate::blobs::examples());
        all.extend(crate::bitfield::examples());
        all.extend(crate::cache::examples());
        all.extend(crate::scan::examples());
        all.extend(crate::live::examples());
        all.extend(crate::ui::examples());
        all
    }

    #[test]
    fn every_figure_names_a_target_of_its_phase_and_every_target_is_measured() {
        let sections = examples();
        for s in &sections {
            for f in &s.figures {
                let t = TARGETS.iter().find(|t| t.id == f.id);
                let t = t.unwrap_or_else(|| panic!("{} reports {}: no such target", s.phase, f.id));
                assert_eq!(t.phase(), s.phase, "{} is a target of {}", f.id, t.phase());
            }
        }
        for t in TARGETS {
            let n = sections
                .iter()
                .flat_map(|s| &s.figures)
                .filter(|f| f.id == t.id)
                .count();
            assert_eq!(n, 1, "{} is reported {n} times", t.id);
        }
        let phases: Vec<&str> = sections.iter().map(|s| s.phase).collect();
        assert_eq!(phases, target::phases());
    }

    #[test]
    fn phases_judge_their_examples() {
        let verdicts: Vec<(&str, Verdict)> = examples()
            .iter()
            .flat_map(|s| &s.figures)
            .map(|f| (f.id, f.judged().1))
            .collect();
        use Verdict::*;
        let want = [
            ("latency.p50", Pass),
            ("throughput.best", Pass),
            ("cold.first_call", Pass),
            ("numpy.new_worker", Pass),
            ("async.end_to_end", Miss), // one invocation failed
            ("queue.single", Pass),     // 5× Celery
            ("queue.batched", Miss),    // 0.1× Celery
            ("queue.alone", Miss),      // kombu was not measured
            ("ratelimit.peak", Miss),   // 51 in a second
            ("ratelimit.rejected", Miss),
            ("ratelimit.rate", Pass), // 0.94 of the limit
            ("fanout.fanin", Pass),
            ("writes.docs", Pass),
            ("queries.map", Pass),       // 1.4×
            ("queries.map_batch", Miss), // 1.28×
            ("queries.ray", Miss),       // not installed
            ("queries.rss", Pass),
            ("query-cpu.map", Pass),
            ("query-cold.first", Info),
            ("query-stream.rss", Pass),
            ("list.failed_p99", Pass),
            ("list.failed_p50", Info),
            ("stats.count_p99", Pass),
            ("stats.stats_p99", Pass),
            ("cluster.cmds_sync", Info),
            ("cluster.cmds_async", Pass),
            ("cluster.cmds_queue", Info),
            ("cluster.cmds_doc", Miss),
            ("cluster.cmds_shard", Info),
            ("cluster.async_embedded", Info),
            ("cluster.async_1", Pass),
            ("cluster.async_2", Pass),
            ("cluster.async_3", Miss),
            ("cluster.async_always", Miss),
            ("cluster.sync_embedded", Info),
            ("cluster.sync_1", Info),
            ("cluster.sync_2", Info),
            ("cluster.sync_3", Info),
            ("cluster.capacity", Info),
            ("blobs.upload", Pass),       // 341 vs 546 MiB/s: 0.63×
            ("blobs.download", Pass),     // 585 vs 683 MiB/s
            ("blobs.ranges", Miss),       // 315 vs 683 MiB/s: 0.46×
            ("blobs.rss", Pass),          // +20 MiB
            ("blobs.upload_redis", Miss), // 256 vs 546 MiB/s: 0.47×
            ("blobs.download_redis", Pass),
            ("blobs.ranges_redis", Pass),
            ("blobs.rss_redis", Miss),   // +160 MiB
            ("bitfield.http", Pass),     // 120,000/s
            ("bitfield.function", Miss), // the version moved by one less
            ("bitfield.http_redis", Pass),
            ("bitfield.function_redis", Miss), // 20,000/s
            ("cache.hit_p50", Pass),
            ("cache.hit_p99", Info),
            ("scan.warm", Miss),         // 2.5×
            ("scan.cold", Pass),         // 1.03×
            ("scan.dask", Pass),         // 0.83×
            ("scan.ray", Miss),          // not installed
            ("live.placements", Miss),   // 4,000/s
            ("live.delivery_p99", Miss), // 150 ms
            ("live.delivery_p50", Info),
            ("live.lost", Pass),
            ("live.idle_sse", Pass), // 4.9 KiB
            ("live.idle_ws", Miss),  // 19.5 KiB
            ("ui.first_load", Pass), // measured: no bound
            ("ui.first_bytes", Pass),
            ("ui.warm_load", Pass),
        ];
        assert_eq!(verdicts, want);
    }

    #[test]
    fn failed_and_skipped_phases_still_have_their_rows() {
        let run = Run {
            label: "x".into(),
            sections: vec![Section::failed("ratelimit", "the vendor | did not start")],
        };
        let text = table(&[run]);
        assert_eq!(text.lines().count(), 2 + TARGETS.len());
        let row = |id: &str| {
            let what = target::get(id).what;
            text.lines()
                .find(|l| l.starts_with(&format!("| {what}")))
                .unwrap()
                .to_string()
        };
        assert!(row("ratelimit.rate").ends_with(
            "| ≥ 0.9× the limit (issue 4) | not measured: the vendor \\| did not start | MISS |"
        ));
        assert!(
            row("latency.p50").ends_with("| ≤ 1 ms (issue 2) | not run (see --only) | skipped |")
        );
    }

    #[test]
    fn renders_two_builds_side_by_side() {
        let s = |p50: f64| {
            let mut s = Section::new("latency");
            s.add(Figure::new("latency.p50", p50).setting("n = 10"));
            s
        };
        let mut compared = s(1.5);
        compared.detail("slower".into());
        let runs = [
            Run {
                label: "this build".into(),
                sections: vec![s(0.25)],
            },
            Run {
                label: "before".into(),
                sections: vec![compared],
            },
        ];
        let text = table(&runs);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("| Figure | Target | this build | Result | before | Result |")
        );
        assert_eq!(lines.next(), Some("|---|---|---|---|---|---|"));
        assert_eq!(
            lines.next(),
            Some(
                "| Warm sync invoke latency, p50 (n = 10) | ≤ 1 ms (issue 2) | 0.25 ms | PASS | 1.50 ms | MISS |"
            )
        );
        let meta = Meta {
            command: "scripts/bench --only latency".into(),
            quick: false,
            load_before: "0.1".into(),
            total_s: 3.0,
            builds: vec![("before".into(), "/old/shoal".into())],
        };
        let all = render(&meta, &runs);
        assert!(all.contains("before = `/old/shoal`"), "{all}");
        assert!(all.contains("\nDetails, before:\n\n- slower\n"), "{all}");
        assert!(!all.contains("Details, this build"), "{all}");
    }

    #[test]
    fn flaws_and_missing_references_miss() {
        let f = Figure::new("async.end_to_end", 5000.0).flaw_if(true, "2 failed");
        assert_eq!(f.judged(), ("5,000/s; 2 failed".into(), Verdict::Miss));
        let f = Figure::new("queue.single", 5000.0).vs(Err(&"no redis".to_string()));
        assert_eq!(
            f.judged(),
            (
                "Shoal 5,000/s; Celery not measured: no redis".into(),
                Verdict::Miss
            )
        );
    }
}
