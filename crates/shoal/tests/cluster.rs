//! Several real `shoal serve` nodes on one real `redis-server` (Debian's
//! package; `scripts/test` installs it): what one node deploys the others
//! run at once, async work and documents are shared, a query over a category
//! answers the same on every node, and Redis restarting or going away is
//! survived without losing acknowledged work. The vendor pipeline on three
//! nodes with one killed midway is in `vendor_pipeline.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{TestNode, deploy, wait_final};
use serde_json::{Value, json};
use shoal_client::Client;
use shoal_store_redis::testing::RedisServer;

/// A node on `redis`, with a short lease margin so a killed node's work
/// comes back quickly.
fn node_on(redis: &RedisServer) -> TestNode {
    TestNode::start_with(&[
        "--store",
        &redis.url(),
        "--redis-namespace",
        "e2e",
        "--lease-margin",
        "2s",
    ])
}

/// The version a sync call of `name` on `c` ran.
async fn ran(c: &Client, name: &str) -> (u64, Value) {
    let done = c.invoke(name, "{}").await.expect("invoke");
    let output = done.result.clone().expect("the call succeeds");
    let version = c.invocation(&done.id).await.expect("record").version;
    (version, output)
}

/// Runs a query and returns its result value.
async fn query(c: &Client, category: &str, function: &str) -> Value {
    let mut lines = c.query(category, function, false, false).await.unwrap();
    let mut values = Vec::new();
    let mut last = Value::Null;
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_slice(&line).unwrap();
        match v.get("value") {
            Some(value) => values.push(value.clone()),
            None => last = v,
        }
    }
    // Reduced: no values, the result in the final line.
    assert!(values.is_empty(), "{values:?}");
    assert_eq!(last["done"]["errors"], 0, "{last}");
    last["done"]["result"].clone()
}

