//! The live phase (issue 13): pixel placements fanned out to live
//! subscribers, and what an idle subscriber costs the node.
//!
//! The load, on the bench's node: a function (`functions/live-pixel`) turns
//! each placement into one `ctx.publish` with one `set u4` bitfield op on a
//! 1000 × 1000 board of 4-bit pixels (a fixed-size blob) — one atomic,
//! durable step, like `examples/pixel-board`'s `POST /api/pixel` without its
//! login and cooldown. It is called through its public route
//! (`POST /bench/live/pixel`), or through `/v1/functions/{name}/invoke`
//! when the node does not serve the route (the report says which).
//! `subscribers` SSE streams (`GET /v1/channels/{name}/events`), tasks of
//! this process, each keep a local copy of the board: they start from a
//! snapshot (the channel's position, then the blob) and keep every message
//! after it in order, checking that the offsets follow one another; the
//! messages are applied to their boards at the end.
//!
//! 1. Placements/s: `publishers` keep-alive connections place pixels back
//!    to back for `window`. Meanwhile `reconnecting` of the subscribers
//!    drop their connection once each, stay away `away`, and resume with
//!    `Last-Event-ID`.
//! 2. Delivery latency: placements at a paced `paced_rate` for
//!    `paced_window` (after the same at a gentler `slow_rate`, for
//!    reference); each message carries its send time, and every subscriber
//!    notes when the message reached it.
//! 3. Lost updates: once the channel's last offset has reached every
//!    subscriber, each local board's SHA-256 is compared with the server's
//!    board (the blob).
//!
//! The load runs once per `coalesce_ms` of the plan (the channel's setting:
//! its messages delivered in one frame every N ms); the figures are the last
//! run's (the default, 0), the others are in the details. Before the
//! subscribers connect, the same placements run back to back without them,
//! for reference.
//!
//! Idle subscribers, each on a fresh node of its own (nothing of the load
//! left in its allocator): the node's RSS before and after `idle` SSE (then
//! WebSocket) connections have each received their `ready` event; the
//! growth ÷ `idle`; the same for keep-alive HTTP connections that made one
//! `GET /healthz`, for comparison (the connection's part of the cost).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use shoal_client::Client;

use crate::cpu::Usage;
use crate::functions::LIVE_PIXEL;
use crate::http::{Conn, Target, invoke_path};
use crate::node::{Ctx, Node};
use crate::report::{Figure, Section, one_line};
use crate::rss;
use crate::stats::{fmt_ms, percentile, thousands};

const FUNCTION: &str = "bench-live";
/// Must match `functions/live-pixel/main.py`.
const CHANNEL: &str = "bench-live";
const BOARD: &str = "bench-live-board";
const ROUTE: &str = "/bench/live/pixel";
const WIDTH: u64 = 1000;
const PIXELS: u64 = WIDTH * WIDTH;
const BOARD_BYTES: usize = (PIXELS / 2) as usize;
const IDLE_CHANNEL: &str = "bench-idle";
/// Message modes (`m`): placed as fast as possible, or paced.
const LOAD: usize = 0;
const PACED: usize = 1;
/// Paced at a gentler rate, for reference.
const SLOW: usize = 2;

/// Sizes of the live phase.
pub struct Plan {
    pub subscribers: usize,
    /// Subscribers that drop and resume once during the placements.
    pub reconnecting: usize,
    /// How long a dropped subscriber stays away.
    pub away: Duration,
    pub publishers: usize,
    pub window: Duration,
    pub paced_rate: f64,
    /// The gentler pace measured first, for reference.
    pub slow_rate: f64,
    pub paced_window: Duration,
    /// Idle connections of the memory figures.
    pub idle: usize,
    /// The function's `concurrency` (Python workers).
    pub concurrency: u32,
    /// The channel's `coalesce_ms` of each run of the load; the figures are
    /// the last run's, the others are in the details.
    pub coalesce_ms: Vec<u32>,
}

/// How the placements reached the function.
#[derive(Clone)]
enum Via {
    Route,
    /// Through the invoke API, and why not the route.
    Invoke(String),
}

#[derive(Clone)]
struct Load {
    coalesce_ms: u32,
    via: Via,
    subscribers: usize,
    publishers: usize,
    concurrency: u32,
    placed: u64,
    place_s: f64,
    place_errors: u64,
    /// Sorted request latencies of the placements, ms.
    place_ms: Vec<f64>,
    /// Placements/s back to back before any subscriber was connected.
    alone_rate: f64,
    away_ms: u128,
    paced_window: Duration,
    slow: Paced,
    fast: Paced,
    /// Sorted delivery latencies at every subscriber, µs.
    lat: [Vec<u32>; 3],
    /// Placements answered 200 vs how far the channel's offset moved.
    acked: u64,
    moved: u64,
    reconnects: u64,
    gaps: u64,
    duplicates: u64,
    resets: u64,
    /// Subscribers whose board differs from the server's, or that never
    /// caught up, or that failed.
    mismatched: usize,
    unfinished: usize,
    failed: Vec<String>,
    /// From the last placement's answer to the last subscriber's last message.
    drain_s: f64,
    messages: u64,
    cpu_load: Usage,
    cpu_paced: Usage,
}

struct Idle {
    n: usize,
    before: u64,
    after: u64,
    open_s: f64,
    /// The channel's presence once they were open.
    presence: Option<u64>,
}

pub async fn run(
    ctx: &Ctx,
    plan: &Plan,
    shoal: &Path,
    dir: &Path,
    node_log: &str,
) -> Result<Section> {
    let limit = raise_file_limit();
    let mut idles = Vec::new();
    for kind in [Kind::Sse, Kind::Ws, Kind::Plain] {
        crate::step(&format!("live: idle {} on a fresh node", kind.name()));
        let dir = dir.join(format!("live-idle-{}", kind.dir()));
        idles.push(
            idle(shoal, &dir, node_log, plan.idle, kind)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    let [sse, ws, plain] = <[_; 3]>::try_from(idles).ok().expect("three kinds");
    let mut loads = Vec::new();
    for &coalesce_ms in &plan.coalesce_ms {
        crate::step(&format!(
            "live: placements with live subscribers, coalesce_ms = {coalesce_ms}"
        ));
        let l = load(ctx, plan, coalesce_ms).await;
        loads.push(l.map_err(|e| format!("coalesce_ms = {coalesce_ms}: {e:#}")));
    }
    Ok(section(&loads, &sse, &ws, &plain, limit))
}

/// What an idle connection is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sse,
    Ws,
    /// A keep-alive HTTP connection after one `GET /healthz` (the part of
    /// a subscriber's cost that is the connection's).
    Plain,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sse => "SSE subscribers",
            Kind::Ws => "WebSocket subscribers",
            Kind::Plain => "keep-alive HTTP connections",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Sse => "sse",
            Kind::Ws => "ws",
            Kind::Plain => "http",
        }
    }
}

