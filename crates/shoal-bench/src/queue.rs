//! The queue figures, side by side with Celery in one run.
//!
//! - **End to end** (send → handler → ack): a queue and a trivial Python
//!   subscriber on the node; `n` messages sent over HTTP in batches of
//!   `SEND_BATCH`, timed from the first send until the queue's `acked`
//!   counter (durable, written with the acks) says all `n` are done. Once
//!   with one message per invocation and once with `BATCHED` per invocation.
//!   Beside it, Celery with 2 prefork workers and a trivial task on a local
//!   Redis, `n` tasks sent with `apply_async`, timed until all have run
//!   (`celery.rs`, `baselines/celery_baseline.py`).
//! - **The queue alone**: Shoal's queue port through the embedded store,
//!   in this process (`RedbStore`, the adapter the node uses: every send and
//!   ack is a durable group commit), `n` messages sent in batches of
//!   `SEND_BATCH`, then leased `LEASE_MAX` at a time and acked per lease with
//!   up to `ACKS_IN_FLIGHT` acks in flight (as the node's consumer has one
//!   lease per free slot). Beside it, Celery's broker alone: kombu publishes
//!   `n` messages on the same Redis, then consumes and acks them (no task).
//!
//! Both sides run in the same order on the same machine, one after the
//! other, so they see the same background load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::task::JoinSet;

use shoal_client::protocol::PutQueue;
use shoal_store::{NewMessage, Queues};
use shoal_store_redb::RedbStore;

use crate::celery::{self, Redis};
use crate::cpu::Usage;
use crate::functions::QUEUE_NOOP;
use crate::phases::Ctx;

/// Messages per `POST /v1/queues/{name}/messages` (and per `Queues::send`).
pub const SEND_BATCH: usize = 1000;
/// Messages per invocation in the batched variant.
pub const BATCHED: u32 = 100;
/// The subscriber's concurrency: invocations from the queue at once.
pub const CONCURRENCY: u32 = 4;
/// Most messages per `lease` in the store-alone figure.
pub const LEASE_MAX: usize = 100;
/// Acks awaited at once in the store-alone figure.
pub const ACKS_IN_FLIGHT: usize = 4;
/// Messages (tasks) before the timed run, so that workers are up.
const WARMUP: usize = 200;
/// How often the queue's counters are read while waiting.
const POLL: Duration = Duration::from_millis(10);

pub struct Plan {
    /// Celery's tasks and kombu's messages.
    pub celery_n: usize,
    /// Shoal's messages, one per invocation.
    pub single_n: usize,
    /// Shoal's messages, `BATCHED` per invocation, and the store alone.
    pub batched_n: usize,
    pub limit: Duration,
    /// The bench venv's Python, with celery[redis].
    pub python: PathBuf,
    pub redis_server: PathBuf,
    /// Why Celery or redis-server could not be installed.
    pub celery_missing: Option<String>,
}

/// One end-to-end run on Shoal.
pub struct E2e {
    pub batch_size: u32,
    pub concurrency: u32,
    pub n: usize,
    /// Invocations of the subscriber the node counted (`/metrics`) during
    /// the timed run, and how many of them succeeded.
    pub invocations: u64,
    pub succeeded: u64,
    pub send_s: f64,
    pub total_s: f64,
    pub acked: u64,
    pub retried: u64,
    pub dead: u64,
    pub timed_out: bool,
    pub cpu: Usage,
}

impl E2e {
    pub fn per_s(&self) -> f64 {
        self.acked.min(self.n as u64) as f64 / self.total_s
    }
}

/// Celery's figures (either mode), from the script's JSON.
pub struct CeleryRun {
    pub n: usize,
    pub send_s: f64,
    /// Broker alone: consuming and acking.
    pub drain_s: Option<f64>,
    pub total_s: f64,
    pub version: String,
    pub cpu: Usage,
}

impl CeleryRun {
    pub fn per_s(&self) -> f64 {
        self.n as f64 / self.total_s
    }
}

/// The embedded store alone, in this process.
pub struct StoreAlone {
    pub n: usize,
    pub send_s: f64,
    pub drain_s: f64,
    pub leases: usize,
    /// Group commits (fsyncs) over both steps.
    pub commits: u64,
    pub cpu: Usage,
}

impl StoreAlone {
    pub fn total_s(&self) -> f64 {
        self.send_s + self.drain_s
    }

    pub fn per_s(&self) -> f64 {
        self.n as f64 / self.total_s()
    }
}

pub struct QueueResults {
    pub single: std::result::Result<E2e, String>,
    pub batched: std::result::Result<E2e, String>,
    pub celery: std::result::Result<CeleryRun, String>,
    pub store: std::result::Result<StoreAlone, String>,
    pub broker: std::result::Result<CeleryRun, String>,
}

