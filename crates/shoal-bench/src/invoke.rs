//! The invocation phases: warm sync latency, sync throughput, cold start, a
//! warm numpy function growing its pool, and asynchronous invocations end
//! to end. Each measures and then renders its own section. Latency,
//! throughput and the asynchronous submissions use the lean client of
//! `http.rs` (they drive the node at full rate); the rest use `shoal_client`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::task::JoinSet;

use shoal_client::protocol::InvocationView;

use crate::cpu::Usage;
use crate::functions::{ECHO, NUMPY};
use crate::http::invoke_path;
use crate::node::{self, Ctx};
use crate::report::{Figure, Section, list_ms, one_line};
use crate::stats::{fmt_ms, max, median, min, ms, percentile, thousands};

/// The trivial function of the latency and throughput phases.
const ECHO_NAME: &str = "bench-echo";
/// The same code under its own name, so its metrics count only async calls.
const ASYNC_NAME: &str = "bench-async";
const COLD_NAME: &str = "bench-cold";
const NUMPY_NAME: &str = "bench-numpy";
const EVENT: &str = r#"{"n":1}"#;

/// Sizes of the invocation phases.
pub struct Plan {
    pub latency_n: usize,
    pub latency_warmup: usize,
    /// Connections of each throughput window.
    pub conns: Vec<usize>,
    pub warm: Duration,
    pub window: Duration,
    pub cold_runs: usize,
    pub async_m: usize,
    pub async_conns: usize,
    pub async_limit: Duration,
    pub numpy_rounds: usize,
}

// ---------------------------------------------------------------- latency

struct Latency {
    n: usize,
    /// Sorted, in ms.
    samples: Vec<f64>,
    cpu: Usage,
}