/// Raises this process's soft limit on open files to the hard limit
/// (the idle connections); returns the limit in force.
fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        limit.current = Some(maximum);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

// ------------------------------------------------------------------ load

async fn load(ctx: &Ctx, plan: &Plan, coalesce_ms: u32) -> Result<Load> {
    let client = &ctx.client;
    let settings = format!(
        r#"{{"public": true, "history_len": {}, "history_age_s": 3600, "coalesce_ms": {coalesce_ms}}}"#,
        1_000_000
    );
    let (status, text) = client
        .raw(
            "PUT",
            &format!("/v1/channels/{CHANNEL}"),
            Some("application/json"),
            settings.into_bytes(),
        )
        .await?;
    if status != 200 {
        bail!("PUT /v1/channels/{CHANNEL} answered HTTP {status}: {text}");
    }
    // Kept from an earlier run of the load.
    if client.blob_meta(BOARD).await.is_err() {
        client
            .create_fixed_blob(BOARD, BOARD_BYTES as u64, false)
            .await
            .context("creating the board")?;
    }
    let via = deploy(ctx, plan.concurrency).await?;
    let path = match via {
        Via::Route => ROUTE.to_string(),
        Via::Invoke(_) => invoke_path(FUNCTION, false),
    };
    let base = Instant::now();
    // Warm-up: start every worker (not measured).
    let mut warm = JoinSet::new();
    for i in 0..plan.concurrency as u64 * 2 {
        let (target, path) = (ctx.target.clone(), path.clone());
        warm.spawn(async move {
            let mut c = target.connect().await?;
            for k in 0..5 {
                place(&mut c, &path, (i * 7919 + k) % PIXELS, 1, base, LOAD).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = warm.join_next().await {
        r??;
    }

    // The same placements without subscribers, for reference.
    let t = Instant::now();
    let (alone, _, _) =
        back_to_back(ctx, &path, plan.publishers, t + plan.window / 2, base, 2).await?;
    let alone_rate = alone as f64 / t.elapsed().as_secs_f64();

    // The snapshot every subscriber starts from: position, then board.
    let (epoch, h0) = position(client).await?;
    let board = Arc::new(client.blob_bytes(BOARD, None).await?);
    if board.len() != BOARD_BYTES {
        bail!("the board has {} bytes, not {BOARD_BYTES}", board.len());
    }
    let (stop_tx, stop_rx) = watch::channel(u64::MAX);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut subs = JoinSet::new();
    for i in 0..plan.subscribers {
        let sub = Sub {
            addr: ctx.target.addr,
            client: client.clone(),
            base,
            drop_after: (i < plan.reconnecting).then(|| {
                plan.window
                    .mul_f64(0.8 * (i + 1) as f64 / (plan.reconnecting + 1) as f64)
            }),
            away: plan.away,
            stop: stop_rx.clone(),
            ready: Some(ready_tx.clone()),
        };
        let state = State::new(board.clone(), epoch.clone(), h0);
        subs.spawn(sub.run(state));
    }
    drop(ready_tx);
    for _ in 0..plan.subscribers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("a subscriber could not connect: {e}"),
            Ok(None) => bail!("the subscribers ended before all were connected"),
            Err(_) => bail!("the subscribers were not all connected within 60 s"),
        }
    }
    drop(board);

    // 1. As fast as they are answered.
    crate::step("live: placements back to back");
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let (placed, place_errors, place_ms) =
        back_to_back(ctx, &path, plan.publishers, t + plan.window, base, 1).await?;
    let place_s = t.elapsed().as_secs_f64();
    let cpu_load = cpu0.usage_until(&ctx.cpu());

    // Let the dropped subscribers come back and catch up before the pace.
    tokio::time::sleep(plan.away + Duration::from_millis(500)).await;

    // 2. Paced: first at a gentler pace (for reference), then the target's.
    crate::step("live: paced placements");
    let slow = paced(ctx, &path, plan, plan.slow_rate, base, SLOW).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = ctx.cpu();
    let fast = paced(ctx, &path, plan, plan.paced_rate, base, PACED).await?;
    let last_answer = Instant::now();
    let cpu_paced = cpu0.usage_until(&ctx.cpu());

    // 3. Every subscriber up to the channel's last offset, then the boards.
    let (epoch_end, h1) = position(client).await?;
    if epoch_end != epoch {
        bail!("the channel's epoch changed from {epoch} to {epoch_end} during the run");
    }
    let _ = stop_tx.send(h1);
    let mut results = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, subs.join_next()).await {
            Ok(Some(r)) => results.push(r.map_err(|e| anyhow!("a subscriber panicked: {e}"))?),
            Ok(None) => break,
            Err(_) => {
                // Those still behind stop where they are.
                let _ = stop_tx.send(0);
                while let Some(r) = subs.join_next().await {
                    results.push(r.map_err(|e| anyhow!("a subscriber panicked: {e}"))?);
                }
                break;
            }
        }
    }
    let drain_s = results
        .iter()
        .map(|r| r.done.saturating_duration_since(last_answer).as_secs_f64())
        .fold(0.0, f64::max);
    let server = Sha256::digest(client.blob_bytes(BOARD, None).await?);
    let mut lat: [Vec<u32>; 3] = Default::default();
    let (mut reconnects, mut gaps, mut duplicates, mut resets, mut messages) = (0, 0, 0, 0, 0);
    let (mut mismatched, mut unfinished, mut failed) = (0, 0, Vec::new());
    for r in results {
        let st = r.st;
        reconnects += r.reconnects;
        gaps += st.gaps;
        duplicates += st.duplicates;
        resets += st.resets;
        messages += st.messages;
        if let Some(e) = r.error {
            failed.push(e);
        }
        if st.last < h1 {
            unfinished += 1;
        }
        if Sha256::digest(st.board())[..] != server[..] || st.last < h1 {
            mismatched += 1;
        }
        for (all, one) in lat.iter_mut().zip(st.lat) {
            all.extend(one);
        }
    }
    for l in &mut lat {
        l.sort_unstable();
    }
    Ok(Load {
        coalesce_ms,
        via,
        subscribers: plan.subscribers,
        publishers: plan.publishers,
        concurrency: plan.concurrency,
        placed,
        place_s,
        place_errors,
        place_ms,
        alone_rate,
        away_ms: plan.away.as_millis(),
        paced_window: plan.paced_window,
        slow,
        fast,
        lat,
        acked: placed + slow.placed + fast.placed,
        moved: h1 - h0,
        reconnects,
        gaps,
        duplicates,
        resets,
        mismatched,
        unfinished,
        failed,
        drain_s,
        messages,
        cpu_load,
        cpu_paced,
    })
}

