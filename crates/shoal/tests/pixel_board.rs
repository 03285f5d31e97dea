//! The pixel board (`examples/pixel-board`) in a real browser: a node on the
//! embedded store, the example deployed by its `run.sh`, then two headless
//! Chromium pages driven by `fixtures/pixel_board_browser.py` (selenium).
//! Pixels placed in one page show in the other within a second; the node is
//! killed with `kill -9` and restarted on the same data directory and port
//! while both pages stay open; pixels placed as it comes back reach both
//! pages from the channel's history (no reset: it survives the kill); both
//! pages end with the server's board (checksums equal). This test then checks the board's blob itself: every
//! pixel the script placed, in its last colour, and the same CRC-32.
//!
//! Needs Debian's `chromium` and `chromium-driver` and the `selenium` Python
//! package (`scripts/test` installs them). Screenshots go to
//! `docs/screenshots/pixel-board-*.png`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_client::Client;

use common::repo_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_follow_the_board_through_a_kill_9() {
    common::require_browser();

    let mut node = FixedPortNode::start();
    deploy_example(&node);

    let shots = repo_root().join("docs/screenshots");
    std::fs::create_dir_all(&shots).expect("docs/screenshots");
    let mut browser = Command::new("python3")
        .arg(repo_root().join("crates/shoal/tests/fixtures/pixel_board_browser.py"))
        .arg("--url")
        .arg(&node.url)
        .arg("--token")
        .arg(&node.token)
        .arg("--screenshots")
        .arg(&shots)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run pixel_board_browser.py");
    let mut to_script = browser.stdin.take().expect("stdin");
    let from_script = BufReader::new(browser.stdout.take().expect("stdout"));

    // The script asks for the kill and the restart; its last line is RESULT.
    let mut result = None;
    let mut killed = false;
    for line in from_script.lines() {
        let line = line.expect("read the script's stdout");
        match line.as_str() {
            "KILL" => {
                node.kill9();
                killed = true;
            }
            "START" => node.spawn(),
            other => match other.strip_prefix("RESULT ") {
                Some(json) => {
                    result = Some(serde_json::from_str::<Value>(json).expect("RESULT json"));
                    continue;
                }
                None => panic!("unexpected line from the browser script: {other}"),
            },
        }
        writeln!(to_script, "OK").expect("answer the script");
    }
    let status = browser.wait().expect("wait for the browser script");
    assert!(
        status.success(),
        "the browser script failed ({status}); its stderr is above"
    );
    assert!(killed, "the script never asked for the kill -9");
    let result = result.expect("the script printed no RESULT");

    // The board as the node stores it, checked independently of the page and
    // of the functions: every placed pixel, and the checksum both pages had.
    let board = node
        .client()
        .blob_bytes("pixel-board/board", None)
        .await
        .expect("the board's blob");
    assert_eq!(board.len(), 500_000);
    let placed = result["placed"].as_array().expect("placed");
    assert!(placed.len() > 1000, "only {} pixels placed", placed.len());
    for p in placed {
        let (x, y, c) = (
            p[0].as_u64().unwrap(),
            p[1].as_u64().unwrap(),
            p[2].as_u64().unwrap(),
        );
        assert_eq!(
            pixel(&board, x, y),
            c,
            "pixel ({x}, {y}) of the stored board"
        );
    }
    let crc = format!("{:08x}", crc32(&board));
    assert_eq!(result["server_crc32"], Value::from(crc.clone()));
    assert_eq!(result["page_crc32"], serde_json::json!([crc, crc]));
    for name in [
        "pixel-board-a.png",
        "pixel-board-b.png",
        "pixel-board-reconnecting.png",
        "pixel-board-after-restart.png",
    ] {
        let len = std::fs::metadata(shots.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "screenshot {name}: {len} bytes");
    }
}

/// Runs `examples/pixel-board/run.sh` against the node, which deploys the
/// secret, both functions, the site and the channel's settings.
fn deploy_example(node: &FixedPortNode) {
    let out = Command::new("bash")
        .arg(repo_root().join("examples/pixel-board/run.sh"))
        .env("SHOAL", env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .current_dir(node.data_dir.parent().expect("parent"))
        .output()
        .expect("run run.sh");
    assert!(
        out.status.success(),
        "examples/pixel-board/run.sh failed ({}): it needs function routes, \
         `shoal sites deploy` and `PUT /v1/channels/NAME`\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pixel `(x, y)` of a 4-bit board: even pixels are high nibbles.
fn pixel(board: &[u8], x: u64, y: u64) -> u64 {
    let i = (y * 1000 + x) as usize;
    let b = board[i / 2];
    u64::from(if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0x0f
    })
}

/// CRC-32 (IEEE, zlib's), as the page and `GET /api/checksum` compute it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A `shoal serve` that comes back on the same port after a `kill -9`, so
/// the pages open on it reconnect to the same origin (`TestNode` restarts
/// on a new port).
struct FixedPortNode {
    data_dir: PathBuf,
    listen: String,
    url: String,
    token: String,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl FixedPortNode {
    fn start() -> FixedPortNode {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut node = FixedPortNode {
            data_dir: tmp.path().join("data"),
            listen: format!("127.0.0.1:{port}"),
            url: String::new(),
            token: String::new(),
            child: None,
            _tmp: tmp,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        // The port may still be held for a moment by the killed process's
        // socket: retry the start for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("serve")
                .arg("--listen")
                .arg(&self.listen)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env("SHOAL_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn shoal serve");
            let stdout = child.stdout.take().expect("stdout");
            if let Some(url) = listening(stdout) {
                self.url = url;
                self.child = Some(child);
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "the node did not start on {}",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.token = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.token)).expect("client")
    }
}

impl Drop for FixedPortNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The node's URL once it prints that it listens (stdout is then drained in
/// the background); None when it exits first.
fn listening(stdout: ChildStdout) -> Option<String> {
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.ok()?;
        if let Some(rest) = line.strip_prefix("Shoal listening on ") {
            let url = rest.trim().to_string();
            std::thread::spawn(move || for _ in lines {});
            return Some(url);
        }
    }
    None
}
