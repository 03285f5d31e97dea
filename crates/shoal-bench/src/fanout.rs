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

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::cpu::Usage;
use crate::functions::{FANOUT_CHILD, FANOUT_FANIN, FANOUT_PARENT};
use crate::node::Ctx;
use crate::report::{Figure, Section};
use crate::stats::thousands;

const CHILD: &str = "bench-child";
const FANIN: &str = "bench-fanin";
const PARENT: &str = "bench-parent";
const POLL: Duration = Duration::from_millis(250);

struct Fanout {
    n: usize,
    child_concurrency: u32,
    /// Seconds from the parent's `t0`: the events were built, `ctx.map`
    /// returned, the job finished (node clock), the fan-in started.
    built_s: f64,
    mapped_s: f64,
    finished_s: f64,
    fanin_s: f64,
    /// The parent's synchronous call as the client saw it.
    parent_wall_s: f64,
    succeeded: u64,
    failed: u64,
    fanin_count: u64,
    cpu: Usage,
}

pub async fn run(ctx: &Ctx, n: usize, limit: Duration) -> Result<Section> {
    let child = FANOUT_CHILD
        .deploy(&ctx.client, &ctx.scratch, CHILD, None, &[])
        .await?;
    FANOUT_FANIN
        .deploy(&ctx.client, &ctx.scratch, FANIN, None, &[])
        .await?;
    FANOUT_PARENT
        .deploy(&ctx.client, &ctx.scratch, PARENT, None, &[])
        .await?;
    // Start the child's template; not measured.
    let warm = ctx.client.invoke(CHILD, r#"{"i":-1}"#).await?;
    warm.result
        .map_err(|f| anyhow!("the child failed: {f:?}"))?;

    let event = json!({"n": n, "child": CHILD, "then": FANIN}).to_string();
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let parent = ctx.client.invoke(PARENT, &event).await?;
    let parent_wall_s = t.elapsed().as_secs_f64();
    let out = parent
        .result
        .map_err(|f| anyhow!("the parent failed: {f:?}"))?;
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
    Ok(section(&Fanout {
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
    }))
}

fn section(f: &Fanout) -> Section {
    let n = thousands(f.n as f64);
    let complete = f.failed == 0 && f.succeeded == f.n as u64 && f.fanin_count == f.n as u64;
    let mut s = Section::new("fanout");
    s.add(
        Figure::new("fanout.fanin", f.fanin_s)
            .setting(format!(
                "{n} children, child concurrency {}",
                f.child_concurrency
            ))
            .paren(format!(
                "`ctx.map` took {:.2} s; children {}/s",
                f.mapped_s,
                thousands(f.n as f64 / (f.finished_s - f.mapped_s))
            ))
            .flaw_if(
                !complete,
                format!(
                    "{} succeeded, {} failed, fan-in count {}",
                    f.succeeded, f.failed, f.fanin_count
                ),
            ),
    );
    s.detail(format!(
        "Fan-out, seconds after the parent's `t0` (`time.time()` in the parent and in the fan-in): \
         events built {:.2}, `ctx.map` returned {:.2} (the job, {n} invocation records and {n} \
         queue messages in one store write), job finished {:.2} (the node's `finished_at_ms`), \
         fan-in started {:.2}; {} succeeded, {} failed or cancelled; the fan-in got count {}; the \
         synchronous parent call took {:.2} s.",
        f.built_s,
        f.mapped_s,
        f.finished_s,
        f.fanin_s,
        thousands(f.succeeded as f64),
        thousands(f.failed as f64),
        thousands(f.fanin_count as f64),
        f.parent_wall_s
    ));
    s.cpu("fan-out", &f.cpu);
    s
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    vec![section(&Fanout {
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
    })]
}