/// What a paced run placed.
#[derive(Clone, Copy)]
struct Paced {
    rate: f64,
    placed: u64,
    failed: u64,
    /// Placements due at the pace (some given up when far behind it).
    due: u64,
    /// From the first placement due to the last answer.
    s: f64,
}

impl Paced {
    fn held(&self) -> f64 {
        self.placed as f64 / self.s
    }
}

/// Placements at `rate` for the plan's paced window, spread over the plan's
/// publishers' connections; a connection more than 3 s behind its schedule
/// gives up the rest.
async fn paced(
    ctx: &Ctx,
    path: &str,
    plan: &Plan,
    rate: f64,
    base: Instant,
    mode: usize,
) -> Result<Paced> {
    let total = (rate * plan.paced_window.as_secs_f64()).round() as u64;
    let conns = (plan.publishers as u64).max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let give_up = start + plan.paced_window + Duration::from_secs(3);
    let mut set = JoinSet::new();
    for j in 0..conns {
        let (target, path) = (ctx.target.clone(), path.to_string());
        set.spawn(async move {
            let mut c = target.connect().await?;
            let mut rng =
                0xD1B5_4A32_D192_ED03u64 ^ ((mode as u64) << 40) ^ ((j + 1) * 0x3000_0007);
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut i = j;
            while i < total {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if Instant::now() > give_up {
                    break; // far behind the pace: the figure says so
                }
                tokio::time::sleep_until(at.into()).await;
                let (p, col) = random_pixel(&mut rng);
                if place(&mut c, &path, p, col, base, mode).await? {
                    ok += 1;
                } else {
                    errors += 1;
                }
                i += conns;
            }
            anyhow::Ok((ok, errors))
        });
    }
    let (mut placed, mut failed) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (ok, errors) = r??;
        placed += ok;
        failed += errors;
    }
    Ok(Paced {
        rate,
        placed,
        failed,
        due: total,
        s: start.elapsed().as_secs_f64(),
    })
}

/// Placements on `conns` keep-alive connections, each one after the other
/// until `until`: `(answered 200, failed, sorted answer times in ms)`.
async fn back_to_back(
    ctx: &Ctx,
    path: &str,
    conns: usize,
    until: Instant,
    base: Instant,
    seed: u64,
) -> Result<(u64, u64, Vec<f64>)> {
    let mut set = JoinSet::new();
    for i in 0..conns as u64 {
        let (target, path) = (ctx.target.clone(), path.to_string());
        set.spawn(async move {
            let mut c = target.connect().await?;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((seed << 32) + (i + 1) * 0x1000_0001);
            let (mut ok, mut errors, mut ms) = (0u64, 0u64, Vec::new());
            while Instant::now() < until {
                let (p, col) = random_pixel(&mut rng);
                let t = Instant::now();
                if place(&mut c, &path, p, col, base, LOAD).await? {
                    ok += 1;
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ok, errors, ms))
        });
    }
    let (mut placed, mut failed, mut all) = (0, 0, Vec::new());
    while let Some(r) = set.join_next().await {
        let (ok, errors, ms) = r??;
        placed += ok;
        failed += errors;
        all.extend(ms);
    }
    all.sort_by(f64::total_cmp);
    Ok((placed, failed, all))
}

/// Deploys the placement function with its route, or without it when the
/// node refuses `[[route]]` or does not serve it.
async fn deploy(ctx: &Ctx, concurrency: u32) -> Result<Via> {
    let conc = ("concurrency = 8", format!("concurrency = {concurrency}"));
    let routed = LIVE_PIXEL
        .deploy(
            &ctx.client,
            &ctx.scratch,
            FUNCTION,
            None,
            std::slice::from_ref(&conc),
        )
        .await;
    let why = match routed {
        Ok(_) => {
            let mut c = ctx.target.connect().await?;
            let body = br#"{"p":0,"c":0,"t":0,"m":0}"#;
            match c.post(ROUTE, body).await {
                Ok(r) if r.status == 200 => return Ok(Via::Route),
                Ok(r) => format!(
                    "`POST {ROUTE}` answered HTTP {}: {}",
                    r.status,
                    one_line(&r.body_text())
                ),
                Err(e) => format!("`POST {ROUTE}` failed: {e:#}"),
            }
        }
        Err(e) => format!("the deploy with `[[route]]` was refused: {e:#}"),
    };
    let path_line = format!("path = \"{ROUTE}\"");
    let edits = [
        (conc.0, conc.1),
        ("[[route]]", String::new()),
        ("method = \"POST\"", String::new()),
        (path_line.as_str(), String::new()),
        ("auth = \"public\"", String::new()),
    ];
    LIVE_PIXEL
        .deploy(&ctx.client, &ctx.scratch, FUNCTION, Some(1), &edits)
        .await?;
    Ok(Via::Invoke(why))
}

/// One placement; false when it was answered with an error.
async fn place(
    c: &mut Conn,
    path: &str,
    p: u64,
    col: u64,
    base: Instant,
    mode: usize,
) -> Result<bool> {
    let t = base.elapsed().as_micros();
    let body = format!(r#"{{"p":{p},"c":{col},"t":{t},"m":{mode}}}"#);
    let r = c.post(path, body.as_bytes()).await?;
    Ok(r.status == 200 && !r.function_error)
}

fn random_pixel(rng: &mut u64) -> (u64, u64) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % PIXELS, (*rng >> 32) % 16)
}

