//! Starts a real `shoal serve` on a free loopback port with a fresh data
//! directory, the way the end-to-end tests do, and stops it on drop. The
//! query benchmarks restart it on the same data directory. `Ctx` is what a
//! phase gets of a running node.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use shoal_client::Client;

use crate::cpu::Snapshot;
use crate::http::Target;

pub struct Node {
    pub addr: SocketAddr,
    pub url: String,
    pub token: String,
    pub log_path: PathBuf,
    child: Child,
    shoal: PathBuf,
    dir: PathBuf,
    log_filter: String,
}

/// What every phase needs of a running node.
pub struct Ctx {
    /// For the phases that drive the node at full rate (`http.rs`).
    pub target: Target,
    pub client: Client,
    pub node_pid: u32,
    /// Where function directories are written before deploys.
    pub scratch: PathBuf,
    /// False for the build of `--compare-shoal`: a figure that does not
    /// depend on the node's binary is measured on the first build only.
    pub primary: bool,
}

impl Ctx {
    /// A context for `node`, whose function directories go under its own
    /// directory.
    pub fn for_node(node: &Node, primary: bool) -> Result<Ctx> {
        Ok(Ctx {
            target: Target::new(node.addr, &node.token)?,
            client: Client::new(&node.url, Some(&node.token))?,
            node_pid: node.pid(),
            scratch: node.dir.join("functions"),
            primary,
        })
    }

    pub fn cpu(&self) -> Snapshot {
        Snapshot::take(self.node_pid)
    }
}

impl Node {
    /// Starts `shoal serve --listen 127.0.0.1:0 --data-dir DIR/data` plus
    /// `extra` arguments; the node's stderr is appended to `DIR/node.log`.
    pub fn start(shoal: &Path, dir: &Path, log_filter: &str, extra: &[String]) -> Result<Node> {
        let data_dir = dir.join("data");
        let log_path = dir.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = Command::new(shoal)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--shutdown-deadline")
            .arg("5s")
            .args(extra)
            .env("SHOAL_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `cargo build --release -p shoal`)",
                    shoal.display()
                )
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("Shoal listening on ") {
                    let _ = tx.send(rest.trim().to_string());
                    break;
                }
            }
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "the node did not start listening within 60 s; its log:\n{}",
                    tail(&log, 40)
                );
            }
        };
        let addr: SocketAddr = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("unexpected listen line {url:?}"))?
            .parse()
            .with_context(|| format!("parsing the listen address in {url:?}"))?;
        let token_path = data_dir.join("admin.token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?
            .trim()
            .to_string();
        Ok(Node {
            addr,
            url,
            token,
            log_path,
            child,
            shoal: shoal.to_path_buf(),
            dir: dir.to_path_buf(),
            log_filter: log_filter.to_string(),
        })
    }

    /// Stops the node with SIGTERM, as an operator would, and starts it
    /// again on the same data directory with `extra` arguments (its address
    /// changes). Returns how long the stop and the start took.
    pub fn restart(&mut self, extra: &[String]) -> Result<(Duration, Duration)> {
        let t = Instant::now();
        if !self.stop(Duration::from_secs(30)) {
            bail!("the node did not stop within 30 s of SIGTERM (killed)");
        }
        let stopped = t.elapsed();
        let t = Instant::now();
        let (shoal, dir, filter) = (
            self.shoal.clone(),
            self.dir.clone(),
            self.log_filter.clone(),
        );
        *self = Node::start(&shoal, &dir, &filter, extra)?;
        Ok((stopped, t.elapsed()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. True when
    /// it exited without the SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> bool {
        terminate(&mut self.child, grace)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// `(succeeded, not succeeded)` invocations of `function` so far, in `mode`
/// (`async`, `queue`, ...) or any, from the node's `/metrics`.
pub async fn invocations(
    client: &Client,
    function: &str,
    mode: Option<&str>,
) -> Result<(u64, u64)> {
    let text = client.get_text("/metrics").await?;
    Ok(count_invocations(&text, function, mode))
}

fn count_invocations(metrics: &str, function: &str, mode: Option<&str>) -> (u64, u64) {
    let function = format!("function=\"{function}\"");
    let mode = mode.map(|m| format!("mode=\"{m}\""));
    let (mut ok, mut other) = (0, 0);
    for line in metrics.lines() {
        let Some((labels, value)) = line
            .strip_prefix("shoal_invocations_total{")
            .and_then(|r| r.split_once('}'))
        else {
            continue;
        };
        let has = |l: &str| labels.split(',').any(|x| x == l);
        if !has(&function) || mode.as_deref().is_some_and(|m| !has(m)) {
            continue;
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        if has("outcome=\"succeeded\"") {
            ok += n;
        } else {
            other += n;
        }
    }
    (ok, other)
}

/// Stops a child process: SIGTERM, then SIGKILL if it has not exited within
/// `grace`. True when it exited without the SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_invocations_of_one_function() {
        let text = "\
# TYPE shoal_invocations_total counter
shoal_invocations_total{function=\"q\",mode=\"async\",outcome=\"succeeded\"} 1500
shoal_invocations_total{function=\"q\",mode=\"sync\",outcome=\"succeeded\"} 3
shoal_invocations_total{function=\"q\",mode=\"async\",outcome=\"raised\"} 2
shoal_invocations_total{function=\"q2\",mode=\"async\",outcome=\"succeeded\"} 99
";
        assert_eq!(count_invocations(text, "q", Some("async")), (1500, 2));
        assert_eq!(count_invocations(text, "q", None), (1503, 2));
        assert_eq!(count_invocations("", "q", None), (0, 0));
    }
}
