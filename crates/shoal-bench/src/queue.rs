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
//! other, so they see the same background load. The queue alone runs the
//! store linked into this binary, not the node's: with `--compare-shoal` it
//! is measured on the first build only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::task::JoinSet;

use shoal_client::Client;
use shoal_client::protocol::{PutQueue, QueueCountersView, SendMessage};
use shoal_store::{NewMessage, Queues};
use shoal_store_redb::RedbStore;

use crate::celery::{self, Redis};
use crate::cpu::Usage;
use crate::functions::QUEUE_NOOP;
use crate::node::{self, Ctx};
use crate::report::{Figure, Section, one_line};
use crate::stats::thousands;

/// Messages per `POST /v1/queues/{name}/messages` (and per `Queues::send`).
const SEND_BATCH: usize = 1000;
/// Messages per invocation in the batched variant.
const BATCHED: u32 = 100;
/// The subscriber's concurrency: invocations from the queue at once.
const CONCURRENCY: u32 = 4;
/// Most messages per `lease` in the store-alone figure.
const LEASE_MAX: usize = 100;
/// Acks awaited at once in the store-alone figure.
const ACKS_IN_FLIGHT: usize = 4;
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
struct E2e {
    batch_size: u32,
    n: usize,
    /// Invocations of the subscriber the node counted (`/metrics`) during
    /// the timed run, and how many of them succeeded.
    invocations: u64,
    succeeded: u64,
    send_s: f64,
    total_s: f64,
    acked: u64,
    retried: u64,
    dead: u64,
    timed_out: bool,
    cpu: Usage,
}

/// The embedded store alone, in this process.
struct StoreAlone {
    n: usize,
    send_s: f64,
    drain_s: f64,
    leases: usize,
    /// Group commits (fsyncs) over both steps.
    commits: u64,
    cpu: Usage,
}

type Measured<T> = std::result::Result<T, String>;

struct QueueResults {
    single: Measured<E2e>,
    batched: Measured<E2e>,
    celery: Measured<celery::Run>,
    /// `None` on the `--compare-shoal` build.
    alone: Option<(Measured<StoreAlone>, Measured<celery::Run>)>,
}

/// Runs every queue figure; `dir` is the bench's scratch directory.
pub async fn run(ctx: &Ctx, plan: &Plan, dir: &Path) -> Result<Section> {
    let n = plan.celery_n;
    crate::step(&format!(
        "queue end to end (Shoal): {} messages, one per invocation, concurrency {CONCURRENCY}",
        plan.single_n
    ));
    let single = keep(e2e(ctx, "bench-queue", 1, plan.single_n, plan.limit).await);
    crate::step(&format!(
        "queue end to end (Shoal): {} messages, {BATCHED} per invocation",
        plan.batched_n
    ));
    let batched = e2e(
        ctx,
        "bench-queue-batch",
        BATCHED,
        plan.batched_n,
        plan.limit,
    )
    .await;
    let batched = keep(batched);
    let redis = match &plan.celery_missing {
        Some(reason) => Err(format!("Celery could not be installed: {reason}")),
        None => {
            crate::step("starting redis-server for Celery");
            keep(Redis::start(&plan.redis_server, &dir.join("redis")).await)
        }
    };
    let celery_run = async |mode: &str| {
        let redis = redis.as_ref().map_err(String::clone)?;
        crate::step(&format!("Celery ({mode}): {n} of them, 2 prefork workers"));
        let cpu0 = ctx.cpu();
        let r = celery::run(
            &plan.python,
            &dir.join("celery"),
            mode,
            redis,
            n,
            plan.limit,
        )
        .await;
        keep(r.map(|r| celery::Run {
            cpu: cpu0.usage_until(&ctx.cpu()),
            ..r
        }))
    };
    let celery = celery_run("tasks").await;
    let alone = if ctx.primary {
        crate::step(&format!(
            "queue alone (Shoal): {} messages through the embedded store in this process",
            plan.batched_n
        ));
        let store = keep(store_alone(ctx, &dir.join("queue-alone"), plan.batched_n).await);
        Some((store, celery_run("broker").await))
    } else {
        None
    };
    drop(redis);
    Ok(section(&QueueResults {
        single,
        batched,
        celery,
        alone,
    }))
}

