//! End to end: `GET /v1/nodes` and `shoal nodes` on a real `shoal serve`:
//! a node alone lists itself, alive, at its listen address; two nodes on
//! one `redis-server` list each other, and one killed with `kill -9` turns
//! `lost` on the other.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{TestNode, until};
use serde_json::Value;
use shoal_client::Client;
use shoal_store_redis::testing::RedisServer;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", text(&out.stdout)))
}

/// `host:port` of a node's URL, the address its heartbeat carries.
fn address(node: &TestNode) -> &str {
    node.url.strip_prefix("http://").expect("an http URL")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_node_lists_itself() {
    let node = TestNode::start();
    let c = node.client();

    // The API, to a reader.
    let reader = c.create_token("reader", Some("looker")).await.unwrap();
    let as_reader = node.client_with(Some(&reader.token));
    let nodes = as_reader.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let me = &nodes[0];
    assert!(me.this, "{me:?}");
    assert_eq!(me.state, "alive");
    assert_eq!(me.address, address(&node));
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert!(me.started_at_ms <= me.last_seen_ms, "{me:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now_ms.abs_diff(me.last_seen_ms) < 60_000, "{me:?}");
    assert!(me.load.is_none_or(|l| l >= 0.0), "{me:?}");

    // Without a token: 401, from the API and from the CLI.
    let err = node.client_with(None).nodes().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--json", "nodes", "--url", &node.url])
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_URL")
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");

    // `shoal nodes --json`: the API's answer.
    let v = json_out(&node.cli(&["--json", "nodes"]));
    let listed = v["nodes"].as_array().expect("nodes");
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["id"], me.id.as_str());
    assert_eq!(listed[0]["address"], address(&node));
    assert_eq!(listed[0]["this"], true);
    assert_eq!(listed[0]["state"], "alive");
    assert!(listed[0]["started_at_ms"].is_u64(), "{v}");

    // `shoal nodes`: a table, this node marked, seen now, no raw epoch ms.
    let out = node.cli(&["nodes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    for col in [
        "ID",
        "ADDRESS",
        "VERSION",
        "STARTED",
        "LAST SEEN",
        "RUNNING",
        "WORKERS",
        "LOAD",
        "STATE",
    ] {
        assert!(lines[0].contains(col), "{col} in:\n{shown}");
    }
    let row = lines[1];
    assert!(
        row.starts_with(&format!("* {}  {}", me.id, address(&node))),
        "{shown}"
    );
    assert!(row.contains(" UTC  now "), "{shown}");
    assert!(row.ends_with(" alive"), "{shown}");
    assert!(!shown.contains(&me.started_at_ms.to_string()), "{shown}");
}

/// Two nodes on one Redis: each lists both, itself first and marked; after
/// `kill -9` of one, the other shows it `lost` once three heartbeats (5 s
/// each) are missed, and still lists itself alive.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_on_one_redis_list_each_other_and_a_killed_one_is_lost() {
    let redis = RedisServer::start(&[]);
    let on_redis =
        || TestNode::start_with(&["--store", &redis.url(), "--redis-namespace", "nodes"]);
    let a = on_redis();
    let mut b = on_redis();
    let (ca, cb) = (a.client(), b.client());

    let both = async |c: &Client| {
        let nodes = c.nodes().await.unwrap();
        nodes.len() == 2 && nodes.iter().all(|n| n.state == "alive")
    };
    until(
        "each node lists both",
        Duration::from_secs(20),
        async || both(&ca).await && both(&cb).await,
    )
    .await;
    let from_a = ca.nodes().await.unwrap();
    let from_b = cb.nodes().await.unwrap();
    assert!(from_a[0].this && !from_a[1].this, "{from_a:?}");
    assert!(from_b[0].this && !from_b[1].this, "{from_b:?}");
    assert_eq!(from_a[0].id, from_b[1].id);
    assert_eq!(from_a[1].id, from_b[0].id);
    assert_eq!(from_a[0].address, address(&a));
    assert_eq!(from_a[1].address, address(&b));
    assert_ne!(from_a[0].id, from_a[1].id);

    let out = a.cli(&["nodes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let rows: Vec<&str> = shown.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{shown}");
    assert!(
        rows[0].starts_with(&format!("* {}", from_a[0].id)),
        "{shown}"
    );
    assert!(
        rows[1].starts_with(&format!("  {}", from_a[1].id)),
        "{shown}"
    );

    let b_id = from_b[0].id.clone();
    b.kill9();
    until(
        "the killed node is lost",
        Duration::from_secs(40),
        async || {
            let nodes = ca.nodes().await.unwrap();
            nodes.iter().any(|n| n.id == b_id && n.state == "lost")
        },
    )
    .await;
    let nodes = ca.nodes().await.unwrap();
    assert!(nodes[0].this && nodes[0].state == "alive", "{nodes:?}");
    let out = a.cli(&["nodes"]);
    let shown = text(&out.stdout);
    let row = shown
        .lines()
        .find(|l| l.contains(&b_id))
        .unwrap_or_else(|| panic!("{b_id} in:\n{shown}"));
    assert!(row.ends_with(" lost") && row.contains("s ago"), "{shown}");
}