/// One client, one keep-alive connection, sequential warm invocations.
pub async fn latency(ctx: &Ctx, plan: &Plan) -> Result<Section> {
    echo_ready(ctx, ECHO_NAME).await?;
    let mut conn = ctx.target.connect().await?;
    let path = invoke_path(ECHO_NAME, false);
    for _ in 0..plan.latency_warmup {
        conn.invoke_ok(&path, EVENT.as_bytes()).await?;
    }
    let mut samples = Vec::with_capacity(plan.latency_n);
    let cpu0 = ctx.cpu();
    for _ in 0..plan.latency_n {
        let t = Instant::now();
        conn.invoke_ok(&path, EVENT.as_bytes()).await?;
        samples.push(ms(t.elapsed()));
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    samples.sort_by(f64::total_cmp);
    Ok(latency_section(&Latency {
        n: plan.latency_n,
        samples,
        cpu,
    }))
}

fn latency_section(l: &Latency) -> Section {
    let p = |q| percentile(&l.samples, q);
    let mut s = Section::new("latency");
    s.add(
        Figure::new("latency.p50", p(0.5))
            .setting(format!(
                "1 client, keep-alive, n = {}",
                thousands(l.n as f64)
            ))
            .paren(format!("p99 {}", fmt_ms(p(0.99)))),
    );
    s.detail(format!(
        "Warm latency: p50 {}, p90 {}, p99 {}, max {}, mean {} over {} sequential calls; the \
         client used {:.0} µs of CPU per call.",
        fmt_ms(p(0.5)),
        fmt_ms(p(0.9)),
        fmt_ms(p(0.99)),
        fmt_ms(p(1.0)),
        fmt_ms(l.samples.iter().sum::<f64>() / l.n as f64),
        thousands(l.n as f64),
        l.cpu.client_cpu_s * 1e6 / l.n as f64
    ));
    s.cpu("warm latency", &l.cpu);
    s
}

// ------------------------------------------------------------- throughput

struct Throughput {
    conns: usize,
    per_sec: f64,
    ok: u64,
    errors: u64,
    cpu: Usage,
}

/// Windows of `conns` keep-alive connections, each invoking in a loop.
pub async fn throughput(ctx: &Ctx, plan: &Plan) -> Result<Section> {
    echo_ready(ctx, ECHO_NAME).await?;
    let mut runs = Vec::new();
    let mut failure = None;
    for &c in &plan.conns {
        crate::step(&format!(
            "sync throughput: {c} clients for {:?}",
            plan.window
        ));
        match window(ctx, c, plan.warm, plan.window).await {
            Ok(t) => runs.push(t),
            Err(e) if runs.is_empty() => return Err(e.context(format!("{c} clients"))),
            Err(e) => {
                failure = Some(format!("{c} clients: {e:#}"));
                break;
            }
        }
    }
    Ok(throughput_section(&runs, failure))
}

/// Counts the answers that arrive within `window` (after `warm`).
async fn window(ctx: &Ctx, conns: usize, warm: Duration, window: Duration) -> Result<Throughput> {
    let path = invoke_path(ECHO_NAME, false);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(ctx.target.connect().await?);
    }
    let from = Instant::now() + warm;
    let until = from + window;
    let mut set = JoinSet::new();
    for mut conn in clients {
        let path = path.clone();
        set.spawn(async move { call_until(&mut conn, &path, from, until).await });
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

/// Sync calls on one connection, back to back, until `until`; counts the
/// answers that arrive in `[from, until)`: (succeeded, failed, the first
/// failure). Stops early when the connection closes.
pub(crate) async fn call_until(
    conn: &mut crate::http::Conn,
    path: &str,
    from: Instant,
    until: Instant,
) -> (u64, u64, Option<String>) {
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    while Instant::now() < until {
        let r = conn.invoke_ok(path, EVENT.as_bytes()).await.map(|_| ());
        let done = Instant::now();
        let counted = done >= from && done < until;
        match r {
            Ok(()) => ok += u64::from(counted),
            Err(e) => {
                errors += u64::from(counted);
                first_error.get_or_insert_with(|| format!("{e:#}"));
                if conn.is_closed() {
                    break;
                }
            }
        }
    }
    (ok, errors, first_error)
}

fn throughput_section(runs: &[Throughput], failure: Option<String>) -> Section {
    let mut s = Section::new("throughput");
    let best = runs.iter().max_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let all: Vec<String> = runs
        .iter()
        .map(|t| format!("{}: {}/s", t.conns, thousands(t.per_sec)))
        .collect();
    let per_call: Vec<String> = runs
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
    s.add(
        Figure::new("throughput.best", best.map_or(f64::NAN, |b| b.per_sec)).paren(format!(
            "with {} clients; {}",
            best.map_or(0, |b| b.conns),
            all.join(", ")
        )),
    );
    s.detail(format!(
        "Sync throughput, answers within the measured window: {}.{}",
        per_call.join("; "),
        failure.map_or(String::new(), |e| format!(" Then failed: {}", one_line(&e)))
    ));
    for t in runs {
        s.cpu(format!("sync throughput, {} clients", t.conns), &t.cpu);
    }
    s
}

// ------------------------------------------------------------- cold start

struct ColdSample {
    deploy_ms: f64,
    /// Wall time of the first invocation, as the client saw it.
    wall_ms: f64,
    queued_ms: Option<f64>,
    duration_ms: Option<f64>,
    cold_start: bool,
}

/// Deploys new versions of a trivial function and times each first call.
pub async fn cold(ctx: &Ctx, runs: usize) -> Result<Section> {
    let mut samples = Vec::with_capacity(runs);
    let cpu0 = ctx.cpu();
    for i in 0..runs {
        let t = Instant::now();
        ECHO.deploy(&ctx.client, &ctx.scratch, COLD_NAME, Some(i as u64), &[])
            .await?;
        let deploy_ms = ms(t.elapsed());
        let t = Instant::now();
        let id = invoke_ok(ctx, COLD_NAME, EVENT).await?;
        let wall_ms = ms(t.elapsed());
        let view = invocation(ctx, &id).await?;
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
    Ok(cold_section(&samples, &cpu0.usage_until(&ctx.cpu())))
}

fn cold_section(samples: &[ColdSample], cpu: &Usage) -> Section {
    let wall: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
    let queued: Vec<f64> = samples.iter().filter_map(|s| s.queued_ms).collect();
    let dur: Vec<f64> = samples.iter().filter_map(|s| s.duration_ms).collect();
    let deploy: Vec<f64> = samples.iter().map(|s| s.deploy_ms).collect();
    let flagged = samples.iter().filter(|s| s.cold_start).count();
    let mut s = Section::new("cold");
    s.add(
        Figure::new("cold.first_call", median(&wall))
            .setting(format!("{} new versions", samples.len()))
            .paren(format!(
                "min {}, max {}; queued_ms median {}",
                fmt_ms(min(&wall)),
                fmt_ms(max(&wall)),
                fmt_ms(median(&queued))
            )),
    );
    s.detail(format!(
        "Cold start: client-side wall times {}; the node's queued_ms {} and duration_ms {}; \
         {flagged} of {} flagged cold_start; deploy took {} (median).",
        list_ms(&wall),
        list_ms(&queued),
        list_ms(&dur),
        samples.len(),
        fmt_ms(median(&deploy))
    ));
    s.cpu("cold starts (with deploys)", cpu);
    s
}

// ------------------------------------------------------ numpy pool growth

struct NumpyRound {
    cold_wall_ms: f64,
    cold_queued_ms: Option<f64>,
    /// `(queued_ms, cold_start)` of each call of the concurrent wave.
    wave: Vec<(f64, bool)>,
}

struct Numpy {
    deploy_ms: f64,
    concurrency: usize,
    rounds: Vec<NumpyRound>,
    cpu: Usage,
}

/// Deploys the numpy function, calls it once (cold: the template starts and
/// imports numpy), then fires `concurrency` overlapping calls so the pool
/// must grow, and reads each call's `queued_ms`. Each further round deploys a
/// new version (same requirements, so the virtualenv is reused).
pub async fn numpy(ctx: &Ctx, rounds: usize) -> Result<Section> {
    let t = Instant::now();
    let deployed = NUMPY
        .deploy(&ctx.client, &ctx.scratch, NUMPY_NAME, None, &[])
        .await?;
    let deploy_ms = ms(t.elapsed());
    let k = deployed.concurrency as usize;
    let cpu0 = ctx.cpu();
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round > 0 {
            NUMPY
                .deploy(
                    &ctx.client,
                    &ctx.scratch,
                    NUMPY_NAME,
                    Some(round as u64),
                    &[],
                )
                .await?;
        }
        let t = Instant::now();
        let id = invoke_ok(ctx, NUMPY_NAME, r#"{"sleep_s":0}"#).await?;
        let cold_wall_ms = ms(t.elapsed());
        let cold = invocation(ctx, &id).await?;
        let mut set = JoinSet::new();
        for _ in 0..k {
            let client = ctx.client.clone();
            set.spawn(async move { client.invoke(NUMPY_NAME, r#"{"sleep_s":0.3}"#).await });
        }
        let mut wave = Vec::with_capacity(k);
        while let Some(r) = set.join_next().await {
            let invoked = r.context("a client task panicked")??;
            invoked
                .result
                .map_err(|f| anyhow!("the function failed: {f:?}"))?;
            let v = invocation(ctx, &invoked.id).await?;
            wave.push((v.queued_ms.unwrap_or(f64::NAN), v.cold_start));
        }
        wave.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.push(NumpyRound {
            cold_wall_ms,
            cold_queued_ms: cold.queued_ms,
            wave,
        });
    }
    Ok(numpy_section(&Numpy {
        deploy_ms,
        concurrency: k,
        rounds: out,
        cpu: cpu0.usage_until(&ctx.cpu()),
    }))
}

impl Numpy {
    /// `queued_ms` of the wave calls that had to get a new worker: those
    /// flagged `cold_start`; if the node flags none, every call but the
    /// fastest (one idle worker was warm from the cold call).
    fn new_worker_ms(&self) -> (Vec<f64>, &'static str) {
        let flagged: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|r| r.wave.iter().filter(|(_, cold)| *cold).map(|(q, _)| *q))
            .collect();
        if !flagged.is_empty() {
            return (flagged, "calls flagged cold_start");
        }
        let rest = self.rounds.iter().flat_map(|r| r.wave.iter().skip(1));
        (
            rest.map(|(q, _)| *q).collect(),
            "all wave calls but the fastest (no call was flagged cold_start)",
        )
    }
}

fn numpy_section(n: &Numpy) -> Section {
    let (new, how) = n.new_worker_ms();
    let cold: Vec<f64> = n.rounds.iter().map(|r| r.cold_wall_ms).collect();
    let mut s = Section::new("numpy");
    s.add(
        Figure::new("numpy.new_worker", median(&new))
            .setting(format!(
                "{} calls, concurrency {}",
                new.len(),
                n.concurrency
            ))
            .paren(format!(
                "max {}; cold start of that function {}",
                fmt_ms(max(&new)),
                fmt_ms(median(&cold))
            ))
            .flaw_if(new.is_empty(), "no call needed a new worker"),
    );
    for (i, round) in n.rounds.iter().enumerate() {
        let wave: Vec<String> = round
            .wave
            .iter()
            .map(|(q, c)| format!("{}{}", fmt_ms(*q), if *c { " (cold_start)" } else { "" }))
            .collect();
        s.detail(format!(
            "Numpy round {}: first call {} wall (queued_ms {}); {} overlapping 300 ms calls waited \
             {}.",
            i + 1,
            fmt_ms(round.cold_wall_ms),
            round.cold_queued_ms.map_or("n/a".into(), fmt_ms),
            round.wave.len(),
            wave.join(", ")
        ));
    }
    s.detail(format!(
        "Numpy: new-worker figures are {how}; the first deploy (pip install numpy into the \
         function's virtualenv) took {}.",
        fmt_ms(n.deploy_ms)
    ));
    s.cpu("numpy pool growth", &n.cpu);
    s
}

// ------------------------------------------------------------ async e2e

struct AsyncRun {
    m: usize,
    conns: usize,
    accept_s: f64,
    /// From the first submit to the last completion seen.
    total_s: f64,
    completed: u64,
    failed: u64,
    /// Finished (succeeded or failed) when the last submission was accepted.
    done_at_accept: u64,
    /// Status of the last accepted invocation, read at the end.
    last_status: String,
    cpu: Usage,
}

/// Submits `m` asynchronous invocations over `conns` connections while
/// watching `/metrics` (every 50 ms) until every one of them has finished.
pub async fn async_e2e(ctx: &Ctx, plan: &Plan) -> Result<Section> {
    echo_ready(ctx, ASYNC_NAME).await?;
    let (m, conns) = (plan.async_m, plan.async_conns);
    let path = invoke_path(ASYNC_NAME, true);
    let base = node::invocations(&ctx.client, ASYNC_NAME, Some("async")).await?;
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
            let mut last = None;
            for _ in 0..share {
                let reply = conn.post(&path, EVENT.as_bytes()).await?;
                if reply.status != 202 {
                    bail!(
                        "async invoke answered HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
                last = reply.invocation_id.map(str::to_string);
            }
            anyhow::Ok(last)
        });
    }
    let want = m as u64;
    let (client, limit) = (ctx.client.clone(), plan.async_limit);
    // (seconds since start, succeeded, failed); aborted if dropped early.
    let mut watcher = JoinSet::new();
    watcher.spawn(async move {
        let mut timeline: Vec<(f64, u64, u64)> = Vec::new();
        loop {
            let (ok, failed) = node::invocations(&client, ASYNC_NAME, Some("async")).await?;
            let sample = (start.elapsed().as_secs_f64(), ok - base.0, failed - base.1);
            timeline.push(sample);
            if sample.1 + sample.2 >= want || start.elapsed() > limit {
                return anyhow::Ok(timeline);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut last_id = None;
    while let Some(r) = set.join_next().await {
        match r.context("a client task panicked")? {
            Ok(id) => last_id = id.or(last_id),
            Err(e) => return Err(e.context("submitting asynchronous invocations")),
        }
    }
    let accept_s = start.elapsed().as_secs_f64();
    let timeline = watcher.join_next().await.context("no watcher")?;
    let timeline = timeline.context("the watcher panicked")??;
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
    Ok(async_section(&AsyncRun {
        m,
        conns,
        accept_s,
        total_s,
        completed,
        failed,
        done_at_accept,
        last_status,
        cpu,
    }))
}

fn async_section(a: &AsyncRun) -> Section {
    let done = a.completed + a.failed;
    let m = thousands(a.m as f64);
    let mut s = Section::new("async");
    s.add(
        Figure::new("async.end_to_end", done as f64 / a.total_s)
            .setting(format!("{m} submitted by {} clients", a.conns))
            .paren(format!(
                "{} in {:.2} s; accepted {}/s",
                thousands(done as f64),
                a.total_s,
                thousands(a.m as f64 / a.accept_s)
            ))
            .flaw_if(
                done < a.m as u64,
                format!("only {} of {m} finished", thousands(done as f64)),
            )
            .flaw_if(
                a.failed > 0,
                format!("{} failed", thousands(a.failed as f64)),
            ),
    );
    s.detail(format!(
        "Async: all {m} accepted after {:.2} s ({}/s), when {} had finished; last one finished at \
         {:.2} s; {} succeeded, {} failed; the last accepted invocation reads `{}`.",
        a.accept_s,
        thousands(a.m as f64 / a.accept_s),
        thousands(a.done_at_accept as f64),
        a.total_s,
        thousands(a.completed as f64),
        thousands(a.failed as f64),
        a.last_status
    ));
    s.cpu("async end to end", &a.cpu);
    s
}

// ---------------------------------------------------------------- helpers

/// Deploys the echo function as `name` and starts its pool, unless the node
/// has it already (latency and throughput share one deploy).
async fn echo_ready(ctx: &Ctx, name: &str) -> Result<()> {
    if ctx.client.function(name).await.is_ok() {
        return Ok(());
    }
    crate::step(&format!("deploying {name}"));
    ECHO.deploy(&ctx.client, &ctx.scratch, name, None, &[])
        .await?;
    // The first call starts the pool; not measured.
    invoke_ok(ctx, name, EVENT).await.map(|_| ())
}

/// A synchronous invocation through `shoal_client` that must succeed; its id.
async fn invoke_ok(ctx: &Ctx, name: &str, event: &str) -> Result<String> {
    let invoked = ctx.client.invoke(name, event).await?;
    invoked
        .result
        .map_err(|f| anyhow!("the function failed: {f:?}"))?;
    Ok(invoked.id)
}

/// Reads an invocation record, waiting briefly for it to be final.
async fn invocation(ctx: &Ctx, id: &str) -> Result<InvocationView> {
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

/// The sections of these phases from fixed measurements (for the report's
/// tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let cpu = Usage::default();
    let wave = |q: &[f64]| q.iter().map(|q| (*q, false)).collect();
    let t = |conns, per_sec| Throughput {
        conns,
        per_sec,
        ok: 1000,
        errors: 0,
        cpu: cpu.clone(),
    };
    let cold = |wall_ms| ColdSample {
        deploy_ms: 6.0,
        wall_ms,
        queued_ms: Some(wall_ms - 1.0),
        duration_ms: Some(0.5),
        cold_start: true,
    };
    vec![
        latency_section(&Latency {
            n: 3,
            samples: vec![0.2, 0.25, 0.6],
            cpu: cpu.clone(),
        }),
        throughput_section(&[t(8, 7325.0), t(16, 6903.0)], Some("32 clients: x".into())),
        cold_section(&[cold(120.0), cold(90.0), cold(144.0)], &cpu),
        numpy_section(&Numpy {
            deploy_ms: 10_000.0,
            concurrency: 3,
            rounds: vec![NumpyRound {
                cold_wall_ms: 170.0,
                cold_queued_ms: Some(166.0),
                wave: wave(&[0.01, 5.3, 12.0]),
            }],
            cpu: cpu.clone(),
        }),
        async_section(&AsyncRun {
            m: 20_000,
            conns: 16,
            accept_s: 4.75,
            total_s: 4.79,
            completed: 19_999,
            failed: 1,
            done_at_accept: 19_983,
            last_status: "succeeded".into(),
            cpu,
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_measured() {
        let all = examples();
        let cell = |i: usize| all[i].figures[0].judged().0;
        assert_eq!(cell(0), "0.25 ms (p99 0.60 ms)");
        assert_eq!(cell(1), "7,325/s (with 8 clients; 8: 7,325/s, 16: 6,903/s)");
        assert_eq!(
            cell(2),
            "120 ms (min 90.0 ms, max 144 ms; queued_ms median 119 ms)"
        );
        // The fastest wave call reused the warm worker.
        assert_eq!(
            cell(3),
            "8.65 ms (max 12.0 ms; cold start of that function 170 ms)"
        );
        assert!(cell(4).ends_with("; 1 failed"), "{}", cell(4));
        assert!(all[1].details[0].contains("Then failed: 32 clients: x"));
    }
}
