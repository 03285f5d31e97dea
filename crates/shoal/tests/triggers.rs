//! End to end on a real `shoal serve` with python3 functions: each trigger
//! kind runs its function with the documented event — document changes
//! (batched), blobs created and deleted under a prefix, and another
//! function's failure (a destination) — and `GET /v1/triggers` lists them.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, until};
use serde_json::{Value, json};
use shoal_client::Client;

/// Every function below records the events it gets under `seen.<fn>.<id>`.
const RECORD: &str = "def handler(e, ctx):\n    ctx.kv_set('seen.' + ctx.function_name + '.' + ctx.invocation_id, e)\n    return len(str(e))\n";

/// The events `function` recorded, oldest first (by invocation id: UUIDv7).
async fn seen(c: &Client, function: &str) -> Vec<Value> {
    let page = c
        .kv_list(&format!("seen.{function}."), None, 1000)
        .await
        .unwrap();
    page.entries.into_iter().map(|e| e.value).collect()
}

/// Waits until `function` recorded `n` events and answers them.
async fn wait_seen(c: &Client, function: &str, n: usize) -> Vec<Value> {
    until(
        &format!("{function} ran {n} times"),
        Duration::from_secs(30),
        async || seen(c, function).await.len() >= n,
    )
    .await;
    seen(c, function).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_trigger_kind_runs_its_function_with_the_documented_event() {
    let node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"on_docs\"\n[[trigger]]\non = \"docs\"\ncategory = \"photos\"\nbatch_size = 10\nbatch_window_ms = 300\n",
        RECORD,
    )
    .await;
    deploy(
        &c,
        "name = \"on_blob\"\n[[trigger]]\non = \"blob\"\nprefix = \"uploads/\"\n",
        RECORD,
    )
    .await;
    deploy(
        &c,
        "name = \"resize\"\nretries = 0\n",
        "def handler(e, ctx):\n    if e.get('fail'):\n        raise ValueError('bad image')\n    return {'w': 10}\n",
    )
    .await;
    deploy(
        &c,
        "name = \"on_fail\"\n[[trigger]]\non = \"outcome\"\nfunction = \"resize\"\nwhen = \"failure\"\n",
        RECORD,
    )
    .await;

    // Listed.
    let listed = c.triggers().await.unwrap();
    let kinds: Vec<(&str, &str)> = listed
        .iter()
        .map(|t| (t.function.as_str(), t.on.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("on_blob", "blob"),
            ("on_docs", "docs"),
            ("on_fail", "outcome")
        ],
        "{listed:?}"
    );
    let out = node.cli(&["triggers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("FUNCTION"), "{text}");
    assert!(text.contains("photos, batches of 10, 300 ms"), "{text}");
    assert!(text.contains("uploads/* created,deleted"), "{text}");
    assert!(text.contains("resize on failure"), "{text}");

    // Documents: two writes and a delete within the window are one run.
    c.put_doc("photos", "a", &json!({"title": "sea"}))
        .await
        .unwrap();
    c.put_doc("photos", "b", &json!({"title": "sky"}))
        .await
        .unwrap();
    c.delete_doc("photos", "a").await.unwrap();
    let docs = wait_seen(&c, "on_docs", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let docs_after = seen(&c, "on_docs").await;
    let changes: Vec<Value> = docs_after
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        changes,
        vec![
            json!({"op": "put", "id": "a", "doc": {"title": "sea"}}),
            json!({"op": "put", "id": "b", "doc": {"title": "sky"}}),
            json!({"op": "delete", "id": "a"}),
        ],
        "{docs_after:?}"
    );
    assert_eq!(docs[0]["trigger"], "docs");
    assert_eq!(docs[0]["category"], "photos");
    assert!(docs_after.len() <= 2, "batched: {docs_after:?}");

    // Blobs: created (with its size) and deleted, under the prefix only.
    c.put_blob("uploads/a.png", b"12345".to_vec(), Some("image/png"))
        .await
        .unwrap();
    c.put_blob("elsewhere/b", b"x".to_vec(), None)
        .await
        .unwrap();
    c.delete_blob("uploads/a.png").await.unwrap();
    let blobs = wait_seen(&c, "on_blob", 2).await;
    assert_eq!(
        blobs,
        vec![
            json!({"trigger": "blob", "event": "created", "key": "uploads/a.png", "size": 5}),
            json!({"trigger": "blob", "event": "deleted", "key": "uploads/a.png"}),
        ]
    );

    // Destination: a failed async invocation of resize runs on_fail with
    // its outcome; a success does not.
    let ok = c.invoke_async("resize", "{}").await.unwrap();
    common::wait_final(&c, &ok, Duration::from_secs(30)).await;
    let failed = c.invoke_async("resize", r#"{"fail": true}"#).await.unwrap();
    let outcome = wait_seen(&c, "on_fail", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(&c, "on_fail").await.len(), 1, "only the failure");
    let e = &outcome[0];
    assert_eq!(e["trigger"], "outcome");
    assert_eq!(e["function"], "resize");
    assert_eq!(e["invocation"]["id"], failed.as_str());
    assert_eq!(e["invocation"]["status"], "failed");
    assert_eq!(e["invocation"]["event"], json!({"fail": true}));
    assert_eq!(e["invocation"]["attempts"], 1);
    assert_eq!(e["invocation"]["output"], Value::Null);
    assert_eq!(e["invocation"]["error"]["exception"], "ValueError", "{e}");
    assert!(
        e["invocation"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad image"),
        "{e}"
    );
}

/// The ids of the document changes `on_docs` got, with how often each.
async fn changed_ids(c: &Client) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for e in seen(c, "on_docs").await {
        for ch in e["changes"].as_array().unwrap() {
            *out.entry(ch["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Changes answered before a `kill -9` (the node dies while their batch
/// waits for its window) run once after the restart: never lost, not
/// repeated.
#[tokio::test(flavor = "multi_thread")]
async fn document_changes_answered_before_a_kill9_run_once_after_the_restart() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"on_docs\"\n[[trigger]]\non = \"docs\"\ncategory = \"photos\"\nbatch_window_ms = 3000\n",
        RECORD,
    )
    .await;
    for id in ["a", "b", "c"] {
        c.put_doc("photos", id, &json!({"id": id})).await.unwrap();
    }
    // The batch is open (its window runs 3 s): the node dies under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen(&c, "on_docs").await.is_empty());
    node.kill9_and_restart();
    let c = node.client();
    wait_seen(&c, "on_docs", 1).await;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let ids = changed_ids(&c).await;
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
    );
}

/// Two nodes on one redis-server: writes on either node run the trigger,
/// each change once, in batches run on one node each.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_on_redis_run_each_document_change_once() {
    let redis = shoal_store_redis::testing::RedisServer::start(&[]);
    let on = |redis: &shoal_store_redis::testing::RedisServer| {
        TestNode::start_with(&["--store", &redis.url(), "--redis-namespace", "trig"])
    };
    let a = on(&redis);
    let b = on(&redis);
    let (ca, cb) = (a.client(), b.client());
    deploy(
        &ca,
        "name = \"on_docs\"\n[[trigger]]\non = \"docs\"\ncategory = \"photos\"\nbatch_size = 5\nbatch_window_ms = 200\n",
        RECORD,
    )
    .await;
    // B follows the deploy within its catalog poll.
    until("B has on_docs", Duration::from_secs(10), async || {
        cb.triggers().await.map(|t| !t.is_empty()).unwrap_or(false)
    })
    .await;
    for i in 0..30 {
        let c = if i % 2 == 0 { &ca } else { &cb };
        c.put_doc("photos", &format!("d{i:02}"), &json!({"i": i}))
            .await
            .unwrap();
    }
    until("every change ran", Duration::from_secs(30), async || {
        changed_ids(&ca).await.len() == 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ids = changed_ids(&cb).await;
    assert_eq!(ids.len(), 30);
    assert!(ids.values().all(|n| *n == 1), "a change ran twice: {ids:?}");
    let runs = seen(&ca, "on_docs").await;
    assert!(
        runs.iter()
            .all(|e| e["changes"].as_array().unwrap().len() <= 5),
        "{runs:?}"
    );
}
