//! End to end: a real full disk. The node runs in its own user and mount
//! namespace (`unshare -rm`, util-linux) on a 64 MiB tmpfs that only it
//! sees; the test reaches that tmpfs through `/proc/<pid>/root`. A filler
//! file takes part of it, documents fill the rest until writes answer
//! `507 insufficient_storage` (never a 500, never a crash). While full,
//! `/healthz` answers 503 naming the problem, a synchronous invocation
//! answers 507 instead of a result, and every acknowledged document is
//! still readable. Deleting the filler makes writes succeed again and
//! `/healthz` 200, without restarting the node.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_client::Client;

use common::{deploy, until};

const FILLER_BYTES: usize = 24 << 20;

/// `shoal serve` on a tmpfs mounted at `mount` in a namespace of its own.
struct FullDiskNode {
    child: Child,
    url: String,
    /// `mount` as the node sees it, from outside its namespace.
    root: PathBuf,
    token: String,
}

impl FullDiskNode {
    fn start(mount: &Path) -> FullDiskNode {
        let script = r#"mount -t tmpfs -o size=64m tmpfs "$0" && exec "$1" serve --listen 127.0.0.1:0 --data-dir "$0/data""#;
        let mut child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
            .arg(mount)
            .arg(env!("CARGO_BIN_EXE_shoal"))
            .env("SHOAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `unshare` (util-linux): {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("Shoal listening on ") {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "the node did not start in its namespace ({}). This test needs \
                         unprivileged user and mount namespaces (`unshare -rm`, then \
                         `mount -t tmpfs`).\nstderr:\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        };
        // Keep draining both pipes so the node never blocks on them.
        std::thread::spawn(move || for _ in lines {});
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("node: {line}");
            }
        });
        // unshare and sh exec: the pid is the node's.
        let root = PathBuf::from(format!("/proc/{}/root", child.id()))
            .join(mount.strip_prefix("/").unwrap());
        let token = std::fs::read_to_string(root.join("data/admin.token"))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot read the node's files through {}: {e}",
                    root.display()
                )
            })
            .trim()
            .to_string();
        FullDiskNode {
            child,
            url,
            root,
            token,
        }
    }
}

impl Drop for FullDiskNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(n: usize) -> (Vec<String>, Vec<u8>) {
    let pad = "x".repeat(8_000);
    let ids: Vec<String> = (0..32).map(|j| format!("d{n:05}-{j:02}")).collect();
    let mut body = Vec::new();
    for id in &ids {
        body.extend_from_slice(format!("{{\"id\":\"{id}\",\"pad\":\"{pad}\"}}\n").as_bytes());
    }
    (ids, body)
}

async fn write(c: &Client, n: usize) -> (u16, String, Vec<String>) {
    let (ids, body) = batch(n);
    let (status, text) = c
        .raw(
            "POST",
            "/v1/categories/c/docs?return_ids=false",
            Some("application/x-ndjson"),
            body,
        )
        .await
        .unwrap();
    (status, text, ids)
}

/// Every document id in the category.
async fn stored_ids(c: &Client) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.scan("c", cursor.as_deref(), 1_000).await.unwrap();
        ids.extend(page.docs.into_iter().map(|d| d.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

async fn health(c: &Client) -> (u16, String) {
    c.raw("GET", "/healthz", None, Vec::new()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_and_recovers_without_a_restart() {
    let mount = tempfile::tempdir().unwrap();
    let node = FullDiskNode::start(mount.path());
    let c = Client::new(&node.url, Some(&node.token)).unwrap();
    deploy(
        &c,
        "name = \"echo\"",
        "def handler(e, ctx):\n    return e\n",
    )
    .await;
    let answer = c.invoke("echo", "{\"n\":1}").await.unwrap();
    assert_eq!(answer.result.unwrap(), serde_json::json!({"n": 1}));
    c.create_category("c", Some(2)).await.unwrap();
    let filler = node.root.join("filler");
    std::fs::write(&filler, vec![1u8; FILLER_BYTES]).unwrap();

    // Fill the disk.
    let mut acked = BTreeSet::new();
    let mut n = 0;
    let full = loop {
        let (status, text, ids) = write(&c, n).await;
        match status {
            200 | 201 => acked.extend(ids),
            507 => break text,
            other => panic!("batch {n}: expected success or 507, got {other}: {text}"),
        }
        n += 1;
        assert!(n < 2_000, "the 64 MiB disk never filled");
    };
    assert!(acked.len() > 1_000, "only {} documents fitted", acked.len());
    let v: serde_json::Value = serde_json::from_str(&full).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("free space"),
        "{v}"
    );

    // While full: healthz says so, writes fail fast, a sync invocation
    // answers an error, reads work and nothing acknowledged is lost.
    let (status, text) = health(&c).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("insufficient_storage"), "{text}");
    for i in 0..5 {
        let started = Instant::now();
        let (status, text, _) = write(&c, 100_000 + i).await;
        assert_eq!(status, 507, "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let err = c.invoke("echo", "{\"n\":2}").await.unwrap_err();
    assert_eq!(err.status(), Some(507), "{err}");
    assert_eq!(
        err.code(),
        Some(shoal_client::protocol::ErrorCode::InsufficientStorage)
    );
    let stored = stored_ids(&c).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged documents lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(health(&c).await.0, 503);

    // Free space: no restart.
    std::fs::remove_file(&filler).unwrap();
    let mut n = 200_000;
    until(
        "writes succeed again",
        Duration::from_secs(15),
        async || {
            let (status, text, ids) = write(&c, n).await;
            n += 1;
            match status {
                200 | 201 => {
                    acked.extend(ids);
                    true
                }
                507 => false,
                other => panic!("expected success or 507, got {other}: {text}"),
            }
        },
    )
    .await;
    until(
        "/healthz is 200 again",
        Duration::from_secs(5),
        async || health(&c).await.0 == 200,
    )
    .await;
    let answer = c.invoke("echo", "{\"n\":3}").await.unwrap();
    assert_eq!(answer.result.unwrap(), serde_json::json!({"n": 3}));
    let stored = stored_ids(&c).await;
    assert!(acked.is_subset(&stored), "acknowledged documents lost");
    assert!(
        stored.iter().all(|id| !id.starts_with("d1000")),
        "a write answered 507 was stored"
    );
}
