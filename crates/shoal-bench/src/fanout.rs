//! Fan-out with fan-in: a parent invoked synchronously calls
//! `ctx.map("bench-child", [{"i": i} for i in range(n)], then="bench-fanin")`
//! and returns its start time `t0` (`time.time()`) and the job id. Each child
//! returns its event; the fan-in returns `time.time()` at its start. The
//! figure is fan-in start − `t0`: building the events, the `ctx.map` call
//! (the job, `n` invocation records and `n` queue messages written in one
//! atomic store write), every child's invocation, and starting the fan-in.
//! Both times come from the same machine's clock.
//!
//! The bench polls `GET /v1/jobs/{id}` until the job is `finished`, then the
//! fan-in's invocation (`then_invocation`) until it is final.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cpu::Usage;
use crate::functions::{FANOUT_CHILD, FANOUT_FANIN, FANOUT_PARENT};
use crate::http::invoke_path;
use crate::phases::Ctx;

const CHILD: &str = "bench-child";
const FANIN: &str = "bench-fanin";
const PARENT: &str = "bench-parent";
const POLL: Duration = Duration::from_millis(250);

pub struct Fanout {
    pub n: usize,
    pub child_concurrency: u32,
    /// Seconds from the parent's `t0`: the events were built, `ctx.map`
    /// returned, the job finished (node clock), the fan-in started.
    pub built_s: f64,
    pub mapped_s: f64,
    pub finished_s: f64,
    pub fanin_s: f64,
    /// The parent's synchronous call as the client saw it.
    pub parent_wall_s: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub fanin_count: u64,
    pub cpu: Usage,
}

impl Fanout {
    /// Children per second from `ctx.map`'s return to the job's end.
    pub fn children_per_s(&self) -> f64 {
        self.n as f64 / (self.finished_s - self.mapped_s)
    }
}

pub async fn run(ctx: &Ctx, n: usize, limit: Duration) -> Result<Fanout> {
    let child = FANOUT_CHILD
        .deploy(&ctx.client, &ctx.scratch, CHILD, None)
        .await?;
    FANOUT_FANIN
        .deploy(&ctx.client, &ctx.scratch, FANIN, None)
        .await?;
    FANOUT_PARENT
        .deploy(&ctx.client, &ctx.scratch, PARENT, None)
        .await?;
    // Start the child's and the parent's templates; not measured.
    let mut conn = ctx.target.connect().await?;
    conn.invoke_ok(&invoke_path(CHILD, false), b"{\"i\":-1}")
        .await?;

    let event = serde_json::to_vec(&json!({"n": n, "child": CHILD, "then": FANIN}))?;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let reply = conn.invoke_ok(&invoke_path(PARENT, false), &event).await?;
    let parent_wall_s = t.elapsed().as_secs_f64();
    let out: Value = serde_json::from_slice(reply.body).context("reading the parent's result")?;
    let time = |k: &str| {
        out[k]
            .as_f64()
            .with_context(|| format!("the parent's result lacks {k}: {out}"))
    };
    let (t0, built, mapped) = (time("t0")?, time("t_built")?, time("t1")?);
    let job = out["job"]
        .as_str()
        .with_context(|| format!("the parent's result lacks the job: {out}"))?
        .to_string();
    eprintln!(
        "  ctx.map returned after {:.2} s (events built in {:.2} s); job {job}",
        mapped - t0,
        built - t0
    );

    let mut last_report = Instant::now();
    let view = loop {
        let v = ctx.client.job(&job).await.context("reading the job")?;
        match v.status.as_str() {
            "finished" => break v,
            "running" => {}
            other => bail!("the job is {other}: {:?}", v.counts),
        }
        if t.elapsed() > limit {
            bail!(
                "the job did not finish within {limit:?}: {} of {} children pending",
                v.counts.pending,
                v.counts.total
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:.0} s: {} of {} children done",
                t.elapsed().as_secs_f64(),
                v.counts.total - v.counts.pending,
                v.counts.total
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    };
    let finished_at = view
        .finished_at_ms
        .context("a finished job without finished_at_ms")? as f64
        / 1000.0;
    let then = view
        .then_invocation
        .clone()
        .context("the finished job has no then_invocation")?;
    let fanin = loop {
        let v = ctx
            .client
            .invocation(&then)
            .await
            .context("reading the fan-in")?;
        if v.finished_at_ms.is_some() {
            break v;
        }
        if t.elapsed() > limit {
            bail!("the fan-in did not finish within {limit:?} ({})", v.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu = cpu0.usage_until(&ctx.cpu());
    if fanin.status != "succeeded" {
        bail!("the fan-in {}: {:?}", fanin.status, fanin.error);
    }
    let fo = fanin.output.unwrap_or(Value::Null);
    let fanin_t = fo["t"]
        .as_f64()
        .with_context(|| format!("the fan-in's output lacks t: {fo}"))?;
    Ok(Fanout {
        n,
        child_concurrency: child.concurrency,
        built_s: built - t0,
        mapped_s: mapped - t0,
        finished_s: finished_at - t0,
        fanin_s: fanin_t - t0,
        parent_wall_s,
        succeeded: view.counts.succeeded,
        failed: view.counts.failed + view.counts.cancelled,
        fanin_count: fo["count"].as_u64().unwrap_or(0),
        cpu,
    })
}
