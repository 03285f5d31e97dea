//! The ranged scan (issue 12): the sum of the float column of a file of
//! fixed-size 16-byte records (`<i8` id, `<f8` value) uploaded as a blob,
//! computed by one synchronous call of a function that runs
//! `ctx.map_ranges(key, "bench-scan-part", records=16, chunk_bytes=...,
//! then="bench-scan-sum").wait()`: each child sums its range with
//! `numpy.frombuffer(ctx.range_bytes(event), ...)["v"].sum()` (the bytes read
//! straight from the blob's file), the fan-in adds the partial sums.
//!
//! Beside it, on the same file (the source the blob was uploaded from, on
//! the same disk), `baselines/scan_baseline.py`: the machine's limit (two
//! processes each `numpy.memmap`-ing half), Dask and Ray. Every system gets
//! one warm-up pass, then `warm` timed passes with the file in the page
//! cache, then `cold` passes each after the file was dropped from it
//! (`posix_fadvise(DONTNEED)`: the blob's file in the node's data directory
//! for Shoal, the source file for the baselines). The values are `i % 1024`,
//! so every sum is exact and checked.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::blobs::{blob_file, drop_cache};
use crate::cpu::Usage;
use crate::functions::{SCAN_BASELINE, SCAN_PARENT, SCAN_PART, SCAN_PART_MMAP, SCAN_SUM};
use crate::node::Ctx;
use crate::report::{Figure, Section, one_line, secs};
use crate::stats::{median, thousands};

const KEY: &str = "bench-scan-data";
const PARENT: &str = "bench-scan";
const PART: &str = "bench-scan-part";
const PART_MMAP: &str = "bench-scan-part-mmap";
const SUM: &str = "bench-scan-sum";
const RECORD: u64 = 16;

/// Sizes of the scan phase.
pub struct Plan {
    pub bytes: u64,
    pub chunk: u64,
    pub warm: usize,
    pub cold: usize,
    /// The interpreter with numpy, Dask and Ray (`target/bench-venv`).
    pub python: PathBuf,
    /// Why Ray (or the venv) could not be installed.
    pub ray_missing: Option<String>,
    pub limit: Duration,
}

/// Seconds from the parent handler's start (`time.time()` in the
/// functions, one clock), and CPU-seconds of the children, medians over the
/// warm passes.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    map_s: f64,
    first_start: f64,
    last_end: f64,
    fanin_start: f64,
    fanin_end: f64,
    waited: f64,
    read_s: f64,
    np_s: f64,
}

impl Breakdown {
    fn of(out: &Value) -> Breakdown {
        let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
        let t0 = f("t0");
        Breakdown {
            map_s: f("map_s"),
            first_start: f("first_start") - t0,
            last_end: f("last_end") - t0,
            fanin_start: f("fanin_start") - t0,
            fanin_end: f("fanin_end") - t0,
            waited: f("t_waited") - t0,
            read_s: f("read_s"),
            np_s: f("np_s"),
        }
    }

    fn median(all: &[Breakdown]) -> Breakdown {
        let m = |f: fn(&Breakdown) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        Breakdown {
            map_s: m(|b| b.map_s),
            first_start: m(|b| b.first_start),
            last_end: m(|b| b.last_end),
            fanin_start: m(|b| b.fanin_start),
            fanin_end: m(|b| b.fanin_end),
            waited: m(|b| b.waited),
            read_s: m(|b| b.read_s),
            np_s: m(|b| b.np_s),
        }
    }
}

/// One system's timed passes.
#[derive(Default)]
struct Passes {
    warm: Vec<f64>,
    cold: Vec<f64>,
    setup_s: f64,
    versions: String,
}

impl Passes {
    fn warm_s(&self) -> f64 {
        median(&self.warm)
    }
    fn cold_s(&self) -> f64 {
        median(&self.cold)
    }
}

struct Scan {
    bytes: u64,
    chunk: u64,
    children: u64,
    upload_s: f64,
    shoal: Passes,
    /// Where the time of a warm pass went (medians).
    parts: Breakdown,
    /// The same scan with children that map their range (`mmap`).
    mapped: Passes,
    mapped_parts: Breakdown,
    /// Bytes of the blob's file in the page cache (`fincore`) before the
    /// cold passes and after them.
    resident_warm: Option<u64>,
    resident_cold: Option<u64>,
    limit: Result<Passes, String>,
    dask: Result<Passes, String>,
    ray: Result<Passes, String>,
    cpu_shoal: Usage,
    cpu_limit: Option<Usage>,
}

