//! Invocation counts and stats among many (`--only stats`): 1,000,000
//! invocation records are written straight through the embedded store
//! (`RedbStore::put_invocations`, batches of 5,000: the same write that
//! keeps the usage rollups, so the file is the one a node with that
//! history would have), then a node is started on it and
//! `GET /v1/invocations/count` (several filters, since/until not on minute
//! edges) and `GET /v1/stats` (a day in 5-minute steps, a week in hours)
//! are timed over HTTP, one call after another.
//!
//! The records belong to 200 functions and 10 tokens, spread evenly over
//! the last 7 days; about 1 % failed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use shoal_client::Client;
use shoal_store::{InvocationRecord, Invocations};
use shoal_store_redb::RedbStore;
use shoal_types::{FunctionName, InvocationMode, InvocationStatus};

use crate::node::Node;
use crate::report::{Figure, Section};
use crate::stats::{median, ms, percentile, thousands};

/// Sizes of the phase.
pub struct Plan {
    pub records: u64,
    pub functions: u64,
    /// Calls per timed variant.
    pub calls: usize,
}

const BATCH: u64 = 5_000;

/// A count to time: its name, its filters and the answer it must give.
type Variant<'a> = (&'static str, Vec<(&'static str, Option<&'a str>)>, u64);
const SPAN_MS: u64 = 7 * 86_400_000;

pub async fn run(shoal: &Path, plan: &Plan) -> Result<Section> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-stats-")
        .tempdir()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let t = Instant::now();
    let truth = fill(&dir.path().join("data/shoal.redb"), plan, now_ms).await?;
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!(
        "  wrote {} records in {fill_s:.1} s",
        thousands(plan.records as f64)
    );
    let mut node = Node::start(shoal, dir.path(), "warn", &[])?;
    let client = Client::new(&node.url, Some(&node.token))?;

    // Off minute edges: 3 days and 17.5 s ago, to 1 day and 3.25 s ago.
    let since = (now_ms - 3 * 86_400_000 - 17_500).to_string();
    let until = (now_ms - 86_400_000 - 3_250).to_string();
    let in_range = truth
        .created
        .iter()
        .filter(|&&t| t >= now_ms - 3 * 86_400_000 - 17_500 && t < now_ms - 86_400_000 - 3_250)
        .count() as u64;
    let variants: Vec<Variant> = vec![
        ("all", vec![], plan.records),
        ("failed", vec![("status", Some("failed"))], truth.failed),
        (
            "one function",
            vec![("function", Some("fn-007"))],
            truth.of_f,
        ),
        (
            "a range off minute edges",
            vec![
                ("since", Some(since.as_str())),
                ("until", Some(until.as_str())),
            ],
            in_range,
        ),
        (
            "failed of one function in that range",
            vec![
                ("function", Some("fn-007")),
                ("status", Some("failed")),
                ("since", Some(since.as_str())),
                ("until", Some(until.as_str())),
            ],
            truth
                .failed_of_f_at
                .iter()
                .filter(|&&t| {
                    t >= now_ms - 3 * 86_400_000 - 17_500 && t < now_ms - 86_400_000 - 3_250
                })
                .count() as u64,
        ),
    ];
    let mut counts = Vec::new();
    for (name, filters, want) in &variants {
        let got = client.count_invocations(filters).await?;
        if got != *want {
            bail!("count of {name}: {got}, want {want}");
        }
        let times = timed(plan.calls, async || {
            client.count_invocations(filters).await.map(|_| ())
        })
        .await?;
        counts.push((*name, times));
    }
    let day = timed(plan.calls, async || {
        let s = client
            .invocation_stats(&[("since", Some("24h")), ("step_s", Some("300"))])
            .await?;
        if s.points.is_empty() {
            bail!("no stats points");
        }
        Ok(())
    })
    .await?;
    let week = timed(plan.calls, async || {
        client
            .invocation_stats(&[("since", Some("7d")), ("step_s", Some("3600"))])
            .await
            .map(|_| ())
            .context("stats")
    })
    .await?;
    let stats = client.stats().await?;
    node.stop(Duration::from_secs(10));
    Ok(section(&Measured {
        records: plan.records,
        functions: plan.functions,
        fill_s,
        data_dir_bytes: stats.data_dir_bytes,
        counts,
        day,
        week,
    }))
}