fn section(q: &QueueResults) -> Section {
    let mut s = Section::new("queue");
    let celery_n = q
        .celery
        .as_ref()
        .map_or("n/a".into(), |c| thousands(c.n as f64));
    let celery = match &q.celery {
        Ok(_) => format!("; Celery: {celery_n} tasks"),
        Err(_) => String::new(),
    };
    let celery_rate = q.celery.as_ref().map(celery::Run::per_s);
    for (id, run) in [("queue.single", &q.single), ("queue.batched", &q.batched)] {
        let mut f = Figure::of(id, run.as_ref().map(E2e::per_s)).vs(celery_rate);
        if let Ok(e) = run {
            f = f
                .setting(format!(
                    "{} messages in batches of {}, `batch_size = {}`, subscriber concurrency \
                     {CONCURRENCY}{celery}",
                    thousands(e.n as f64),
                    thousands(SEND_BATCH as f64),
                    e.batch_size
                ))
                .flaw_if(
                    e.timed_out,
                    format!(
                        "only {} acked before the time limit",
                        thousands(e.acked as f64)
                    ),
                )
                .flaw_if(e.dead > 0, format!("{} dead-lettered", e.dead));
            s.detail(format!(
                "Queue end to end, Shoal, `batch_size = {}`: {} messages sent in {:.2} s, {} acked \
                 after {:.2} s ({}/s); {} retried, {} dead-lettered; the node counted {} \
                 invocations of the subscriber ({} succeeded). Timed from the first send until \
                 `GET /v1/queues/{{name}}` counts them acked (polled every 10 ms), after \
                 {WARMUP} warm-up messages.",
                e.batch_size,
                thousands(e.n as f64),
                e.send_s,
                thousands(e.acked as f64),
                e.total_s,
                thousands(e.per_s()),
                e.retried,
                e.dead,
                thousands(e.invocations as f64),
                thousands(e.succeeded as f64)
            ));
            s.cpu(
                format!("queue end to end, Shoal, batch_size {}", e.batch_size),
                &e.cpu,
            );
        }
        s.add(f);
    }
    match &q.celery {
        Ok(c) => {
            s.detail(format!(
                "Celery ({}): {celery_n} tasks sent with `apply_async` over one producer connection \
                 in {:.2} s, all run after {:.2} s ({}/s); worker `--pool prefork --concurrency 2`, \
                 `task_acks_late` (acked after the task ran, as Shoal acks after the handler), \
                 prefetch multiplier 4, results ignored; each task increments a Redis counter that \
                 the client polls; {WARMUP} warm-up tasks first. Redis {}. Celery's processes and \
                 Redis count as \"Other\" in the CPU table.",
                c.version,
                c.send_s,
                c.total_s,
                thousands(c.per_s()),
                celery::REDIS_SETTINGS
            ));
            s.cpu("queue end to end, Celery (in Other)", &c.cpu);
        }
        Err(e) => s.detail(format!("Celery was not measured: {}", one_line(e))),
    }
    let Some((store, broker)) = &q.alone else {
        s.detail(
            "The queue alone was not measured for this build: it runs the store linked into \
             shoal-bench, not the node's binary."
                .into(),
        );
        return s;
    };
    let mut f = Figure::of("queue.alone", store.as_ref().map(StoreAlone::per_s))
        .vs(broker.as_ref().map(celery::Run::per_s));
    if let Ok(a) = store {
        f = f.setting(format!(
            "{} messages sent in batches of {}, leases of ≤ {LEASE_MAX}, one ack per lease; \
             kombu: {celery_n} messages",
            thousands(a.n as f64),
            thousands(SEND_BATCH as f64),
        ));
        s.detail(format!(
            "Queue alone, Shoal (`RedbStore` in the bench process, a fresh file; `Queues::send` \
             awaited per batch of {}, then `lease` ≤ {LEASE_MAX} and `ack` per lease with up to \
             {ACKS_IN_FLIGHT} acks in flight): send {:.2} s ({}/s), lease + ack {:.2} s ({}/s) in \
             {} leases; {} group commits (fsyncs) in all.",
            thousands(SEND_BATCH as f64),
            a.send_s,
            thousands(a.n as f64 / a.send_s),
            a.drain_s,
            thousands(a.n as f64 / a.drain_s),
            thousands(a.leases as f64),
            thousands(a.commits as f64)
        ));
        s.cpu("queue alone, Shoal's store (in Client)", &a.cpu);
    }
    s.add(f);
    match broker {
        Ok(b) => {
            let drain = b.drain_s.unwrap_or(f64::NAN);
            s.detail(format!(
                "Queue alone, Celery's broker ({}): kombu `Producer.publish` of {celery_n} \
                 messages one by one in {:.2} s ({}/s), then a kombu `Consumer` (prefetch 100) \
                 received and acked each in {:.2} s ({}/s).",
                b.version,
                b.send_s,
                thousands(b.n as f64 / b.send_s),
                drain,
                thousands(b.n as f64 / drain)
            ));
            s.cpu("queue alone, kombu (in Other)", &b.cpu);
        }
        Err(e) => s.detail(format!(
            "Celery's broker alone was not measured: {}",
            one_line(e)
        )),
    }
    s
}

