//! `TestNode`: a real `shoal serve` on a free loopback port with its own data
//! directory, plus helpers to deploy test functions. Shared by the
//! end-to-end tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_client::Client;

pub struct TestNode {
    pub data_dir: PathBuf,
    pub url: String,
    pub token: String,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

impl TestNode {
    /// Starts a node on a fresh data directory.
    pub fn start() -> TestNode {
        TestNode::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestNode {
        TestNode::start_in(extra, |_| {})
    }

    /// Starts a node on a copy of the data directory `fixture`.
    pub fn start_on_copy_of(fixture: &Path) -> TestNode {
        TestNode::start_in(&[], |data_dir| copy_dir(fixture, data_dir))
    }

    /// Starts a node on a new temporary data directory, prepared by `prepare`.
    ///
    /// The data directory is outside the system's temporary directory, and
    /// functions may write there (`--sandbox-allow-write`), as tests record
    /// what functions did in temporary files; the data directory stays out
    /// of their reach, as the sandbox tests check.
    fn start_in(extra: &[&str], prepare: impl FnOnce(&Path)) -> TestNode {
        let tmp = tempfile::tempdir_in(data_root()).expect("tempdir");
        let data_dir = tmp.path().join("data");
        prepare(&data_dir);
        let shared = std::env::temp_dir()
            .canonicalize()
            .expect("the temporary directory");
        let mut extra_args = vec![
            "--sandbox-allow-write".to_string(),
            shared.display().to_string(),
        ];
        extra_args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = TestNode {
            data_dir,
            url: String::new(),
            token: String::new(),
            child: None,
            _tmp: Some(tmp),
            extra_args,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("SHOAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn shoal serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            assert!(Instant::now() < deadline, "node did not start in time");
            let line = lines
                .next()
                .expect("node exited before listening")
                .expect("read node stdout");
            if let Some(rest) = line.strip_prefix("Shoal listening on ") {
                break rest.trim().to_string();
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.token = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin token file")
            .trim()
            .to_string();
        self.child = Some(child);
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.token)).expect("client")
    }

    pub fn client_with(&self, token: Option<&str>) -> Client {
        Client::new(&self.url, token).expect("client")
    }

    /// `kill -9` the node, then start it again on the same data directory.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill -TERM");
        child.wait().expect("wait")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs the `shoal` CLI against this node.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_URL", &self.url)
            .env("SHOAL_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shoal");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("shoal output")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes a function directory with `shoal.toml` and `main.py` under a temp
/// dir and returns it (keep the TempDir alive while using the path).
pub fn function_dir(manifest: &str, main_py: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shoal.toml"), manifest).expect("write manifest");
    std::fs::write(dir.path().join("main.py"), main_py).expect("write main.py");
    dir
}

/// Deploys a function made of `manifest` and `main_py`.
pub async fn deploy(
    client: &Client,
    manifest: &str,
    main_py: &str,
) -> shoal_client::protocol::FunctionView {
    let dir = function_dir(manifest, main_py);
    client
        .deploy(shoal_client::pack_dir(dir.path()).expect("pack"))
        .await
        .expect("deploy")
}

/// Where test nodes keep their data: the target directory's temporary
/// directory, unless that lies inside the system's (then a directory beside).
fn data_root() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let system = std::env::temp_dir()
        .canonicalize()
        .unwrap_or_else(|_| std::env::temp_dir());
    let root = if target.starts_with(&system) {
        PathBuf::from("/var/tmp/shoal-test-nodes")
    } else {
        target.join("nodes")
    };
    std::fs::create_dir_all(&root).expect("test node directory");
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// Fails unless Debian's headless Chromium, its chromedriver and the
/// selenium Python package are there (the browser tests' needs;
/// `scripts/test` installs them).
pub fn require_browser() {
    for (what, path) in [
        ("chromium (apt: chromium)", "/usr/bin/chromium"),
        (
            "chromedriver (apt: chromium-driver)",
            "/usr/bin/chromedriver",
        ),
    ] {
        assert!(
            Path::new(path).exists(),
            "{what} is missing at {path}; scripts/test installs it"
        );
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .expect("python3");
    assert!(
        selenium.success(),
        "the Python package selenium is missing; scripts/test installs it"
    );
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Polls an invocation until it reaches a final state.
pub async fn wait_final(
    client: &Client,
    id: &str,
    within: Duration,
) -> shoal_client::protocol::InvocationView {
    let deadline = Instant::now() + within;
    loop {
        let inv = client.invocation(id).await.expect("invocation");
        if matches!(
            inv.status.as_str(),
            "succeeded" | "failed" | "timed_out" | "cancelled"
        ) {
            return inv;
        }
        assert!(
            Instant::now() < deadline,
            "invocation {id} still {} after {within:?}",
            inv.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a job until it is `finished` or `cancelled`.
pub async fn wait_job(
    client: &Client,
    id: &str,
    within: Duration,
) -> shoal_client::protocol::JobView {
    let deadline = Instant::now() + within;
    loop {
        let job = client.job(id).await.expect("job");
        if matches!(job.status.as_str(), "finished" | "cancelled") {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still {} after {within:?}: {:?}",
            job.status,
            job.counts
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `done` every 20 ms until it holds; fails the test after `within`.
pub async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing of `function`'s asynchronous invocations is waiting
/// or in flight (from `/metrics`): after that, none of them can run again.
/// This is how a test shows that something ran *once*, without sleeping.
pub async fn wait_async_drained(c: &Client, function: &str) {
    let label = format!("function=\"{function}\"");
    until(
        &format!("{function}'s asynchronous queue drained"),
        Duration::from_secs(30),
        async || {
            let Ok(text) = c.get_text("/metrics").await else {
                return false;
            };
            let depth = |state: &str| {
                text.lines()
                    .filter(|l| l.starts_with("shoal_queue_depth{"))
                    .filter(|l| l.contains(&label) && l.contains(&format!("state=\"{state}\"")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .next()
            };
            depth("waiting") == Some(0.0) && depth("in_flight") == Some(0.0)
        },
    )
    .await;
}
