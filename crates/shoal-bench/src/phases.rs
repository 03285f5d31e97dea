//! The measurements. Each phase drives the node over HTTP and returns what it
//! saw; judging against the targets is the report's business.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;

use shoal_client::Client;
use shoal_client::protocol::InvocationView;

use crate::cpu::{Snapshot, Usage};
use crate::functions::{ECHO, NUMPY};
use crate::http::{Target, invoke_path};
use crate::stats::{median, ms, percentile};

/// The trivial function of the latency and throughput phases.
pub const ECHO_NAME: &str = "bench-echo";
/// The same code under its own name, so its metrics count only async calls.
pub const ASYNC_NAME: &str = "bench-async";
pub const COLD_NAME: &str = "bench-cold";
pub const NUMPY_NAME: &str = "bench-numpy";

const EVENT: &[u8] = br#"{"n":1}"#;

/// What every phase needs.
pub struct Ctx {
    pub target: Target,
    pub client: Client,
    pub token: String,
    pub node_pid: u32,
    /// Where function directories are written before deploys.
    pub scratch: PathBuf,
}

impl Ctx {
    /// A context for a running node; `scratch` holds function directories.
    pub fn for_node(node: &crate::node::Node, scratch: PathBuf) -> Result<Ctx> {
        Ok(Ctx {
            target: Target::new(node.addr, &node.token)?,
            client: Client::new(&node.url, Some(&node.token))?,
            token: node.token.clone(),
            node_pid: node.pid(),
            scratch,
        })
    }

    pub fn cpu(&self) -> Snapshot {
        Snapshot::take(self.node_pid)
    }
}

pub async fn deploy_echo(ctx: &Ctx, name: &str) -> Result<()> {
    ECHO.deploy(&ctx.client, &ctx.scratch, name, None).await?;
    // First call starts the pool; not measured.
    let mut conn = ctx.target.connect().await?;
    conn.invoke_ok(&invoke_path(name, false), EVENT).await?;
    Ok(())
}

// ---------------------------------------------------------------- latency

pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub cpu: Usage,
}