/// A figure's failure, kept as its reason so that the others still run.
fn keep<T>(r: Result<T>) -> Measured<T> {
    r.map_err(|e| {
        eprintln!("  failed: {e:#}");
        format!("{e:#}")
    })
}

// ------------------------------------------------------------- end to end

impl E2e {
    fn per_s(&self) -> f64 {
        self.acked.min(self.n as u64) as f64 / self.total_s
    }
}

/// Creates `queue`, deploys the no-op subscriber of the same name with
/// `batch_size`, warms it up, then sends `n` messages and waits until the
/// queue counts them acked.
async fn e2e(ctx: &Ctx, queue: &str, batch_size: u32, n: usize, limit: Duration) -> Result<E2e> {
    ctx.client
        .put_queue(queue, &PutQueue::default())
        .await
        .with_context(|| format!("creating the queue {queue}"))?;
    QUEUE_NOOP
        .deploy(
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
    // Warm-up: the first invocation starts the function's template.
    ctx.client.send(queue, messages(0, WARMUP)).await?;
    let (base, timed_out) =
        wait_acked(&ctx.client, queue, WARMUP as u64, Instant::now(), limit).await?;
    if timed_out {
        bail!("the {WARMUP} warm-up messages were not all acked within {limit:?}");
    }
    let batches: Vec<Vec<SendMessage>> = (0..n.div_ceil(SEND_BATCH))
        .map(|b| messages(b * SEND_BATCH, ((b + 1) * SEND_BATCH).min(n)))
        .collect();
    let runs0 = node::invocations(&ctx.client, queue, None).await?;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    for batch in batches {
        ctx.client.send(queue, batch).await?;
    }
    let send_s = t.elapsed().as_secs_f64();
    let (c, timed_out) = wait_acked(&ctx.client, queue, base.acked + n as u64, t, limit).await?;
    let total_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let runs = node::invocations(&ctx.client, queue, None).await?;
    Ok(E2e {
        batch_size,
        n,
        invocations: runs.0 + runs.1 - runs0.0 - runs0.1,
        succeeded: runs.0 - runs0.0,
        send_s,
        total_s,
        acked: c.acked - base.acked,
        retried: c.retried - base.retried,
        dead: c.dead_lettered - base.dead_lettered,
        timed_out,
        cpu,
    })
}

/// Messages `{"i": from}` .. `{"i": to - 1}`.
fn messages(from: usize, to: usize) -> Vec<SendMessage> {
    (from..to)
        .map(|i| SendMessage {
            body: json!({ "i": i }),
            delay: None,
            dedup_id: None,
        })
        .collect()
}

/// Polls the queue's counters until `acked` (plus dead letters: they will
/// never be acked) reaches `want`, or `limit` after `since`; true when the
/// limit passed.
pub async fn wait_acked(
    client: &Client,
    queue: &str,
    want: u64,
    since: Instant,
    limit: Duration,
) -> Result<(QueueCountersView, bool)> {
    loop {
        let c = client
            .queue(queue)
            .await
            .with_context(|| format!("reading the queue {queue}"))?
            .counters;
        if c.acked + c.dead_lettered >= want {
            return Ok((c, false));
        }
        if since.elapsed() > limit {
            return Ok((c, true));
        }
        tokio::time::sleep(POLL).await;
    }
}

// --------------------------------------------------------- the store alone

impl StoreAlone {
    fn per_s(&self) -> f64 {
        self.n as f64 / (self.send_s + self.drain_s)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn store_messages(from: usize, to: usize, now: u64) -> Vec<NewMessage> {
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
    let err = |e: shoal_store::Error| anyhow!("{e}");
    std::fs::create_dir_all(dir)?;
    let store: Arc<RedbStore> =
        RedbStore::open(&dir.join("queue.redb")).map_err(|e| anyhow!("opening the store: {e}"))?;
    let now = now_ms();
    // Warm-up: the first commits create the tables.
    store
        .send(QUEUE, store_messages(n, n + 10, now))
        .await
        .map_err(err)?;
    let warm = store.lease(QUEUE, now, 10, 60_000).await.map_err(err)?;
    let ids = warm.deliveries.into_iter().map(|d| d.id).collect();
    store.ack(QUEUE, ids).await.map_err(err)?;
    let batches: Vec<Vec<NewMessage>> = (0..n.div_ceil(SEND_BATCH))
        .map(|b| store_messages(b * SEND_BATCH, ((b + 1) * SEND_BATCH).min(n), now))
        .collect();
    let commits0 = store.stats().commits;
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    for batch in batches {
        store.send(QUEUE, batch).await.map_err(err)?;
    }
    let send_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acks = JoinSet::new();
    let (mut leased, mut leases) = (0usize, 0usize);
    while leased < n {
        let got = store
            .lease(QUEUE, now_ms(), LEASE_MAX, 60_000)
            .await
            .map_err(err)?;
        if got.deliveries.is_empty() {
            bail!("the queue ran dry after {leased} of {n} messages");
        }
        leased += got.deliveries.len();
        leases += 1;
        let ids: Vec<String> = got.deliveries.into_iter().map(|d| d.id).collect();
        acks.spawn(store.ack(QUEUE, ids));
        while acks.len() >= ACKS_IN_FLIGHT {
            let r = acks.join_next().await.context("no ack in flight")?;
            r.context("an ack task panicked")?.map_err(err)?;
        }
    }
    while let Some(r) = acks.join_next().await {
        r.context("an ack task panicked")?.map_err(err)?;
    }
    let drain_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    let commits = store.stats().commits - commits0;
    let c = store.counters(QUEUE).await.map_err(err)?;
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

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let e2e = |batch_size: u32, total_s: f64| E2e {
        batch_size,
        n: 10_000,
        invocations: 10_000 / u64::from(batch_size),
        succeeded: 10_000 / u64::from(batch_size),
        send_s: 0.1,
        total_s,
        acked: 10_000,
        retried: 0,
        dead: 0,
        timed_out: false,
        cpu: Usage::default(),
    };
    let store = StoreAlone {
        n: 10_000,
        send_s: 0.1,
        drain_s: 0.1,
        leases: 100,
        commits: 30,
        cpu: Usage::default(),
    };
    vec![section(&QueueResults {
        single: Ok(e2e(1, 2.0)),      // 5,000/s vs 1,000/s: 5×
        batched: Ok(e2e(100, 100.0)), // 100/s: a miss
        celery: Ok(celery::Run::example(1_000, 1.0)),
        alone: Some((Ok(store), Err("kombu | failed".into()))),
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_measured() {
        let s = &examples()[0];
        let cell = |i: usize| s.figures[i].judged().0;
        assert_eq!(cell(0), "Shoal 5,000/s vs Celery 1,000/s: 5.00×");
        assert_eq!(
            cell(2),
            "Shoal 50,000/s; kombu not measured: kombu \\| failed"
        );
        assert_eq!(s.cpu.len(), 4);
    }

    #[test]
    fn message_batches_are_numbered() {
        let m = messages(5, 8);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].body["i"], 7);
    }
}
