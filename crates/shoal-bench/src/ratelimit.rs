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
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use shoal_client::Client;
use shoal_client::protocol::{PutQueue, SendMessage};

use crate::cpu::Usage;
use crate::functions::VENDOR_CALL;
use crate::node::Ctx;
use crate::queue::wait_acked;
use crate::report::{Figure, Section};
use crate::stats::thousands;

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

struct RateLimit {
    limit: u32,
    messages: usize,
    concurrency: u32,
    /// From the send until every message was acked.
    total_s: f64,
    timed_out: bool,
    /// The vendor's `/_stats`.
    requests: u64,
    ok: u64,
    too_many: u64,
    peak_1s: u64,
    peak_accepted_1s: u64,
    /// Accepted requests per second between the first and the last.
    mean_rate: f64,
    cpu: Usage,
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

pub async fn run(ctx: &Ctx, plan: &Plan, limit: Duration) -> Result<Section> {
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
        .deploy(&ctx.client, &ctx.scratch, NAME, None, &[])
        .await?;
    let concurrency = deployed.concurrency;
    let m = plan.messages();
    let url = format!("http://{}/troops", vendor.addr);
    let message = SendMessage {
        body: json!({ "url": url }),
        delay: None,
        dedup_id: None,
    };
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    ctx.client.send(NAME, vec![message; m]).await?;
    let (counters, timed_out) = wait_acked(&ctx.client, NAME, m as u64, t, limit).await?;
    let total_s = t.elapsed().as_secs_f64();
    let cpu = cpu0.usage_until(&ctx.cpu());
    if counters.dead_lettered > 0 {
        bail!(
            "{} messages were dead-lettered (the handler failed)",
            counters.dead_lettered
        );
    }
    let vendor = Client::new(&format!("http://{}", vendor.addr), None)?;
    let stats = vendor
        .get_text("/_stats")
        .await
        .context("the vendor's /_stats")?;
    let stats: Value = serde_json::from_str(&stats).context("reading /_stats")?;
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    Ok(section(&RateLimit {
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
    }))
}

fn section(r: &RateLimit) -> Section {
    let limit = f64::from(r.limit);
    let m = thousands(r.messages as f64);
    let late = "not all acked before the time limit";
    let mut s = Section::new("ratelimit");
    s.add(
        Figure::new("ratelimit.peak", r.peak_1s as f64)
            .vs(Ok(limit))
            .setting(format!(
                "it allows {}/s; limiter {}/s, burst 1; {m} queue messages, one vendor call \
                 each, subscriber concurrency {}",
                r.limit, r.limit, r.concurrency
            ))
            .flaw_if(r.timed_out, late),
    );
    s.add(
        Figure::new("ratelimit.rejected", r.too_many as f64)
            .paren(format!("of {} requests", thousands(r.requests as f64))),
    );
    s.add(
        Figure::new("ratelimit.rate", r.mean_rate)
            .vs(Ok(limit))
            .setting(format!("{m} calls"))
            .flaw_if(r.timed_out, late),
    );
    s.detail(format!(
        "Rate limit: `examples/vendor-pipeline/vendor.py --limit {} --fail-rate 0 --broken-every \
         0` saw {} requests ({} ok, {} × 429), at most {} in any 1 s window ({} accepted); {m} \
         messages were sent at once and all acked {:.2} s later{}. The handler GETs the URL in \
         its message with urllib and returns the status (a 429 is not retried, so the vendor \
         counts each message once).",
        r.limit,
        thousands(r.requests as f64),
        thousands(r.ok as f64),
        thousands(r.too_many as f64),
        r.peak_1s,
        r.peak_accepted_1s,
        r.total_s,
        if r.timed_out {
            " (NOT all acked before the time limit)"
        } else {
            ""
        }
    ));
    s.cpu("rate limit", &r.cpu);
    s
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    vec![section(&RateLimit {
        limit: 50,
        messages: 600,
        concurrency: 4,
        total_s: 12.5,
        timed_out: false,
        requests: 600,
        ok: 599,
        too_many: 1,
        peak_1s: 51,
        peak_accepted_1s: 50,
        mean_rate: 47.0,
        cpu: Usage::default(),
    })]
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_read_as_measured() {
        let s = &super::examples()[0];
        let cells: Vec<String> = s.figures.iter().map(|f| f.judged().0).collect();
        assert_eq!(
            cells,
            [
                "Shoal 51/s vs the limit 50/s: 1.02×",
                "1 (of 600 requests)",
                "Shoal 47/s vs the limit 50/s: 0.94×",
            ]
        );
    }
}