/// `calls` calls of `call` (after one untimed), milliseconds sorted.
async fn timed<E: Into<anyhow::Error>>(
    calls: usize,
    mut call: impl AsyncFnMut() -> std::result::Result<(), E>,
) -> Result<Vec<f64>> {
    call().await.map_err(Into::into)?;
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        call().await.map_err(Into::into)?;
        times.push(ms(t.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

struct Measured {
    records: u64,
    functions: u64,
    fill_s: f64,
    data_dir_bytes: u64,
    /// (variant, sorted ms).
    counts: Vec<(&'static str, Vec<f64>)>,
    day: Vec<f64>,
    week: Vec<f64>,
}

fn section(m: &Measured) -> Section {
    let setting = format!(
        "{} records of {} functions over 7 days, {} calls per variant one after another",
        thousands(m.records as f64),
        m.functions,
        m.counts.first().map_or(0, |c| c.1.len())
    );
    let worst = m
        .counts
        .iter()
        .map(|(_, t)| percentile(t, 0.99))
        .fold(0.0, f64::max);
    let stats_worst = percentile(&m.day, 0.99).max(percentile(&m.week, 0.99));
    let mut s = Section::new("stats");
    s.add(Figure::new("stats.count_p99", worst).setting(setting.clone()));
    s.add(Figure::new("stats.stats_p99", stats_worst).setting(setting));
    let mut per = String::from("`GET /v1/invocations/count`, p50 / p99 per variant: ");
    for (i, (name, t)) in m.counts.iter().enumerate() {
        if i > 0 {
            per += "; ";
        }
        per += &format!("{name} {:.1} / {:.1} ms", median(t), percentile(t, 0.99));
    }
    per += ". Each answer was checked against the records written.";
    s.detail(per);
    s.detail(format!(
        "`GET /v1/stats`: the last 24 h in 5-minute steps (288 points, minute rows) {:.1} / \
         {:.1} ms; the last 7 days in hours (168 points, hour rows) {:.1} / {:.1} ms (p50 / p99).",
        median(&m.day),
        percentile(&m.day, 0.99),
        median(&m.week),
        percentile(&m.week, 0.99)
    ));
    s.detail(format!(
        "Records written straight through the store with their rollups in {:.1} s; data \
         directory {:.0} MiB.",
        m.fill_s,
        m.data_dir_bytes as f64 / (1024.0 * 1024.0)
    ));
    s
}

#[cfg(test)]
pub fn examples() -> Vec<Section> {
    vec![section(&Measured {
        records: 1_000_000,
        functions: 200,
        fill_s: 60.0,
        data_dir_bytes: 1 << 30,
        counts: vec![("all", vec![1.0, 2.0]), ("failed", vec![3.0, 4.0])],
        day: vec![20.0, 30.0],
        week: vec![10.0, 12.0],
    })]
}

/// What was written, to check the answers.
struct Truth {
    failed: u64,
    of_f: u64,
    created: Vec<u64>,
    failed_of_f_at: Vec<u64>,
}

async fn fill(path: &Path, plan: &Plan, now_ms: u64) -> Result<Truth> {
    let store = RedbStore::open(path)?;
    let names: Vec<FunctionName> = (0..plan.functions)
        .map(|i| FunctionName::parse(&format!("fn-{i:03}")).expect("a valid name"))
        .collect();
    let mut truth = Truth {
        failed: 0,
        of_f: 0,
        created: Vec::with_capacity(plan.records as usize),
        failed_of_f_at: Vec::new(),
    };
    let mut i = 0;
    while i < plan.records {
        let batch: Vec<InvocationRecord> = (i..(i + BATCH).min(plan.records))
            .map(|n| {
                let created = now_ms - SPAN_MS + n * SPAN_MS / plan.records;
                let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                let function = names[(mix % plan.functions) as usize].clone();
                let failed = (mix >> 8) % 100 == 0;
                truth.created.push(created);
                truth.failed += u64::from(failed);
                if function.as_str() == "fn-007" {
                    truth.of_f += 1;
                    if failed {
                        truth.failed_of_f_at.push(created);
                    }
                }
                record(n, function, created, failed, mix % 10)
            })
            .collect();
        store
            .put_invocations(batch)
            .await
            .context("writing invocation records")?;
        i += BATCH;
    }
    store.close();
    Ok(truth)
}

fn record(
    n: u64,
    function: FunctionName,
    created: u64,
    failed: bool,
    token: u64,
) -> InvocationRecord {
    InvocationRecord {
        id: format!("{created:013x}-{n:010}"),
        function,
        version: 1,
        mode: InvocationMode::Async,
        status: if failed {
            InvocationStatus::Failed
        } else {
            InvocationStatus::Succeeded
        },
        input: "{}".to_string(),
        output: (!failed).then(|| "{}".to_string()),
        error: None,
        attempts: 1,
        max_attempts: 1,
        created_at_ms: created,
        started_at_ms: Some(created),
        finished_at_ms: Some(created + 3),
        duration_ms: Some(1.0 + (n % 97) as f64),
        queued_ms: Some(0.1),
        billed_gb_s: 0.0003,
        cold_start: n.is_multiple_of(100),
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
        cache_hit: false,
        token: Some(format!("tok_{token:02}")),
        user: None,
    }
}
