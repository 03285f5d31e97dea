//! End to end: the key-value store on a real `shoal serve`, on the embedded
//! store and on a real `redis-server`: the cooldown pattern (`set` with
//! `nx` and a ttl), expiry on time, compare-and-set, incr, list paging,
//! bad input as 4xx JSON errors, and the `shoal kv` CLI.

mod common;

use std::time::Duration;

use common::{TestNode, deploy};
use serde_json::{Value, json};
use shoal_client::protocol::ErrorCode;
use shoal_client::{Client, KvSetOptions};
use shoal_store_redis::testing::RedisServer;

fn ttl(d: Duration) -> KvSetOptions {
    KvSetOptions {
        ttl: Some(d),
        ..KvSetOptions::default()
    }
}

fn code(r: Result<impl std::fmt::Debug, shoal_client::Error>) -> (u16, ErrorCode, String) {
    match r {
        Err(shoal_client::Error::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("want an API error, got {other:?}"),
    }
}

/// Everything, against one node.
async fn exercise(c: &Client) {
    // The cooldown: the first `set(nx, ttl)` wins; until it expires, the
    // next is refused with the holder's version; then one wins again.
    let cooldown = KvSetOptions {
        ttl: Some(Duration::from_millis(800)),
        nx: true,
        ..KvSetOptions::default()
    };
    let first = c
        .kv_set("cooldown:alice", &json!(true), &cooldown)
        .await
        .unwrap();
    assert_eq!(
        first.expires_at_ms,
        Some(first.updated_at_ms + 800),
        "{first:?}"
    );
    let (status, code_, message) = code(c.kv_set("cooldown:alice", &json!(true), &cooldown).await);
    assert_eq!((status, code_), (409, ErrorCode::KeyConflict));
    assert!(
        message.contains(&format!("version {}", first.version)),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, code_, _) = code(c.kv_get("cooldown:alice").await);
    assert_eq!((status, code_), (404, ErrorCode::KeyNotFound));
    let again = c
        .kv_set("cooldown:alice", &json!(true), &cooldown)
        .await
        .unwrap();
    assert!(again.version > first.version);

    // Compare-and-set.
    let v1 = c
        .kv_set("cfg", &json!({"a": 1}), &KvSetOptions::default())
        .await
        .unwrap();
    assert_eq!(v1.expires_at_ms, None);
    let cas = |version| KvSetOptions {
        version: Some(version),
        ..KvSetOptions::default()
    };
    let v2 = c
        .kv_set("cfg", &json!({"a": 2}), &cas(v1.version))
        .await
        .unwrap();
    let (status, code_, message) = code(c.kv_set("cfg", &json!({"a": 3}), &cas(v1.version)).await);
    assert_eq!((status, code_), (409, ErrorCode::KeyConflict));
    assert!(
        message.contains(&format!("version {}", v2.version)),
        "{message}"
    );
    assert_eq!(c.kv_get("cfg").await.unwrap().value, json!({"a": 2}));

    // incr: from nothing, negative, on a ttl'd key keeping its expiry, and
    // refused on a non-integer.
    assert_eq!(c.kv_incr("hits", 1).await.unwrap().value, json!(1));
    assert_eq!(c.kv_incr("hits", -11).await.unwrap().value, json!(-10));
    let w = c
        .kv_set("window", &json!(5), &ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let w2 = c.kv_incr("window", 2).await.unwrap();
    assert_eq!(w2.value, json!(7));
    assert_eq!(w2.expires_at_ms, w.expires_at_ms);
    let (status, code_, _) = code(c.kv_incr("cfg", 1).await);
    assert_eq!((status, code_), (409, ErrorCode::NotAnInteger));

    // Delete by version, then absent.
    let (status, code_, _) = code(c.kv_delete("cfg", Some(v1.version)).await);
    assert_eq!((status, code_), (409, ErrorCode::KeyConflict));
    c.kv_delete("cfg", Some(v2.version)).await.unwrap();
    let (status, code_, _) = code(c.kv_delete("cfg", None).await);
    assert_eq!((status, code_), (404, ErrorCode::KeyNotFound));

    // List paging over a prefix, with keys holding `/` and spaces.
    let mut want = Vec::new();
    for i in 0..25 {
        let key = format!("user/{i:02} x");
        c.kv_set(&key, &json!(i), &KvSetOptions::default())
            .await
            .unwrap();
        want.push(key);
    }
    c.kv_set("user/short", &json!(0), &ttl(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut got, mut cursor) = (Vec::new(), None::<String>);
    let mut pages = 0;
    loop {
        let page = c.kv_list("user/", cursor.as_deref(), 7).await.unwrap();
        pages += 1;
        assert!(page.entries.len() <= 7);
        got.extend(page.entries.into_iter().map(|e| e.key));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want);
    assert!(pages >= 4, "{pages} pages");

    // Bad input: 4xx with a JSON error.
    let long = "k".repeat(513);
    for (method, path, body, status, says) in [
        ("GET", format!("/v1/kv/{long}"), "", 400, "at most 512"),
        (
            "PUT",
            "/v1/kv/k".to_string(),
            "{oops",
            400,
            "not one JSON value",
        ),
        (
            "PUT",
            "/v1/kv/k?nx=true&xx=true".to_string(),
            "1",
            400,
            "exclusive",
        ),
        ("PUT", "/v1/kv/k?ttl=0ms".to_string(), "1", 400, "1 ms"),
        (
            "PUT",
            "/v1/kv/k?ttl=never".to_string(),
            "1",
            400,
            "not a duration",
        ),
        (
            "POST",
            "/v1/kv/k/incr?by=x".to_string(),
            "",
            400,
            "invalid query",
        ),
        ("GET", "/v1/kv?limit=0".to_string(), "", 400, "limit"),
        (
            "GET",
            "/v1/kv/a%00b".to_string(),
            "",
            400,
            "control character",
        ),
    ] {
        let (got, text) = c
            .raw(
                method,
                &path,
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{method} {path}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kv_store_on_the_embedded_store() {
    let node = TestNode::start();
    exercise(&node.client()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kv_store_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    exercise(&node.client()).await;
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_kv_cli() {
    let node = TestNode::start();
    let set: Value = serde_json::from_str(&stdout(&node.cli(&[
        "--json",
        "kv",
        "set",
        "a/b",
        "{\"x\": 1}",
        "--ttl",
        "1h",
        "--nx",
    ])))
    .unwrap();
    assert_eq!(set["key"], "a/b");
    assert!(set["expires_at_ms"].is_u64(), "{set}");
    // Human output of get is the value.
    let got: Value = serde_json::from_str(&stdout(&node.cli(&["kv", "get", "a/b"]))).unwrap();
    assert_eq!(got, json!({"x": 1}));
    // A refused nx: exit non-zero, the API's code on stderr.
    let out = node.cli(&["--json", "kv", "set", "a/b", "2", "--nx"]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "key_conflict", "{err}");
    // Conflicting flags are refused by the CLI itself.
    assert!(
        !node
            .cli(&["kv", "set", "a/b", "2", "--nx", "--xx"])
            .status
            .success()
    );
    // Value from stdin; incr; ls; rm.
    stdout(&node.cli_with_stdin(&["kv", "set", "a/c"], Some("\"from stdin\"\n")));
    assert_eq!(
        stdout(&node.cli(&["kv", "incr", "n", "--by", "-2"])).trim(),
        "-2"
    );
    let ls: Value =
        serde_json::from_str(&stdout(&node.cli(&["--json", "kv", "ls", "a/"]))).unwrap();
    let keys: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a/b", "a/c"]);
    let table = stdout(&node.cli(&["kv", "ls"]));
    assert!(
        table.contains("from stdin") && table.contains("never"),
        "{table}"
    );
    stdout(&node.cli(&["kv", "rm", "a/c"]));
    let out = node.cli(&["--json", "kv", "get", "a/c"]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "key_not_found", "{err}");
}

const KV_PY: &str = r#"
def handler(event, ctx):
    op = event["op"]
    if op == "cooldown":
        return ctx.kv.set("cooldown:" + event["user"], True, ttl=event["ttl"], nx=True) is not None
    if op == "incr":
        return ctx.kv.incr("hits", event.get("by", 1))
    if op == "get":
        return ctx.kv.get(event["key"], "absent")
    if op == "cas":
        e = ctx.kv.entry("cfg")
        stale = ctx.kv.set("cfg", {"n": 0}, version=e["version"] - 1)
        fresh = ctx.kv.set("cfg", {"n": e["value"]["n"] + 1}, version=e["version"])
        return [stale, fresh["value"], ctx.kv.delete("cfg", version=e["version"]), ctx.kv.delete("cfg")]
    if op == "list":
        return [e["key"] for e in ctx.kv.list(event["prefix"])]
    if op == "not_int":
        try:
            ctx.kv.incr("cfg-text")
        except ctx.HostError as e:
            return e.code
    raise ValueError(op)
"#;

/// `ctx.kv` in a function: the seed-001 cooldown, incr, get with a
/// default, compare-and-set and delete by version, list, and the error code
/// of an incr on a non-integer; what the function writes the API reads.
async fn functions_use_ctx_kv(c: &Client) {
    deploy(c, "name = \"kvf\"\nhandler = \"main:handler\"\n", KV_PY).await;
    let call = |event: Value| async move {
        let done = c.invoke("kvf", &event.to_string()).await.expect("invoke");
        done.result
            .clone()
            .unwrap_or_else(|e| panic!("{event}: {e:?}"))
    };
    let cool = json!({"op": "cooldown", "user": "bob", "ttl": 0.5});
    assert_eq!(call(cool.clone()).await, json!(true));
    assert_eq!(call(cool.clone()).await, json!(false));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(cool).await, json!(true));

    assert_eq!(call(json!({"op": "incr"})).await, json!(1));
    assert_eq!(call(json!({"op": "incr", "by": 41})).await, json!(42));
    assert_eq!(c.kv_get("hits").await.unwrap().value, json!(42));
    assert_eq!(call(json!({"op": "get", "key": "hits"})).await, json!(42));
    assert_eq!(
        call(json!({"op": "get", "key": "nope"})).await,
        json!("absent")
    );

    c.kv_set("cfg", &json!({"n": 1}), &KvSetOptions::default())
        .await
        .unwrap();
    // A stale version is refused (None), the right one writes; deleting at
    // the old version then fails, without one succeeds.
    assert_eq!(
        call(json!({"op": "cas"})).await,
        json!([null, {"n": 2}, false, true])
    );
    let (status, _, _) = code(c.kv_get("cfg").await);
    assert_eq!(status, 404);

    for k in ["p:b", "p:a", "q:c"] {
        c.kv_set(k, &json!(1), &KvSetOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(
        call(json!({"op": "list", "prefix": "p:"})).await,
        json!(["p:a", "p:b"])
    );
    c.kv_set("cfg-text", &json!("x"), &KvSetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        call(json!({"op": "not_int"})).await,
        json!("not_an_integer")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_use_ctx_kv_on_the_embedded_store() {
    let node = TestNode::start();
    functions_use_ctx_kv(&node.client()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_use_ctx_kv_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    functions_use_ctx_kv(&node.client()).await;
}