/// The channel's epoch and last offset.
async fn position(client: &Client) -> Result<(String, u64)> {
    let (status, text) = client
        .raw("GET", &format!("/v1/channels/{CHANNEL}"), None, Vec::new())
        .await?;
    if status != 200 {
        bail!("GET /v1/channels/{CHANNEL} answered HTTP {status}: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let epoch = v["epoch"].as_str().context("no epoch")?.to_string();
    let offset = v["offset"].as_u64().context("no offset")?;
    Ok((epoch, offset))
}

// ------------------------------------------------------------ subscribers

/// One subscriber's settings.
struct Sub {
    addr: std::net::SocketAddr,
    client: Client,
    base: Instant,
    /// Drop the connection this long after the first placement of the load.
    drop_after: Option<Duration>,
    away: Duration,
    /// Stop once the last offset reaches this.
    stop: watch::Receiver<u64>,
    ready: Option<mpsc::UnboundedSender<Result<(), String>>>,
}

/// What one subscriber has received. Its board is the snapshot it started
/// from (or resynced to) with `placed` applied in order; they are applied
/// when the board is read, so that 1,000 boards of 500,000 bytes, each
/// written at random places, do not make the bench's one thread wait on
/// memory while it measures.
struct State {
    snapshot: Arc<Vec<u8>>,
    /// `pixel << 4 | colour` of each message after the snapshot, in order.
    placed: Vec<u32>,
    epoch: String,
    last: u64,
    /// Offsets up to this are in the snapshot taken at a reset.
    skip_through: u64,
    messages: u64,
    gaps: u64,
    duplicates: u64,
    resets: u64,
    lat: [Vec<u32>; 3],
    first_load: Option<Instant>,
    /// Dropped and resumed once.
    resumed: bool,
}

struct SubResult {
    /// When it stopped following.
    done: Instant,
    st: State,
    reconnects: u64,
    error: Option<String>,
}

impl State {
    fn new(snapshot: Arc<Vec<u8>>, epoch: String, last: u64) -> State {
        State {
            snapshot,
            placed: Vec::new(),
            epoch,
            last,
            skip_through: last,
            messages: 0,
            gaps: 0,
            duplicates: 0,
            resets: 0,
            lat: Default::default(),
            first_load: None,
            resumed: false,
        }
    }

    /// The board: the snapshot with every message after it applied.
    fn board(&self) -> Vec<u8> {
        let mut board = self.snapshot.as_ref().clone();
        for &e in &self.placed {
            let (pixel, colour) = ((e >> 4) as usize, (e & 0xF) as u8);
            let byte = &mut board[pixel / 2];
            *byte = if pixel.is_multiple_of(2) {
                (*byte & 0x0F) | (colour << 4)
            } else {
                (*byte & 0xF0) | colour
            };
        }
        board
    }

    /// One message event: `id` is `EPOCH:OFFSET`. `now_us` is when the read
    /// that brought it returned.
    fn message(&mut self, id: &[u8], data: &[u8], now_us: u64) -> Result<()> {
        let offset = offset_of(id).context("a message without an `EPOCH:OFFSET` id")?;
        if offset <= self.last {
            self.duplicates += 1;
            return Ok(());
        }
        self.gaps += offset - self.last - 1;
        self.last = offset;
        self.messages += 1;
        let [c, m, t, x, y] = fields(data).with_context(|| {
            format!(
                "a message without x, y, c, t and m: {}",
                String::from_utf8_lossy(data)
            )
        })?;
        let m = m as usize;
        if offset > self.skip_through {
            if x >= WIDTH || y >= WIDTH || c > 15 {
                bail!("a pixel off the board: {}", String::from_utf8_lossy(data));
            }
            self.placed.push(((y * WIDTH + x) << 4 | c) as u32);
        }
        if m == LOAD && self.first_load.is_none() {
            self.first_load = Some(Instant::now());
        }
        // A resumed subscriber's catch-up is not the load's delivery time.
        if let Some(lat) = self.lat.get_mut(m)
            && !(m == LOAD && self.resumed)
        {
            lat.push(now_us.saturating_sub(t).min(u64::from(u32::MAX)) as u32);
        }
        Ok(())
    }
}

impl Sub {
    async fn run(mut self, mut st: State) -> SubResult {
        // The boards are hashed once every subscriber has stopped.
        let mut reconnects = 0;
        let error = self.follow(&mut st, &mut reconnects).await.err();
        let done = Instant::now();
        if let (Some(e), Some(ready)) = (&error, self.ready.take()) {
            let _ = ready.send(Err(format!("{e:#}")));
        }
        SubResult {
            done,
            st,
            reconnects,
            error: error.map(|e| format!("{e:#}")),
        }
    }

    async fn follow(&mut self, st: &mut State, reconnects: &mut u64) -> Result<()> {
        let mut raw = vec![0u8; 32 * 1024];
        loop {
            let resume = format!("{}:{}", st.epoch, st.last);
            let (mut stream, rest) = open_sse(self.addr, CHANNEL, Some(&resume)).await?;
            let mut chunks = Dechunk::default();
            let mut events = Vec::new();
            chunks.feed(&rest, &mut events)?;
            let mut dropped = false;
            loop {
                self.events(st, &mut events).await?;
                if st.last >= *self.stop.borrow() {
                    return Ok(());
                }
                let drop_at = match (self.drop_after, st.first_load) {
                    (Some(after), Some(first)) => Some(first + after),
                    _ => None,
                };
                let drop_sleep = async {
                    match drop_at {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = stream.read(&mut raw) => {
                        let n = n.context("reading the stream")?;
                        if n == 0 {
                            bail!("the node closed the stream at offset {}", st.last);
                        }
                        if chunks.feed(&raw[..n], &mut events)? {
                            bail!("the stream ended at offset {}", st.last);
                        }
                    }
                    changed = self.stop.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                    _ = drop_sleep => {
                        dropped = true;
                    }
                }
                if dropped {
                    break;
                }
            }
            drop(stream);
            self.drop_after = None;
            *reconnects += 1;
            st.resumed = true;
            tokio::time::sleep(self.away).await;
        }
    }

    /// Handles the whole events in `buf` and keeps the rest.
    async fn events(&mut self, st: &mut State, buf: &mut Vec<u8>) -> Result<()> {
        let now_us = self.base.elapsed().as_micros() as u64;
        let mut start = 0;
        while let Some((event, next)) = next_event(buf, start) {
            start = next;
            let Event { id, kind, data } = event;
            if id.is_empty() && data.is_empty() {
                continue; // retry: or a keep-alive comment
            }
            match kind {
                b"message" => st.message(id, data, now_us)?,
                b"ready" => {
                    let offset = number(data, b"\"offset\":").context("a ready without offset")?;
                    if offset > st.last {
                        // Live from further on without a reset: a silent gap.
                        st.gaps += offset - st.last;
                        st.last = offset;
                    }
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                }
                b"reset" => {
                    let offset = number(data, b"\"offset\":").context("a reset without offset")?;
                    st.resets += 1;
                    let v: serde_json::Value = serde_json::from_slice(data)?;
                    st.epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                    // Resync: the position, then the board; apply only later
                    // messages.
                    let (_, p) = position(&self.client).await?;
                    st.snapshot = Arc::new(self.client.blob_bytes(BOARD, None).await?);
                    st.placed.clear();
                    st.last = offset;
                    st.skip_through = p;
                }
                other => bail!("unexpected event {:?}", String::from_utf8_lossy(other)),
            }
        }
        buf.drain(..start);
        Ok(())
    }
}

/// `N` of an `EPOCH:N` event id.
fn offset_of(id: &[u8]) -> Option<u64> {
    let colon = id.iter().rposition(|&b| b == b':')?;
    parse_u64(&id[colon + 1..])
}

/// The unsigned integer after `key` in a JSON text (`"x":` → 12).
fn number(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = data[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .count();
    let skip = data[at..].iter().take_while(|b| **b == b' ').count();
    parse_u64(&data[at + skip..at + skip + digits])
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// One server-sent event's fields.
struct Event<'a> {
    id: &'a [u8],
    kind: &'a [u8],
    data: &'a [u8],
}

/// The next whole event in `buf` from `from` (one pass over its lines),
/// and where the one after it starts.
fn next_event(buf: &[u8], mut from: usize) -> Option<(Event<'_>, usize)> {
    let mut e = Event {
        id: b"",
        kind: b"message",
        data: b"",
    };
    loop {
        let nl = from + buf[from..].iter().position(|&b| b == b'\n')?;
        let line = &buf[from..nl];
        from = nl + 1;
        if line.is_empty() {
            return Some((e, from));
        }
        if let Some(v) = line.strip_prefix(b"data: ") {
            e.data = v;
        } else if let Some(v) = line.strip_prefix(b"id: ") {
            e.id = v;
        } else if let Some(v) = line.strip_prefix(b"event: ") {
            e.kind = v;
        }
    }
}

/// `[c, m, t, x, y]` of a message `{"c": .., "m": .., "t": .., "x": ..,
/// "y": ..}` (any order), in one pass.
fn fields(data: &[u8]) -> Option<[u64; 5]> {
    let mut out = [None; 5];
    let mut i = 0;
    while i + 3 < data.len() {
        if !(data[i] == b'"' && data[i + 2] == b'"' && data[i + 3] == b':') {
            i += 1;
            continue;
        }
        let slot = match data[i + 1] {
            b'c' => 0,
            b'm' => 1,
            b't' => 2,
            b'x' => 3,
            b'y' => 4,
            _ => {
                i += 1;
                continue;
            }
        };
        i += 4;
        while data.get(i) == Some(&b' ') {
            i += 1;
        }
        let digits = data[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        out[slot] = Some(parse_u64(&data[i..i + digits])?);
        i += digits;
    }
    let [c, m, t, x, y] = out;
    Some([c?, m?, t?, x?, y?])
}

/// A decoder of an HTTP/1.1 chunked body.
#[derive(Default)]
struct Dechunk {
    /// Bytes of the chunk being read still to come.
    remaining: usize,
    /// The CRLF after a chunk's data is still to come (bytes of it left).
    trailer: usize,
    /// A size line read so far.
    line: Vec<u8>,
}

impl Dechunk {
    /// Appends the body bytes in `input` to `out`; true at the last chunk.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        while !input.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.remaining -= n;
                input = &input[n..];
                if self.remaining == 0 {
                    self.trailer = 2;
                }
            } else if self.trailer > 0 {
                let n = self.trailer.min(input.len());
                self.trailer -= n;
                input = &input[n..];
            } else {
                match input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let line = std::mem::take(&mut self.line);
                        let text = std::str::from_utf8(&line).unwrap_or("");
                        let hex = text.trim().split(';').next().unwrap_or("");
                        let size = usize::from_str_radix(hex, 16)
                            .map_err(|_| anyhow!("bad chunk size line {text:?}"))?;
                        if size == 0 {
                            return Ok(true);
                        }
                        self.remaining = size;
                    }
                    None => {
                        self.line.extend_from_slice(input);
                        input = &[];
                    }
                }
            }
        }
        Ok(false)
    }
}

