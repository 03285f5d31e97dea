//! The cluster phase (issue 11): several nodes on one `redis-server`.
//!
//! 1. **Redis commands per unit of work.** One node on a `redis-server` the
//!    phase starts (AOF, `appendfsync everysec`), connected through a
//!    counting proxy in this process: the proxy counts the commands the node
//!    sends (an `EVALSHA` counts once), `INFO commandstats` on the server
//!    counts them with the calls scripts make (Redis 7.0 counts a
//!    `redis.call` inside a script under its own command, in `commandstats`
//!    and in `total_commands_processed` alike, with no mark telling it from
//!    a client's call: only the proxy can tell them apart). Per sync
//!    invocation, per async invocation from submit to final record, per
//!    queue message until acked (one and 100 per invocation), per document
//!    of batched writes, per shard of a query (the first query, which reads
//!    the documents from Redis, and a repeat). The node's idle traffic
//!    (heartbeats, polls), measured first, and the cost of the phase's own
//!    progress polls (`/metrics`, `GET /v1/queues/...`, measured alone) are
//!    subtracted.
//! 2. **Throughput** of async invocations (submit `n`, wait until all are
//!    final) and sync invocations (concurrent keep-alive clients for a
//!    window) on 1, 2 and 3 nodes over one `redis-server` (`appendfsync
//!    everysec`; the async figure also with `appendfsync always`, set with
//!    `CONFIG SET`), clients spread round robin over the nodes; the same on
//!    the bench's own node (embedded store); Celery on a `redis-server` with
//!    the same settings (`celery.rs`).
//! 3. **Capacity on paper**: `redis-benchmark` on this machine (SET, GET,
//!    EVALSHA of an empty script and of a six-call script, pipelined) turns
//!    the commands per async invocation into Redis time per invocation; the
//!    Redis main thread's CPU per invocation during the runs cross-checks it.
//!
//! Every server and node the phase starts runs on a free loopback port with
//! its files under the bench's directory, and is stopped before it returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use shoal_client::Client;
use shoal_client::protocol::{PutQueue, SendMessage};

use crate::celery::{self, Redis};
use crate::cpu::{Snapshot, Usage};
use crate::data;
use crate::functions::{ECHO, QUERY_SUM, QUEUE_NOOP};
use crate::http::{Target, invoke_path};
use crate::node::{self, Ctx, Node};
use crate::report::{Figure, Section, one_line};
use crate::stats::thousands;

const SYNC_FN: &str = "cluster-echo";
const ASYNC_FN: &str = "cluster-async";
const QUEUE_FN: &str = "cluster-queue";
const QUEUE_BATCH_FN: &str = "cluster-queue-batch";
const SUM_FN: &str = "cluster-sum";
const CATEGORY: &str = "cluster-docs";
const EVENT: &str = r#"{"n":1}"#;
/// Messages per invocation in the batched queue figure.
const QUEUE_BATCH: u32 = 100;
/// Messages per `POST /v1/queues/{name}/messages`.
const SEND_BATCH: usize = 1000;
/// Documents per write request (as the `writes` phase).
const DOC_BATCH: usize = 10_000;
/// Connections of the commands-per-unit runs.
const UNIT_CONNS: usize = 8;
/// How often progress is polled (each poll costs Redis commands, subtracted).
const POLL: Duration = Duration::from_millis(100);
/// How long the node's idle traffic is measured.
const IDLE: Duration = Duration::from_secs(2);
/// Redis as the phase starts it, apart from `appendfsync`.
const AOF_EVERYSEC: [&str; 6] = [
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
];

pub struct Plan {
    /// Units of each commands-per-unit run.
    sync_n: usize,
    async_n: usize,
    queue_n: usize,
    queue_batched_n: usize,
    docs_n: usize,
    /// Async invocations per throughput run, and their client connections.
    tp_async_n: usize,
    tp_conns: usize,
    tp_warm: Duration,
    tp_window: Duration,
    celery_n: usize,
    celery_always_n: usize,
    limit: Duration,
    python: PathBuf,
    redis_server: PathBuf,
    celery_missing: Option<String>,
    node_log: String,
}

impl Plan {
    pub fn new(
        quick: bool,
        python: PathBuf,
        redis_server: PathBuf,
        celery_missing: Option<String>,
        node_log: String,
    ) -> Plan {
        let pick = |q: usize, full: usize| if quick { q } else { full };
        Plan {
            sync_n: pick(1000, 3000),
            async_n: pick(1000, 3000),
            queue_n: pick(1000, 3000),
            queue_batched_n: pick(5000, 20_000),
            docs_n: pick(20_000, 50_000),
            tp_async_n: pick(2000, 10_000),
            tp_conns: 16,
            tp_warm: Duration::from_millis(500),
            tp_window: Duration::from_secs(if quick { 2 } else { 4 }),
            celery_n: pick(2000, 5000),
            celery_always_n: pick(500, 1500),
            limit: Duration::from_secs(120),
            python,
            redis_server,
            celery_missing,
            node_log,
        }
    }
}

type Measured<T> = std::result::Result<T, String>;

/// A failure kept as its reason, so that the other figures still run.
fn keep<T>(r: Result<T>) -> Measured<T> {
    r.map_err(|e| {
        eprintln!("  failed: {e:#}");
        format!("{e:#}")
    })
}

// ------------------------------------------------------------------ counts

/// Commands by name (lower case; `config|set` style for the server's
/// subcommands), as counts or as counts per unit.
#[derive(Clone, Default, Debug)]
struct Counts(BTreeMap<String, f64>);

impl Counts {
    fn total(&self) -> f64 {
        self.0.values().sum()
    }

    /// `self - k * other`, per command.
    fn minus(&self, other: &Counts, k: f64) -> Counts {
        let mut out = self.0.clone();
        for (c, n) in &other.0 {
            *out.entry(c.clone()).or_default() -= k * n;
        }
        Counts(out)
    }

    fn scaled(&self, k: f64) -> Counts {
        Counts(self.0.iter().map(|(c, n)| (c.clone(), n * k)).collect())
    }

    /// `EVALSHA` and `EVAL`: the scripts run.
    fn scripts(&self) -> f64 {
        let by = self.by_command();
        ["evalsha", "eval", "evalsha_ro", "eval_ro"]
            .iter()
            .filter_map(|c| by.0.get(*c))
            .sum()
    }

    /// Labels (`evalsha 1a2b3c4d shoal:{w}:q:*`) summed by command name.
    fn by_command(&self) -> Counts {
        let mut out = BTreeMap::new();
        for (label, n) in &self.0 {
            let name = label.split(' ').next().unwrap_or(label);
            *out.entry(name.to_string()).or_default() += n;
        }
        Counts(out)
    }

    /// The `n` largest, `evalsha 2.00, hget 0.50`.
    fn top(&self, n: usize) -> String {
        let mut v: Vec<(&String, &f64)> = self.0.iter().filter(|(_, x)| **x > 1e-9).collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let shown: Vec<String> = v
            .iter()
            .take(n)
            .map(|&(c, &x)| {
                let (name, rest) = c.split_once(' ').unwrap_or((c, ""));
                let x = if x >= 0.01 {
                    format!("{x:.2}")
                } else {
                    format!("{x:.4}")
                };
                match rest {
                    "" => format!("{} {x}", name.to_uppercase()),
                    _ => format!("{} `{rest}` {x}", name.to_uppercase()),
                }
            })
            .collect();
        if shown.is_empty() {
            "none".into()
        } else {
            shown.join(", ")
        }
    }
}

/// The server's and the proxy's counters at one moment.
struct Snap {
    server: Counts,
    client: Counts,
    /// CPU seconds of Redis's main thread (user + system).
    cpu_s: f64,
    at: Instant,
}

/// What happened between two snapshots.
#[derive(Clone, Default, Debug)]
struct Window {
    server: Counts,
    client: Counts,
    cpu_s: f64,
    secs: f64,
}

impl Window {
    fn between(a: &Snap, b: &Snap) -> Window {
        // The INFO that took snapshot `a` is counted in `b`.
        let mut server = b.server.minus(&a.server, 1.0);
        *server.0.entry("info".into()).or_default() -= 1.0;
        Window {
            server,
            client: b.client.minus(&a.client, 1.0),
            cpu_s: b.cpu_s - a.cpu_s,
            secs: (b.at - a.at).as_secs_f64(),
        }
    }

