//! The Celery side of the queue figures: a `redis-server` of its own on a
//! free loopback port (Celery's broker), and `baselines/celery_baseline.py`
//! run from the bench venv's Python, which prints its figures as one JSON
//! line.
//!
//! Redis runs without persistence (`--save '' --appendonly no`): Celery's
//! fastest setting, so the comparison is against Celery at its best. Shoal
//! fsyncs every batch it accepts and every ack; Redis writes nothing to disk.
//! (With `--appendonly yes --appendfsync always`, the setting that would
//! match Shoal's durability, kombu's one-command-per-message publishing
//! waits for an fsync per message: in a trial on the 2-core machine Celery
//! then ran about 200 tasks/s instead of about 500-600.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cpu::Usage;
use crate::functions::CELERY_BASELINE;
use crate::node;

/// How Redis is configured, for the report.
pub const REDIS_SETTINGS: &str = "`--save '' --appendonly no` (no persistence)";

/// Celery's figures (either mode), from the script's JSON.
pub struct Run {
    pub n: usize,
    pub send_s: f64,
    /// Broker alone: consuming and acking.
    pub drain_s: Option<f64>,
    pub total_s: f64,
    pub version: String,
    /// Filled in by the caller, who knows the node.
    pub cpu: Usage,
}

impl Run {
    pub fn per_s(&self) -> f64 {
        self.n as f64 / self.total_s
    }

    #[cfg(test)]
    pub fn example(n: usize, total_s: f64) -> Run {
        Run {
            n,
            send_s: total_s / 2.0,
            drain_s: Some(total_s / 2.0),
            total_s,
            version: "Celery 5".into(),
            cpu: Usage::default(),
        }
    }
}

/// A `redis-server` started by the bench; stopped on drop.
pub struct Redis {
    child: Child,
    pub url: String,
    pub port: u16,
    log: PathBuf,
}

impl Redis {
    /// Starts `binary` on a free loopback port with its files in `dir`, and
    /// waits until it answers `PING`; without persistence (`REDIS_SETTINGS`).
    pub async fn start(binary: &Path, dir: &Path) -> Result<Redis> {
        Redis::start_with(binary, dir, &["--save", "", "--appendonly", "no"]).await
    }

    /// `start` with these persistence settings instead (e.g. `--appendonly
    /// yes --appendfsync everysec`).
    pub async fn start_with(binary: &Path, dir: &Path, settings: &[&str]) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let log = dir.join("redis.log");
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(settings)
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--databases", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = redis.child.try_wait() {
                bail!(
                    "redis-server exited ({status}); its log:\n{}",
                    redis.log_tail()
                );
            }
            if ping(port).await.is_ok() {
                return Ok(redis);
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer PING within 20 s; its log:\n{}",
                    redis.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        node::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 10)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        node::terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn ping(port: u16) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await??;
    if buf[..n].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(anyhow!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..n])
        ))
    }
}

/// Runs `n` Celery tasks (`mode` `tasks`) or kombu messages (`broker`) on
/// `redis` and reads what the script measured.
pub async fn run(
    python: &Path,
    dir: &Path,
    mode: &str,
    redis: &Redis,
    n: usize,
    limit: Duration,
) -> Result<Run> {
    let v = run_script(python, dir, mode, &redis.url, n, limit).await?;
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("the Celery baseline's answer lacks {k}: {v}"))
    };
    let ran = v["n"].as_u64().unwrap_or(0) as usize;
    if ran != n {
        bail!("the Celery baseline ran {ran} of {n}");
    }
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    Ok(Run {
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
        cpu: Usage::default(),
    })
}

/// Runs `celery_baseline.py MODE --broker URL --n N` with `python`; returns
/// the JSON line it printed. Its stderr goes to `dir/celery.log`. The script
/// runs in its own process group (the worker it starts too), which is
/// killed when it is done or has taken longer than `limit`.
async fn run_script(
    python: &Path,
    dir: &Path,
    mode: &str,
    broker: &str,
    n: usize,
    limit: Duration,
) -> Result<Value> {
    std::fs::create_dir_all(dir)?;
    let (file, text) = CELERY_BASELINE;
    let script = dir.join(file);
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    let log_path = dir.join("celery.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(mode)
        .args(["--broker", broker, "--n", &n.to_string()])
        .args(["--limit", &limit.as_secs().to_string()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {file}", python.display()))?;
    let pid = child.id().unwrap_or(0);
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut out = String::new();
    let ran = tokio::time::timeout(limit + Duration::from_secs(30), async {
        stdout.read_to_string(&mut out).await?;
        child.wait().await
    })
    .await;
    // The worker, if the script left it behind.
    if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let tail = || node::tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 8);
    let status = match ran {
        Ok(r) => r.context("waiting for the Celery baseline")?,
        Err(_) => bail!(
            "the Celery baseline ({mode}) took more than {limit:?}; its log ends:\n{}",
            tail()
        ),
    };
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match (status.success(), line) {
        (true, Some(l)) => serde_json::from_str(l).with_context(|| format!("reading {l:?}")),
        _ => bail!(
            "the Celery baseline ({mode}) failed ({status}); its log ends:\n{}",
            tail()
        ),
    }
}
