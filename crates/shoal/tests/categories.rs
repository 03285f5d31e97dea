//! End to end: categories of documents and map/reduce queries next to the
//! data, through a real node, its HTTP API and the CLI.

mod common;

use common::{TestNode, deploy};
use serde_json::{Value, json};
use shoal_client::Client;

/// Runs a query and collects its NDJSON lines: (values, final line).
async fn query(c: &Client, cat: &str, function: &str, skip_errors: bool) -> (Vec<Value>, Value) {
    let mut lines = c.query(cat, function, skip_errors, false).await.unwrap();
    let mut values = Vec::new();
    let mut last = Value::Null;
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_slice(&line).unwrap();
        if let Some(value) = v.get("value") {
            assert!(last.is_null(), "a value after the final line");
            values.push(value.clone());
        } else {
            assert!(last.is_null(), "two final lines");
            last = v;
        }
    }
    assert!(!last.is_null(), "no final line");
    (values, last)
}

fn orders(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("o{i:06}"), "price": (i % 100) as f64 + 0.5, "qty": (i % 7) as i64, "name": format!("item {i}")}))
        .collect()
}

fn ndjson(docs: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in docs {
        out.extend_from_slice(d.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

const TOTAL_FN: &str =
    "def map(doc):\n    return doc['price'] * doc['qty']\n\ndef reduce(a, b):\n    return a + b\n";

#[tokio::test(flavor = "multi_thread")]
async fn write_read_scan_delete() {
    let node = TestNode::start();
    let c = node.client();

    // Explicit creation with a shard level; placement is round-robin over slots.
    let a = c.create_category("alpha", Some(3)).await.unwrap();
    assert_eq!(a.shards, 3);
    let slots_a: Vec<u32> = a.shard_stats.iter().map(|s| s.slot).collect();
    let b = c.create_category("beta", Some(2)).await.unwrap();
    let slots_b: Vec<u32> = b.shard_stats.iter().map(|s| s.slot).collect();
    assert_eq!(slots_b[0], slots_a[2] + 1, "{slots_a:?} then {slots_b:?}");

    // A JSON array with given, integer and missing ids.
    let body =
        json!([{"id": "x", "v": 1}, {"id": 42, "v": 2}, {"v": 3}, [1, 2], "plain"]).to_string();
    let w = c.write_docs("alpha", body, false, true).await.unwrap();
    assert_eq!(w.written, 5);
    let ids = w.ids.unwrap();
    assert_eq!(&ids[..2], &["x".to_string(), "42".to_string()]);
    assert_eq!(
        c.get_doc("alpha", "x").await.unwrap(),
        json!({"id": "x", "v": 1})
    );
    assert_eq!(c.get_doc("alpha", &ids[2]).await.unwrap(), json!({"v": 3}));
    assert_eq!(c.get_doc("alpha", &ids[4]).await.unwrap(), json!("plain"));

    // Replace by id (PUT and by writing the same id again).
    c.put_doc("alpha", "x", &json!({"v": 10})).await.unwrap();
    assert_eq!(c.get_doc("alpha", "x").await.unwrap(), json!({"v": 10}));
    c.write_docs("alpha", r#"{"id": "42", "v": 20}"#.to_string(), true, false)
        .await
        .unwrap();
    assert_eq!(
        c.get_doc("alpha", "42").await.unwrap(),
        json!({"id": "42", "v": 20})
    );
    let stats = c.category("alpha").await.unwrap();
    assert_eq!(stats.docs, 5);
    assert_eq!(stats.shard_stats.iter().map(|s| s.docs).sum::<u64>(), 5);

    // Scan everything with a small page size: every document exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.scan("alpha", cursor.as_deref(), 2).await.unwrap();
        assert!(page.docs.len() <= 2);
        seen.extend(page.docs.into_iter().map(|d| d.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort();
    let mut expect = ids.clone();
    expect.sort();
    assert_eq!(seen, expect);

    // Delete a document, then the category.
    c.delete_doc("alpha", "x").await.unwrap();
    assert_eq!(
        c.get_doc("alpha", "x").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        c.delete_doc("alpha", "x").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(c.category("alpha").await.unwrap().docs, 4);
    let names: Vec<String> = c
        .categories()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["alpha", "beta"]);
    // It holds documents: removed only when forced.
    let refused = c.delete_category("alpha").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(shoal_client::protocol::ErrorCode::ForceRequired)
    );
    assert_eq!(c.category("alpha").await.unwrap().docs, 4);
    c.delete_category_with("alpha", shoal_client::Removal::Force)
        .await
        .unwrap();
    assert_eq!(c.category("alpha").await.unwrap_err().status(), Some(404));
    assert_eq!(
        c.get_doc("alpha", "42").await.unwrap_err().status(),
        Some(404)
    );

    // Writing to a missing category creates it with the default shard level.
    c.write_docs("gamma", "{\"a\": 1}\n".to_string(), true, false)
        .await
        .unwrap();
    assert_eq!(c.category("gamma").await.unwrap().shards, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_with_and_without_reduce() {
    let node = TestNode::start();
    let c = node.client();
    let docs = orders(5000);
    let expect_total: f64 = docs
        .iter()
        .map(|d| d["price"].as_f64().unwrap() * d["qty"].as_f64().unwrap())
        .sum();
    c.create_category("orders", Some(4)).await.unwrap();
    c.write_docs("orders", ndjson(&docs), true, false)
        .await
        .unwrap();

    deploy(&c, "name = \"total\"", TOTAL_FN).await;
    deploy(
        &c,
        "name = \"cheap\"",
        "def map(doc):\n    return doc['id'] if doc['price'] < 2 else None\n",
    )
    .await;
    deploy(
        &c,
        "name = \"batch\"",
        "def map_batch(docs):\n    return [d['price'] * d['qty'] for d in docs]\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    deploy(
        &c,
        "name = \"ids\"",
        "def map_batch(docs):\n    return [d['id'] for d in docs]\n",
    )
    .await;

    // map + reduce: one number, twice (the second from resident shards).
    for round in 0..2 {
        let (values, last) = query(&c, "orders", "total", false).await;
        assert!(values.is_empty());
        let done = &last["done"];
        assert_eq!(done["docs"], 5000);
        assert_eq!(done["reduced"], true);
        let total = done["result"].as_f64().unwrap();
        assert!(
            (total - expect_total).abs() < 1e-6 * expect_total,
            "{total} vs {expect_total}"
        );
        if round == 1 {
            assert_eq!(done["cached_shards"], done["shards"], "{done}");
        }
    }

    // map only: values in document order (by shard, then id), Nones dropped.
    let (values, last) = query(&c, "orders", "cheap", false).await;
    let mut expect: Vec<(u32, String)> = docs
        .iter()
        .filter(|d| d["price"].as_f64().unwrap() < 2.0)
        .map(|d| {
            let id = d["id"].as_str().unwrap().to_string();
            (shoal_engine_shard(&id, 4), id)
        })
        .collect();
    expect.sort();
    let expect: Vec<Value> = expect.into_iter().map(|(_, id)| json!(id)).collect();
    assert_eq!(values, expect);
    assert_eq!(last["done"]["values"], expect.len());

    // map_batch, with and without reduce.
    let (_, last) = query(&c, "orders", "batch", false).await;
    let total = last["done"]["result"].as_f64().unwrap();
    assert!((total - expect_total).abs() < 1e-6 * expect_total);
    let (values, _) = query(&c, "orders", "ids", false).await;
    assert_eq!(values.len(), 5000);

    // A write changes the next query's answer (resident copies stay coherent).
    c.write_docs(
        "orders",
        r#"[{"id": "extra", "price": 1000.0, "qty": 2, "name": "x"}]"#.to_string(),
        false,
        false,
    )
    .await
    .unwrap();
    let (_, last) = query(&c, "orders", "total", false).await;
    let total = last["done"]["result"].as_f64().unwrap();
    assert!(
        (total - expect_total - 2000.0).abs() < 1e-6 * expect_total,
        "{total}"
    );
    c.delete_doc("orders", "extra").await.unwrap();
    let (_, last) = query(&c, "orders", "total", false).await;
    assert!((last["done"]["result"].as_f64().unwrap() - expect_total).abs() < 1e-6 * expect_total);

    // The CLI: reduce result on stdout, values to a file.
    let out = node.cli(&["query", "orders", "total"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((printed - expect_total).abs() < 1e-6 * expect_total);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ids.ndjson");
    let out = node.cli(&["query", "orders", "ids", "--output", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        5000
    );
}

/// The node's shard choice (FNV-1a of the id), recomputed independently.
fn shoal_engine_shard(id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn map_errors_fail_the_query_or_are_skipped() {
    let node = TestNode::start();
    let c = node.client();
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("d{i:03}"), "n": i}))
        .collect();
    c.write_docs("nums", ndjson(&docs), true, false)
        .await
        .unwrap();
    deploy(
        &c,
        "name = \"picky\"",
        "def map(doc):\n    if doc['n'] % 100 == 7:\n        raise ValueError('bad ' + doc['id'])\n    return doc['n']\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;

    let (_, last) = query(&c, "nums", "picky", false).await;
    let err = &last["error"];
    assert_eq!(err["code"], "map_failed", "{last}");
    let doc_id = err["doc_id"].as_str().unwrap();
    assert!(["d007", "d107", "d207"].contains(&doc_id), "{doc_id}");
    assert_eq!(err["error"]["type"], "raised");
    assert_eq!(err["error"]["exception"], "ValueError");
    assert!(
        err["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("raise ValueError")
    );

    let (_, last) = query(&c, "nums", "picky", true).await;
    let done = &last["done"];
    assert_eq!(done["errors"], 3);
    let mut failed: Vec<&str> = done["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, vec!["d007", "d107", "d207"]);
    let expect: i64 = (0..300).filter(|i| i % 100 != 7).sum();
    assert_eq!(done["result"], json!(expect));

    // The CLI exits non-zero and names the document.
    let out = node.cli(&["query", "nums", "picky"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("map failed on document"));

    // A function without map cannot be queried.
    deploy(
        &c,
        "name = \"nomap\"",
        "def handler(e, ctx):\n    return 1\n",
    )
    .await;
    let (_, last) = query(&c, "nums", "nomap", false).await;
    assert!(
        last["error"]["message"].as_str().unwrap().contains("map"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_over_more_data_than_the_batch_window() {
    let node = TestNode::start();
    let c = node.client();
    // ~40 MB of documents in 2 shards: many batches per shard.
    let pad = "p".repeat(300);
    let docs: Vec<Value> = (0..120_000)
        .map(|i| json!({"id": format!("k{i:07}"), "n": i, "pad": pad}))
        .collect();
    c.create_category("big", Some(2)).await.unwrap();
    for chunk in docs.chunks(40_000) {
        c.write_docs("big", ndjson(chunk), true, false)
            .await
            .unwrap();
    }
    deploy(
        &c,
        "name = \"count\"",
        "def map(doc):\n    return 1\n\ndef reduce(a, b):\n    return a + b\n",
    )
    .await;
    deploy(
        &c,
        "name = \"echo-n\"",
        "def map(doc):\n    return doc['n']\n",
    )
    .await;
    let (_, last) = query(&c, "big", "count", false).await;
    assert_eq!(last["done"]["result"], json!(120_000));
    // Values streamed in document order, all of them.
    let (values, last) = query(&c, "big", "echo-n", false).await;
    assert_eq!(values.len(), 120_000);
    assert_eq!(last["done"]["values"], 120_000);
    let mut sorted: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
    sorted.sort();
    assert_eq!(sorted, (0..120_000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_survive_kill9_and_stay_queryable() {
    let mut node = TestNode::start();
    let c = node.client();
    let docs = orders(3000);
    let expect_total: f64 = docs
        .iter()
        .map(|d| d["price"].as_f64().unwrap() * d["qty"].as_f64().unwrap())
        .sum();
    for chunk in docs.chunks(1000) {
        c.write_docs("orders", ndjson(chunk), true, false)
            .await
            .unwrap();
    }
    deploy(&c, "name = \"total\"", TOTAL_FN).await;
    node.kill9_and_restart();
    let c = node.client();
    assert_eq!(c.category("orders").await.unwrap().docs, 3000);
    let (_, last) = query(&c, "orders", "total", false).await;
    let total = last["done"]["result"].as_f64().unwrap();
    assert!((total - expect_total).abs() < 1e-6 * expect_total);
    assert_eq!(
        last["done"]["cached_shards"], 0,
        "the first query after a start reads from disk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_documents_are_refused_and_nothing_is_half_written() {
    let node = TestNode::start_with(&["--max-doc-bytes", "1000"]);
    let c = node.client();
    c.create_category("cat", Some(2)).await.unwrap();
    c.write_docs(
        "cat",
        r#"[{"id": "keep", "v": 1}]"#.to_string(),
        false,
        false,
    )
    .await
    .unwrap();
    let json_ct = Some("application/json");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![(
        "/v1/categories/cat/docs",
        format!(
            r#"[{{"id": "a"}}, {{"id": "big", "pad": "{}"}}]"#,
            "x".repeat(2000)
        )
        .into_bytes(),
        413,
        "document_too_large",
    )];
    for (path, body, status, code) in cases {
        let (got, text) = c.raw("POST", path, json_ct, body).await.unwrap();
        assert_eq!(got, status, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "{text}");
    }
    // Nothing of the refused writes landed.
    let cat = c.category("cat").await.unwrap();
    assert_eq!(cat.docs, 1);
    assert_eq!(c.get_doc("cat", "a").await.unwrap_err().status(), Some(404));

    // The CLI: write from a file with the progress bar path, get, rm.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("docs.ndjson");
    std::fs::write(&file, ndjson(&orders(100))).unwrap();
    let out = node.cli(&["write", "cli-cat", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Wrote 100 documents"));
    let out = node.cli(&["get", "cli-cat", "o000003"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["qty"], 3);
    assert!(node.cli(&["rm", "cli-cat", "o000003"]).status.success());
    assert!(!node.cli(&["get", "cli-cat", "o000003"]).status.success());
    let out = node.cli(&["categories"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-cat"));
    let out = node.cli_with_stdin(
        &["write", "cli-cat", "-"],
        Some("[{\"id\": \"s1\"}, {\"id\": \"s2\"}]"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.category("cli-cat").await.unwrap().docs, 101);
}
