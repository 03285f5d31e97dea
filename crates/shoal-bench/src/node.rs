//! Starts a real `shoal serve` on a free loopback port with a fresh data
//! directory, the way the end-to-end tests do, and stops it on drop. The
//! query benchmarks restart it on the same data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

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
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
