//! `examples/vendor-pipeline` against a real node and the example's mock
//! vendor API (started here on a free loopback port): the pipeline fetches
//! every item, never gets a 429, retries transient failures, dead-letters
//! the broken items, and survives `kill -9` of the node midway.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestNode, repo_root};
use serde_json::Value;

/// The mock vendor, killed when dropped.
struct Vendor {
    child: Child,
    url: String,
}

impl Vendor {
    fn start(args: &[&str]) -> Vendor {
        let script = repo_root().join("examples/vendor-pipeline/vendor.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mock vendor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected vendor output {line:?}"))
            .to_string();
        Vendor { child, url }
    }

    fn stats(&self) -> Value {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                &format!("{}/_stats", self.url),
            ])
            .output()
            .expect("ask the vendor for its stats");
        serde_json::from_slice(&out.stdout).expect("vendor stats JSON")
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipeline(node: &TestNode, args: &[&str]) -> Output {
    let script = repo_root().join("examples/vendor-pipeline/pipeline.py");
    let cwd = tempfile::tempdir().unwrap();
    Command::new("python3")
        .arg(script)
        .args(args)
        .current_dir(cwd.path())
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("run pipeline.py")
}

fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "pipeline failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

/// What every run must show, whatever happened on the way.
fn check(s: &Value) {
    eprintln!("pipeline summary: {s}");
    assert_eq!(s["status"], "finished", "{s:#}");
    assert_eq!(s["vendor"]["too_many"], 0, "the vendor saw a 429: {s:#}");
    assert!(
        s["vendor"]["peak_accepted_1s"].as_u64().unwrap() <= s["vendor"]["limit"].as_u64().unwrap(),
        "{s:#}"
    );
    assert_eq!(s["missing"], Value::Array(vec![]), "{s:#}");
    assert_eq!(s["dead_lettered"], s["broken"], "{s:#}");
    let items = s["items"].as_u64().unwrap();
    let broken = s["broken"].as_array().unwrap().len() as u64;
    assert!(broken > 0, "the run should include broken items: {s:#}");
    assert_eq!(s["stored"].as_u64().unwrap(), items - broken, "{s:#}");
    assert_eq!(s["troops"]["succeeded"], s["troops"]["total"], "{s:#}");
    assert_eq!(s["report"]["failed_troops"], Value::Array(vec![]), "{s:#}");
}

#[test]
fn the_pipeline_fetches_everything_within_the_vendors_limit() {
    let node = TestNode::start();
    let vendor = Vendor::start(&[
        "--limit",
        "20",
        "--troops",
        "3",
        "--warriors",
        "3",
        "--groups",
        "5",
        "--fail-rate",
        "0.05",
        "--fail-every",
        "9",
        "--broken-every",
        "8",
    ]);
    let s = summary(&pipeline(
        &node,
        &[
            "run",
            "--vendor",
            &vendor.url,
            "--rate",
            "18",
            "--timeout",
            "120",
        ],
    ));
    check(&s);
    // Every 9th call failed with 503 and was retried.
    assert!(s["vendor"]["transient"].as_u64().unwrap() >= 5, "{s:#}");
}

/// Sets the pipeline up and starts it through `node` against a vendor of
/// its own; returns once the vendor has served 40 items (some stored, most
/// not: the middle of the run), with the vendor and the job's id.
fn start_midway(node: &TestNode) -> (Vendor, String) {
    let vendor = Vendor::start(&[
        "--limit",
        "25",
        "--troops",
        "4",
        "--warriors",
        "4",
        "--groups",
        "8",
        "--fail-rate",
        "0.03",
        "--broken-every",
        "10",
    ]);
    let out = pipeline(node, &["setup", "--rate", "22"]);
    assert!(out.status.success(), "{out:?}");
    let out = pipeline(node, &["start", "--vendor", &vendor.url]);
    assert!(out.status.success(), "{out:?}");
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vendor.stats()["ok"].as_u64().unwrap() < 40 {
        assert!(Instant::now() < deadline, "the pipeline does not advance");
        std::thread::sleep(Duration::from_millis(50));
    }
    (vendor, job)
}

#[test]
fn the_pipeline_completes_after_kill_9_of_the_node() {
    let mut node = TestNode::start();
    let (vendor, job) = start_midway(&node);
    // Kill the node in the middle.
    node.kill9_and_restart();
    let s = summary(&pipeline(
        &node,
        &["wait", &job, "--vendor", &vendor.url, "--timeout", "180"],
    ));
    check(&s);
}

/// The same pipeline on three nodes sharing one redis-server, the node the
/// pipeline talks to killed with `kill -9` midway: the shared limiter keeps
/// the vendor within its limit across the nodes, every item is stored once,
/// the fan-in runs exactly once, and a query over the stored documents on a
/// surviving node counts every one.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_completes_on_three_nodes_after_kill_9_of_one() {
    let redis = shoal_store_redis::testing::RedisServer::start(&["--appendfsync", "always"]);
    let args = ["--store", &redis.url(), "--lease-margin", "2s"];
    let mut nodes: Vec<TestNode> = (0..3).map(|_| TestNode::start_with(&args)).collect();
    let (vendor, job) = start_midway(&nodes[0]);
    nodes[0].kill9();
    let s = summary(&pipeline(
        &nodes[1],
        &["wait", &job, "--vendor", &vendor.url, "--timeout", "180"],
    ));
    check(&s);

    let c = nodes[2].client();
    // The fan-in (vp-report) ran exactly once, cluster-wide.
    let reports = c
        .list_invocations(&[("function", "vp-report")])
        .await
        .unwrap();
    assert_eq!(reports.invocations.len(), 1, "{:?}", reports.invocations);
    // Every stored item is one document, seen alike by a query.
    let stored = s["stored"].as_u64().unwrap();
    common::deploy(
        &c,
        "name = \"vp-count\"\nhandler = \"main:map\"\n",
        "def map(doc):\n    return 1\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    let mut lines = c.query("vp-data", "vp-count", false, false).await.unwrap();
    let mut last = Value::Null;
    while let Some(line) = lines.next_line().await.unwrap() {
        last = serde_json::from_slice(&line).unwrap();
    }
    assert_eq!(last["done"]["result"], stored, "{last}");
    assert_eq!(last["done"]["docs"], stored, "{last}");
}