fn step(what: &str) {
    eprintln!("shoal-bench: {what}");
}

fn keep<T>(r: Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| {
        eprintln!("  failed: {e:#}");
        format!("{e:#}")
    })
}

/// Runs every queue figure; `dir` is the bench's scratch directory.
pub async fn run(ctx: &Ctx, plan: &Plan, dir: &Path) -> QueueResults {
    let n = plan.celery_n;
    step(&format!(
        "queue end to end (Shoal): {} messages, one per invocation, concurrency {CONCURRENCY}",
        plan.single_n
    ));
    let single = keep(e2e(ctx, "bench-queue", 1, plan.single_n, plan.limit).await);
    if let Ok(r) = &single {
        eprintln!("  {:.0}/s ({:.2} s)", r.per_s(), r.total_s);
    }
    step(&format!(
        "queue end to end (Shoal): {} messages, {BATCHED} per invocation",
        plan.batched_n
    ));
    let batched = keep(
        e2e(
            ctx,
            "bench-queue-batch",
            BATCHED,
            plan.batched_n,
            plan.limit,
        )
        .await,
    );
    if let Ok(r) = &batched {
        eprintln!("  {:.0}/s ({:.2} s)", r.per_s(), r.total_s);
    }

    let redis = match &plan.celery_missing {
        Some(reason) => Err(format!("Celery could not be installed: {reason}")),
        None => {
            step("starting redis-server for Celery");
            keep(Redis::start(&plan.redis_server, &dir.join("redis")).await)
        }
    };
    let celery_dir = dir.join("celery");
    let celery = match &redis {
        Ok(r) => {
            step(&format!(
                "queue end to end (Celery): {n} tasks, 2 prefork workers"
            ));
            keep(celery_run(ctx, plan, &celery_dir, "tasks", r).await)
        }
        Err(e) => Err(e.clone()),
    };
    if let Ok(c) = &celery {
        eprintln!("  {:.0}/s ({:.2} s)", c.per_s(), c.total_s);
    }

    step(&format!(
        "queue alone (Shoal): {} messages through the embedded store in this process",
        plan.batched_n
    ));
    let store = keep(store_alone(ctx, &dir.join("queue-alone"), plan.batched_n).await);
    if let Ok(s) = &store {
        eprintln!(
            "  {:.0}/s (send {:.2} s, lease + ack {:.2} s)",
            s.per_s(),
            s.send_s,
            s.drain_s
        );
    }
    let broker = match &redis {
        Ok(r) => {
            step(&format!(
                "queue alone (Celery's broker): kombu, {n} messages"
            ));
            keep(celery_run(ctx, plan, &celery_dir, "broker", r).await)
        }
        Err(e) => Err(e.clone()),
    };
    if let Ok(b) = &broker {
        eprintln!(
            "  {:.0}/s (publish {:.2} s, consume + ack {:.2} s)",
            b.per_s(),
            b.send_s,
            b.drain_s.unwrap_or(f64::NAN)
        );
    }
    drop(redis);
    QueueResults {
        single,
        batched,
        celery,
        store,
        broker,
    }
}

// ------------------------------------------------------------- end to end

/// Creates `queue`, deploys the no-op subscriber of the same name with
/// `batch_size`, warms it up, then sends `n` messages and waits until the
/// queue counts them acked.
async fn e2e(ctx: &Ctx, queue: &str, batch_size: u32, n: usize, limit: Duration) -> Result<E2e> {
    ctx.client
        .put_queue(queue, &PutQueue::default())
        .await
        .with_context(|| format!("creating the queue {queue}"))?;
    QUEUE_NOOP
        .deploy_edited(
            &ctx.client,
            &ctx.scratch,
            queue,
            None,
            &[
                ("queue = \"bench-queue\"", format!("queue = \"{queue}\"")),
                ("batch_size = 1", format!("batch_size = {batch_size}")),
                // The function's and the subscription's.
                ("concurrency = 4", format!("concurrency = {CONCURRENCY}")),
            ],
        )
        .await?;
    let mut conn = ctx.target.connect().await?;
    let path = format!("/v1/queues/{queue}/messages");
    // Warm-up: the first invocation starts the function's template.
    let base = send_and_wait(&mut conn, queue, &path, WARMUP, limit).await?;
    let bodies: Vec<Vec<u8>> = (0..n.div_ceil(SEND_BATCH))
        .map(|b| batch_body(b * SEND_BATCH, ((b + 1) * SEND_BATCH).min(n)))
        .collect();
    let runs0 = invocation_counts(&mut conn, queue).await?;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    for body in &bodies {
        send(&mut conn, &path, body).await?;
    }
    let send_s = t.elapsed().as_secs_f64();
    let (counters, timed_out) =
        wait_acked(&mut conn, queue, base.acked + n as u64, t, limit).await?;
    let total_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let runs = invocation_counts(&mut conn, queue).await?;
    Ok(E2e {
        batch_size,
        concurrency: CONCURRENCY,
        n,
        invocations: runs.0 - runs0.0,
        succeeded: runs.1 - runs0.1,
        send_s,
        total_s,
        acked: counters.acked - base.acked,
        retried: counters.retried - base.retried,
        dead: counters.dead_lettered - base.dead_lettered,
        timed_out,
        cpu,
    })
}

