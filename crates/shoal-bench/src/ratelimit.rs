//! Rate-limit accuracy against a strict vendor: the mock vendor API of
//! `examples/vendor-pipeline/vendor.py` answers 429 to any request beyond
//! `--limit` in any one-second window, and reports what it saw (`/_stats`).
//!
//! The node gets a limiter of the same rate (`burst` 1) and a queue whose
//! subscriber calls the vendor once per message (the URL is in the body).
//! `m` messages are sent at once, enough for `seconds` at the limit; the
//! phase waits until all are acked and reads the vendor's figures: its peak
//! over any 1-second window (must be ≤ the limit), its mean accepted rate
//! from the first to the last request (must be ≥ 0.9 × the limit) and the
//! 429s (must be none). Nothing runs before the timed messages, so the
//! vendor's counts are exactly those calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use shoal_client::protocol::PutQueue;

use crate::cpu::Usage;
use crate::functions::VENDOR_CALL;
use crate::http::Target;
use crate::phases::Ctx;
use crate::queue::wait_acked;

const NAME: &str = "bench-vendor";
/// The vendor script, relative to the repository root.
const VENDOR: &str = "examples/vendor-pipeline/vendor.py";

pub struct Plan {
    /// Requests per second: the vendor's limit and the limiter's rate.
    pub limit: u32,
    /// How long the messages last at the limit.
    pub seconds: u32,
}

impl Plan {
    pub fn messages(&self) -> usize {
        (self.limit * self.seconds) as usize
    }
}

pub struct RateLimit {
    pub limit: u32,
    pub messages: usize,
    pub concurrency: u32,
    /// From the send until every message was acked.
    pub total_s: f64,
    pub timed_out: bool,
    /// The vendor's `/_stats`.
    pub requests: u64,
    pub ok: u64,
    pub too_many: u64,
    pub peak_1s: u64,
    pub peak_accepted_1s: u64,
    /// Accepted requests per second between the first and the last.
    pub mean_rate: f64,
    pub cpu: Usage,
}

impl RateLimit {
    pub fn share(&self) -> f64 {
        self.mean_rate / f64::from(self.limit)
    }
}

/// Where `vendor.py` is: under the current directory (`scripts/bench` runs
/// from the repository root), else next to this crate's sources.
fn vendor_script() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(VENDOR),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(VENDOR),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| format!("{VENDOR} not found (run from the repository root)"))
}

/// The vendor process; killed on drop.
struct Vendor {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

async fn start_vendor(limit: u32) -> Result<Vendor> {
    let script = vendor_script()?;
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--port", "0", "--limit", &limit.to_string()])
        .args(["--fail-rate", "0", "--broken-every", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting python3 {}", script.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| anyhow!("the vendor did not start within 20 s"))??
        .context("the vendor exited before listening")?;
    let addr = line
        .strip_prefix("listening on http://")
        .with_context(|| format!("unexpected first line from the vendor: {line:?}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing the vendor's address in {line:?}"))?;
    Ok(Vendor {
        _child: child,
        addr,
    })
}

pub async fn run(ctx: &Ctx, plan: &Plan, limit: Duration) -> Result<RateLimit> {
    let vendor = start_vendor(plan.limit).await?;
    ctx.client
        .put_limiter(NAME, f64::from(plan.limit), Some(1))
        .await
        .context("creating the limiter")?;
    ctx.client
        .put_queue(NAME, &PutQueue::default())
        .await
        .context("creating the queue")?;
    let deployed = VENDOR_CALL
        .deploy(&ctx.client, &ctx.scratch, NAME, None)
        .await?;
    let concurrency = deployed.concurrency;
    let m = plan.messages();
    let url = format!("http://{}/troops", vendor.addr);
    let one = serde_json::to_string(&serde_json::json!({ "body": { "url": url } }))?;
    let body = format!("{{\"messages\":[{}]}}", vec![one; m].join(","));
    let mut conn = ctx.target.connect().await?;
    let path = format!("/v1/queues/{NAME}/messages");
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let reply = conn.post(&path, body.as_bytes()).await?;
    if !reply.is_success() {
        bail!(
            "sending answered HTTP {}: {}",
            reply.status,
            reply.body_text()
        );
    }
    let (counters, timed_out) = wait_acked(&mut conn, NAME, m as u64, t, limit).await?;
    let total_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    if counters.dead_lettered > 0 {
        bail!(
            "{} messages were dead-lettered (the handler failed)",
            counters.dead_lettered
        );
    }
    let mut vconn = Target::new(vendor.addr, "unused")?.connect().await?;
    let reply = vconn.get("/_stats").await?;
    if !reply.is_success() {
        bail!("the vendor's /_stats answered HTTP {}", reply.status);
    }
    let stats: Value = serde_json::from_slice(reply.body).context("reading /_stats")?;
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    Ok(RateLimit {
        limit: plan.limit,
        messages: m,
        concurrency,
        total_s,
        timed_out,
        requests: n("requests"),
        ok: n("ok"),
        too_many: n("too_many"),
        peak_1s: n("peak_1s"),
        peak_accepted_1s: n("peak_accepted_1s"),
        mean_rate: stats["mean_rate"].as_f64().unwrap_or(f64::NAN),
        cpu,
    })
}
