//! Listing invocations among many: 1,000,000 invocation records are written
//! straight through the embedded store (`RedbStore`, the adapter the node
//! runs on, its public `put_invocations` port, batches of 5,000) into a
//! data directory of their own; then a node is started on it, and
//! `GET /v1/invocations?function=F&status=failed&limit=50` is timed over
//! HTTP (the typed client, JSON decoded), one call after another.
//!
//! The records belong to 200 functions; about 1 % of them failed, and the
//! function asked for (`fn-007`) has ~5,000 records of which ~500 failed,
//! spread over the last 7 days. Writing them through the node would take
//! an hour of Python calls; the store is what the list reads, so this is
//! the same file a node with that history would have.

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
    pub calls: usize,
}

/// The function whose failures are listed.
const FUNCTION: &str = "fn-007";
const BATCH: u64 = 5_000;

pub async fn run(shoal: &Path, plan: &Plan) -> Result<Section> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-list-")
        .tempdir()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let t = Instant::now();
    let failed_of_f = fill(&dir.path().join("data/shoal.redb"), plan, now_ms).await?;
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!(
        "  wrote {} records in {fill_s:.1} s ({} of them failed ones of {FUNCTION})",
        thousands(plan.records as f64),
        failed_of_f
    );

    let mut node = Node::start(shoal, dir.path(), "warn", &[])?;
    let client = Client::new(&node.url, Some(&node.token))?;
    let filters = [
        ("function", FUNCTION),
        ("status", "failed"),
        ("limit", "50"),
    ];
    // The first call opens the pages it reads; not counted.
    let first = client.list_invocations(&filters).await?;
    if first.invocations.len() != 50 || first.next.is_none() {
        bail!(
            "the first page has {} invocations (next: {:?}); want 50 and more",
            first.invocations.len(),
            first.next
        );
    }
    let mut times = Vec::with_capacity(plan.calls);
    for _ in 0..plan.calls {
        let t = Instant::now();
        let page = client.list_invocations(&filters).await?;
        times.push(ms(t.elapsed()));
        if page.invocations.len() != 50 {
            bail!("a page had {} invocations", page.invocations.len());
        }
    }
    // The second page, through the cursor, and an unfiltered first page.
    let next = first.next.clone().context("a next page")?;
    let t = Instant::now();
    let second = client
        .list_invocations(&[
            ("function", FUNCTION),
            ("status", "failed"),
            ("limit", "50"),
            ("cursor", &next),
        ])
        .await?;
    let second_ms = ms(t.elapsed());
    let t = Instant::now();
    client.list_invocations(&[("limit", "50")]).await?;
    let unfiltered_ms = ms(t.elapsed());
    // `failed=true` (two status indexes merged) and a text search that
    // finds nothing, so it scans its whole budget (2,000 records and
    // their logs): the median of 20 calls each.
    let failed_only_ms = median_of(
        &client,
        &[("function", FUNCTION), ("failed", "true"), ("limit", "50")],
        50,
    )
    .await?;
    let grep_ms = median_of(
        &client,
        &[
            ("function", FUNCTION),
            ("q", "no such text"),
            ("scan", "2000"),
        ],
        0,
    )
    .await?;
    let stats = client.stats().await?;
    node.stop(Duration::from_secs(10));

    times.sort_by(f64::total_cmp);
    Ok(section(&Listed {
        records: plan.records,
        functions: plan.functions,
        times,
        fill_s,
        stored: stats.invocations,
        data_dir_bytes: stats.data_dir_bytes,
        failed_of_f,
        second_ms,
        second_len: second.invocations.len(),
        unfiltered_ms,
        failed_only_ms,
        grep_ms,
    }))
}