const HELLO: &str = "name = \"hello\"\nhandler = \"main:handler\"\n";
const HELLO_PY: &str =
    "import os\n\ndef handler(event, ctx):\n    return {'v': 1, 'node_dir': os.getcwd()}\n";

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_functions_work_and_documents() {
    let redis = RedisServer::start(&["--appendfsync", "always"]);
    let nodes: Vec<TestNode> = (0..3).map(|_| node_on(&redis)).collect();
    let clients: Vec<Client> = nodes.iter().map(|n| n.client()).collect();

    // Deploy on one: every node runs it at once, from its own copy of the
    // code (fetched from Redis by content hash).
    deploy(&clients[0], HELLO, HELLO_PY).await;
    let mut dirs = Vec::new();
    for c in &clients {
        let (version, output) = ran(c, "hello").await;
        assert_eq!(version, 1);
        assert_eq!(output["v"], 1);
        dirs.push(output["node_dir"].as_str().unwrap().to_string());
    }
    for (dir, node) in dirs.iter().zip(&nodes) {
        let data = node.data_dir.canonicalize().unwrap();
        assert!(
            dir.starts_with(data.to_str().unwrap()),
            "ran {dir}, not under {}",
            data.display()
        );
    }

    // A new version deployed on node 1 is callable by number on node 2 at
    // once, and live everywhere within a catalog poll.
    deploy(
        &clients[1],
        HELLO,
        "def handler(event, ctx):\n    return {'v': 2}\n",
    )
    .await;
    let done = clients[2].invoke("hello@2", "{}").await.unwrap();
    assert_eq!(done.result.unwrap()["v"], 2);
    common::until(
        "every node serves version 2",
        Duration::from_secs(5),
        async || {
            for c in &clients {
                if ran(c, "hello").await.0 != 2 {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Async work sent to every node: each invocation runs once, and any
    // node answers for any record.
    let mut ids = Vec::new();
    for i in 0..30 {
        let c = &clients[i % 3];
        ids.push(
            c.invoke_async("hello", &json!({"i": i}).to_string())
                .await
                .unwrap(),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let inv = wait_final(&clients[(i + 1) % 3], id, Duration::from_secs(60)).await;
        assert_eq!(inv.status, "succeeded", "{inv:?}");
        assert_eq!(inv.attempts, 1, "{inv:?}");
    }

    // Documents written through one node; a query on each answers the same.
    clients[0].create_category("orders", Some(4)).await.unwrap();
    let docs: Vec<Value> = (0..500)
        .map(|i| json!({"id": format!("o{i:04}"), "price": i % 10}))
        .collect();
    let body = serde_json::to_vec(&docs).unwrap();
    let written = clients[1]
        .write_docs("orders", body, false, false)
        .await
        .unwrap();
    assert_eq!(written.written, 500);
    deploy(
        &clients[2],
        "name = \"total\"\nhandler = \"main:map\"\n",
        "def map(doc):\n    return doc['price']\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    let expected: i64 = (0..500).map(|i| i % 10).sum();
    for c in &clients {
        assert_eq!(query(c, "orders", "total").await, json!(expected));
    }

    // `GET /v1/nodes` on any node lists all three.
    let listed: Value =
        serde_json::from_str(&clients[0].get_text("/v1/nodes").await.unwrap()).unwrap();
    let listed = listed["nodes"].as_array().expect("nodes").clone();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|n| n["state"] == "alive"), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn async_work_of_a_killed_node_finishes_on_the_others() {
    let redis = RedisServer::start(&["--appendfsync", "always"]);
    let mut nodes: Vec<TestNode> = (0..3).map(|_| node_on(&redis)).collect();
    let c0 = nodes[0].client();
    let marks = tempfile::tempdir().unwrap();
    // Each attempt leaves a mark; the first attempt of each sleeps long
    // enough to be cut short by the kill.
    let py = format!(
        "import os, time\n\
         def handler(event, ctx):\n\
         \x20   d = {dir:?}\n\
         \x20   open(os.path.join(d, event['k'] + '.' + str(ctx.attempt)), 'w').close()\n\
         \x20   if ctx.attempt == 1:\n\
         \x20       time.sleep(3)\n\
         \x20   return event['k']\n",
        dir = marks.path().canonicalize().unwrap().display().to_string()
    );
    deploy(
        &c0,
        "name = \"slow\"\nhandler = \"main:handler\"\ntimeout = \"10s\"\nconcurrency = 8\n",
        &py,
    )
    .await;
    let c1 = nodes[1].client();
    // Node 1 and 2 must know the function before node 0 sends work.
    common::until("node 1 knows slow", Duration::from_secs(5), async || {
        c1.function("slow").await.is_ok()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            c0.invoke_async("slow", &json!({"k": format!("k{i}")}).to_string())
                .await
                .unwrap(),
        );
    }
    // Wait until node 0 runs some of them, then kill it.
    common::until("attempts started", Duration::from_secs(20), async || {
        std::fs::read_dir(marks.path()).unwrap().count() >= 2
    })
    .await;
    nodes[0].kill9();
    let started = Instant::now();
    for id in &ids {
        let inv = wait_final(&c1, id, Duration::from_secs(60)).await;
        assert_eq!(inv.status, "succeeded", "{inv:?}");
    }
    // Cut-short attempts came back within timeout + lease margin (10 s + 2 s)
    // and some slack for the 3 s sleeps.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Every key ran; those cut short by the kill ran again as a later
    // attempt (an attempt counts once it began, even if its mark was not
    // written yet).
    let marks: Vec<String> = std::fs::read_dir(marks.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for i in 0..6 {
        assert!(
            marks.iter().any(|m| m.starts_with(&format!("k{i}."))),
            "k{i} never ran: {marks:?}"
        );
    }
    assert!(
        marks.iter().any(|m| !m.ends_with(".1")),
        "nothing was cut short by the kill: {marks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_loses_nothing_acknowledged_and_nodes_reconnect() {
    let mut redis = RedisServer::start(&["--appendfsync", "always"]);
    let node = node_on(&redis);
    let c = node.client();
    deploy(&c, HELLO, HELLO_PY).await;
    c.create_category("notes", Some(2)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            c.invoke_async("hello", &json!({"i": i}).to_string())
                .await
                .unwrap(),
        );
        c.put_doc("notes", &format!("n{i}"), &json!({"i": i}))
            .await
            .unwrap();
    }

    // Redis killed: the node answers 503 `unavailable`, not 500, and
    // /healthz says why.
    redis.kill();
    let err = c.put_doc("notes", "during", &json!({})).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err:?}");

    // Redis back (from its append-only file): the node reconnects by
    // itself; everything acknowledged before is there, and work goes on.
    redis.restart();
    common::until(
        "the node works again",
        Duration::from_secs(20),
        async || {
            c.put_doc("notes", "after", &json!({"after": true}))
                .await
                .is_ok()
        },
    )
    .await;
    for i in 0..10 {
        assert_eq!(c.get_doc("notes", &format!("n{i}")).await.unwrap()["i"], i);
    }
    for id in &ids {
        let inv = wait_final(&c, id, Duration::from_secs(60)).await;
        assert_eq!(inv.status, "succeeded", "{inv:?}");
    }
    assert_eq!(ran(&c, "hello").await.0, 1);
}

#[test]
fn a_node_waits_for_redis_at_start_and_says_so() {
    let port = shoal_store_redis::testing::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &url])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path().join("d"))
        .env("SHOAL_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect::<Vec<String>>()
    });
    let lines = reader.join().unwrap();
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        still_running,
        "the node gave up instead of waiting: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("Waiting for Redis at 127.0.0.1")
                || l.contains(&format!("Waiting for Redis at {url}"))),
        "{lines:?}"
    );
}

#[test]
fn a_rejecting_redis_stops_the_start_with_the_reason() {
    let evicting = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let password = RedisServer::start(&["--requirepass", "right"]);
    let wrong = format!("redis://:wrong@127.0.0.1:{}/0", password.port());
    for (url, says) in [
        (evicting.url(), "maxmemory-policy allkeys-lru"),
        (wrong, "credentials"),
        ("redis://[bad".to_string(), "bad Redis URL"),
        ("postgres://x".to_string(), "is not a store"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &url])
            .arg("--data-dir")
            .arg(tempfile::tempdir().unwrap().path().join("d"))
            .env("SHOAL_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert!(
            !stderr.contains("wrong@"),
            "the password is shown: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_reach_redis_over_tls() {
    let redis = RedisServer::start_tls(&[]);
    let ca = redis.ca_file().unwrap();
    let args = [
        "--store",
        &redis.url(),
        "--redis-ca-file",
        ca.to_str().unwrap(),
    ];
    let a = TestNode::start_with(&args);
    let b = TestNode::start_with(&args);
    deploy(&a.client(), HELLO, HELLO_PY).await;
    assert_eq!(ran(&b.client(), "hello").await.0, 1);
}
