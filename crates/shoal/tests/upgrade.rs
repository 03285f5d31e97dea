//! A data directory written by the previous release (layout 1, before the
//! records were typed) opens with this build and keeps every function,
//! invocation, document, queue message, job, limiter and token: each API
//! answer the old node gave (recorded in `fixtures/data-v1.expected.json`
//! when the fixture was made) is given again, and the node goes on working
//! on the migrated data.
//!
//! The fixture was made with the release at commit e88b7ff: `shoal serve`,
//! then the README's tour (hello sync and async, documents in `orders`,
//! the fan-out job square → total), a function that raises (`boom`), a
//! queue `inbox` with two waiting messages, a limiter and a reader token.

mod common;

use std::path::Path;

use common::TestNode;
use serde_json::Value;

fn fixture() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Drops what depends on the time of the request.
fn strip_clock(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("oldest_age_ms");
            map.values_mut().for_each(strip_clock);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_clock),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_data_directory_keeps_everything() {
    let expected: serde_json::Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("data-v1.expected.json")).unwrap(),
    )
    .unwrap();
    let node = TestNode::start_on_copy_of(&fixture().join("data-v1"));
    let client = node.client();
    assert!(expected.len() >= 19, "the fixture lists every answer");
    for (key, want) in &expected {
        let (path, is_text) = match key.strip_prefix("logs:") {
            Some(p) => (p, true),
            None => (key.as_str(), false),
        };
        let (status, body) = client.raw("GET", path, None, Vec::new()).await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        if is_text {
            assert_eq!(Value::String(body), *want, "GET {path}");
            continue;
        }
        let mut got: Value = serde_json::from_str(&body).unwrap();
        let mut want = want.clone();
        strip_clock(&mut got);
        strip_clock(&mut want);
        assert_eq!(got, want, "GET {path} differs after the upgrade");
    }

    // The migrated node works on its data: the queued messages are still
    // there to consume, functions run, documents are written next to the old.
    let inbox = &expected["/v1/queues/inbox"];
    assert_eq!(inbox["depth"]["waiting"], 2, "{inbox}");
    let out = client
        .invoke("hello", r#"{"name": "again"}"#)
        .await
        .unwrap();
    assert_eq!(out.result.unwrap(), serde_json::json!({"hello": "again"}));
    let (status, body) = client
        .raw("GET", "/v1/categories/orders/docs/o1", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"id": "o1", "price": 2, "qty": 3})
    );
}