/// The median time of 20 calls of one list, each answering `want` entries.
async fn median_of(client: &Client, filters: &[(&str, &str)], want: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        let page = client.list_invocations(filters).await?;
        times.push(ms(t.elapsed()));
        if page.invocations.len() != want {
            bail!(
                "{filters:?}: {} invocations, want {want}",
                page.invocations.len()
            );
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(median(&times))
}

/// What the phase measured.
struct Listed {
    records: u64,
    functions: u64,
    /// Milliseconds per call, sorted.
    times: Vec<f64>,
    fill_s: f64,
    stored: u64,
    data_dir_bytes: u64,
    failed_of_f: u64,
    second_ms: f64,
    second_len: usize,
    unfiltered_ms: f64,
    /// `failed=true` of one function, a page of 50.
    failed_only_ms: f64,
    /// `q` matching nothing: a scan of 2,000 records.
    grep_ms: f64,
}

fn section(l: &Listed) -> Section {
    let (p50, p99) = (median(&l.times), percentile(&l.times, 0.99));
    let setting = format!(
        "{} records of {} functions, {} calls one after another",
        thousands(l.records as f64),
        l.functions,
        l.times.len()
    );
    let mut s = Section::new("list");
    s.add(Figure::new("list.failed_p99", p99).setting(setting.clone()));
    s.add(Figure::new("list.failed_p50", p50).setting(setting));
    s.detail(format!(
        "Records written straight through the store (`RedbStore::put_invocations`, batches of \
         {BATCH}) in {:.1} s; the node then opened the file ({} stored, data directory \
         {:.0} MiB). {FUNCTION} has {} failed invocations.",
        l.fill_s,
        thousands(l.stored as f64),
        l.data_dir_bytes as f64 / (1024.0 * 1024.0),
        l.failed_of_f
    ));
    s.detail(format!(
        "Second page of the same list (`cursor`): {:.2} ms ({} invocations); first page \
         without filters: {:.2} ms.",
        l.second_ms, l.second_len, l.unfiltered_ms
    ));
    s.detail(format!(
        "`failed=true` of {FUNCTION} (failed and timed_out merged), a page of 50: {:.2} ms \
         (median of 20); text search `q` matching nothing, scanning its budget of 2,000 \
         records of {FUNCTION} with their logs: {:.1} ms (median of 20).",
        l.failed_only_ms, l.grep_ms
    ));
    s
}

#[cfg(test)]
pub fn examples() -> Vec<Section> {
    vec![section(&Listed {
        records: 1_000_000,
        functions: 200,
        times: (0..200).map(|i| 2.0 + f64::from(i) / 100.0).collect(),
        fill_s: 40.0,
        stored: 1_000_000,
        data_dir_bytes: 1 << 30,
        failed_of_f: 510,
        second_ms: 2.5,
        second_len: 50,
        unfiltered_ms: 2.0,
        failed_only_ms: 3.0,
        grep_ms: 40.0,
    })]
}

/// Writes `plan.records` records; returns how many are failed ones of
/// `FUNCTION`.
async fn fill(path: &Path, plan: &Plan, now_ms: u64) -> Result<u64> {
    let store = RedbStore::open(path)?;
    let span_ms = 7 * 86_400_000;
    let names: Vec<FunctionName> = (0..plan.functions)
        .map(|i| FunctionName::parse(&format!("fn-{i:03}")).expect("a valid name"))
        .collect();
    let mut failed_of_f = 0;
    let mut i = 0;
    while i < plan.records {
        let batch: Vec<InvocationRecord> = (i..(i + BATCH).min(plan.records))
            .map(|n| {
                // Oldest first, evenly over the span; a cheap mix picks the
                // function and the outcome.
                let created = now_ms - span_ms + n * span_ms / plan.records;
                let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                let function = names[(mix % plan.functions) as usize].clone();
                let failed = (mix >> 8) % 100 == 0
                    || (function.as_str() == FUNCTION && (mix >> 16) % 10 == 0);
                if failed && function.as_str() == FUNCTION {
                    failed_of_f += 1;
                }
                record(n, function, created, failed)
            })
            .collect();
        store
            .put_invocations(batch)
            .await
            .context("writing invocation records")?;
        i += BATCH;
    }
    store.close();
    Ok(failed_of_f)
}

fn record(n: u64, function: FunctionName, created: u64, failed: bool) -> InvocationRecord {
    InvocationRecord {
        id: format!("{created:013x}-{n:010}"),
        function,
        version: 1,
        mode: if n.is_multiple_of(3) {
            InvocationMode::Async
        } else {
            InvocationMode::Sync
        },
        status: if failed {
            InvocationStatus::Failed
        } else {
            InvocationStatus::Succeeded
        },
        input: format!(r#"{{"order":{n},"items":3}}"#),
        output: (!failed).then(|| format!(r#"{{"ok":true,"order":{n}}}"#)),
        error: failed.then(|| shoal_store::ErrorRecord {
            kind: shoal_types::FailureKind::Raised,
            exception: Some("ValueError".into()),
            message: format!("order {n} is invalid"),
            traceback: Some("Traceback (most recent call last):\n  ...\nValueError".into()),
        }),
        attempts: 1,
        max_attempts: 1,
        created_at_ms: created,
        started_at_ms: Some(created),
        finished_at_ms: Some(created + 3),
        duration_ms: Some(2.5),
        queued_ms: Some(0.1),
        billed_gb_s: 0.0003,
        cold_start: false,
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
        cache_hit: false,
        token: None,
        user: None,
    }
}