pub async fn run(ctx: &Ctx, plan: &Plan, dir: &Path) -> Result<Section> {
    let src = dir.join("scan.bin");
    let result = measure(ctx, plan, dir, &src).await;
    let _ = std::fs::remove_file(&src);
    let _ = ctx.client.delete_blob(KEY).await;
    Ok(section(&result?))
}

async fn measure(ctx: &Ctx, plan: &Plan, dir: &Path, src: &Path) -> Result<Scan> {
    if !plan.bytes.is_multiple_of(plan.chunk) || !plan.chunk.is_multiple_of(RECORD) {
        bail!("the scan's size must be a multiple of its chunk, and the chunk of 16");
    }
    crate::step(&format!(
        "scan: writing {} MiB of 16-byte records",
        thousands(crate::rss::mib(plan.bytes))
    ));
    let expected = write_records(src, plan.bytes / RECORD)?;
    let t = Instant::now();
    ctx.client
        .put_blob_file(KEY, src, None, None)
        .await
        .context("uploading the records")?;
    let upload_s = t.elapsed().as_secs_f64();
    let blob = blob_file(dir, plan.bytes)?;

    crate::step("scan: deploying the functions (numpy from PyPI)");
    SCAN_PART
        .deploy(&ctx.client, &ctx.scratch, PART, None, &[])
        .await?;
    SCAN_SUM
        .deploy(&ctx.client, &ctx.scratch, SUM, None, &[])
        .await?;
    SCAN_PARENT
        .deploy(&ctx.client, &ctx.scratch, PARENT, None, &[])
        .await?;
    SCAN_PART_MMAP
        .deploy(&ctx.client, &ctx.scratch, PART_MMAP, None, &[])
        .await?;
    let event_of = |part: &str| {
        json!({"key": KEY, "part": part, "then": SUM, "chunk_bytes": plan.chunk,
               "timeout": plan.limit.as_secs()})
        .to_string()
    };
    let event = event_of(PART);
    let children = plan.bytes / plan.chunk;
    let call = || scan_once(ctx, &event, expected, children);

    crate::step("scan: Shoal");
    call().await?; // warm-up
    let mut shoal = Passes::default();
    let mut parts = Vec::new();
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    for _ in 0..plan.warm {
        let (s, out) = call().await?;
        shoal.warm.push(s);
        parts.push(Breakdown::of(&out));
    }
    let cpu_shoal = cpu0.usage_until(&ctx.cpu());
    let warm_wall = t.elapsed();
    // Where the time goes: the same scan with children that map their range
    // (warm too: before the cold passes).
    let event_mmap = event_of(PART_MMAP);
    let mut mapped = Passes::default();
    let mut mapped_parts = Vec::new();
    scan_once(ctx, &event_mmap, expected, children).await?; // warm-up
    for _ in 0..plan.warm {
        let (s, out) = scan_once(ctx, &event_mmap, expected, children).await?;
        mapped.warm.push(s);
        mapped_parts.push(Breakdown::of(&out));
    }
    let resident_warm = resident(&blob);
    for _ in 0..plan.cold {
        drop_cache(&blob)?;
        shoal.cold.push(call().await?.0);
    }
    let resident_cold = resident(&blob);
    eprintln!(
        "  Shoal: warm {:?} s, cold {:?} s ({warm_wall:?} for the warm passes); children \
         mapping their range: warm {:?} s; the blob's pages in the page cache: {resident_warm:?} \
         bytes before the cold passes, {resident_cold:?} after",
        shoal.warm, shoal.cold, mapped.warm
    );

    let script = dir.join(SCAN_BASELINE.0);
    std::fs::write(&script, SCAN_BASELINE.1)?;
    let mut cpu_limit = None;
    let mut results = Vec::new();
    for system in ["limit", "dask", "ray"] {
        if system == "ray"
            && let Some(why) = &plan.ray_missing
        {
            results.push(Err(why.clone()));
            continue;
        }
        crate::step(&format!("scan: {system}"));
        let cpu0 = ctx.cpu();
        let r = run_baseline(plan, &script, src, dir, system, expected)
            .await
            .map_err(|e| format!("{e:#}"));
        if system == "limit" {
            cpu_limit = Some(cpu0.usage_until(&ctx.cpu()));
        }
        match &r {
            Ok(p) => eprintln!("  {system}: warm {:?} s, cold {:?} s", p.warm, p.cold),
            Err(e) => eprintln!("  {system}: {e}"),
        }
        results.push(r);
    }
    let mut results = results.into_iter();
    let mut next = || results.next().unwrap_or_else(|| Err("not run".into()));
    let (limit, dask, ray) = (next(), next(), next());
    Ok(Scan {
        bytes: plan.bytes,
        chunk: plan.chunk,
        children,
        upload_s,
        shoal,
        parts: Breakdown::median(&parts),
        mapped,
        mapped_parts: Breakdown::median(&mapped_parts),
        resident_warm,
        resident_cold,
        limit,
        dask,
        ray,
        cpu_shoal,
        cpu_limit,
    })
}