/// An answer's head.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    /// The bytes read after the head.
    rest: Vec<u8>,
}

/// Sends `req` and reads the answer's head.
async fn request(stream: &mut TcpStream, req: &str) -> Result<Head> {
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut tmp)
            .await
            .context("reading the answer's head")?;
        if n == 0 {
            bail!("the node closed the connection before answering");
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&buf)? {
            let chunked = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
            });
            let length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
            return Ok(Head {
                status: resp.code.unwrap_or(0),
                chunked,
                length,
                rest: buf[len..].to_vec(),
            });
        }
        if buf.len() > 64 * 1024 {
            bail!("the answer's head is larger than 64 KiB");
        }
    }
}

/// Opens an SSE subscription (resuming after `resume`, `EPOCH:OFFSET`).
async fn open_sse(
    addr: std::net::SocketAddr,
    channel: &str,
    resume: Option<&str>,
) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.context("connecting")?;
    let resume = resume.map_or(String::new(), |r| format!("Last-Event-ID: {r}\r\n"));
    let req = format!(
        "GET /v1/channels/{channel}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n"
    );
    let Head {
        status,
        chunked,
        rest,
        ..
    } = request(&mut stream, &req).await?;
    if status != 200 {
        bail!(
            "the subscription answered HTTP {status}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    if !chunked {
        bail!("the event stream is not chunked");
    }
    Ok((stream, rest))
}

// ------------------------------------------------------------------ idle

