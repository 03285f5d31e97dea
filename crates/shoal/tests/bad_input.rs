//! End to end: the node's body limits (`--max-body-bytes`,
//! `--max-archive-bytes`) reach its router. Every other answer to bad input
//! (status, code, message, nothing changed) is checked without a node, in
//! the router tier: `crates/shoal-server/tests/router`.

mod common;

use common::TestNode;
use serde_json::Value;

/// Sends a raw request and checks status and error code.
async fn expect(
    c: &shoal_client::Client,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
    status: u16,
    code: &str,
) {
    let (got, text) = c.raw(method, path, ct, body).await.unwrap();
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
    assert_eq!(got, status, "{method} {path}: {text}");
    assert_eq!(v["error"]["code"], code, "{method} {path}: {text}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_4xx_answers() {
    let node = TestNode::start_with(&["--max-body-bytes", "4096", "--max-archive-bytes", "65536"]);
    let c = node.client();
    let json = Some("application/json");
    let tarct = Some("application/x-tar");

    // Bodies over the limits given on the command line: 413, for events and
    // archives.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke",
        json,
        big.into_bytes(),
        413,
        "payload_too_large",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        vec![0u8; 70_000],
        413,
        "payload_too_large",
    )
    .await;
}
