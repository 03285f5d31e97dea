//! A one-off measurement (issue 8, item 9): the warm-latency and sync
//! throughput phases driven by the hand-written client (`http.rs`) and by
//! `shoal-client` (reqwest) against the same node, alternating, in rounds,
//! so that the spread between rounds shows the noise. Hidden phase
//! `--only http-client`; prints a Markdown table.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;

use shoal_client::Client;

use crate::http::{Conn, invoke_path};
use crate::phases::{Ctx, ECHO_NAME};
use crate::stats::{ms, percentile};

const EVENT: &str = r#"{"n":1}"#;

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Raw,
    Reqwest,
}

impl Driver {
    fn label(self) -> &'static str {
        match self {
            Driver::Raw => "http.rs",
            Driver::Reqwest => "shoal-client",
        }
    }
}

/// One connection's worth of calls.
enum Caller {
    Raw(Conn, String),
    Reqwest(Client),
}

impl Caller {
    async fn new(ctx: &Ctx, d: Driver) -> Result<Caller> {
        Ok(match d {
            Driver::Raw => Caller::Raw(ctx.target.connect().await?, invoke_path(ECHO_NAME, false)),
            // Its own client, so its own pool: one connection, as for Raw.
            Driver::Reqwest => Caller::Reqwest(Client::new(ctx.client.url(), Some(&ctx.token))?),
        })
    }

    async fn call(&mut self) -> Result<()> {
        match self {
            Caller::Raw(c, path) => c.invoke_ok(path, EVENT.as_bytes()).await.map(|_| ()),
            Caller::Reqwest(c) => match c.invoke(ECHO_NAME, EVENT).await?.result {
                Ok(_) => Ok(()),
                Err(f) => bail!("the function failed: {f:?}"),
            },
        }
    }
}

struct Sample {
    driver: Driver,
    round: usize,
    what: String,
    /// p50 (ms) for latency, calls/s for throughput.
    value: f64,
    p99_ms: f64,
    client_us_per_call: f64,
    client_share: f64,
    node_share: f64,
}

async fn latency(ctx: &Ctx, d: Driver, n: usize) -> Result<Sample> {
    let mut c = Caller::new(ctx, d).await?;
    for _ in 0..200 {
        c.call().await?;
    }
    let mut v = Vec::with_capacity(n);
    let cpu0 = ctx.cpu();
    for _ in 0..n {
        let t = Instant::now();
        c.call().await?;
        v.push(ms(t.elapsed()));
    }
    let u = cpu0.usage_until(&ctx.cpu());
    v.sort_by(f64::total_cmp);
    Ok(Sample {
        driver: d,
        round: 0,
        what: format!("latency p50, n = {n}"),
        value: percentile(&v, 0.5),
        p99_ms: percentile(&v, 0.99),
        client_us_per_call: u.client_cpu_s * 1e6 / n as f64,
        client_share: u.client,
        node_share: u.node,
    })
}

async fn throughput(
    ctx: &Ctx,
    d: Driver,
    conns: usize,
    warm: Duration,
    window: Duration,
) -> Result<Sample> {
    let mut callers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = Caller::new(ctx, d).await?;
        c.call().await?; // opens the connection
        callers.push(c);
    }
    let from = Instant::now() + warm;
    let until = from + window;
    let mut set = JoinSet::new();
    for mut c in callers {
        set.spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < until {
                c.call().await?;
                let done = Instant::now();
                ok += u64::from(done >= from && done < until);
            }
            anyhow::Ok(ok)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu0 = ctx.cpu();
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += r.context("a client task panicked")??;
    }
    let u = cpu0.usage_until(&ctx.cpu());
    Ok(Sample {
        driver: d,
        round: 0,
        what: format!("sync calls/s, {conns} clients"),
        value: ok as f64 / window.as_secs_f64(),
        p99_ms: f64::NAN,
        client_us_per_call: u.client_cpu_s * 1e6 / ok.max(1) as f64,
        client_share: u.client,
        node_share: u.node,
    })
}

/// `rounds` rounds; in each, every figure is measured with both drivers,
/// the driver that goes first alternating from figure to figure.
pub async fn run(
    ctx: &Ctx,
    rounds: usize,
    n: usize,
    conns: &[usize],
    warm: Duration,
    window: Duration,
) -> Result<String> {
    let mut samples = Vec::new();
    let mut flip = false;
    for round in 1..=rounds {
        let mut figures: Vec<Option<usize>> = vec![None];
        figures.extend(conns.iter().map(|c| Some(*c)));
        for f in figures {
            let order = if flip {
                [Driver::Reqwest, Driver::Raw]
            } else {
                [Driver::Raw, Driver::Reqwest]
            };
            flip = !flip;
            for d in order {
                let mut s = match f {
                    None => latency(ctx, d, n).await?,
                    Some(c) => throughput(ctx, d, c, warm, window).await?,
                };
                s.round = round;
                eprintln!(
                    "  round {round}, {}, {}: {:.3} (client {:.0} µs/call, client {:.0} %, node {:.0} %)",
                    s.what,
                    d.label(),
                    s.value,
                    s.client_us_per_call,
                    s.client_share * 100.0,
                    s.node_share * 100.0
                );
                samples.push(s);
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| Figure | Client | Per round | Client CPU per call | Client / node share of the machine |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let mut whats: Vec<String> = Vec::new();
    for s in &samples {
        if !whats.contains(&s.what) {
            whats.push(s.what.clone());
        }
    }
    for w in &whats {
        for d in [Driver::Raw, Driver::Reqwest] {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| &s.what == w && s.driver == d)
                .collect();
            let vals: Vec<String> = mine
                .iter()
                .map(|s| {
                    if s.p99_ms.is_finite() {
                        format!("{:.3} ms (p99 {:.3})", s.value, s.p99_ms)
                    } else {
                        format!("{:.0}/s", s.value)
                    }
                })
                .collect();
            let cpu: Vec<String> = mine
                .iter()
                .map(|s| format!("{:.0} µs", s.client_us_per_call))
                .collect();
            let share: Vec<String> = mine
                .iter()
                .map(|s| {
                    format!(
                        "{:.0} % / {:.0} %",
                        s.client_share * 100.0,
                        s.node_share * 100.0
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "| {w} | {} | {} | {} | {} |",
                d.label(),
                vals.join(", "),
                cpu.join(", "),
                share.join(", ")
            );
        }
    }
    Ok(out)
}