/// Opens `n` idle subscriptions on a fresh node and measures its RSS.
async fn idle(shoal: &Path, dir: &Path, log: &str, n: usize, kind: Kind) -> Result<Idle> {
    std::fs::create_dir_all(dir)?;
    // The default cap is 10,000 connections.
    let cap = ["--max-connections".to_string(), (n + 1000).to_string()];
    let node = Node::start(shoal, dir, log, &cap)?;
    let client = Client::new(&node.url, Some(&node.token))?;
    let (status, text) = client
        .raw(
            "PUT",
            &format!("/v1/channels/{IDLE_CHANNEL}"),
            Some("application/json"),
            br#"{"public": true}"#.to_vec(),
        )
        .await?;
    if status != 200 {
        bail!("PUT /v1/channels/{IDLE_CHANNEL} answered HTTP {status}: {text}");
    }
    let target = Target::new(node.addr, &node.token)?;
    let addr = target.addr;
    // The first subscriber starts the channel's hub; not counted.
    let mut open = vec![open_idle(addr, kind).await?];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = node.pid();
    let before = settled_rss(pid).await;
    let t = Instant::now();
    while open.len() < n + 1 {
        let wave = (n + 1 - open.len()).min(500);
        let mut set = JoinSet::new();
        for _ in 0..wave {
            set.spawn(open_idle(addr, kind));
        }
        while let Some(r) = set.join_next().await {
            open.push(r??);
        }
    }
    let open_s = t.elapsed().as_secs_f64();
    // Presence is written every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = settled_rss(pid).await;
    let presence = client
        .raw(
            "GET",
            &format!("/v1/channels/{IDLE_CHANNEL}"),
            None,
            Vec::new(),
        )
        .await
        .ok()
        .and_then(|(_, t)| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["presence"].as_u64());
    drop(open);
    drop(node);
    Ok(Idle {
        n,
        before,
        after,
        open_s,
        presence,
    })
}

