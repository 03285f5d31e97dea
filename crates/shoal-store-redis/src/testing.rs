//! A real `redis-server` for tests (feature `testing`): Debian's package,
//! which `scripts/test` installs. Each server runs on a free loopback port
//! with its own directory, and is stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Options;

/// A `redis-server` of the test's own (AOF on, `noeviction`, no snapshots
/// unless `extra` says otherwise); killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with `extra` arguments after the defaults (a later
    /// `--appendonly no` wins).
    pub fn start(extra: &[&str]) -> RedisServer {
        let mut dir = tempfile::tempdir().expect("a temporary directory");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..20 {
            let port = free_port();
            let child = spawn(dir.path(), port, &args);
            let mut server = RedisServer {
                child,
                port,
                args: args.clone(),
                dir,
            };
            if server.wait_ready() {
                return server;
            }
            // Another process took the port first: try another.
            let _ = server.child.kill();
            let _ = server.child.wait();
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("redis-server did not start on any of 20 free ports");
    }

    /// Kills the server (SIGKILL: what it acknowledged survives only through
    /// its append-only file).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and directory (after
    /// [`kill`](Self::kill)), loading its append-only file.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn(self.dir.path(), self.port, &self.args);
            if self.wait_ready() {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's directory (its append-only file is under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Options for a store on this server, in namespace `shoal-test`.
    pub fn options(&self) -> Options {
        Options {
            url: self.url(),
            namespace: "shoal-test".into(),
        }
    }

    /// True once this very server answers on its port (its `dir` is ours);
    /// false when it exited (the port was taken) or did not answer in 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = std::fs::canonicalize(self.dir.path()).unwrap_or(self.dir.path().into());
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let password = self
                .args
                .iter()
                .position(|a| a == "--requirepass")
                .and_then(|i| self.args.get(i + 1));
            if let Some(dir) = config_dir(self.port, password.map(String::as_str))
                && dir == ours
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, port: u16, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "yes"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server (scripts/test installs Debian's redis-server): {e}")
        })
}

/// The `dir` of the server on `port`, asked in raw RESP (no client needed).
fn config_dir(port: u16, password: Option<&str>) -> Option<PathBuf> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut lines = 5;
    if let Some(p) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len());
        stream.write_all(auth.as_bytes()).ok()?;
        lines += 1;
    }
    stream
        .write_all(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$3\r\ndir\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // (+OK) *2 $3 dir $N <path>: five lines after the AUTH answer.
    while reply.iter().filter(|&&b| b == b'\n').count() < lines {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(reply).ok()?;
    text.lines().nth(lines - 1).map(PathBuf::from)
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