/// Bytes of `path` in the page cache, from util-linux's `fincore`.
fn resident(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// One synchronous scan, timed by the client; checks its sum and children.
async fn scan_once(ctx: &Ctx, event: &str, expected: f64, children: u64) -> Result<(f64, Value)> {
    let t = Instant::now();
    let out = ctx
        .client
        .invoke(PARENT, event)
        .await?
        .result
        .map_err(|f| anyhow!("the scan failed: {f:?}"))?;
    let s = t.elapsed().as_secs_f64();
    let sum = out["sum"].as_f64().context("no sum in the scan's result")?;
    if sum != expected {
        bail!("the scan summed {sum}, not {expected}");
    }
    if out["children"].as_u64() != Some(children) {
        bail!("the scan had {} children, not {children}", out["children"]);
    }
    Ok((s, out))
}

/// Writes `n` records `(i, i % 1024)`, fsynced; returns the exact sum of
/// the values.
fn write_records(path: &Path, n: u64) -> Result<f64> {
    use std::io::Write as _;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let per = 1 << 19; // records per write: 8 MiB
    let mut buf = Vec::with_capacity(per * RECORD as usize);
    let mut i = 0u64;
    while i < n {
        buf.clear();
        let end = (i + per as u64).min(n);
        for r in i..end {
            buf.extend_from_slice(&(r as i64).to_le_bytes());
            buf.extend_from_slice(&((r % 1024) as f64).to_le_bytes());
        }
        f.write_all(&buf)?;
        i = end;
    }
    f.sync_all()?;
    Ok(sum_of(n))
}

/// The sum of `i % 1024` for `i` in `0..n` (exact in an f64 up to 2^53).
fn sum_of(n: u64) -> f64 {
    let (full, rest) = (n / 1024, n % 1024);
    (full * (1023 * 1024 / 2) + rest * rest.saturating_sub(1) / 2) as f64
}

async fn run_baseline(
    plan: &Plan,
    script: &Path,
    src: &Path,
    dir: &Path,
    system: &str,
    expected: f64,
) -> Result<Passes> {
    let ray_tmp = dir.join("ray");
    let mut cmd = tokio::process::Command::new(&plan.python);
    cmd.arg(script)
        .args(["--system", system, "--file"])
        .arg(src)
        .arg("--chunk-bytes")
        .arg(plan.chunk.to_string())
        .arg("--warm")
        .arg(plan.warm.to_string())
        .arg("--cold")
        .arg(plan.cold.to_string())
        .arg("--ray-tmp")
        .arg(&ray_tmp)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plan.python.display()))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    // Always awaited below (the child's stderr ends when it exits or is
    // killed).
    let mut err_task = tokio::task::JoinSet::new();
    err_task.spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut p = Passes::default();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("an unreadable line from the baseline: {line}"))?;
            if let Some(s) = v["setup_s"].as_f64() {
                p.setup_s = s;
                p.versions = v["versions"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                continue;
            }
            let sum = v["sum"].as_f64().unwrap_or(f64::NAN);
            if sum != expected {
                bail!("{system} summed {sum}, not {expected}");
            }
            let s = v["s"].as_f64().context("no s")?;
            match v["cache"].as_str() {
                Some("warm") => p.warm.push(s),
                Some("cold") => p.cold.push(s),
                other => bail!("unexpected cache {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    let r = tokio::time::timeout(plan.limit, read).await;
    let status = match &r {
        Ok(_) => tokio::time::timeout(Duration::from_secs(30), child.wait()).await,
        Err(_) => {
            let _ = child.kill().await;
            Ok(child.wait().await)
        }
    };
    let err = match err_task.join_next().await {
        Some(Ok(text)) => text,
        _ => String::new(),
    };
    let tail = || one_line(&crate::node::tail(&err, 5));
    match r {
        Err(_) => bail!(
            "{system} did not finish within {:?}: {}",
            plan.limit,
            tail()
        ),
        Ok(Err(e)) => bail!("{e:#}: {}", tail()),
        Ok(Ok(())) => {}
    }
    match status {
        Ok(Ok(s)) if s.success() => {}
        _ => bail!("{system} exited with {status:?}: {}", tail()),
    }
    if p.warm.len() != plan.warm || p.cold.len() != plan.cold {
        bail!(
            "{system} reported {} warm and {} cold passes: {}",
            p.warm.len(),
            p.cold.len(),
            tail()
        );
    }
    Ok(p)
}

/// What `fincore` said of the blob's file around the cold passes.
fn residency(s: &Scan) -> String {
    let mib = |b: u64| thousands(crate::rss::mib(b));
    match (s.resident_warm, s.resident_cold) {
        (Some(w), Some(c)) => {
            let mut text = format!(
                "Of the blob's {} MiB, {} MiB were in the page cache before the cold passes and \
                 {} MiB after them (`fincore`).",
                mib(s.bytes),
                mib(w),
                mib(c)
            );
            if (c as f64) < 0.9 * s.bytes as f64 && (w as f64) >= 0.9 * s.bytes as f64 {
                text.push_str(
                    " So a blob read cold by the workers did not become warm again: the pages a \
                     worker reads in are charged to its memory cgroup, capped at `memory_mb`, \
                     which evicts them (seen in the workers' `memory.stat`, docs/benchmarks.md).",
                );
            }
            text
        }
        _ => String::new(),
    }
}

fn section(s: &Scan) -> Section {
    let mut out = Section::new("scan");
    let mib = |b: u64| thousands(crate::rss::mib(b));
    let setting = format!(
        "{} MiB, {} children of {} MiB, embedded store",
        mib(s.bytes),
        s.children,
        mib(s.chunk)
    );
    let warm = |p: &Result<Passes, String>| p.as_ref().map(Passes::warm_s).map_err(String::clone);
    let cold = |p: &Result<Passes, String>| p.as_ref().map(Passes::cold_s).map_err(String::clone);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut warm_figure = Figure::new("scan.warm", s.shoal.warm_s())
        .setting(setting)
        .vs(warm(&s.limit).as_ref().copied());
    if !s.mapped.warm.is_empty() {
        warm_figure = warm_figure.note(format!(
            "children mapping their range (`mmap`) instead of `ctx.range_bytes`: {}",
            secs(s.mapped.warm_s())
        ));
    }
    out.add(warm_figure);
    out.add(Figure::new("scan.cold", s.shoal.cold_s()).vs(cold(&s.limit).as_ref().copied()));
    let other_cold = |p: &Result<Passes, String>, name: &str| match cold(p) {
        Ok(c) => format!(
            "cold: Shoal {} vs {name} {}",
            secs(s.shoal.cold_s()),
            secs(c)
        ),
        Err(_) => String::new(),
    };
    let mut dask = Figure::new("scan.dask", s.shoal.warm_s()).vs(warm(&s.dask).as_ref().copied());
    let text = other_cold(&s.dask, "Dask");
    if !text.is_empty() {
        dask = dask.note(text);
    }
    out.add(dask);
    let mut ray = Figure::new("scan.ray", s.shoal.warm_s()).vs(warm(&s.ray).as_ref().copied());
    let text = other_cold(&s.ray, "Ray");
    if !text.is_empty() {
        ray = ray.note(text);
    }
    out.add(ray);
    let describe = |name: &str, p: &Result<Passes, String>| match p {
        Ok(p) => format!(
            "{name} ({}; setup and warm-up {:.1} s) warm [{}] s, cold [{}] s",
            p.versions,
            p.setup_s,
            list(&p.warm),
            list(&p.cold)
        ),
        Err(e) => format!("{name} not measured: {}", one_line(e)),
    };
    out.detail(format!(
        "Scan: {} records of 16 bytes (`<i8` id, `<f8` value = id % 1024, so every sum is exact \
         and checked), uploaded as a blob in {:.1} s. Shoal: one sync call of a function running \
         `ctx.map_ranges(key, \"{PART}\", records=16, chunk_bytes={}, then=\"{SUM}\").wait()`; \
         each child sums `numpy.frombuffer(ctx.range_bytes(event), dtype=[('id','<i8'),('v','<f8')])['v']` \
         (concurrency 2), the fan-in adds the {} partial sums; timed by the client from the \
         request to the answer; passes warm [{}] s, cold [{}] s. Where a warm pass's time went \
         (medians, seconds after the parent handler's start): `map_ranges` returned at {:.3}, \
         the first child started at {:.3}, the last ended at {:.3}; the children spent {:.3} \
         s in all reading their ranges (`ctx.range_bytes`: the host call that names the file \
         piece, and its read or memory map) and {:.3} s summing (2 run at once); the fan-in ran from \
         {:.3} to {:.3}, and `.wait()` returned at {:.3} (it polls the job at growing \
         intervals). The same scan with children that map their range of the \
         blob's file read-only (`mmap` of the piece `ctx.blob_open` names, no copy; \
         `bench-scan-part-mmap`): warm [{}] s, the children's reads {:.3} s and sums {:.3} s in \
         all, the last child ended at {:.3}. {} Baselines on \
         the source file (same disk), each after one warm-up pass: {}; {}; {}. Cold: the file \
         dropped from the page cache before each pass (`posix_fadvise(DONTNEED)`).",
        thousands((s.bytes / RECORD) as f64),
        s.upload_s,
        s.chunk,
        s.children,
        list(&s.shoal.warm),
        list(&s.shoal.cold),
        s.parts.map_s,
        s.parts.first_start,
        s.parts.last_end,
        s.parts.read_s,
        s.parts.np_s,
        s.parts.fanin_start,
        s.parts.fanin_end,
        s.parts.waited,
        list(&s.mapped.warm),
        s.mapped_parts.read_s,
        s.mapped_parts.np_s,
        s.mapped_parts.last_end,
        residency(s),
        describe("the limit (2 processes, a memmap of half each)", &s.limit),
        describe("Dask", &s.dask),
        describe("Ray", &s.ray),
    ));
    out.cpu("scan: Shoal, warm passes", &s.cpu_shoal);
    if let Some(u) = &s.cpu_limit {
        out.cpu("scan: the limit (its processes count as Other)", u);
    }
    out
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let passes = |w: f64, c: f64| Passes {
        warm: vec![w, w * 1.1, w * 0.9],
        cold: vec![c, c],
        setup_s: 1.0,
        versions: "numpy 2".into(),
    };
    vec![section(&Scan {
        bytes: 2 << 30,
        chunk: 64 << 20,
        children: 32,
        upload_s: 5.0,
        shoal: passes(0.5, 3.0),
        parts: Breakdown::default(),
        mapped: passes(0.3, 0.0),
        mapped_parts: Breakdown::default(),
        resident_warm: Some(2 << 30),
        resident_cold: Some(900 << 20),
        limit: Ok(passes(0.2, 2.9)),
        dask: Ok(passes(0.6, 3.5)),
        ray: Err("pip install ray failed".into()),
        cpu_shoal: Usage::default(),
        cpu_limit: None,
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_their_sum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        let n = 3000;
        let sum = write_records(&p, n).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len() as u64, n * RECORD);
        let mut want = 0.0;
        for rec in data.chunks_exact(16) {
            let id = i64::from_le_bytes(rec[..8].try_into().unwrap());
            let v = f64::from_le_bytes(rec[8..].try_into().unwrap());
            assert_eq!(v, (id % 1024) as f64);
            want += v;
        }
        assert_eq!(sum, want);
        assert_eq!(sum_of(1024), 523_776.0);
        assert_eq!(sum_of(0), 0.0);
    }
}
