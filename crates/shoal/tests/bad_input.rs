//! End to end: bad input gets a 4xx with a JSON error body and changes
//! nothing — never a 500.

mod common;

use common::{TestNode, deploy};
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

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly so that unsafe paths can be built.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_4xx_answers() {
    let node = TestNode::start_with(&["--max-body-bytes", "4096", "--max-archive-bytes", "65536"]);
    let c = node.client();
    deploy(&c, "name = \"ok\"", "def handler(e, ctx):\n    return e\n").await;
    let json = Some("application/json");
    let tarct = Some("application/x-tar");

    // Malformed JSON and wrong types.
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke",
        json,
        b"{\"a\": ".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke",
        json,
        b"[1,2] trailing".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke",
        json,
        vec![0xff, 0xfe],
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke?mode=later",
        json,
        b"{}".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/tokens",
        json,
        b"{\"role\": 5}".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/tokens",
        json,
        b"{\"role\": \"king\"}".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/tokens",
        json,
        b"not json".to_vec(),
        400,
        "invalid_input",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/tokens",
        None,
        b"{\"role\": \"reader\"}".to_vec(),
        415,
        "unsupported_media_type",
    )
    .await;

    // Invalid names and unknown things.
    expect(
        &c,
        "POST",
        "/v1/functions/Bad%20Name/invoke",
        json,
        b"{}".to_vec(),
        400,
        "invalid_name",
    )
    .await;
    expect(
        &c,
        "GET",
        "/v1/functions/UPPER",
        None,
        vec![],
        400,
        "invalid_name",
    )
    .await;
    expect(
        &c,
        "DELETE",
        "/v1/functions/a%2Fb",
        None,
        vec![],
        400,
        "invalid_name",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/nope/invoke",
        json,
        b"{}".to_vec(),
        404,
        "function_not_found",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/nope/invoke?mode=async",
        json,
        b"{}".to_vec(),
        404,
        "function_not_found",
    )
    .await;
    expect(
        &c,
        "GET",
        "/v1/functions/nope",
        None,
        vec![],
        404,
        "function_not_found",
    )
    .await;
    expect(
        &c,
        "DELETE",
        "/v1/functions/nope",
        None,
        vec![],
        404,
        "function_not_found",
    )
    .await;
    expect(
        &c,
        "GET",
        "/v1/invocations/nope",
        None,
        vec![],
        404,
        "invocation_not_found",
    )
    .await;
    expect(
        &c,
        "GET",
        "/v1/invocations/nope/logs",
        None,
        vec![],
        404,
        "invocation_not_found",
    )
    .await;
    expect(
        &c,
        "DELETE",
        "/v1/tokens/nope",
        None,
        vec![],
        404,
        "token_not_found",
    )
    .await;
    expect(
        &c,
        "GET",
        "/v1/nothing-here",
        None,
        vec![],
        404,
        "route_not_found",
    )
    .await;
    expect(
        &c,
        "PUT",
        "/v1/functions",
        None,
        vec![],
        405,
        "method_not_allowed",
    )
    .await;

    // Bodies over the limit: 413, for events and archives.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke",
        json,
        big.clone().into_bytes(),
        413,
        "payload_too_large",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions/ok/invoke?mode=async",
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

    // Bad function archives.
    expect(
        &c,
        "POST",
        "/v1/functions",
        json,
        b"{}".to_vec(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        b"definitely not a tar archive".repeat(40),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[("main.py", "x = 1")]),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[
            ("shoal.toml", "name = \"x\"\ntimeout = \"forever\""),
            ("main.py", ""),
        ]),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[
            ("shoal.toml", "name = \"x\"\nretries = 500"),
            ("main.py", ""),
        ]),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[("shoal.toml", "name = \"x\""), ("other.py", "")]),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[
            ("shoal.toml", "name = \"x\""),
            ("main.py", ""),
            ("../evil.py", ""),
        ]),
        400,
        "invalid_function",
    )
    .await;
    expect(
        &c,
        "POST",
        "/v1/functions",
        tarct,
        tar_of(&[
            ("shoal.toml", "name = \"x\""),
            ("main.py", ""),
            ("/etc/evil.py", ""),
        ]),
        400,
        "invalid_function",
    )
    .await;

    // Nothing changed: still exactly one function, version 1, still working.
    let fs = c.functions().await.unwrap();
    assert_eq!(fs.len(), 1);
    assert_eq!((fs[0].name.as_str(), fs[0].version), ("ok", 1));
    assert_eq!(
        c.invoke("ok", "[1]").await.unwrap().result.unwrap(),
        serde_json::json!([1])
    );
    assert!(
        !node.data_dir.join("functions/x").exists()
            || std::fs::read_dir(node.data_dir.join("functions/x"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(!node.data_dir.join("evil.py").exists());

    // An empty body is the empty event.
    let (status, body) = c
        .raw("POST", "/v1/functions/ok/invoke", None, vec![])
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "{}"));
}