/// One client, one keep-alive connection, sequential warm invocations.
pub async fn latency(ctx: &Ctx, n: usize, warmup: usize) -> Result<Latency> {
    let mut conn = ctx.target.connect().await?;
    let path = invoke_path(ECHO_NAME, false);
    for _ in 0..warmup {
        conn.invoke_ok(&path, EVENT).await?;
    }
    let mut samples = Vec::with_capacity(n);
    let cpu0 = ctx.cpu();
    for _ in 0..n {
        let t = Instant::now();
        conn.invoke_ok(&path, EVENT).await?;
        samples.push(ms(t.elapsed()));
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    samples.sort_by(f64::total_cmp);
    Ok(Latency {
        n,
        p50_ms: percentile(&samples, 0.50),
        p90_ms: percentile(&samples, 0.90),
        p99_ms: percentile(&samples, 0.99),
        max_ms: percentile(&samples, 1.0),
        mean_ms: samples.iter().sum::<f64>() / n as f64,
        cpu,
    })
}

// ------------------------------------------------------------- throughput

pub struct Throughput {
    pub conns: usize,
    pub per_sec: f64,
    pub ok: u64,
    pub errors: u64,
    pub cpu: Usage,
}

/// `conns` keep-alive connections, each invoking in a loop; counts answers
/// that arrive within the measured window (after `warm`).
pub async fn throughput(
    ctx: &Ctx,
    conns: usize,
    warm: Duration,
    window: Duration,
) -> Result<Throughput> {
    let path = invoke_path(ECHO_NAME, false);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(ctx.target.connect().await?);
    }
    let start = Instant::now();
    let from = start + warm;
    let until = from + window;
    let mut set = JoinSet::new();
    for mut conn in clients {
        let path = path.clone();
        set.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut first_error = None;
            while Instant::now() < until {
                let r = conn.invoke_ok(&path, EVENT).await.map(|_| ());
                let done = Instant::now();
                let counted = done >= from && done < until;
                match r {
                    Ok(_) if counted => ok += 1,
                    Ok(_) => {}
                    Err(e) => {
                        errors += u64::from(counted);
                        if first_error.is_none() {
                            first_error = Some(format!("{e:#}"));
                        }
                        if conn.is_closed() {
                            break;
                        }
                    }
                }
            }
            (ok, errors, first_error)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu0 = ctx.cpu();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    while let Some(r) = set.join_next().await {
        let (o, e, f) = r.context("a client task panicked")?;
        ok += o;
        errors += e;
        first_error = first_error.or(f);
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    if ok == 0 {
        bail!(
            "no invocation succeeded: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(Throughput {
        conns,
        per_sec: ok as f64 / window.as_secs_f64(),
        ok,
        errors,
        cpu,
    })
}

// ------------------------------------------------------------- cold start

pub struct ColdSample {
    pub deploy_ms: f64,
    /// Wall time of the first invocation, as the client saw it.
    pub wall_ms: f64,
    pub queued_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub cold_start: bool,
}

/// Deploys a new version of a trivial function and times its first call.
pub async fn cold_start(ctx: &Ctx, runs: usize) -> Result<(Vec<ColdSample>, Usage)> {
    let path = invoke_path(COLD_NAME, false);
    let mut conn = ctx.target.connect().await?;
    let mut samples = Vec::with_capacity(runs);
    let cpu0 = ctx.cpu();
    for i in 0..runs {
        let t = Instant::now();
        ECHO.deploy(&ctx.client, &ctx.scratch, COLD_NAME, Some(i as u64))
            .await?;
        let deploy_ms = ms(t.elapsed());
        let t = Instant::now();
        let id = conn
            .invoke_ok(&path, EVENT)
            .await?
            .invocation_id
            .map(str::to_string);
        let wall_ms = ms(t.elapsed());
        let view = invocation(ctx, id.as_deref()).await?;
        samples.push(ColdSample {
            deploy_ms,
            wall_ms,
            queued_ms: view.queued_ms,
            duration_ms: view.duration_ms,
            cold_start: view.cold_start,
        });
        // Let the previous version's workers retire before the next round.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((samples, cpu0.usage_until(&ctx.cpu())))
}

/// Reads an invocation record, waiting briefly for it to be visible.
async fn invocation(ctx: &Ctx, id: Option<&str>) -> Result<InvocationView> {
    let id = id.context("the answer had no Shoal-Invocation-Id header")?;
    let mut last_err = None;
    for _ in 0..50 {
        match ctx.client.invocation(id).await {
            Ok(v) if v.finished_at_ms.is_some() => return Ok(v),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match last_err {
        Some(e) => Err(e).with_context(|| format!("reading invocation {id}")),
        None => bail!("invocation {id} did not finish"),
    }
}

// ------------------------------------------------------------ async e2e

pub struct AsyncRun {
    pub m: usize,
    pub conns: usize,
    pub accept_s: f64,
    /// From the first submit to the last completion seen.
    pub total_s: f64,
    pub completed: u64,
    pub failed: u64,
    /// Finished (succeeded or failed) when the last submission was accepted.
    pub done_at_accept: u64,
    pub timed_out: bool,
    /// Status of the last accepted invocation, read at the end.
    pub last_status: String,
    pub cpu: Usage,
}

/// Submits `m` asynchronous invocations over `conns` connections while
/// watching `/metrics` (every 50 ms) until every one of them has finished.
pub async fn async_e2e(ctx: &Ctx, m: usize, conns: usize, limit: Duration) -> Result<AsyncRun> {
    let path = invoke_path(ASYNC_NAME, true);
    let mut poll_conn = ctx.target.connect().await?;
    let base = async_counts(&mut poll_conn).await?;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(ctx.target.connect().await?);
    }
    let cpu0 = ctx.cpu();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, mut conn) in clients.into_iter().enumerate() {
        let share = m / conns + usize::from(i < m % conns);
        let path = path.clone();
        set.spawn(async move {
            for left in (0..share).rev() {
                let reply = conn.post(&path, EVENT).await?;
                if reply.status != 202 {
                    bail!(
                        "async invoke answered HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
                if left == 0 {
                    return anyhow::Ok(reply.invocation_id.map(str::to_string));
                }
            }
            anyhow::Ok(None)
        });
    }
    let want = m as u64;
    // (seconds since start, succeeded, failed)
    let watcher = tokio::spawn(async move {
        let mut timeline: Vec<(f64, u64, u64)> = Vec::new();
        loop {
            let (ok, failed) = async_counts(&mut poll_conn).await?;
            let sample = (start.elapsed().as_secs_f64(), ok - base.0, failed - base.1);
            timeline.push(sample);
            if sample.1 + sample.2 >= want || start.elapsed() > limit {
                return anyhow::Ok(timeline);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut last_id = None;
    let mut submit_error = None;
    while let Some(r) = set.join_next().await {
        match r.context("a client task panicked")? {
            Ok(Some(id)) => last_id = Some(id),
            Ok(None) => {}
            Err(e) => submit_error = Some(e),
        }
    }
    let accept_s = start.elapsed().as_secs_f64();
    if let Some(e) = submit_error {
        watcher.abort();
        return Err(e.context("submitting asynchronous invocations"));
    }
    let timeline = watcher.await.context("the watcher panicked")??;
    let cpu = cpu0.usage_until(&ctx.cpu());
    let &(total_s, completed, failed) = timeline.last().expect("at least one sample");
    let done_at_accept = timeline
        .iter()
        .take_while(|s| s.0 <= accept_s)
        .last()
        .map_or(0, |s| s.1 + s.2);
    let last_status = match last_id.as_deref() {
        Some(id) => match ctx.client.invocation(id).await {
            Ok(v) => v.status,
            Err(e) => format!("unreadable: {e}"),
        },
        None => "n/a".into(),
    };
    Ok(AsyncRun {
        m,
        conns,
        accept_s,
        total_s,
        completed,
        failed,
        done_at_accept,
        timed_out: completed + failed < want,
        last_status,
        cpu,
    })
}

/// `(succeeded, failed)` async invocations of `ASYNC_NAME` from `/metrics`.
async fn async_counts(conn: &mut crate::http::Conn) -> Result<(u64, u64)> {
    let reply = conn.get("/metrics").await?;
    if !reply.is_success() {
        bail!(
            "/metrics answered HTTP {}: {}",
            reply.status,
            reply.body_text()
        );
    }
    let text = std::str::from_utf8(reply.body).context("/metrics is not UTF-8")?;
    Ok(parse_async_counts(text, ASYNC_NAME))
}

fn parse_async_counts(text: &str, function: &str) -> (u64, u64) {
    let want_fn = format!("function=\"{function}\"");
    let (mut ok, mut failed) = (0u64, 0u64);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("shoal_invocations_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let labels: Vec<&str> = labels.split(',').collect();
        if !labels.contains(&want_fn.as_str()) || !labels.contains(&"mode=\"async\"") {
            continue;
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        if labels.contains(&"outcome=\"succeeded\"") {
            ok += n;
        } else {
            failed += n;
        }
    }
    (ok, failed)
}

// ------------------------------------------------------ numpy pool growth

pub struct NumpyRound {
    pub cold_wall_ms: f64,
    pub cold_queued_ms: Option<f64>,
    /// `(queued_ms, cold_start)` of each call of the concurrent wave.
    pub wave: Vec<(f64, bool)>,
}

pub struct Numpy {
    pub deploy_ms: f64,
    pub concurrency: usize,
    pub rounds: Vec<NumpyRound>,
    pub cpu: Usage,
}

impl Numpy {
    /// `queued_ms` of the wave calls that had to get a new worker: those
    /// flagged `cold_start`; if the node flags none, every call but the
    /// fastest (one idle worker was warm from the cold call).
    pub fn new_worker_ms(&self) -> (Vec<f64>, &'static str) {
        let flagged: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|r| r.wave.iter().filter(|(_, cold)| *cold).map(|(q, _)| *q))
            .collect();
        if !flagged.is_empty() {
            return (flagged, "calls flagged cold_start");
        }
        let mut out = Vec::new();
        for r in &self.rounds {
            let mut q: Vec<f64> = r.wave.iter().map(|(q, _)| *q).collect();
            q.sort_by(f64::total_cmp);
            out.extend(q.into_iter().skip(1));
        }
        (
            out,
            "all wave calls but the fastest (no call was flagged cold_start)",
        )
    }

    pub fn cold_median_ms(&self) -> f64 {
        median(
            &self
                .rounds
                .iter()
                .map(|r| r.cold_wall_ms)
                .collect::<Vec<_>>(),
        )
    }
}

/// Deploys the numpy function, calls it once (cold: the template starts and
/// imports numpy), then fires `concurrency` overlapping calls so the pool
/// must grow, and reads each call's `queued_ms`. Each further round deploys a
/// new version (same requirements, so the virtualenv is reused).
pub async fn numpy(ctx: &Ctx, rounds: usize) -> Result<Numpy> {
    let t = Instant::now();
    let deployed = NUMPY
        .deploy(&ctx.client, &ctx.scratch, NUMPY_NAME, None)
        .await?;
    let deploy_ms = ms(t.elapsed());
    let k = deployed.concurrency as usize;
    let path = invoke_path(NUMPY_NAME, false);
    let cold_body: &[u8] = br#"{"sleep_s":0}"#;
    let wave_body: &'static [u8] = br#"{"sleep_s":0.3}"#;
    let cpu0 = ctx.cpu();
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round > 0 {
            NUMPY
                .deploy(&ctx.client, &ctx.scratch, NUMPY_NAME, Some(round as u64))
                .await?;
        }
        let mut conn = ctx.target.connect().await?;
        let t = Instant::now();
        let id = conn
            .invoke_ok(&path, cold_body)
            .await?
            .invocation_id
            .map(str::to_string);
        let cold_wall_ms = ms(t.elapsed());
        let cold = invocation(ctx, id.as_deref()).await?;
        let mut conns = Vec::with_capacity(k);
        for _ in 0..k {
            conns.push(ctx.target.connect().await?);
        }
        let mut set = JoinSet::new();
        for mut c in conns {
            let path = path.clone();
            set.spawn(async move {
                c.invoke_ok(&path, wave_body)
                    .await
                    .map(|r| r.invocation_id.map(str::to_string))
            });
        }
        let mut ids = Vec::with_capacity(k);
        while let Some(r) = set.join_next().await {
            ids.push(r.context("a client task panicked")??);
        }
        let mut wave = Vec::with_capacity(k);
        for id in ids {
            let v = invocation(ctx, id.as_deref()).await?;
            wave.push((v.queued_ms.unwrap_or(f64::NAN), v.cold_start));
        }
        wave.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.push(NumpyRound {
            cold_wall_ms,
            cold_queued_ms: cold.queued_ms,
            wave,
        });
    }
    Ok(Numpy {
        deploy_ms,
        concurrency: k,
        rounds: out,
        cpu: cpu0.usage_until(&ctx.cpu()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_async_outcomes_of_one_function() {
        let text = "\
# TYPE shoal_invocations_total counter
shoal_invocations_total{function=\"bench-async\",mode=\"async\",outcome=\"succeeded\"} 1500
shoal_invocations_total{function=\"bench-async\",mode=\"sync\",outcome=\"succeeded\"} 3
shoal_invocations_total{function=\"bench-async\",mode=\"async\",outcome=\"raised\"} 2
shoal_invocations_total{function=\"bench-echo\",mode=\"async\",outcome=\"succeeded\"} 99
";
        assert_eq!(parse_async_counts(text, "bench-async"), (1500, 2));
        assert_eq!(parse_async_counts("", "bench-async"), (0, 0));
    }
}
