//! End to end: a function returns `shoal.Response` (bytes, content type,
//! status, headers); a synchronous invoke answers with exactly those, the
//! CLI writes the bytes, the Python client hands back a `Response`,
//! everything else shows its JSON form; a bad header fails the invocation
//! cleanly; cached Responses are answered byte for byte. And
//! `max_invocations_per_worker`: workers are replaced after N invocations.
//! On the embedded store, and all of it again on Redis.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{TestNode, deploy, repo_root, wait_final};
use serde_json::json;
use shoal_client::{Answer, Binary, Client};
use shoal_store_redis::testing::RedisServer;

const TILE_PY: &str = r#"
import os

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\x00\xff" * 100

def handler(event, ctx):
    if os.environ.get("RUNS"):
        with open(os.environ["RUNS"], "a") as f:
            f.write("x")
    kind = event.get("kind", "png")
    if kind == "png":
        return ctx.Response(PNG, content_type="image/png", status=201, headers={"X-Tile": "3/4", "Cache-Control": "max-age=60"})
    if kind == "text":
        return ctx.Response("héllo ✓", content_type="text/html")
    if kind == "missing":
        return ctx.Response("no such tile", status=404)
    if kind == "bad_header":
        return ctx.Response(b"x", headers={"Connection": "close"})
    if kind == "sneaky_header":
        # Past the Response's own checks: the node checks again.
        r = ctx.Response(b"x")
        r.headers["transfer-encoding"] = "chunked"
        return r
    if kind == "json":
        return {"plain": True}
    if kind == "big":
        return ctx.Response(bytes(range(256)) * (event["n"] // 256))
    raise ValueError(kind)
"#;

fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(0..=255u8);
    for _ in 0..100 {
        v.extend_from_slice(b"\x00\xff");
    }
    v
}

async fn binary(c: &Client, event: &str) -> Binary {
    match c.invoke_answer("tile", event).await.unwrap() {
        Answer::Binary(b) => b,
        Answer::Value(v) => panic!("expected bytes, got {:?}", v.result),
    }
}

fn header<'a>(b: &'a Binary, name: &str) -> Option<&'a str> {
    b.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn answered_as_they_are(node: &TestNode) {
    let c = node.client();
    deploy(&c, "name = \"tile\"\nretries = 0\n", TILE_PY).await;

    let tile = binary(&c, r#"{"kind":"png"}"#).await;
    assert_eq!(tile.body.as_ref(), png().as_slice(), "byte for byte");
    assert_eq!(tile.status, 201);
    assert_eq!(tile.content_type, "image/png");
    assert_eq!(header(&tile, "x-tile"), Some("3/4"));
    assert_eq!(header(&tile, "cache-control"), Some("max-age=60"));
    assert!(!tile.id.is_empty());

    let text = binary(&c, r#"{"kind":"text"}"#).await;
    assert_eq!(text.body.as_ref(), "héllo ✓".as_bytes());
    assert_eq!(text.content_type, "text/html; charset=utf-8");
    assert_eq!(text.status, 200);

    // A body of the whole result limit (6 MiB) comes back whole, and its
    // record (8 MiB of base64) is stored.
    let n = 6 * 1024 * 1024;
    let big = binary(&c, &format!(r#"{{"kind":"big","n":{n}}}"#)).await;
    assert_eq!(big.body.len(), n);
    assert!(
        big.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 256) as u8)
    );
    let record = wait_final(&c, &big.id, Duration::from_secs(30)).await;
    let stored = record.output.unwrap()["$response"]["body_base64"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(stored, n.div_ceil(3) * 4);

    // A status the function chose is its answer, not an error of the node.
    let missing = binary(&c, r#"{"kind":"missing"}"#).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body.as_ref(), b"no such tile");
    assert_eq!(missing.content_type, "text/plain; charset=utf-8");
    let record = c.invocation(&missing.id).await.unwrap();
    assert_eq!(record.status, "succeeded");

    // Bad headers fail the invocation with a clear error, not a 500: where
    // the Response is made, or (past its checks) in the node.
    for (event, kind, says) in [
        (r#"{"kind":"bad_header"}"#, "raised", "'connection'"),
        (
            r#"{"kind":"sneaky_header"}"#,
            "bad_result",
            "\"transfer-encoding\"",
        ),
    ] {
        let done = c.invoke("tile", event).await.unwrap();
        let failure = done.result.unwrap_err();
        assert_eq!(failure.error.kind, kind, "{failure:?}");
        assert!(failure.error.message.contains(says), "{failure:?}");
        let record = c.invocation(&done.id).await.unwrap();
        assert_eq!(record.status, "failed");
    }

    // A plain result is still JSON.
    match c.invoke_answer("tile", r#"{"kind":"json"}"#).await.unwrap() {
        Answer::Value(v) => assert_eq!(v.result.unwrap(), json!({"plain": true})),
        Answer::Binary(b) => panic!("{b:?}"),
    }
}

async fn json_forms_elsewhere(node: &TestNode) {
    let c = node.client();
    deploy(&c, "name = \"tile\"\n", TILE_PY).await;
    let expected = json!({"$response": {
        "status": 200,
        "content_type": "text/html; charset=utf-8",
        "headers": {},
        "body_base64": "aMOpbGxvIOKckw==",
    }});

    // An asynchronous invocation's record.
    let id = c.invoke_async("tile", r#"{"kind":"text"}"#).await.unwrap();
    let record = wait_final(&c, &id, Duration::from_secs(30)).await;
    assert_eq!(record.status, "succeeded", "{record:?}");
    assert_eq!(record.output, Some(expected.clone()));

    // A synchronous one's record, and `Client::invoke` (JSON all along).
    let done = c.invoke("tile", r#"{"kind":"text"}"#).await.unwrap();
    assert_eq!(done.result.unwrap(), expected);
    let record = c.invocation(&done.id).await.unwrap();
    assert_eq!(record.output, Some(expected.clone()));

    // The CLI: the bytes to a pipe, to --output FILE, the JSON form with --json.
    let out = node.cli(&["invoke", "tile", r#"{"kind":"png"}"#]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, png(), "raw bytes on stdout");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tile.png");
    let out = node.cli(&[
        "invoke",
        "tile",
        r#"{"kind":"png"}"#,
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), png());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("wrote 464 bytes of image/png"), "{said}");
    let out = node.cli(&["--json", "invoke", "tile", r#"{"kind":"text"}"#]);
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["output"], expected);
    // A JSON result goes to --output too.
    let out = node.cli(&[
        "invoke",
        "tile",
        r#"{"kind":"json"}"#,
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, json!({"plain": true}));

    // The Python client hands back a Response.
    let script = r#"
from shoal import Client, Response
c = Client()
r = c.invoke("tile", {"kind": "png"})
assert isinstance(r, Response), r
assert (r.status, r.content_type) == (201, "image/png"), r
assert r.headers == {"x-tile": "3/4", "cache-control": "max-age=60"}, r.headers
assert r.body[:8] == b"\x89PNG\r\n\x1a\n" and len(r.body) == 464, r
m = c.invoke("tile", {"kind": "missing"})
assert (m.status, m.text) == (404, "no such tile"), m
assert c.invoke("tile", {"kind": "json"}) == {"plain": True}
out = c.invocation(c.invoke_async("tile", {"kind": "text"}))
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .env("PYTHONPATH", repo_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn cached_byte_for_byte(node: &TestNode) {
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let runs_file = tmp.path().canonicalize().unwrap().join("runs");
    let runs = || {
        std::fs::read_to_string(&runs_file)
            .map(|s| s.len())
            .unwrap_or(0)
    };
    let manifest = format!(
        "name = \"tile\"\n[env]\nRUNS = \"{}\"\n[cache]\nttl = \"60s\"\n",
        runs_file.display()
    );
    deploy(&c, &manifest, TILE_PY).await;
    let first = binary(&c, r#"{"kind":"png"}"#).await;
    assert_eq!(runs(), 1);
    let second = binary(&c, r#"{ "kind": "png" }"#).await;
    assert_eq!(runs(), 1, "answered from the cache");
    assert_ne!(first.id, second.id);
    assert_eq!(second.body.as_ref(), png().as_slice());
    assert_eq!(
        (second.status, second.content_type.as_str()),
        (201, "image/png")
    );
    assert_eq!(header(&second, "x-tile"), Some("3/4"));
    assert!(c.invocation(&second.id).await.unwrap().cache_hit);
}

/// Gathers its job's children's Responses (their JSON form) into one.
const COLLECT_PY: &str = r#"
def handler(event, ctx):
    parts = [ctx.Response.from_json(r["output"]) for r in ctx.results(event["job"])]
    return ctx.Response(b"|".join(p.body for p in parts), headers={"x-parts": str(len(parts))})
"#;

async fn json_forms_in_jobs(node: &TestNode) {
    let c = node.client();
    deploy(&c, "name = \"tile\"\n", TILE_PY).await;
    deploy(&c, "name = \"collect\"\n", COLLECT_PY).await;
    let job = c
        .start_job(
            "tile",
            vec![json!({"kind": "text"}), json!({"kind": "missing"})],
            Some("collect"),
        )
        .await
        .unwrap();
    common::wait_job(&c, &job, Duration::from_secs(30)).await;
    let results = c.job_results(&job, 0, 10).await.unwrap();
    let outputs: Vec<_> = results
        .results
        .iter()
        .map(|r| r.output.clone().unwrap())
        .collect();
    assert_eq!(outputs[0]["$response"]["body_base64"], "aMOpbGxvIOKckw==");
    assert_eq!(outputs[1]["$response"]["status"], 404);
    assert_eq!(outputs[1]["$response"]["body_base64"], "bm8gc3VjaCB0aWxl");

    // The fan-in read them back as Responses and returned one.
    let mut fan_in = None;
    common::until(
        "the fan-in to finish",
        Duration::from_secs(30),
        async || {
            let page = c
                .list_invocations(&[("function", "collect"), ("status", "succeeded")])
                .await
                .unwrap();
            fan_in = page.invocations.first().map(|i| i.id.clone());
            fan_in.is_some()
        },
    )
    .await;
    let record = c.invocation(&fan_in.unwrap()).await.unwrap();
    assert_eq!(
        record.output,
        Some(json!({"$response": {
            "status": 200,
            "content_type": "application/octet-stream",
            "headers": {"x-parts": "2"},
            // "héllo ✓|no such tile"
            "body_base64": "aMOpbGxvIOKck3xubyBzdWNoIHRpbGU=",
        }}))
    );
}

const PID_PY: &str = r#"
import os

def handler(event, ctx):
    return os.getpid()
"#;

async fn replaced_after_max_invocations(node: &TestNode) {
    let c = node.client();
    deploy(
        &c,
        "name = \"leaky\"\nmax_invocations_per_worker = 3\n",
        PID_PY,
    )
    .await;
    let mut pids = Vec::new();
    for _ in 0..10 {
        let done = c.invoke("leaky", "{}").await.unwrap();
        pids.push(done.result.expect("no invocation fails").as_u64().unwrap());
    }
    let distinct: BTreeSet<u64> = pids.iter().copied().collect();
    assert!(distinct.len() >= 4, "{pids:?}");
    // No worker served more than 3.
    for pid in &distinct {
        assert!(pids.iter().filter(|p| *p == pid).count() <= 3, "{pids:?}");
    }
    let view = c.function("leaky").await.unwrap();
    assert_eq!(view.version, 1);

    // Without it, warm workers keep serving.
    deploy(&c, "name = \"steady\"\n", PID_PY).await;
    let mut pids = BTreeSet::new();
    for _ in 0..6 {
        let done = c.invoke("steady", "{}").await.unwrap();
        pids.insert(done.result.unwrap().as_u64().unwrap());
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_answered_as_they_are() {
    answered_as_they_are(&TestNode::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn everywhere_else_a_response_is_its_json_form() {
    json_forms_elsewhere(&TestNode::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_responses_are_answered_byte_for_byte() {
    cached_byte_for_byte(&TestNode::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn job_children_results_are_json_forms() {
    json_forms_in_jobs(&TestNode::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_are_replaced_after_max_invocations() {
    replaced_after_max_invocations(&TestNode::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn all_of_it_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    answered_as_they_are(&node).await;
    json_forms_elsewhere(&node).await;
    cached_byte_for_byte(&node).await;
    json_forms_in_jobs(&node).await;
    replaced_after_max_invocations(&node).await;
}