/// The median of a few samples of the node process's own RSS.
async fn settled_rss(pid: u32) -> u64 {
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(rss::sample(pid).root);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// One subscription, open once its `ready` event (or frame) has arrived.
async fn open_idle(addr: std::net::SocketAddr, kind: Kind) -> Result<TcpStream> {
    if kind == Kind::Plain {
        let mut stream = TcpStream::connect(addr).await.context("connecting")?;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let Head {
            status,
            length,
            mut rest,
            ..
        } = request(&mut stream, &req).await?;
        if status != 200 {
            bail!("GET /healthz answered HTTP {status}");
        }
        // The whole answer, so that the node is done with it.
        let length = length.context("an answer without Content-Length")?;
        let mut tmp = [0u8; 1024];
        while rest.len() < length {
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                bail!("the node closed the connection");
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        return Ok(stream);
    }
    if kind == Kind::Sse {
        let (mut stream, mut rest) = open_sse(addr, IDLE_CHANNEL, None).await?;
        let mut tmp = [0u8; 1024];
        while !rest.windows(12).any(|w| w == b"event: ready") {
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                bail!("the stream ended before its ready event");
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        return Ok(stream);
    }
    let mut stream = TcpStream::connect(addr).await.context("connecting")?;
    let req = format!(
        "GET /v1/channels/{IDLE_CHANNEL}/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let Head {
        status, mut rest, ..
    } = request(&mut stream, &req).await?;
    if status != 101 {
        bail!(
            "the WebSocket upgrade answered HTTP {status}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    let mut tmp = [0u8; 1024];
    loop {
        if let Some(text) = first_frame(&rest)? {
            if !text.contains("\"ready\"") {
                bail!("the first frame is not ready: {text}");
            }
            return Ok(stream);
        }
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            bail!("the WebSocket closed before its ready frame");
        }
        rest.extend_from_slice(&tmp[..n]);
    }
}

/// The first (unmasked, server-sent) WebSocket frame's text, once whole.
fn first_frame(buf: &[u8]) -> Result<Option<String>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        126 => return Ok(None),
        127 => bail!("a first frame over 64 KiB"),
        n => (usize::from(n), 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
    ))
}

// ---------------------------------------------------------------- report

fn section(
    loads: &[Result<Load, String>],
    sse: &Result<Idle, String>,
    ws: &Result<Idle, String>,
    plain: &Result<Idle, String>,
    limit: u64,
) -> Section {
    let mut s = Section::new("live");
    let Some((headline, others)) = loads.split_last() else {
        return Section::failed("live", "no run of the load planned");
    };
    for l in loads.iter().flatten() {
        let label = format!("coalesce_ms = {}", l.coalesce_ms);
        s.cpu(
            format!("live: placements back to back, {label}"),
            &l.cpu_load,
        );
        s.cpu(format!("live: paced placements, {label}"), &l.cpu_paced);
    }
    match headline {
        Ok(l) => {
            let mut figures = load_figures(l);
            // Updates lost in another run are lost too.
            let lost_elsewhere: usize = others.iter().flatten().map(|o| o.mismatched).sum();
            let last = figures.pop().expect("the lost figure").flaw_if(
                lost_elsewhere > 0,
                format!("{lost_elsewhere} boards differed in the other runs (details)"),
            );
            figures.push(last);
            for f in figures {
                s.add(f);
            }
            s.detail(load_detail(l));
        }
        Err(e) => {
            for id in [
                "live.placements",
                "live.delivery_p99",
                "live.delivery_p50",
                "live.lost",
            ] {
                s.add(Figure::unmeasured(id, e));
            }
        }
    }
    for o in others {
        s.detail(match o {
            Ok(l) => other_run(l),
            Err(e) => format!("Another run of the load failed: {}", one_line(e)),
        });
    }
    for (id, idle, name) in [
        ("live.idle_sse", sse, "SSE"),
        ("live.idle_ws", ws, "WebSocket"),
    ] {
        match idle {
            Ok(i) => {
                let per = per_kib(i);
                s.add(
                    Figure::new(id, per)
                        .setting(format!("{} {name} connections", thousands(i.n as f64)))
                        .paren(format!(
                            "node RSS {} → {} MiB; opened in {:.1} s",
                            thousands(rss::mib(i.before)),
                            thousands(rss::mib(i.after)),
                            i.open_s
                        ))
                        .flaw_if(
                            i.presence.is_some_and(|p| p < i.n as u64),
                            format!(
                                "the channel's presence was {}, fewer than the connections",
                                i.presence.unwrap_or(0)
                            ),
                        ),
                );
            }
            Err(e) => s.add(Figure::unmeasured(id, e)),
        }
    }
    let presence = |i: &Result<Idle, String>| match i {
        Ok(Idle {
            presence: Some(p), ..
        }) => thousands(*p as f64),
        _ => "n/a".into(),
    };
    s.detail(format!(
        "Idle subscribers: a fresh node for each kind (nothing of the load in its allocator), \
         one public channel; one subscriber first (it starts the channel's hub, not counted), \
         the node's own RSS (median of 5 samples 100 ms apart) before and 2.5 s after the \
         others were all open — each counted once its `ready` event (SSE) or frame (WebSocket) \
         had arrived; the bench process's limit on open files {}. The channel's presence then: \
         SSE {}, WebSocket {} (one more than counted: the first). For comparison, {}.",
        thousands(limit as f64),
        presence(sse),
        presence(ws),
        match plain {
            Ok(i) => format!(
                "{} idle keep-alive HTTP connections that had each made one `GET /healthz` took \
                 {:.1} KiB each the same way (node RSS {} → {} MiB): the part of a subscriber's \
                 cost that is its HTTP connection",
                thousands(i.n as f64),
                per_kib(i),
                thousands(rss::mib(i.before)),
                thousands(rss::mib(i.after))
            ),
            Err(e) => format!(
                "idle keep-alive HTTP connections could not be measured: {}",
                one_line(e)
            ),
        }
    ));
    s
}

/// RSS growth per connection, KiB.
fn per_kib(i: &Idle) -> f64 {
    (i.after as f64 - i.before as f64) / i.n as f64 / 1024.0
}

fn load_figures(l: &Load) -> Vec<Figure> {
    let via = match &l.via {
        Via::Route => format!("through the public route `POST {ROUTE}`"),
        Via::Invoke(_) => "through `POST /v1/functions/{name}/invoke` (not the route)".into(),
    };
    let rate = l.placed as f64 / l.place_s;
    let placements = Figure::new("live.placements", rate)
        .setting(format!(
            "{} subscribers, {} connections placing, {via}, {} Python workers, the channel's \
             `coalesce_ms = {}`",
            thousands(l.subscribers as f64),
            l.publishers,
            l.concurrency,
            l.coalesce_ms
        ))
        .paren(format!(
            "{} placements in {:.1} s; a placement's answer p50 {}, p99 {}; delivered at the \
             subscribers p50 {}, p99 {}; without subscribers {}/s",
            thousands(l.placed as f64),
            l.place_s,
            fmt_ms(percentile(&l.place_ms, 0.5)),
            fmt_ms(percentile(&l.place_ms, 0.99)),
            fmt_us(&l.lat[LOAD], 0.5),
            fmt_us(&l.lat[LOAD], 0.99),
            thousands(l.alone_rate)
        ))
        .flaw_if(
            l.place_errors > 0,
            format!("{} placements failed", l.place_errors),
        );
    let f = &l.fast;
    let paced = |id, q, full: bool| {
        let fig = Figure::new(id, percentile_us(&l.lat[PACED], q)).setting(format!(
            "{} placements/s for {:.1} s, {} subscribers, `coalesce_ms = {}`",
            thousands(f.rate),
            l.paced_window.as_secs_f64(),
            thousands(l.subscribers as f64),
            l.coalesce_ms
        ));
        let fig = if !full {
            fig.paren(format!(
                "the run of the row above; at {}/s: {}",
                thousands(l.slow.rate),
                fmt_us(&l.lat[SLOW], 0.5)
            ))
        } else {
            fig.paren(format!(
                "{} deliveries; {} placements at {}/s, the last answered {:.1} s after the first \
                 was due; at a gentler {}/s: p50 {}, p99 {}{}",
                thousands(l.lat[PACED].len() as f64),
                thousands(f.placed as f64),
                thousands(f.held()),
                f.s,
                thousands(l.slow.rate),
                fmt_us(&l.lat[SLOW], 0.5),
                fmt_us(&l.lat[SLOW], 0.99),
                if l.slow.held() < 0.95 * l.slow.rate {
                    format!(" (held {}/s)", thousands(l.slow.held()))
                } else {
                    String::new()
                }
            ))
        };
        fig.flaw_if(
            f.held() < 0.95 * f.rate,
            format!(
                "the pace was not held: {}/s of {}/s",
                thousands(f.held()),
                thousands(f.rate)
            ),
        )
        .flaw_if(f.failed > 0, format!("{} placements failed", f.failed))
        .flaw_if(
            f.placed + f.failed < f.due,
            format!(
                "{} placements given up, 3 s behind the pace",
                f.due - f.placed - f.failed
            ),
        )
    };
    let lost = Figure::new("live.lost", l.mismatched as f64)
        .setting(format!(
            "{} subscribers, {} reconnections with `Last-Event-ID`",
            thousands(l.subscribers as f64),
            l.reconnects
        ))
        .paren(format!(
            "{} boards equal to the server's; {} messages applied; gaps {}, duplicates skipped {}, \
             resets {}",
            thousands((l.subscribers - l.mismatched) as f64),
            thousands(l.messages as f64),
            l.gaps,
            l.duplicates,
            l.resets
        ))
        .flaw_if(
            l.unfinished > 0,
            format!(
                "{} subscribers had not caught up 60 s after the last placement",
                l.unfinished
            ),
        )
        .flaw_if(
            !l.failed.is_empty(),
            format!(
                "{} subscribers failed: {}",
                l.failed.len(),
                one_line(l.failed.first().map_or("", String::as_str))
            ),
        )
        .flaw_if(
            l.acked != l.moved,
            format!(
                "{} placements answered but the channel moved by {}",
                l.acked, l.moved
            ),
        )
        .flaw_if(l.gaps > 0, format!("{} messages never arrived", l.gaps));
    vec![
        placements,
        paced("live.delivery_p99", 0.99, true),
        paced("live.delivery_p50", 0.5, false),
        lost,
    ]
}

/// A run of the load other than the headline one, in one line.
fn other_run(l: &Load) -> String {
    format!(
        "The same load with `coalesce_ms = {}`: {}/s placed back to back ({}/s without \
         subscribers; answers p50 {}, p99 \
         {}; delivered p50 {}, p99 {}); paced at {}/s for {:.0} s: {}/s held, delivered p50 {}, \
         p99 {}; {} of {} boards equal to the server's (gaps {}, {} reconnections).",
        l.coalesce_ms,
        thousands(l.placed as f64 / l.place_s),
        thousands(l.alone_rate),
        fmt_ms(percentile(&l.place_ms, 0.5)),
        fmt_ms(percentile(&l.place_ms, 0.99)),
        fmt_us(&l.lat[LOAD], 0.5),
        fmt_us(&l.lat[LOAD], 0.99),
        thousands(l.fast.rate),
        l.paced_window.as_secs_f64(),
        thousands(l.fast.held()),
        fmt_us(&l.lat[PACED], 0.5),
        fmt_us(&l.lat[PACED], 0.99),
        thousands((l.subscribers - l.mismatched) as f64),
        thousands(l.subscribers as f64),
        l.gaps,
        l.reconnects
    )
}

fn load_detail(l: &Load) -> String {
    let via = match &l.via {
        Via::Route => format!("its public route `POST {ROUTE}`"),
        Via::Invoke(why) => format!(
            "`POST /v1/functions/{FUNCTION}/invoke` — the route was not usable ({})",
            one_line(why)
        ),
    };
    format!(
        "Live: a Python function places a pixel as one `ctx.publish(channel, {{x, y, c, t, m}}, \
         blob=board, ops=[set u4 #p c])` (the board a 500,000-byte fixed-size blob, committed \
         before the answer), called through {via}. {} SSE subscribers, tasks of the bench \
         process on raw keep-alive connections, each start from the snapshot (the channel's \
         position, then the blob), resume with `Last-Event-ID` and keep every message in \
         order, applied to a board of their own at the end (so that the bench's thread does not \
         wait on memory while it measures: 1,000 boards of 500,000 bytes written at random \
         places); {} of them dropped their connection once during the placements \
         and resumed {} ms later (what they received after that is left out of the latencies \
         of the placements back to back: a catch-up is not a delivery time). Latency: each message carries the time its placement was \
         sent (µs, the bench's clock), each subscriber notes when the read that brought it \
         returned. After the paced run, the last subscriber reached the channel's last offset \
         {:.1} s after the last placement's answer; then every board's SHA-256 was compared \
         with the server's blob.",
        thousands(l.subscribers as f64),
        l.reconnects,
        l.away_ms,
        l.drain_s
    )
    .replace(" ~0 ms later", " later")
}

fn percentile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn fmt_us(sorted: &[u32], q: f64) -> String {
    fmt_ms(percentile_us(sorted, q))
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let load = Load {
        coalesce_ms: 10,
        via: Via::Route,
        subscribers: 1000,
        publishers: 32,
        concurrency: 8,
        placed: 12_000,
        place_s: 3.0,
        place_errors: 0,
        place_ms: vec![4.0, 9.0],
        alone_rate: 6000.0,
        away_ms: 300,
        paced_window: Duration::from_secs(4),
        slow: Paced {
            rate: 500.0,
            placed: 2000,
            failed: 0,
            due: 2000,
            s: 4.0,
        },
        fast: Paced {
            rate: 2000.0,
            placed: 8000,
            failed: 0,
            due: 8000,
            s: 4.0,
        },
        lat: [
            vec![1000, 50_000],
            vec![2000, 30_000, 150_000],
            vec![1500, 20_000],
        ],
        acked: 20_000,
        moved: 20_000,
        reconnects: 100,
        gaps: 0,
        duplicates: 0,
        resets: 0,
        mismatched: 0,
        unfinished: 0,
        failed: Vec::new(),
        drain_s: 0.5,
        messages: 20_000_000,
        cpu_load: Usage::default(),
        cpu_paced: Usage::default(),
    };
    let idle = |after| Idle {
        n: 10_000,
        before: 20 << 20,
        after,
        open_s: 2.0,
        presence: Some(10_001),
    };
    let other = Load {
        coalesce_ms: 0,
        mismatched: 0,
        ..load.clone()
    };
    vec![section(
        &[Ok(other), Ok(load)],
        &Ok(idle((20 << 20) + 50_000_000)),
        &Ok(idle((20 << 20) + 200_000_000)),
        &Ok(idle((20 << 20) + 40_000_000)),
        20_000,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_split_anywhere() {
        let wire = b"5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            // The last chunk ends the body: nothing is fed after it.
            let ended =
                d.feed(&wire[..cut], &mut out).unwrap() || d.feed(&wire[cut..], &mut out).unwrap();
            assert!(ended, "cut {cut}");
            assert_eq!(out, b"hello, world", "cut {cut}");
        }
        assert!(Dechunk::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn applies_messages_in_order_and_counts_gaps() {
        let mut st = State::new(Arc::new(vec![0; BOARD_BYTES]), "e".into(), 10);
        let data = br#"{"c":7,"m":1,"t":1000,"x":3,"y":2}"#;
        st.message(b"e:11", data, 3500).unwrap();
        assert_eq!(st.board()[1001], 0x07); // pixel 2003: odd, the low nibble
        let data = br#"{"c":15,"m":0,"t":1000,"x":2,"y":2}"#;
        st.message(b"e:11", data, 3500).unwrap();
        assert_eq!((st.duplicates, st.board()[1001]), (1, 0x07));
        st.message(b"e:14", data, 3500).unwrap();
        assert_eq!(st.board()[1001], 0xF7); // pixel 2002: even, the high nibble
        assert_eq!((st.last, st.gaps, st.messages), (14, 2, 2));
        assert_eq!(st.lat, [vec![2500], vec![2500], vec![]]);
        assert!(st.message(b"e:15", br#"{"c":1}"#, 0).is_err());
    }

    #[test]
    fn reads_sse_events_and_numbers() {
        let buf = b"retry: 1000\n\nid: e:1\nevent: ready\ndata: {}\n\nid: e:2\nev";
        let (e, next) = next_event(buf, 0).unwrap();
        assert_eq!(
            (e.id, e.kind, e.data, next),
            (&b""[..], &b"message"[..], &b""[..], 13)
        );
        let (e, next) = next_event(buf, next).unwrap();
        assert_eq!(
            (e.id, e.kind, e.data, next),
            (&b"e:1"[..], &b"ready"[..], &b"{}"[..], 44)
        );
        assert!(next_event(buf, next).is_none());
        let data = br#"{"c":7,"m":1,"t":123456789,"x":999,"y": 0}"#;
        assert_eq!(fields(data), Some([7, 1, 123456789, 999, 0]));
        assert_eq!(fields(br#"{"c":7,"m":1,"t":1,"x":9}"#), None);
        assert_eq!(fields(br#"{"c":"a","m":1,"t":1,"x":9,"y":1}"#), None);
        assert_eq!(offset_of(b"ab:cd:42"), Some(42));
        assert_eq!(offset_of(b"42"), None);
        assert_eq!(number(br#"{"offset": 17,"x":3}"#, b"\"offset\":"), Some(17));
        assert_eq!(number(br#"{"x":3}"#, b"\"y\":"), None);
    }

    #[test]
    fn reads_a_first_websocket_frame() {
        let mut f = vec![0x81, 5];
        f.extend_from_slice(b"ready");
        assert_eq!(first_frame(&f[..4]).unwrap(), None);
        assert_eq!(first_frame(&f).unwrap().as_deref(), Some("ready"));
        let mut long = vec![0x81, 126, 0, 200];
        long.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(first_frame(&long).unwrap().map(|s| s.len()), Some(200));
    }
}