    /// `self - k * other` (counts and CPU; the duration stays).
    fn minus(&self, other: &Window, k: f64) -> Window {
        Window {
            server: self.server.minus(&other.server, k),
            client: self.client.minus(&other.client, k),
            cpu_s: self.cpu_s - k * other.cpu_s,
            secs: self.secs,
        }
    }

    fn scaled(&self, k: f64) -> Window {
        Window {
            server: self.server.scaled(k),
            client: self.client.scaled(k),
            cpu_s: self.cpu_s * k,
            secs: self.secs,
        }
    }
}

/// Reads the counters of the Redis on `port`, and of `proxy` if the node
/// under measure goes through one.
async fn snap(port: u16, proxy: Option<&Proxy>) -> Result<Snap> {
    let info = redis_cmd(port, &["INFO", "commandstats", "cpu"]).await?;
    let client = proxy.map(Proxy::counts).unwrap_or_default();
    let mut server = Counts::default();
    let mut cpu_s = 0.0;
    for line in info.lines() {
        if let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        {
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            server.0.insert(name.to_lowercase(), calls);
        } else if let Some((k, v)) = line.split_once(':')
            && (k == "used_cpu_sys_main_thread" || k == "used_cpu_user_main_thread")
        {
            cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(Snap {
        server,
        client,
        cpu_s,
        at: Instant::now(),
    })
}

// ------------------------------------------------------------------- redis

/// One command on a fresh connection; the reply as text (a simple or bulk
/// string, or an integer). An error reply is an error.
async fn redis_cmd(port: u16, args: &[&str]) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to redis-server on port {port}"))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("redis-server did not answer {:?} within 10 s", args[0]))??;
        if n == 0 {
            bail!("redis-server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(reply) = parse_reply(&buf)? {
            return Ok(reply);
        }
    }
}

/// A whole reply at the start of `buf`, or `None` if more must be read.
fn parse_reply(buf: &[u8]) -> Result<Option<String>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..eol]).to_string();
    match buf.first() {
        Some(b'+' | b':') => Ok(Some(line)),
        Some(b'-') => bail!("redis-server answered: {line}"),
        Some(b'$') => {
            let len: i64 = line.parse().context("a bulk length")?;
            if len < 0 {
                return Ok(Some(String::new()));
            }
            let (from, to) = (eol + 2, eol + 2 + len as usize);
            if buf.len() < to + 2 {
                return Ok(None);
            }
            Ok(Some(String::from_utf8_lossy(&buf[from..to]).into_owned()))
        }
        _ => bail!("unexpected reply {line:?}"),
    }
}

async fn set_fsync(redis: &Redis, how: &str) -> Result<()> {
    redis_cmd(redis.port, &["CONFIG", "SET", "appendfsync", how])
        .await
        .map(|_| ())
        .with_context(|| format!("CONFIG SET appendfsync {how}"))
}

// ------------------------------------------------------------------- proxy

/// A TCP proxy in front of a redis-server that counts the commands its
/// clients send (by name), without changing a byte.
struct Proxy {
    port: u16,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    /// The accept loop, which owns the connections' relays; aborted on drop.
    _task: JoinSet<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let mut task = JoinSet::new();
        let c = counts.clone();
        task.spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                relays.spawn(async move {
                    if let Err(e) = relay(client, upstream, c).await {
                        eprintln!("  redis proxy: {e:#}");
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            counts,
            _task: task,
        })
    }

    fn counts(&self) -> Counts {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Counts(c.iter().map(|(k, v)| (k.clone(), *v as f64)).collect())
    }
}

async fn relay(
    client: TcpStream,
    upstream: u16,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = async {
        tokio::io::copy(&mut sr, &mut cw).await?;
        anyhow::Ok(())
    };
    let up = async {
        let mut parser = Resp::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut names = Vec::new();
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            parser.feed(&buf[..n], &mut names);
            if !names.is_empty() {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                for name in names.drain(..) {
                    *c.entry(name).or_default() += 1;
                }
            }
            sw.write_all(&buf[..n]).await?;
        }
        sw.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}

/// Splits a client's byte stream into RESP commands (arrays of bulk
/// strings, or inline commands) and reports each command as its label
/// (`label`).
#[derive(Default)]
struct Resp {
    /// The header line being read.
    line: Vec<u8>,
    /// Bulk strings left in the current command.
    args_left: usize,
    /// Bytes left of the current bulk string, with its CRLF, and its length.
    bulk_left: usize,
    bulk_len: usize,
    /// The first `CAPTURED` arguments of the current command (each cut at
    /// `CAPTURE_BYTES`), and the index of the current one.
    args: Vec<Vec<u8>>,
    arg: usize,
}

const CAPTURED: usize = 4;
const CAPTURE_BYTES: usize = 200;