/// `{"messages": [{"body": {"i": from}}, ...]}`.
fn batch_body(from: usize, to: usize) -> Vec<u8> {
    let mut out = String::with_capacity((to - from) * 24 + 16);
    out.push_str("{\"messages\":[");
    for i in from..to {
        if i > from {
            out.push(',');
        }
        out.push_str(&format!("{{\"body\":{{\"i\":{i}}}}}"));
    }
    out.push_str("]}");
    out.into_bytes()
}

async fn send(conn: &mut crate::http::Conn, path: &str, body: &[u8]) -> Result<()> {
    let reply = conn.post(path, body).await?;
    if !reply.is_success() {
        bail!(
            "sending answered HTTP {}: {}",
            reply.status,
            reply.body_text()
        );
    }
    Ok(())
}

/// Sends `m` messages in one batch to a new queue and waits until they are
/// acked.
async fn send_and_wait(
    conn: &mut crate::http::Conn,
    queue: &str,
    path: &str,
    m: usize,
    limit: Duration,
) -> Result<Counters> {
    send(conn, path, &batch_body(0, m)).await?;
    let (c, timed_out) = wait_acked(conn, queue, m as u64, Instant::now(), limit).await?;
    if timed_out {
        bail!("the {m} warm-up messages were not all acked within {limit:?}");
    }
    Ok(c)
}

/// `(all, succeeded)` invocations of `function` from `/metrics`, any mode.
async fn invocation_counts(conn: &mut crate::http::Conn, function: &str) -> Result<(u64, u64)> {
    let reply = conn.get("/metrics").await?;
    if !reply.is_success() {
        bail!("/metrics answered HTTP {}", reply.status);
    }
    let text = std::str::from_utf8(reply.body).context("/metrics is not UTF-8")?;
    Ok(parse_invocations(text, function))
}

fn parse_invocations(text: &str, function: &str) -> (u64, u64) {
    let want = format!("function=\"{function}\"");
    let (mut all, mut ok) = (0, 0);
    for line in text.lines() {
        let Some((labels, value)) = line
            .strip_prefix("shoal_invocations_total{")
            .and_then(|r| r.split_once('}'))
        else {
            continue;
        };
        if !labels.split(',').any(|l| l == want) {
            continue;
        }
        let v = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        all += v;
        if labels.split(',').any(|l| l == "outcome=\"succeeded\"") {
            ok += v;
        }
    }
    (all, ok)
}

#[derive(Clone, Copy, Default)]
pub struct Counters {
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

/// The queue's counters, read through `GET /v1/queues/{name}`.
pub async fn counters(conn: &mut crate::http::Conn, queue: &str) -> Result<Counters> {
    let reply = conn.get(&format!("/v1/queues/{queue}")).await?;
    if !reply.is_success() {
        bail!(
            "GET /v1/queues/{queue} answered HTTP {}: {}",
            reply.status,
            reply.body_text()
        );
    }
    let v: Value = serde_json::from_slice(reply.body).context("reading the queue")?;
    let c = &v["counters"];
    let get = |k: &str| c[k].as_u64().unwrap_or(0);
    Ok(Counters {
        acked: get("acked"),
        retried: get("retried"),
        dead_lettered: get("dead_lettered"),
    })
}

/// Polls the counters until `acked` (plus dead letters: they will never be
/// acked) reaches `want`, or `limit` after `since`.
pub async fn wait_acked(
    conn: &mut crate::http::Conn,
    queue: &str,
    want: u64,
    since: Instant,
    limit: Duration,
) -> Result<(Counters, bool)> {
    loop {
        let c = counters(conn, queue).await?;
        if c.acked + c.dead_lettered >= want {
            return Ok((c, false));
        }
        if since.elapsed() > limit {
            return Ok((c, true));
        }
        tokio::time::sleep(POLL).await;
    }
}

// ------------------------------------------------------------------ Celery

async fn celery_run(
    ctx: &Ctx,
    plan: &Plan,
    dir: &Path,
    mode: &str,
    redis: &Redis,
) -> Result<CeleryRun> {
    let cpu0 = ctx.cpu();
    let v = celery::run_script(
        &plan.python,
        dir,
        mode,
        &redis.url,
        plan.celery_n,
        plan.limit,
    )
    .await?;
    let cpu = cpu0.usage_until(&ctx.cpu());
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("the Celery baseline's answer lacks {k}: {v}"))
    };
    let n = v["n"].as_u64().unwrap_or(0) as usize;
    if n != plan.celery_n {
        bail!("the Celery baseline ran {n} of {}", plan.celery_n);
    }
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    Ok(CeleryRun {
        n,
        send_s: f("send_s")?,
        drain_s: v["drain_s"].as_f64(),
        total_s: f("total_s")?,
        version: format!(
            "Celery {}, kombu {}, redis-py {}, Redis {}, Python {}",
            s("celery"),
            s("kombu"),
            s("redis_py"),
            s("redis_server"),
            s("python")
        ),
        cpu,
    })
}

