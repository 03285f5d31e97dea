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
    /// Serving TLS only, with a certificate signed by `ca.crt` in `dir`.
    tls: bool,
}

impl RedisServer {
    /// Starts a server with `extra` arguments after the defaults (a later
    /// `--appendonly no` wins).
    pub fn start(extra: &[&str]) -> RedisServer {
        RedisServer::start_with(extra, false)
    }

    /// Starts a server that speaks only TLS (`rediss://`), with a
    /// certificate for 127.0.0.1 signed by a certificate authority of its
    /// own ([`ca_file`](Self::ca_file)), made with the `openssl` command.
    pub fn start_tls(extra: &[&str]) -> RedisServer {
        RedisServer::start_with(extra, true)
    }

    fn start_with(extra: &[&str], tls: bool) -> RedisServer {
        let mut dir = tempfile::tempdir().expect("a temporary directory");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..20 {
            let port = free_port();
            if tls {
                make_certificates(dir.path());
                let d = dir.path().display();
                args = [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    &format!("{d}/server.crt"),
                    "--tls-key-file",
                    &format!("{d}/server.key"),
                    "--tls-ca-cert-file",
                    &format!("{d}/ca.crt"),
                    "--tls-auth-clients",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(extra.iter().map(|s| s.to_string()))
                .collect();
            }
            let child = spawn(dir.path(), port, &args);
            let mut server = RedisServer {
                child,
                port,
                args: args.clone(),
                dir,
                tls,
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

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The certificate authority of a TLS server.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.crt"))
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
            ca_file: self.ca_file(),
            blob_cache_dir: None,
            blob_cache_bytes: crate::DEFAULT_BLOB_CACHE_BYTES,
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
            if self.tls {
                if tls_ready(self.port, self.dir.path()) {
                    return true;
                }
            } else if let Some(dir) = config_dir(self.port, password.map(String::as_str))
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

/// Whether the TLS server on `port` answers with `dir` as its directory
/// (asked with `redis-cli --tls`, from Debian's redis-tools).
fn tls_ready(port: u16, dir: &Path) -> bool {
    let Ok(out) = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(dir.join("ca.crt"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "config",
            "get",
            "dir",
        ])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let ours = std::fs::canonicalize(dir).unwrap_or(dir.into());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| Path::new(l.trim()) == ours)
}

/// A certificate authority (`ca.crt`) and a certificate for 127.0.0.1
/// signed by it (`server.crt`, `server.key`), in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (scripts/test installs it): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write san.cnf");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=shoal test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
