//! Queries over a category on three real nodes sharing one `redis-server`
//! (issue 11): the shards of a query run on every node, the answers are the
//! answers of one node on the embedded store, and a node killed (`kill -9`)
//! in the middle of a query leaves the query's answer exact, each shard
//! counted once.

mod common;

use std::time::Duration;

use common::{TestNode, deploy};
use serde_json::{Value, json};
use shoal_client::Client;
use shoal_store_redis::testing::RedisServer;

/// A node on `redis`, with a short lease margin so a killed node's shard
/// comes back quickly.
fn node_on(redis: &RedisServer) -> TestNode {
    TestNode::start_with(&[
        "--store",
        &redis.url(),
        "--redis-namespace",
        "q",
        "--lease-margin",
        "2s",
    ])
}

/// Runs a query: (values, final line).
async fn query(c: &Client, cat: &str, function: &str) -> (Vec<Value>, Value) {
    let mut lines = c.query(cat, function, false, false).await.unwrap();
    let mut values = Vec::new();
    let mut last = Value::Null;
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_slice(&line).unwrap();
        match v.get("value") {
            Some(value) => values.push(value.clone()),
            None => last = v,
        }
    }
    assert!(!last.is_null(), "no final line");
    (values, last)
}

/// `n` documents with ids `d0000`.. and a number each.
fn docs(n: usize) -> String {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("d{i:04}"), "n": i}))
        .collect();
    serde_json::to_string(&docs).unwrap()
}

/// Sum (commutative) and concatenation (order-sensitive) reduces, and a
/// map without reduce.
async fn deploy_queries(c: &Client) {
    deploy(
        c,
        "name = \"total\"\nhandler = \"main:map\"\n",
        "def map(doc):\n    return doc['n']\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    deploy(
        c,
        "name = \"order\"\nhandler = \"main:map\"\n",
        "def map(doc):\n    return [doc['n']]\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    deploy(
        c,
        "name = \"ids\"\nhandler = \"main:map\"\n",
        "def map(doc):\n    return doc['id'] if doc['n'] % 3 else None\n",
    )
    .await;
}

async fn answers(c: &Client) -> (Value, Value, Vec<Value>) {
    let (values, last) = query(c, "things", "total").await;
    assert!(values.is_empty(), "{values:?}");
    assert_eq!(last["done"]["docs"], 400, "{last}");
    let total = last["done"]["result"].clone();
    let (_, last) = query(c, "things", "order").await;
    let order = last["done"]["result"].clone();
    let (ids, last) = query(c, "things", "ids").await;
    assert_eq!(last["done"]["docs"], 400, "{last}");
    (total, order, ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_on_three_nodes_gives_the_one_node_answers() {
    // One node on its embedded store: the answers to match.
    let alone = TestNode::start();
    let c = alone.client();
    c.create_category("things", Some(8)).await.unwrap();
    c.write_docs("things", docs(400), false, false)
        .await
        .unwrap();
    deploy_queries(&c).await;
    let expected = answers(&c).await;
    assert_eq!(expected.0, json!((0..400).sum::<i64>()));
    assert_eq!(expected.1.as_array().unwrap().len(), 400);
    drop(alone);

    let redis = RedisServer::start(&[]);
    let nodes: Vec<TestNode> = (0..3).map(|_| node_on(&redis)).collect();
    let clients: Vec<Client> = nodes.iter().map(|n| n.client()).collect();
    clients[0].create_category("things", Some(8)).await.unwrap();
    clients[1]
        .write_docs("things", docs(400), false, false)
        .await
        .unwrap();
    deploy_queries(&clients[2]).await;
    for c in &clients {
        assert_eq!(answers(c).await, expected);
    }
    // The partials are removed once the queries are answered.
    let left = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--scan",
            "--pattern",
            "q:{q:*",
        ])
        .output()
        .expect("redis-cli");
    let left = String::from_utf8_lossy(&left.stdout);
    assert_eq!(left.trim(), "", "{left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_query_leaves_the_answer_exact() {
    let redis = RedisServer::start(&[]);
    let mut nodes: Vec<TestNode> = (0..3).map(|_| node_on(&redis)).collect();
    let c0 = nodes[0].client();
    let marks = tempfile::tempdir().unwrap();
    // Each document takes 50 ms and leaves a mark named after the node
    // (its working directory lies in the node's data directory).
    let py = format!(
        "import os, time\n\
         def map(doc):\n\
         \x20   d = {dir:?}\n\
         \x20   open(os.path.join(d, os.getcwd().replace('/', '_')), 'a').close()\n\
         \x20   time.sleep(0.05)\n\
         \x20   return [doc['n']]\n\
         def reduce(a, b):\n\
         \x20   return a + b\n",
        dir = marks.path().canonicalize().unwrap().display().to_string()
    );
    deploy(
        &c0,
        "name = \"slow\"\nhandler = \"main:map\"\ntimeout = \"5s\"\n",
        &py,
    )
    .await;
    c0.create_category("things", Some(8)).await.unwrap();
    c0.write_docs("things", docs(160), false, false)
        .await
        .unwrap();

    let node1 = nodes[1]
        .data_dir
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
        .replace('/', "_");
    // Awaited below.
    #[allow(clippy::disallowed_methods)]
    let running = tokio::spawn({
        let c0 = c0.clone();
        async move { query(&c0, "things", "slow").await }
    });
    common::until("node 1 maps a shard", Duration::from_secs(60), async || {
        std::fs::read_dir(marks.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(&node1))
    })
    .await;
    nodes[1].kill9();

    let (values, last) = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the query ends")
        .unwrap();
    assert!(values.is_empty(), "{values:?}");
    let done = &last["done"];
    assert_eq!(done["errors"], 0, "{last}");
    assert_eq!(done["docs"], 160, "{last}");
    // Every document once, in document order (by shard, then id).
    let mut expect: Vec<(u32, String, i64)> = (0..160)
        .map(|i| {
            let id = format!("d{i:04}");
            (shard_of(&id, 8), id, i)
        })
        .collect();
    expect.sort();
    let expect: Vec<Value> = expect.into_iter().map(|(_, _, n)| json!(n)).collect();
    assert_eq!(done["result"], json!(expect), "{last}");
}

/// The engine's shard of a document id (FNV-1a).
fn shard_of(id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as u32
}