impl Resp {
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<String>) {
        while !data.is_empty() {
            if self.bulk_left > 0 {
                let n = self.bulk_left.min(data.len());
                let offset = self.bulk_len + 2 - self.bulk_left;
                if let Some(a) = self.args.get_mut(self.arg.wrapping_sub(1))
                    && self.arg <= CAPTURED
                {
                    let keep = self.bulk_len.min(CAPTURE_BYTES).saturating_sub(offset);
                    a.extend_from_slice(&data[..n.min(keep)]);
                }
                self.bulk_left -= n;
                data = &data[n..];
                if self.bulk_left == 0 && self.args_left == 0 {
                    out.push(label(&self.args));
                }
                continue;
            }
            match data.iter().position(|&b| b == b'\n') {
                None => {
                    self.line.extend_from_slice(data);
                    return;
                }
                Some(i) => {
                    self.line.extend_from_slice(&data[..=i]);
                    data = &data[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line, out);
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<String>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let number = |s: &str| s.get(1..).and_then(|n| n.parse::<usize>().ok());
        if self.args_left == 0 {
            if text.starts_with('*') {
                self.args_left = number(text).unwrap_or(0);
                self.args.clear();
                self.arg = 0;
            } else if !text.trim().is_empty() {
                let args: Vec<Vec<u8>> = text
                    .split_whitespace()
                    .map(|w| w.as_bytes().to_vec())
                    .collect();
                out.push(label(&args));
            }
        } else if text.starts_with('$') {
            self.bulk_len = number(text).unwrap_or(0);
            self.bulk_left = self.bulk_len + 2;
            self.args_left -= 1;
            if self.arg < CAPTURED {
                self.args.push(Vec::new());
            }
            self.arg += 1;
        }
    }
}

/// A command's label: its name in lower case and the pattern of the key it
/// names first (`hget shoal:{w}:inv:*`); a script's also names its SHA
/// (`evalsha 1a2b3c4d shoal:{w}:q:*`).
fn label(args: &[Vec<u8>]) -> String {
    let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
    let name = text(0).unwrap_or_default().to_lowercase();
    let key = |i: usize| text(i).map_or("-".to_string(), |k| key_pattern(&k));
    match name.as_str() {
        "evalsha" | "evalsha_ro" | "eval" | "eval_ro" => {
            let script = match name.starts_with("evalsha") {
                true => text(1).unwrap_or_default().chars().take(8).collect(),
                false => "(body)".to_string(),
            };
            let keys = text(2).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
            let first = if keys > 0 { key(3) } else { "-".into() };
            format!("{name} {script} {first}")
        }
        _ if args.len() > 1 => format!("{name} {}", key(1)),
        _ => name,
    }
}

/// A key with its variable parts (segments with digits, or long ones)
/// replaced by `*`.
fn key_pattern(key: &str) -> String {
    key.split(':')
        .map(|seg| {
            let digits = seg.chars().filter(char::is_ascii_digit).count();
            if seg.len() > 24 || digits >= 4 {
                "*"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

// ------------------------------------------------------------------- nodes

/// A node of the cluster, with what the phase needs to drive it.
struct Member {
    node: Node,
    handle: Handle,
    scratch: PathBuf,
}

/// How the phase reaches a node (a cluster member or the bench's own).
#[derive(Clone)]
struct Handle {
    target: Target,
    client: Client,
    pid: u32,
}

impl Handle {
    fn of(ctx: &Ctx) -> Handle {
        Handle {
            target: ctx.target.clone(),
            client: ctx.client.clone(),
            pid: ctx.node_pid,
        }
    }
}

/// Starts a node on `store` with its directory `dir` (off this thread: the
/// proxy it may connect through runs on it).
async fn start_member(shoal: &Path, dir: &Path, store: &str, log: &str) -> Result<Member> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (shoal, dir2, log) = (shoal.to_path_buf(), dir.to_path_buf(), log.to_string());
    let extra = vec!["--store".to_string(), store.to_string()];
    let node = tokio::task::spawn_blocking(move || Node::start(&shoal, &dir2, &log, &extra))
        .await
        .context("starting a node")??;
    let handle = Handle {
        target: Target::new(node.addr, &node.token)?,
        client: Client::new(&node.url, Some(&node.token))?,
        pid: node.pid(),
    };
    Ok(Member {
        node,
        handle,
        scratch: dir.join("functions"),
    })
}

/// Stops nodes off this thread (they may flush through the proxy).
async fn stop_members(members: Vec<Member>) {
    let nodes: Vec<Node> = members.into_iter().map(|m| m.node).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for mut n in nodes {
            n.stop(Duration::from_secs(10));
            warn_of_log(&n.log_path);
        }
    })
    .await;
}

fn warn_of_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let bad = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    if bad > 0 {
        eprintln!(
            "  the node logged {bad} warnings or errors ({}); the last ones:\n{}",
            log.display(),
            node::tail(&text, 5)
        );
    }
}

/// Deploys the echo function as the sync and the async function, and starts
/// a pool on each of `nodes` with one call of each.
async fn deploy_echo(nodes: &[Handle], scratch: &Path) -> Result<()> {
    let first = nodes.first().context("no node")?;
    for name in [SYNC_FN, ASYNC_FN] {
        if first.client.function(name).await.is_err() {
            ECHO.deploy(&first.client, scratch, name, None, &[]).await?;
        }
    }
    for n in nodes {
        for name in [SYNC_FN, ASYNC_FN] {
            let mut conn = n.target.connect().await?;
            conn.invoke_ok(&invoke_path(name, false), EVENT.as_bytes())
                .await
                .with_context(|| format!("the first call of {name}"))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------- commands per unit

/// The cost of one kind of unit of work.
#[derive(Clone, Debug)]
struct Cost {
    units: usize,
    /// Per unit, after subtracting the idle traffic and the polls.
    per: Window,
    /// Wall time of the run.
    secs: f64,
    polls: usize,
}

impl Cost {
    fn client(&self) -> f64 {
        self.per.client.total()
    }
    fn server(&self) -> f64 {
        self.per.server.total()
    }
}

struct Units {
    /// The idle node's traffic, per second.
    idle: Window,
    /// One `/metrics` and one `GET /v1/queues/{name}`.
    metrics_poll: Window,
    queue_poll: Window,
    sync: Measured<Cost>,
    async_: Measured<Cost>,
    queue: Measured<Cost>,
    queue_batched: Measured<Cost>,
    docs: Measured<Cost>,
    shard_first: Measured<Cost>,
    shard_warm: Measured<Cost>,
    /// Shards per query.
    shards: u32,
}

/// The measuring context of the commands-per-unit runs.
struct Meter<'a> {
    port: u16,
    proxy: &'a Proxy,
    idle: Window,
    metrics_poll: Window,
    queue_poll: Window,
}

impl Meter<'_> {
    async fn snap(&self) -> Result<Snap> {
        snap(self.port, Some(self.proxy)).await
    }

    /// The cost per unit of what happened between `a` and now, `units`
    /// units with `metrics` `/metrics` polls and `queue` queue polls.
    async fn cost(&self, a: &Snap, units: usize, metrics: usize, queue: usize) -> Result<Cost> {
        let b = self.snap().await?;
        let w = Window::between(a, &b);
        let net = w
            .minus(&self.idle, w.secs)
            .minus(&self.metrics_poll, metrics as f64)
            .minus(&self.queue_poll, queue as f64);
        Ok(Cost {
            units,
            per: net.scaled(1.0 / units.max(1) as f64),
            secs: w.secs,
            polls: metrics + queue,
        })
    }
}

async fn units(
    shoal: &Path,
    dir: &Path,
    redis: &Redis,
    plan: &Plan,
    docs: &data::Docs,
) -> Result<Units> {
    let proxy = Proxy::start(redis.port).await?;
    let store = format!("redis://127.0.0.1:{}/0", proxy.port);
    crate::step("cluster: one node through a counting proxy, for the commands per unit");
    let m = start_member(shoal, &dir.join("node-units"), &store, &plan.node_log).await?;
    let r = units_on(&m, redis, &proxy, plan, docs).await;
    stop_members(vec![m]).await;
    r
}

async fn units_on(
    m: &Member,
    redis: &Redis,
    proxy: &Proxy,
    plan: &Plan,
    docs: &data::Docs,
) -> Result<Units> {
    let h = &m.handle;
    let c = &h.client;
    deploy_echo(std::slice::from_ref(h), &m.scratch).await?;
    for (name, batch) in [(QUEUE_FN, 1), (QUEUE_BATCH_FN, QUEUE_BATCH)] {
        c.put_queue(name, &PutQueue::default())
            .await
            .with_context(|| format!("creating the queue {name}"))?;
        QUEUE_NOOP
            .deploy(
                c,
                &m.scratch,
                name,
                None,
                &[
                    ("queue = \"bench-queue\"", format!("queue = \"{name}\"")),
                    ("batch_size = 1", format!("batch_size = {batch}")),
                ],
            )
            .await?;
        // Warm-up: the subscriber's pool starts.
        c.send(name, messages(0, 100)).await?;
        wait_acked(c, name, 100, plan.limit).await?;
    }
    QUERY_SUM.deploy(c, &m.scratch, SUM_FN, None, &[]).await?;
    c.create_category(CATEGORY, None)
        .await
        .context("creating the category")?;
    // Warm-up of the async path.
    let mut conns = connect_spread(std::slice::from_ref(h), UNIT_CONNS).await?;
    submit(&mut conns, ASYNC_FN, 100).await?;
    wait_async(std::slice::from_ref(h), 0, 100, plan.limit).await?;

    crate::step("cluster: the idle node's traffic, and the cost of a progress poll");
    let a = snap(redis.port, Some(proxy)).await?;
    tokio::time::sleep(IDLE).await;
    let b = snap(redis.port, Some(proxy)).await?;
    let w = Window::between(&a, &b);
    let idle = w.scaled(1.0 / w.secs);
    let poll_cost = async |what: &str| -> Result<Window> {
        let a = snap(redis.port, Some(proxy)).await?;
        for _ in 0..5 {
            match what {
                "metrics" => drop(c.get_text("/metrics").await?),
                _ => drop(c.queue(QUEUE_FN).await?),
            }
        }
        let b = snap(redis.port, Some(proxy)).await?;
        let w = Window::between(&a, &b);
        Ok(w.minus(&idle, w.secs).scaled(1.0 / 5.0))
    };
    let metrics_poll = poll_cost("metrics").await?;
    let queue_poll = poll_cost("queue").await?;
    let meter = Meter {
        port: redis.port,
        proxy,
        idle: idle.clone(),
        metrics_poll: metrics_poll.clone(),
        queue_poll: queue_poll.clone(),
    };

    crate::step(&format!(
        "cluster: {} sync invocations over {UNIT_CONNS} connections",
        plan.sync_n
    ));
    let sync = keep(
        async {
            let a = meter.snap().await?;
            sync_n(&mut conns, SYNC_FN, plan.sync_n).await?;
            meter.cost(&a, plan.sync_n, 0, 0).await
        }
        .await,
    );
    crate::step(&format!(
        "cluster: {} async invocations, until all are final",
        plan.async_n
    ));
    let async_ = keep(
        async {
            let base = async_done(std::slice::from_ref(h)).await?;
            let a = meter.snap().await?;
            submit(&mut conns, ASYNC_FN, plan.async_n).await?;
            let (_, polls) = wait_async(
                std::slice::from_ref(h),
                base,
                plan.async_n as u64,
                plan.limit,
            )
            .await?;
            meter.cost(&a, plan.async_n, polls, 0).await
        }
        .await,
    );
    let queue_cost = async |name: &str, n: usize| -> Result<Cost> {
        crate::step(&format!("cluster: {n} queue messages to {name}"));
        let base = c.queue(name).await?.counters.acked;
        let a = meter.snap().await?;
        for from in (0..n).step_by(SEND_BATCH) {
            c.send(name, messages(from, (from + SEND_BATCH).min(n)))
                .await?;
        }
        let polls = wait_acked(c, name, base + n as u64, plan.limit).await?;
        meter.cost(&a, n, 0, polls).await
    };
    let queue = keep(queue_cost(QUEUE_FN, plan.queue_n).await);
    let queue_batched = keep(queue_cost(QUEUE_BATCH_FN, plan.queue_batched_n).await);
    crate::step(&format!(
        "cluster: {} documents in batches of {DOC_BATCH}",
        plan.docs_n
    ));
    let docs_cost = keep(
        async {
            let a = meter.snap().await?;
            for from in (0..plan.docs_n).step_by(DOC_BATCH) {
                let to = (from + DOC_BATCH).min(plan.docs_n);
                let w = c
                    .write_docs(CATEGORY, docs.lines(from, to).to_vec(), true, false)
                    .await
                    .with_context(|| format!("writing documents {from}..{to}"))?;
                if w.written != (to - from) as u64 {
                    bail!("writing documents {from}..{to} wrote {}", w.written);
                }
            }
            meter.cost(&a, plan.docs_n, 0, 0).await
        }
        .await,
    );
    crate::step("cluster: a query over the documents, then a repeat");
    let want = docs.total_of_first(plan.docs_n);
    let mut shards = 0;
    let mut shard_cost = async || -> Result<Cost> {
        let a = meter.snap().await?;
        let done = query(c, CATEGORY, SUM_FN, plan.limit).await?;
        let got = done["result"].as_f64().unwrap_or(f64::NAN);
        if got != want {
            bail!("the query answered {got}, not {want}");
        }
        shards = done["shards"].as_u64().unwrap_or(0) as u32;
        meter.cost(&a, shards.max(1) as usize, 0, 0).await
    };
    let shard_first = keep(shard_cost().await);
    let shard_warm = keep(shard_cost().await);
    Ok(Units {
        idle,
        metrics_poll,
        queue_poll,
        sync,
        async_,
        queue,
        queue_batched,
        docs: docs_cost,
        shard_first,
        shard_warm,
        shards,
    })
}

fn messages(from: usize, to: usize) -> Vec<SendMessage> {
    (from..to)
        .map(|i| SendMessage {
            body: json!({ "i": i }),
            delay: None,
            dedup_id: None,
        })
        .collect()
}

/// Polls the queue's counters (every `POLL`) until `want` are acked or
/// dead-lettered; returns how many polls it took.
async fn wait_acked(client: &Client, queue: &str, want: u64, limit: Duration) -> Result<usize> {
    let t = Instant::now();
    let mut polls = 0;
    loop {
        let c = client.queue(queue).await?.counters;
        polls += 1;
        if c.acked + c.dead_lettered >= want {
            return Ok(polls);
        }
        if t.elapsed() > limit {
            bail!(
                "only {} of {want} messages of {queue} acked within {limit:?}",
                c.acked
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs a query and returns its `done` object.
async fn query(c: &Client, category: &str, function: &str, limit: Duration) -> Result<Value> {
    let last = tokio::time::timeout(limit, async {
        let mut lines = c.query(category, function, false, false).await?;
        let mut last = None;
        while let Some(line) = lines.next_line().await? {
            if !line.is_empty() {
                last = Some(line);
            }
        }
        anyhow::Ok(last)
    })
    .await
    .map_err(|_| anyhow!("the query took more than {limit:?}"))??;
    let last = last.context("the query answered nothing")?;
    let line: Value = serde_json::from_slice(&last).context("the query's last line")?;
    if let Some(e) = line.get("error") {
        bail!("the query failed: {e}");
    }
    line.get("done")
        .cloned()
        .with_context(|| format!("the query's last line is neither done nor error: {line}"))
}

// ----------------------------------------------------------------- driving

/// `conns` keep-alive connections, round robin over `nodes`; each with the
/// index of its node.
async fn connect_spread(nodes: &[Handle], conns: usize) -> Result<Vec<(usize, crate::http::Conn)>> {
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns {
        let k = i % nodes.len();
        out.push((k, nodes[k].target.connect().await?));
    }
    Ok(out)
}

/// `n` sync invocations of `function` over `conns`, all at once.
async fn sync_n(conns: &mut [(usize, crate::http::Conn)], function: &str, n: usize) -> Result<()> {
    let path = invoke_path(function, false);
    let k = conns.len();
    let mut futs = Vec::new();
    for (i, (_, conn)) in conns.iter_mut().enumerate() {
        let share = n / k + usize::from(i < n % k);
        let path = path.clone();
        futs.push(async move {
            for _ in 0..share {
                conn.invoke_ok(&path, EVENT.as_bytes()).await?;
            }
            anyhow::Ok(())
        });
    }
    for r in join_all(futs).await {
        r?;
    }
    Ok(())
}

/// Submits `n` async invocations of `function` over `conns`.
async fn submit(conns: &mut [(usize, crate::http::Conn)], function: &str, n: usize) -> Result<()> {
    let path = invoke_path(function, true);
    let k = conns.len();
    let mut futs = Vec::new();
    for (i, (_, conn)) in conns.iter_mut().enumerate() {
        let share = n / k + usize::from(i < n % k);
        let path = path.clone();
        futs.push(async move {
            for _ in 0..share {
                let reply = conn.post(&path, EVENT.as_bytes()).await?;
                if reply.status != 202 {
                    bail!(
                        "async invoke answered HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    for r in join_all(futs).await {
        r?;
    }
    Ok(())
}

/// Runs futures concurrently on this task (the connections are borrowed,
/// so they cannot move into spawned tasks).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Finished async invocations of `ASYNC_FN`, summed over `nodes`.
async fn async_done(nodes: &[Handle]) -> Result<u64> {
    Ok(async_per_node(nodes).await?.iter().sum())
}

async fn async_per_node(nodes: &[Handle]) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let (ok, other) = node::invocations(&n.client, ASYNC_FN, Some("async")).await?;
        out.push(ok + other);
    }
    Ok(out)
}

/// Polls `/metrics` of every node until `want` more than `base` async
/// invocations have finished; returns the count and the polls (one per
/// node per round).
async fn wait_async(
    nodes: &[Handle],
    base: u64,
    want: u64,
    limit: Duration,
) -> Result<(u64, usize)> {
    let t = Instant::now();
    let mut polls = 0;
    loop {
        let done = async_done(nodes).await? - base;
        polls += nodes.len();
        if done >= want {
            return Ok((done, polls));
        }
        if t.elapsed() > limit {
            bail!("only {done} of {want} async invocations finished within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// -------------------------------------------------------------- throughput

/// One async throughput run.
#[derive(Clone, Debug)]
struct AsyncRun {
    n: usize,
    secs: f64,
    accept_secs: f64,
    /// Invocations each node ran.
    per_node: Vec<u64>,
    failed: u64,
    /// Redis commands per invocation (server side, with script calls) and
    /// Redis main-thread CPU per invocation (µs); none on the embedded store.
    redis: Option<(f64, f64)>,
    /// The first node's CPU (node + workers) per invocation, ms.
    node_cpu_ms: f64,
    cpu: Usage,
}

impl AsyncRun {
    fn per_s(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

#[derive(Clone, Debug)]
struct SyncRun {
    per_s: f64,
    conns: usize,
    /// Calls answered by each node.
    per_node: Vec<u64>,
    errors: u64,
    redis: Option<(f64, f64)>,
}

/// Submits `n` async invocations over `conns` connections spread over
/// `nodes`, and waits until all have finished.
async fn async_run(
    nodes: &[Handle],
    redis: Option<&Redis>,
    n: usize,
    conns: usize,
    limit: Duration,
) -> Result<AsyncRun> {
    let failed0 = failed_async(nodes).await?;
    let base = async_per_node(nodes).await?;
    let mut cs = connect_spread(nodes, conns).await?;
    let a = match redis {
        Some(r) => Some(snap(r.port, None).await?),
        None => None,
    };
    let cpu0 = Snapshot::take(nodes[0].pid);
    let t = Instant::now();
    submit(&mut cs, ASYNC_FN, n).await?;
    let accept_secs = t.elapsed().as_secs_f64();
    let (done, _) = wait_async(nodes, base.iter().sum(), n as u64, limit).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&Snapshot::take(nodes[0].pid));
    let redis = match (redis, a) {
        (Some(r), Some(a)) => {
            let w = Window::between(&a, &snap(r.port, None).await?);
            Some((w.server.total() / n as f64, w.cpu_s * 1e6 / n as f64))
        }
        _ => None,
    };
    let per_node: Vec<u64> = async_per_node(nodes)
        .await?
        .iter()
        .zip(&base)
        .map(|(x, b)| x - b)
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    Ok(AsyncRun {
        n: done as usize,
        secs,
        accept_secs,
        node_cpu_ms: (cpu.node + cpu.python) * cores * secs * 1e3 / per_node[0].max(1) as f64,
        per_node,
        failed: failed_async(nodes).await? - failed0,
        redis,
        cpu,
    })
}

async fn failed_async(nodes: &[Handle]) -> Result<u64> {
    let mut failed = 0;
    for n in nodes {
        failed += node::invocations(&n.client, ASYNC_FN, Some("async"))
            .await?
            .1;
    }
    Ok(failed)
}

/// `conns` clients spread over `nodes` invoke in a loop; counts the answers
/// within `window` after `warm`.
async fn sync_run(
    nodes: &[Handle],
    redis: Option<&Redis>,
    conns: usize,
    warm: Duration,
    window: Duration,
) -> Result<SyncRun> {
    let path = invoke_path(SYNC_FN, false);
    let cs = connect_spread(nodes, conns).await?;
    let from = Instant::now() + warm;
    let until = from + window;
    let mut set = JoinSet::new();
    for (k, mut conn) in cs {
        let path = path.clone();
        set.spawn(async move {
            let (ok, errors, first) =
                crate::invoke::call_until(&mut conn, &path, from, until).await;
            (k, ok, errors, first)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let a = match redis {
        Some(r) => Some(snap(r.port, None).await?),
        None => None,
    };
    let mut per_node = vec![0u64; nodes.len()];
    let (mut errors, mut first) = (0, None);
    while let Some(r) = set.join_next().await {
        let (k, ok, e, f) = r.context("a client task panicked")?;
        per_node[k] += ok;
        errors += e;
        first = first.or(f);
    }
    let ok: u64 = per_node.iter().sum();
    if ok == 0 {
        bail!("no invocation succeeded: {}", first.unwrap_or_default());
    }
    let redis = match (redis, a) {
        // The snapshot after the window is a little late: the calls that
        // finish after `until` are not counted; close enough per call.
        (Some(r), Some(a)) => {
            let w = Window::between(&a, &snap(r.port, None).await?);
            Some((w.server.total() / ok as f64, w.cpu_s * 1e6 / ok as f64))
        }
        _ => None,
    };
    Ok(SyncRun {
        per_s: ok as f64 / window.as_secs_f64(),
        conns,
        per_node,
        errors,
        redis,
    })
}

/// The runs of one configuration.
struct Config {
    nodes: usize,
    async_: Measured<AsyncRun>,
    sync: Measured<SyncRun>,
    /// Async with `appendfsync always` (Redis configurations 1 and 3).
    always: Option<Measured<AsyncRun>>,
}

async fn config(nodes: &[Handle], redis: Option<&Redis>, plan: &Plan, always: bool) -> Config {
    let what = match redis {
        Some(_) => format!("{} node(s) on Redis", nodes.len()),
        None => "the embedded store".into(),
    };
    crate::step(&format!(
        "cluster: {} async invocations, {what}",
        plan.tp_async_n
    ));
    // Warm-up: every node's pool of the async function is up.
    let warm = async_run(nodes, redis, 50 * nodes.len(), plan.tp_conns, plan.limit).await;
    if let Err(e) = warm {
        let e = keep::<()>(Err(e.context("warm-up"))).unwrap_err();
        return Config {
            nodes: nodes.len(),
            async_: Err(e.clone()),
            sync: Err(e),
            always: None,
        };
    }
    let async_ = keep(async_run(nodes, redis, plan.tp_async_n, plan.tp_conns, plan.limit).await);
    crate::step(&format!(
        "cluster: sync invocations, {} clients for {:?}, {what}",
        plan.tp_conns, plan.tp_window
    ));
    let sync = keep(sync_run(nodes, redis, plan.tp_conns, plan.tp_warm, plan.tp_window).await);
    let always = match redis {
        Some(r) if always => {
            crate::step(&format!("cluster: async with appendfsync always, {what}"));
            let run = async {
                set_fsync(r, "always").await?;
                let run = async_run(nodes, redis, plan.tp_async_n, plan.tp_conns, plan.limit).await;
                set_fsync(r, "everysec").await?;
                run
            };
            Some(keep(run.await))
        }
        _ => None,
    };
    Config {
        nodes: nodes.len(),
        async_,
        sync,
        always,
    }
}

// ------------------------------------------------------------------ celery

struct CeleryRuns {
    everysec: Measured<celery::Run>,
    always: Measured<celery::Run>,
    /// Redis commands per task (without the client's GET polls and the
    /// task's INCR of the bench's counter), with `everysec`.
    cmds: Option<f64>,
}

async fn celery_runs(dir: &Path, plan: &Plan) -> CeleryRuns {
    let missing = |why: String| CeleryRuns {
        everysec: Err(why.clone()),
        always: Err(why),
        cmds: None,
    };
    if let Some(why) = &plan.celery_missing {
        return missing(format!("Celery could not be installed: {why}"));
    }
    crate::step("cluster: redis-server for Celery (appendfsync everysec)");
    let redis =
        match Redis::start_with(&plan.redis_server, &dir.join("redis-celery"), &AOF_EVERYSEC).await
        {
            Ok(r) => r,
            Err(e) => return missing(keep::<()>(Err(e)).unwrap_err()),
        };
    let run = async |n: usize| {
        crate::step(&format!("cluster: Celery, {n} tasks, 2 prefork workers"));
        celery::run(
            &plan.python,
            &dir.join("celery"),
            "tasks",
            &redis,
            n,
            plan.limit,
        )
        .await
    };
    let a = snap(redis.port, None).await.ok();
    let everysec = keep(run(plan.celery_n).await);
    let cmds = match (a, snap(redis.port, None).await.ok(), &everysec) {
        (Some(a), Some(b), Ok(r)) => {
            let w = Window::between(&a, &b);
            let own = ["get", "incr", "info", "config|set"]
                .iter()
                .filter_map(|c| w.server.0.get(*c))
                .sum::<f64>();
            // The warm-up tasks count too.
            Some((w.server.total() - own) / (r.n + 200) as f64)
        }
        _ => None,
    };
    let always = match set_fsync(&redis, "always").await {
        Ok(()) => keep(run(plan.celery_always_n).await),
        Err(e) => keep(Err(e)),
    };
    CeleryRuns {
        everysec,
        always,
        cmds,
    }
}

// ---------------------------------------------------------------- capacity

/// `redis-benchmark` on this machine, requests per second.
#[derive(Clone, Debug)]
struct Capacity {
    set: f64,
    get: f64,
    /// EVALSHA of `return 1`, and of a script of six writes.
    eval0: f64,
    eval6: f64,
}

const SCRIPT0: &str = "return 1";
const SCRIPT6: &str = "local k = KEYS[1] \
    redis.call('HSET', k, 'status', ARGV[1], 'at', ARGV[1]) \
    redis.call('ZADD', k .. ':a', ARGV[1], k) \
    redis.call('ZADD', k .. ':b', ARGV[1], k) \
    redis.call('ZADD', k .. ':c', ARGV[1], k) \
    redis.call('HINCRBY', k .. ':n', 'done', 1) \
    redis.call('DEL', k .. ':lease') \
    return 1";

async fn capacity(redis: &Redis) -> Result<Capacity> {
    let bench = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
            .args(["-n", "200000", "-P", "16", "--csv"])
            .args(&args)
            .output()
            .await
            .context("running redis-benchmark (Debian package redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rates: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with("\"test\""))
            .filter_map(|l| l.split(',').nth(1))
            .filter_map(|r| r.trim_matches('"').parse().ok())
            .collect();
        if rates.is_empty() {
            bail!("redis-benchmark printed no rate: {text}");
        }
        anyhow::Ok(rates)
    };
    let sg = bench(vec!["-t".into(), "set,get".into()]).await?;
    let sha0 = redis_cmd(redis.port, &["SCRIPT", "LOAD", SCRIPT0]).await?;
    let sha6 = redis_cmd(redis.port, &["SCRIPT", "LOAD", SCRIPT6]).await?;
    let eval = |sha: String| {
        let args = ["-r", "100000", "EVALSHA", &sha, "1", "rb:__rand_int__", "1"];
        bench(args.iter().map(|s| s.to_string()).collect())
    };
    let e0 = eval(sha0).await?;
    let e6 = eval(sha6).await?;
    Ok(Capacity {
        set: sg[0],
        get: *sg.get(1).unwrap_or(&sg[0]),
        eval0: e0[0],
        eval6: e6[0],
    })
}

/// Redis time per async invocation on paper (µs), from its commands and
/// the benchmark: scripts at the empty script's cost, calls inside them at
/// the six-call script's extra cost per call, plain commands at GET/SET's.
fn paper_us(c: &Cost, cap: &Capacity) -> f64 {
    let scripts = c.per.client.scripts();
    let plain = c.client() - scripts;
    let inside = (c.server() - c.client()).max(0.0);
    let t0 = 1e6 / cap.eval0;
    let per_call = ((1e6 / cap.eval6 - t0) / 6.0).max(0.0);
    let t_cmd = 1e6 / ((cap.set + cap.get) / 2.0);
    scripts * t0 + inside * per_call + plain * t_cmd
}

// --------------------------------------------------------------------- run

struct Results {
    units: Measured<Units>,
    embedded: Config,
    redis: Vec<Config>,
    celery: CeleryRuns,
    capacity: Measured<Capacity>,
    settings: String,
}

/// The cluster phase; `ctx` is the bench's own node (embedded store),
/// `shoal` the binary the cluster's nodes run, `dir` the bench's scratch
/// directory.
pub async fn run(ctx: &Ctx, shoal: &Path, dir: &Path, plan: &Plan) -> Result<Section> {
    let dir = dir.join("cluster");
    std::fs::create_dir_all(&dir)?;
    if let Some(why) = &plan.celery_missing
        && why.contains("redis-server")
    {
        bail!("redis-server is missing: {why}");
    }
    crate::step("cluster: redis-server (appendonly yes, appendfsync everysec)");
    let redis = Redis::start_with(&plan.redis_server, &dir.join("redis"), &AOF_EVERYSEC).await?;
    let docs = data::generate(plan.docs_n);
    let units = keep(units(shoal, &dir, &redis, plan, &docs).await);

    let embedded = match deploy_echo(&[Handle::of(ctx)], &ctx.scratch).await {
        Ok(()) => config(&[Handle::of(ctx)], None, plan, false).await,
        Err(e) => {
            let e = keep::<()>(Err(e)).unwrap_err();
            Config {
                nodes: 1,
                async_: Err(e.clone()),
                sync: Err(e),
                always: None,
            }
        }
    };

    let mut members = Vec::new();
    let mut configs = Vec::new();
    for k in 1..=3 {
        crate::step(&format!("cluster: starting node {k} on the redis-server"));
        let started = async {
            let m = start_member(
                shoal,
                &dir.join(format!("node{k}")),
                &redis.url,
                &plan.node_log,
            )
            .await?;
            members.push(m);
            let handles: Vec<Handle> = members.iter().map(|m| m.handle.clone()).collect();
            deploy_echo(&handles, &members[0].scratch).await
        };
        match started.await {
            Ok(()) => {
                let handles: Vec<Handle> = members.iter().map(|m| m.handle.clone()).collect();
                configs.push(config(&handles, Some(&redis), plan, k != 2).await);
            }
            Err(e) => {
                let e = keep::<()>(Err(e)).unwrap_err();
                for k in k..=3 {
                    configs.push(Config {
                        nodes: k,
                        async_: Err(e.clone()),
                        sync: Err(e.clone()),
                        always: None,
                    });
                }
                break;
            }
        }
    }
    stop_members(members).await;

    crate::step("cluster: redis-benchmark on the same redis-server");
    let capacity = keep(capacity(&redis).await);
    drop(redis);
    let celery = celery_runs(&dir, plan).await;
    Ok(section(&Results {
        units,
        embedded,
        redis: configs,
        celery,
        capacity,
        settings: format!(
            "{} sync and {} async invocations, {} + {} queue messages, {} documents",
            thousands(plan.sync_n as f64),
            thousands(plan.async_n as f64),
            thousands(plan.queue_n as f64),
            thousands(plan.queue_batched_n as f64),
            thousands(plan.docs_n as f64)
        ),
    }))
}

// ------------------------------------------------------------------ report

fn section(r: &Results) -> Section {
    let mut s = Section::new("cluster");
    units_figures(&mut s, r);
    throughput_figures(&mut s, r);
    capacity_figure(&mut s, r);
    s
}

fn cost_cell(f: Figure, c: &Cost, unit: &str) -> Figure {
    f.paren(format!(
        "{:.2} with the calls inside scripts; {} sent: {}; Redis main thread {:.1} µs of CPU per \
         {unit}",
        c.server(),
        unit,
        c.per.client.by_command().top(4),
        c.per.cpu_s * 1e6
    ))
}

fn units_figures(s: &mut Section, r: &Results) {
    let u = match &r.units {
        Ok(u) => u,
        Err(e) => {
            for id in [
                "cluster.cmds_sync",
                "cluster.cmds_async",
                "cluster.cmds_queue",
                "cluster.cmds_doc",
                "cluster.cmds_shard",
            ] {
                s.add(Figure::unmeasured(id, e));
            }
            return;
        }
    };
    let simple = |id, c: &Measured<Cost>, unit: &str| match c {
        Ok(c) => cost_cell(Figure::new(id, c.client()), c, unit),
        Err(e) => Figure::unmeasured(id, e),
    };
    s.add(simple("cluster.cmds_sync", &u.sync, "invocation").setting(r.settings.clone()));
    s.add(simple("cluster.cmds_async", &u.async_, "invocation"));
    let mut q = simple("cluster.cmds_queue", &u.queue, "message").setting(format!(
        "`batch_size = 1`; sends of {}",
        thousands(SEND_BATCH as f64)
    ));
    if let Ok(b) = &u.queue_batched {
        q = q.note(format!(
            "`batch_size = {QUEUE_BATCH}`: {:.2} ({:.2} with script calls)",
            b.client(),
            b.server()
        ));
    }
    s.add(q);
    s.add(
        simple("cluster.cmds_doc", &u.docs, "document")
            .setting(format!("batches of {}", thousands(DOC_BATCH as f64))),
    );
    let mut f = simple("cluster.cmds_shard", &u.shard_first, "shard").setting(format!(
        "the first query, {} shards, documents read from Redis",
        u.shards
    ));
    if let (Ok(c), Ok(d)) = (&u.shard_first, &u.docs) {
        let per_doc = c.units as f64 / d.units.max(1) as f64;
        f = f.note(format!(
            "{:.2} calls inside scripts per document read",
            (c.server() - c.client()) * per_doc
        ));
    }
    if let Ok(w) = &u.shard_warm {
        f = f.note(format!(
            "the repeat: {:.2} ({:.2} with script calls)",
            w.client(),
            w.server()
        ));
    }
    s.add(f);
    s.detail(format!(
        "Commands per unit: one node connected to the redis-server through a proxy in the bench \
         that counts the commands the node sends (client commands: an EVALSHA counts once, \
         whatever its script does); the server's `INFO commandstats` deltas count the same plus \
         every `redis.call` inside a script. Redis 7.0 reports a script's calls under their own \
         commands (`cmdstat_hset`, ...) and in `total_commands_processed`, with nothing telling \
         them from a client's, so the two figures come from the two counters. Subtracted: the \
         idle node's traffic ({:.1} commands/s sent, {:.1} with script calls: heartbeats and \
         idle polls; {}) and the bench's progress polls (a `/metrics`: {:.1} commands, a queue's \
         `GET`: {:.1}). The Redis CPU is its main thread's (`used_cpu_*_main_thread`).",
        u.idle.client.total(),
        u.idle.server.total(),
        u.idle.client.top(4),
        u.metrics_poll.client.total(),
        u.queue_poll.client.total()
    ));
    let line = |what: &str, c: &Measured<Cost>| match c {
        Ok(c) => format!(
            "{what}: {} in {:.2} s, {} progress polls; sent per unit {:.2} ({}), with script calls \
             {:.2} ({})",
            thousands(c.units as f64),
            c.secs,
            c.polls,
            c.client(),
            c.per.client.top(6),
            c.server(),
            c.per.server.top(8)
        ),
        Err(e) => format!("{what}: not measured: {}", one_line(e)),
    };
    let lines = [
        line("sync invocations", &u.sync),
        line("async invocations", &u.async_),
        line("queue messages, batch_size 1", &u.queue),
        line(
            &format!("queue messages, batch_size {QUEUE_BATCH}"),
            &u.queue_batched,
        ),
        line("documents", &u.docs),
        line("shards of the first query", &u.shard_first),
        line("shards of the repeated query", &u.shard_warm),
    ];
    s.detail(format!(
        "Commands per unit, by command: {}.",
        lines.join("; ")
    ));
}

fn async_figure(
    id: &'static str,
    run: &Measured<AsyncRun>,
    celery: &Measured<celery::Run>,
) -> Figure {
    let reference = celery.as_ref().map(celery::Run::per_s);
    let mut f = Figure::of(id, run.as_ref().map(AsyncRun::per_s));
    if target_has_reference(id) {
        f = f.vs(reference);
    }
    if let Ok(a) = run {
        let spread: Vec<String> = a.per_node.iter().map(|n| thousands(*n as f64)).collect();
        let mut note = format!(
            "{} in {:.2} s, accepted in {:.2} s",
            thousands(a.n as f64),
            a.secs,
            a.accept_secs
        );
        if a.per_node.len() > 1 {
            note.push_str(&format!("; ran per node {}", spread.join(" / ")));
        }
        if let Some((cmds, cpu)) = a.redis {
            note.push_str(&format!(
                "; {cmds:.1} Redis commands (with script calls), {cpu:.0} µs Redis CPU per invocation"
            ));
        }
        f = f
            .paren(note)
            .flaw_if(a.failed > 0, format!("{} failed", a.failed));
    }
    f
}

fn target_has_reference(id: &str) -> bool {
    crate::target::get(id).reference().is_some()
}

fn sync_figure(id: &'static str, run: &Measured<SyncRun>) -> Figure {
    let mut f = Figure::of(id, run.as_ref().map(|r| r.per_s));
    if let Ok(r) = run {
        let mut note = format!("{} clients", r.conns);
        if r.per_node.len() > 1 {
            let spread: Vec<String> = r.per_node.iter().map(|n| thousands(*n as f64)).collect();
            note.push_str(&format!("; answered per node {}", spread.join(" / ")));
        }
        if let Some((cmds, cpu)) = r.redis {
            note.push_str(&format!(
                "; {cmds:.1} Redis commands, {cpu:.0} µs Redis CPU per call"
            ));
        }
        f = f
            .paren(note)
            .flaw_if(r.errors > 0, format!("{} errors", r.errors));
    }
    f
}

fn throughput_figures(s: &mut Section, r: &Results) {
    let c = &r.celery;
    s.add(async_figure(
        "cluster.async_embedded",
        &r.embedded.async_,
        &c.everysec,
    ));
    let ids = [
        ("cluster.async_1", "cluster.sync_1"),
        ("cluster.async_2", "cluster.sync_2"),
        ("cluster.async_3", "cluster.sync_3"),
    ];
    let missing: Measured<AsyncRun> = Err("not run".to_string());
    for (i, (a, _)) in ids.iter().enumerate() {
        let run = r.redis.get(i).map_or(&missing, |c| &c.async_);
        let mut f = async_figure(a, run, &c.everysec);
        if i == 0 {
            f = f.setting(format!(
                "{} submitted per run over 16 connections",
                match run {
                    Ok(a) => thousands(a.n as f64),
                    Err(_) => "n/a".into(),
                }
            ));
        }
        s.add(f);
    }
    // `appendfsync always`: the better of 1 and 3 nodes.
    let always: Vec<(usize, &AsyncRun)> = r
        .redis
        .iter()
        .filter_map(|c| match &c.always {
            Some(Ok(a)) => Some((c.nodes, a)),
            _ => None,
        })
        .collect();
    let best = always
        .iter()
        .max_by(|a, b| a.1.per_s().total_cmp(&b.1.per_s()));
    let f = match best {
        Some((nodes, a)) => {
            let all: Vec<String> = always
                .iter()
                .map(|(n, a)| format!("{n} node(s) {}/s", thousands(a.per_s())))
                .collect();
            async_figure("cluster.async_always", &Ok((*a).clone()), &c.always)
                .note(format!("best with {nodes} node(s); {}", all.join(", ")))
        }
        None => {
            let why = r
                .redis
                .iter()
                .find_map(|c| match &c.always {
                    Some(Err(e)) => Some(e.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "not run".into());
            Figure::unmeasured("cluster.async_always", &why)
                .vs(c.always.as_ref().map(celery::Run::per_s))
        }
    };
    s.add(f);
    s.add(sync_figure("cluster.sync_embedded", &r.embedded.sync));
    for (i, (_, id)) in ids.iter().enumerate() {
        s.add(sync_figure(
            id,
            r.redis.get(i).map_or(&Err("not run".into()), |c| &c.sync),
        ));
    }
    for (what, run) in [("everysec", &c.everysec), ("always", &c.always)] {
        match run {
            Ok(run) => s.detail(format!(
                "Celery ({}), Redis `--appendonly yes --appendfsync {what}`: {} tasks sent in {:.2} s, \
                 all run after {:.2} s ({}/s){}; 2 prefork workers, `task_acks_late`, results \
                 ignored, as in the queue phase.",
                run.version,
                thousands(run.n as f64),
                run.send_s,
                run.total_s,
                thousands(run.per_s()),
                match (what, c.cmds) {
                    ("everysec", Some(x)) => format!(
                        "; {x:.1} Redis commands per task (without the bench's done counter)"
                    ),
                    _ => String::new(),
                }
            )),
            Err(e) => s.detail(format!(
                "Celery with `appendfsync {what}` was not measured: {}",
                one_line(e)
            )),
        }
    }
    s.detail(
        "Throughput: one redis-server (`--appendonly yes --appendfsync everysec`, no RDB \
         snapshots); nodes started one by one on it, the figures of k nodes measured while k run; \
         the 16 client connections go round robin to the nodes; an async run submits its \
         invocations and waits until every node's `/metrics` counts them finished (polled every \
         100 ms), after a warm-up of 50 per node. `appendfsync always` was set with `CONFIG SET` \
         for one async run on 1 and on 3 nodes. The embedded figures are the bench's own node. \
         The CPU rows count the first node as Node and the other nodes and Redis in Other."
            .into(),
    );
    let mut cpu_row = |label: String, run: &Measured<AsyncRun>| {
        if let Ok(a) = run {
            s.cpu(label, &a.cpu);
        }
    };
    cpu_row("cluster: async, embedded store".into(), &r.embedded.async_);
    for c in &r.redis {
        cpu_row(
            format!("cluster: async, {} node(s) on Redis", c.nodes),
            &c.async_,
        );
    }
}

fn capacity_figure(s: &mut Section, r: &Results) {
    let cost = r.units.as_ref().ok().and_then(|u| u.async_.as_ref().ok());
    let (cap, cost) = match (&r.capacity, cost) {
        (Ok(cap), Some(cost)) => (cap, cost),
        (Err(e), _) => {
            s.add(Figure::unmeasured("cluster.capacity", e));
            return;
        }
        (_, None) => {
            s.add(Figure::unmeasured(
                "cluster.capacity",
                "the commands per async invocation were not measured",
            ));
            return;
        }
    };
    let paper = paper_us(cost, cap);
    let unit_us = cost.per.cpu_s * 1e6;
    let one = r.redis.first().and_then(|c| c.async_.as_ref().ok());
    let run_us = one.and_then(|a| a.redis).map_or(unit_us, |(_, cpu)| cpu);
    let node_ms = one.map_or(f64::NAN, |a| a.node_cpu_ms);
    let carried = 1e6 / run_us;
    s.add(
        Figure::new("cluster.capacity", carried)
            .setting("one core for Redis's main thread")
            .paren(format!(
                "{run_us:.0} µs per invocation ({unit_us:.0} µs in the commands-per-unit run); on \
                 paper {paper:.0} µs: {}/s",
                thousands(1e6 / paper)
            )),
    );
    let scripts = cost.per.client.scripts();
    s.detail(format!(
        "Capacity on paper: an async invocation costs Redis {scripts:.2} scripts, {:.2} calls \
         inside them and {:.2} plain commands. redis-benchmark on this machine (`-P 16`, 50 \
         clients, 200,000 requests, against the phase's redis-server with AOF everysec, the \
         nodes stopped): SET {}/s, GET {}/s, EVALSHA of `return 1` {}/s, of a script of six \
         writes (HSET, 3 ZADD, HINCRBY, DEL) {}/s; so a script costs {:.2} µs, a call inside \
         one {:.2} µs, a plain command {:.2} µs, and an invocation {paper:.0} µs: {}/s for one \
         Redis. Redis's own accounting of its main thread says {run_us:.0} µs per invocation \
         ({}/s): the benchmark's requests arrive 16 to a read, the nodes' in smaller pipelines, \
         and every read and write is a system call on Redis's one thread; the measured figure is \
         the one to plan with.",
        (cost.server() - cost.client()).max(0.0),
        cost.client() - scripts,
        thousands(cap.set),
        thousands(cap.get),
        thousands(cap.eval0),
        thousands(cap.eval6),
        1e6 / cap.eval0,
        ((1e6 / cap.eval6 - 1e6 / cap.eval0) / 6.0).max(0.0),
        2e6 / (cap.set + cap.get),
        thousands(1e6 / paper),
        thousands(carried),
    ));
    let best = r
        .redis
        .iter()
        .filter_map(|c| c.async_.as_ref().ok())
        .max_by(|a, b| a.per_s().total_cmp(&b.per_s()));
    let (rate, busy) = best.map_or((f64::NAN, f64::NAN), |a| (a.per_s(), a.cpu.busy));
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let here = if busy >= 0.9 {
        format!(
            "the machine's {cores} cores were {:.0} % busy: on this machine the cores are the \
             limit (client, nodes, workers and Redis share them), and more nodes on the same \
             cores cannot raise it",
            busy * 100.0
        )
    } else {
        format!(
            "the machine's {cores} cores were only {:.0} % busy, so neither they nor Redis were \
             saturated: the rate is bound by latency (a guess: each async invocation is a chain \
             of dependent Redis calls through each node's one pipelined connection, queued \
             behind the other nodes' on Redis's one thread, and the function runs at most \
             `concurrency = 4` at a time per node)",
            busy * 100.0
        )
    };
    s.detail(format!(
        "Where the next bottleneck is: in the 1-node run a node spent {node_ms:.2} ms of CPU \
         (node process + its Python workers) per async invocation and Redis's main thread \
         {run_us:.0} µs. At the best rate measured here ({}/s) Redis's main thread used {:.2} of \
         a core and the nodes {:.2} cores; {here}. On separate machines, one Redis at {}/s keeps \
         about {:.1} cores of nodes busy; past that, Redis's single thread is the limit, and \
         Redis Cluster does not lift it: all work state (invocations, queues, jobs) shares the \
         hash slot `{{w}}`, so a cluster spreads categories, not work. The levers are fewer \
         scripts and fewer index moves per async invocation (see the scripts by SHA in the \
         by-command line above), then work slots per queue. With `appendfsync always`, Redis \
         fsyncs the AOF before answering each event-loop batch, so the rate also follows the \
         disk's fsync latency.",
        thousands(rate),
        rate * run_us / 1e6,
        rate * node_ms / 1e3,
        thousands(carried),
        carried * node_ms / 1e3,
    ));
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let per = |client: &[(&str, f64)], server: &[(&str, f64)]| Window {
        client: Counts(client.iter().map(|(c, n)| (c.to_string(), *n)).collect()),
        server: Counts(server.iter().map(|(c, n)| (c.to_string(), *n)).collect()),
        cpu_s: 20e-6,
        secs: 1.0,
    };
    let cost = |client: f64, server: f64| {
        Ok(Cost {
            units: 1000,
            per: per(
                &[("evalsha", client)],
                &[("evalsha", client), ("hset", server - client)],
            ),
            secs: 1.0,
            polls: 3,
        })
    };
    let run = |per_s: f64, nodes: usize| AsyncRun {
        n: 5000,
        secs: 5000.0 / per_s,
        accept_secs: 1.0,
        per_node: vec![5000 / nodes as u64; nodes],
        failed: 0,
        redis: Some((20.0, 30.0)),
        node_cpu_ms: 0.5,
        cpu: Usage::default(),
    };
    let sync = |per_s: f64, nodes: usize| {
        Ok(SyncRun {
            per_s,
            conns: 16,
            per_node: vec![100; nodes],
            errors: 0,
            redis: None,
        })
    };
    let config = |nodes: usize, per_s: f64, always: Option<f64>| Config {
        nodes,
        async_: Ok(run(per_s, nodes)),
        sync: sync(per_s, nodes),
        always: always.map(|a| Ok(run(a, nodes))),
    };
    let units = Units {
        idle: per(&[("evalsha", 2.0)], &[("evalsha", 2.0)]),
        metrics_poll: per(&[("hget", 3.0)], &[("hget", 3.0)]),
        queue_poll: per(&[("hget", 1.0)], &[("hget", 1.0)]),
        sync: cost(1.0, 5.0),
        async_: cost(3.5, 20.0),
        queue: cost(3.0, 18.0),
        queue_batched: cost(0.2, 2.0),
        docs: cost(1.5, 3.0),
        shard_first: cost(4.0, 10.0),
        shard_warm: Err("x".into()),
        shards: 8,
    };
    vec![section(&Results {
        units: Ok(units),
        embedded: config(1, 4000.0, None),
        redis: vec![
            config(1, 6000.0, Some(2000.0)),
            config(2, 5000.0, None),
            config(3, 4000.0, Some(1500.0)),
        ],
        celery: CeleryRuns {
            everysec: Ok(celery::Run::example(1000, 1.0)),
            always: Ok(celery::Run::example(500, 1.0)),
            cmds: Some(8.0),
        },
        capacity: Ok(Capacity {
            set: 1e6,
            get: 1e6,
            eval0: 5e5,
            eval6: 2e5,
        }),
        settings: "n".into(),
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = Resp::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn the_proxy_counts_commands_across_reads() {
        let cmd = b"*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(names(&[cmd]), ["evalsha abc -", "ping"]);
        // Split anywhere, even inside the name and a CRLF.
        for at in 1..cmd.len() {
            assert_eq!(
                names(&[&cmd[..at], &cmd[at..]]),
                ["evalsha abc -", "ping"],
                "{at}"
            );
        }
        // A large argument with CRLFs and stars inside is skipped whole.
        let body = "*2\r\n$4\r\n".repeat(100);
        let big = format!(
            "*3\r\n$4\r\nHSET\r\n$3\r\nk:1\r\n${}\r\n{body}\r\nPING\r\n",
            body.len()
        );
        assert_eq!(names(&[big.as_bytes()]), ["hset k:1", "ping"]);
        let script = b"*5\r\n$7\r\nevalsha\r\n$40\r\n0123456789012345678901234567890123456789\r\n\
            $1\r\n1\r\n$27\r\nshoal:{w}:inv:0193aa12-77bc\r\n$1\r\nx\r\n";
        assert_eq!(names(&[script]), ["evalsha 01234567 shoal:{w}:inv:*"]);
    }

    #[test]
    fn replies_are_read_whole() {
        assert_eq!(parse_reply(b"+OK\r\n").unwrap(), Some("OK".into()));
        assert_eq!(parse_reply(b"$5\r\nab").unwrap(), None);
        assert_eq!(
            parse_reply(b"$5\r\nab\r\nc\r\n").unwrap(),
            Some("ab\r\nc".into())
        );
        assert!(parse_reply(b"-ERR no\r\n").is_err());
    }

    #[test]
    fn windows_subtract_the_idle_traffic() {
        let c = |n: f64| Counts([("evalsha".to_string(), n)].into_iter().collect());
        let w = Window {
            server: c(100.0),
            client: c(50.0),
            cpu_s: 1.0,
            secs: 2.0,
        };
        let idle = Window {
            server: c(4.0),
            client: c(2.0),
            cpu_s: 0.1,
            secs: 1.0,
        };
        let net = w.minus(&idle, 2.0).scaled(0.1);
        assert!((net.client.total() - 4.6).abs() < 1e-9);
        assert!((net.server.total() - 9.2).abs() < 1e-9);
        assert_eq!(net.client.top(3), "EVALSHA 4.60");
        let labelled = Counts(
            [
                ("evalsha ab k:*".to_string(), 2.0),
                ("hget k".to_string(), 0.001),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(labelled.top(3), "EVALSHA `ab k:*` 2.00, HGET `k` 0.0010");
        assert_eq!(labelled.by_command().top(3), "EVALSHA 2.00, HGET 0.0010");
        assert_eq!(labelled.scripts(), 2.0);
    }

    #[test]
    fn figures_read_as_measured() {
        let s = &examples()[0];
        let cell = |id: &str| {
            s.figures
                .iter()
                .find(|f| f.id == id)
                .map(|f| f.judged().0)
                .unwrap()
        };
        assert!(
            cell("cluster.cmds_async").starts_with("3.50 commands (20.00 with the calls"),
            "{}",
            cell("cluster.cmds_async")
        );
        assert!(
            cell("cluster.async_2").starts_with("Shoal 5,000/s vs Celery 1,000/s: 5.00×"),
            "{}",
            cell("cluster.async_2")
        );
        assert!(
            cell("cluster.async_always").contains("best with 1 node(s)"),
            "{}",
            cell("cluster.async_always")
        );
    }
}