// --------------------------------------------------------- the store alone

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn messages(from: usize, to: usize, now: u64) -> Vec<NewMessage> {
    (from..to)
        .map(|i| NewMessage {
            id: format!("m-{i:09}"),
            body: format!("{{\"i\":{i}}}").into_bytes(),
            due_ms: now,
            sent_ms: now,
            dedup: None,
            key: None,
        })
        .collect()
}

/// Sends `n` messages in batches (each awaited: durable), then leases and
/// acks them all; the store is a fresh file under `dir`.
async fn store_alone(ctx: &Ctx, dir: &Path, n: usize) -> Result<StoreAlone> {
    const QUEUE: &str = "bench-alone";
    std::fs::create_dir_all(dir)?;
    let store: Arc<RedbStore> =
        RedbStore::open(&dir.join("queue.redb")).map_err(|e| anyhow!("opening the store: {e}"))?;
    let now = now_ms();
    // Warm-up: the first commits create the tables.
    store
        .send(QUEUE, messages(n, n + 10, now))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let warm = store
        .lease(QUEUE, now, 10, 60_000)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    store
        .ack(QUEUE, warm.deliveries.into_iter().map(|d| d.id).collect())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let batches: Vec<Vec<NewMessage>> = (0..n.div_ceil(SEND_BATCH))
        .map(|b| messages(b * SEND_BATCH, ((b + 1) * SEND_BATCH).min(n), now))
        .collect();
    let commits0 = store.stats().commits;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    for batch in batches {
        store.send(QUEUE, batch).await.map_err(|e| anyhow!("{e}"))?;
    }
    let send_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acks = JoinSet::new();
    let (mut leased, mut leases) = (0usize, 0usize);
    while leased < n {
        let got = store
            .lease(QUEUE, now_ms(), LEASE_MAX, 60_000)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        if got.deliveries.is_empty() {
            bail!("the queue ran dry after {leased} of {n} messages");
        }
        leased += got.deliveries.len();
        leases += 1;
        let ids: Vec<String> = got.deliveries.into_iter().map(|d| d.id).collect();
        acks.spawn(store.ack(QUEUE, ids));
        while acks.len() >= ACKS_IN_FLIGHT {
            acks.join_next()
                .await
                .context("no ack in flight")?
                .context("an ack task panicked")?
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    while let Some(r) = acks.join_next().await {
        r.context("an ack task panicked")?
            .map_err(|e| anyhow!("{e}"))?;
    }
    let drain_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let commits = store.stats().commits - commits0;
    let c = store.counters(QUEUE).await.map_err(|e| anyhow!("{e}"))?;
    store.close();
    if c.acked != n as u64 + 10 {
        bail!("the store counts {} acked, not {}", c.acked, n + 10);
    }
    Ok(StoreAlone {
        n,
        send_s,
        drain_s,
        leases,
        commits,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_invocations_of_one_function() {
        let text = "\
shoal_invocations_total{function=\"q\",mode=\"queue\",outcome=\"succeeded\"} 40
shoal_invocations_total{function=\"q\",mode=\"queue\",outcome=\"raised\"} 2
shoal_invocations_total{function=\"q2\",mode=\"queue\",outcome=\"succeeded\"} 9
";
        assert_eq!(parse_invocations(text, "q"), (42, 40));
    }

    #[test]
    fn batch_bodies_are_json() {
        let v: Value = serde_json::from_slice(&batch_body(5, 8)).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(v["messages"][2]["body"]["i"], 7);
    }
}
