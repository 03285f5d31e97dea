//! Error tables: one test per table, one row per case. Each row is a
//! request and the status, code and a piece of the message it must get;
//! every body must be `{"error": {"code", "message"}}` with a message.
//!
//! The rows run against `App::seeded()`: function `ok`, category `cat`
//! (document `keep`), queue `jobs` fed to `worker`, queue `measured`,
//! limiter `vendor` used by `limited`.

use crate::app::{
    App, Case, JSON, MAX_ARCHIVE, MAX_BODY, MAX_DOC, MAX_WRITE, TAR, case, check, run_table, tar_of,
};

const NAME_RULE: &str = "use 1-64 characters of a-z, 0-9, '-' and '_'";

/// 404 with the `*_not_found` code of what is missing.
#[tokio::test]
async fn missing_things_are_404_with_their_code() {
    let app = App::seeded().await;
    let f = "function_not_found";
    let i = "invocation_not_found";
    let c = "category_not_found";
    let q = "queue_not_found";
    let j = "job_not_found";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/functions/nope/invoke", JSON, "{}", 404, f, "function `nope` not found"),
        case("POST", "/v1/functions/nope/invoke?mode=async", JSON, "{}", 404, f, "`nope`"),
        case("GET", "/v1/functions/nope", None, "", 404, f, "`nope`"),
        case("DELETE", "/v1/functions/nope", None, "", 404, f, "`nope`"),
        case("GET", "/v1/invocations/nope", None, "", 404, i, "invocation `nope` not found"),
        case("GET", "/v1/invocations/nope/logs", None, "", 404, i, "`nope`"),
        case("DELETE", "/v1/tokens/nope", None, "", 404, "token_not_found", "token `nope`"),
        case("GET", "/v1/categories/nope", None, "", 404, c, "category `nope` not found"),
        case("DELETE", "/v1/categories/nope", None, "", 404, c, "`nope`"),
        case("GET", "/v1/categories/nope/docs", None, "", 404, c, "`nope`"),
        case("GET", "/v1/categories/nope/docs/x", None, "", 404, c, "`nope`"),
        case("DELETE", "/v1/categories/nope/docs/x", None, "", 404, c, "`nope`"),
        case("GET", "/v1/categories/cat/docs/missing", None, "", 404, "document_not_found", "document `missing` not found"),
        case("DELETE", "/v1/categories/cat/docs/missing", None, "", 404, "document_not_found", "`missing`"),
        case("POST", "/v1/categories/nope/query", JSON, r#"{"function": "ok"}"#, 404, c, "`nope`"),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"function": "nope"}"#, 404, f, "`nope`"),
        case("GET", "/v1/queues/nope", None, "", 404, q, "queue `nope` not found"),
        case("DELETE", "/v1/queues/nope", None, "", 404, q, "`nope`"),
        case("POST", "/v1/queues/nope/messages", JSON, r#"{"body": 1}"#, 404, q, "`nope`"),
        case("POST", "/v1/queues/nope/purge", None, "", 404, q, "`nope`"),
        case("GET", "/v1/queues/nope/dead-letters", None, "", 404, q, "`nope`"),
        case("POST", "/v1/queues/nope/dead-letters/redrive", JSON, "{}", 404, q, "`nope`"),
        case("POST", "/v1/queues/nope/dead-letters/purge", JSON, "{}", 404, q, "`nope`"),
        case("GET", "/v1/queues/nope/stats", None, "", 404, q, "`nope`"),
        case("DELETE", "/v1/limiters/nope", None, "", 404, "limiter_not_found", "limiter `nope` not found"),
        case("POST", "/v1/jobs", JSON, r#"{"function": "nope", "events": [{}]}"#, 404, f, "`nope`"),
        case("POST", "/v1/jobs", JSON, r#"{"function": "ok", "events": [{}], "then": "nope"}"#, 404, f, "`nope`"),
        case("GET", "/v1/jobs/nope", None, "", 404, j, "job `nope` not found"),
        case("GET", "/v1/jobs/nope/results", None, "", 404, j, "`nope`"),
        case("POST", "/v1/jobs/nope/cancel", None, "", 404, j, "`nope`"),
    ];
    run_table(&app, "not found", cases).await;
}

/// 400 `invalid_name` for names that break the naming rule, wherever a
/// name is given: in the path or in the body.
#[tokio::test]
async fn invalid_names_are_400_invalid_name() {
    let app = App::seeded().await;
    let n = "invalid_name";
    let long = "a".repeat(65);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/functions/Bad%20Name/invoke", JSON, "{}", 400, n, NAME_RULE),
        case("POST", "/v1/functions/Bad%20Name/invoke?mode=async", JSON, "{}", 400, n, NAME_RULE),
        case("GET", "/v1/functions/UPPER", None, "", 400, n, "\"UPPER\""),
        case("DELETE", "/v1/functions/a%2Fb", None, "", 400, n, "\"a/b\""),
        case("GET", format!("/v1/functions/{long}"), None, "", 400, n, "wrong length"),
        case("GET", "/v1/functions/-dash", None, "", 400, n, "does not start with a letter or digit"),
        case("POST", "/v1/categories", JSON, r#"{"name": "Bad Name"}"#, 400, n, NAME_RULE),
        case("POST", "/v1/categories/Bad%20Name/docs", JSON, "[]", 400, n, NAME_RULE),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"function": "Bad Name"}"#, 400, n, NAME_RULE),
        case("PUT", "/v1/queues/Bad%20Name", JSON, "{}", 400, n, NAME_RULE),
        case("PUT", "/v1/limiters/Bad%20Name", JSON, r#"{"per_second": 1}"#, 400, n, NAME_RULE),
        case("POST", "/v1/jobs", JSON, r#"{"function": "Bad Name", "events": []}"#, 400, n, NAME_RULE),
    ];
    run_table(&app, "invalid names", cases).await;
}

/// 400 `invalid_input`: malformed JSON, wrong types, missing or unknown
/// fields, unknown or malformed query parameters, values out of range.
#[tokio::test]
async fn malformed_input_is_400_invalid_input() {
    let app = App::seeded().await;
    let x = "invalid_input";
    let invoke = "/v1/functions/ok/invoke";
    let docs = "/v1/categories/cat/docs";
    let send = "/v1/queues/measured/messages";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // Events.
        case("POST", invoke, JSON, "{\"a\": ", 400, x, "the event is not valid JSON"),
        case("POST", invoke, JSON, "[1,2] trailing", 400, x, "the event is not valid JSON"),
        case("POST", invoke, JSON, vec![0xff, 0xfe], 400, x, "not UTF-8 text; send JSON"),
        case("POST", format!("{invoke}?mode=later"), JSON, "{}", 400, x, "use sync or async"),
        case("POST", format!("{invoke}?mdoe=async"), JSON, "{}", 400, x, "unknown field `mdoe`"),
        // Tokens.
        case("POST", "/v1/tokens", JSON, r#"{"role": 5}"#, 400, x, "invalid JSON body"),
        case("POST", "/v1/tokens", JSON, r#"{"role": "king"}"#, 400, x, "use reader, invoker, developer or admin"),
        case("POST", "/v1/tokens", JSON, "not json", 400, x, "invalid JSON body"),
        case("POST", "/v1/tokens", JSON, r#"{"name": "x"}"#, 400, x, "missing field `role`"),
        case("POST", "/v1/tokens", JSON, format!(r#"{{"role": "reader", "name": "{}"}}"#, "n".repeat(201)), 400, x, "at most 200 bytes"),
        // Categories and documents.
        case("POST", "/v1/categories", JSON, r#"{"name": "x", "shards": 0}"#, 400, x, "use 1 to 1024"),
        case("POST", "/v1/categories", JSON, r#"{"name": "x", "shards": 5000}"#, 400, x, "use 1 to 1024"),
        case("POST", "/v1/categories", JSON, r#"{"name": "x", "shards": "two"}"#, 400, x, "invalid JSON body"),
        case("POST", docs, JSON, r#"[{"id": "a"}, {"id": "b", "#, 400, x, "the body ends in the middle of a document"),
        case("POST", docs, JSON, r#"[{"id": "a"}, nope]"#, 400, x, "document 2 is not valid JSON"),
        case("POST", docs, JSON, r#"[{"id": "a"}, {"id": 1.5}]"#, 400, x, "document 2: `id` must be a string or an integer; nothing was written"),
        case("POST", docs, JSON, r#"[{"id": "a"}, {"id": ""}]"#, 400, x, "must be 1 to 256 bytes"),
        case("POST", format!("{docs}?return_ids=maybe"), JSON, "[]", 400, x, "invalid query parameters"),
        case("POST", format!("{docs}?return_id=false"), JSON, "[]", 400, x, "unknown field `return_id`"),
        case("GET", format!("{docs}?cursor=zzz"), None, "", 400, x, "start again without one"),
        case("GET", format!("{docs}?limit=ten"), None, "", 400, x, "invalid query parameters"),
        case("GET", format!("{docs}?limt=10"), None, "", 400, x, "unknown field `limt`"),
        case("PUT", format!("{docs}/x"), JSON, r#"{"a": 1} {"b": 2}"#, 400, x, "send exactly one document; got 2"),
        case("PUT", format!("{docs}/x"), JSON, "", 400, x, "send exactly one document; got 0"),
        case("PUT", format!("{docs}/x"), JSON, r#"{"id": "y"}"#, 400, x, "differs from the id in the path"),
        case("PUT", format!("{docs}/x"), JSON, r#"{"a": "#, 400, x, "the body ends in the middle of a document"),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"function": 5}"#, 400, x, "invalid JSON body"),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"fn": "ok"}"#, 400, x, "unknown field `fn`, expected `function`"),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"skip_errors": true}"#, 400, x, "missing field `function`"),
        // Queues.
        case("POST", send, JSON, r#"{"body": 1, "delay": "soon"}"#, 400, x, "use e.g. \"500ms\""),
        case("POST", send, JSON, r#"{"body": 1, "delay": "1h"}"#, 400, x, "must be at most 15m"),
        case("POST", send, JSON, r#"{"messages": []}"#, 400, x, "send at least one message"),
        case("POST", send, JSON, r#"{"bdy": 1}"#, 400, x, "invalid JSON body"),
        case("PUT", "/v1/queues/measured", JSON, r#"{"max_attempts": 0}"#, 400, x, "must be between 1 and"),
        case("PUT", "/v1/queues/measured", JSON, r#"{"visibility_timeout": "1ms"}"#, 400, x, "must be between 100ms and 12h"),
        case("PUT", "/v1/queues/measured", JSON, r#"{"retry_delay": "later"}"#, 400, x, "retry_delay"),
        case("PUT", "/v1/queues/measured", JSON, r#"{"max_attempt": 3}"#, 400, x, "unknown field `max_attempt`"),
        case("POST", "/v1/queues/measured/dead-letters/redrive", JSON, r#"{"idz": []}"#, 400, x, "unknown field `idz`"),
        case("POST", "/v1/queues/measured/dead-letters/purge", JSON, r#"{"ids": "all"}"#, 400, x, "invalid JSON body"),
        case("GET", "/v1/queues/measured/dead-letters?limit=-1", None, "", 400, x, "invalid query parameters"),
        case("GET", "/v1/queues/measured/dead-letters?lmit=1", None, "", 400, x, "unknown field `lmit`"),
        case("GET", "/v1/queues/measured/stats?since=yesterday", None, "", 400, x, "invalid query parameters"),
        case("GET", "/v1/queues/measured/stats?snce=1", None, "", 400, x, "unknown field `snce`"),
        // Limiters.
        case("PUT", "/v1/limiters/x", JSON, r#"{"per_second": 0}"#, 400, x, "must be above 0"),
        case("PUT", "/v1/limiters/x", JSON, r#"{"per_second": -1}"#, 400, x, "must be above 0"),
        case("PUT", "/v1/limiters/x", JSON, r#"{"per_second": 5, "burst": 0}"#, 400, x, "burst: must be between 1 and"),
        case("PUT", "/v1/limiters/x", JSON, r#"{"rate": 5}"#, 400, x, "invalid JSON body"),
        // Jobs.
        case("POST", "/v1/jobs", JSON, r#"{"function": "ok", "events": {"n": 1}}"#, 400, x, "invalid JSON body"),
        case("POST", "/v1/jobs", JSON, r#"{"events": []}"#, 400, x, "missing field `function`"),
        case("GET", "/v1/jobs/nope/results?offset=first", None, "", 400, x, "invalid query parameters"),
        case("GET", "/v1/jobs/nope/results?ofset=1", None, "", 400, x, "unknown field `ofset`"),
    ];
    run_table(&app, "invalid input", cases).await;
    // Nothing was created or changed by the refused requests.
    let r = app.call("GET", "/v1/limiters", None, vec![]).await.json();
    assert_eq!(r["limiters"].as_array().unwrap().len(), 1, "{r}");
    let r = app
        .call("GET", "/v1/queues/measured", None, vec![])
        .await
        .json();
    assert_eq!(
        (r["max_attempts"].as_u64(), r["counters"]["sent"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    let r = app.call("GET", "/v1/categories", None, vec![]).await.json();
    assert_eq!(r["categories"].as_array().unwrap().len(), 1, "{r}");
    let r = app
        .call("GET", "/v1/categories/cat", None, vec![])
        .await
        .json();
    assert_eq!(r["docs"], 1, "{r}");
    let r = app.call("GET", "/v1/tokens", None, vec![]).await.json();
    assert_eq!(r["tokens"].as_array().unwrap().len(), 4, "{r}");
}

/// 415 `unsupported_media_type` for a body of the wrong kind.
#[tokio::test]
async fn wrong_content_types_are_415() {
    let app = App::seeded().await;
    let u = "unsupported_media_type";
    let json_please = "`Content-Type: application/json`";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/tokens", None, r#"{"role": "reader"}"#, 415, u, json_please),
        case("POST", "/v1/tokens", Some("text/plain"), r#"{"role": "reader"}"#, 415, u, json_please),
        case("POST", "/v1/functions", JSON, "{}", 415, u, "`Content-Type: application/x-tar`"),
        case("POST", "/v1/functions", None, tar_of(&[("shoal.toml", "name = \"x\"")]), 415, u, "`shoal deploy DIR`"),
        case("POST", "/v1/categories", None, r#"{"name": "x"}"#, 415, u, json_please),
        case("POST", "/v1/categories/cat/docs", Some("text/csv"), "a,b", 415, u, "not text/csv"),
        case("PUT", "/v1/categories/cat/docs/x", Some("text/csv"), "a,b", 415, u, "application/x-ndjson"),
        case("POST", "/v1/categories/cat/query", None, r#"{"function": "ok"}"#, 415, u, json_please),
        case("PUT", "/v1/queues/measured", Some("text/plain"), "{}", 415, u, json_please),
        case("POST", "/v1/queues/measured/messages", None, r#"{"body": 1}"#, 415, u, json_please),
        case("POST", "/v1/queues/measured/dead-letters/redrive", None, "{}", 415, u, json_please),
        case("POST", "/v1/queues/measured/dead-letters/purge", None, "{}", 415, u, json_please),
        case("PUT", "/v1/limiters/x", None, r#"{"per_second": 1}"#, 415, u, json_please),
        case("POST", "/v1/jobs", None, r#"{"function": "ok", "events": []}"#, 415, u, json_please),
    ];
    run_table(&app, "content types", cases).await;
}

/// 413: a body over the node's limit (`payload_too_large`), a document over
/// the document limit (`document_too_large`).
#[tokio::test]
async fn bodies_over_the_limits_are_413() {
    let app = App::seeded().await;
    let p = "payload_too_large";
    let d = "document_too_large";
    let raise = "send less or raise --max-body-bytes";
    let big_event = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_BODY + 1000));
    let big_doc = format!(r#"{{"id": "big", "pad": "{}"}}"#, "x".repeat(MAX_DOC * 2));
    let many_docs = format!("[{}]", vec![r#"{"v": 1}"#; MAX_WRITE / 8].join(","));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/functions/ok/invoke", JSON, big_event.clone(), 413, p, raise),
        case("POST", "/v1/functions/ok/invoke?mode=async", JSON, big_event.clone(), 413, p, raise),
        case("POST", "/v1/functions/nope/invoke", JSON, big_event.clone(), 413, p, raise),
        case("POST", "/v1/functions", TAR, vec![0u8; MAX_ARCHIVE + 4464], 413, p, "raise --max-archive-bytes"),
        case("POST", "/v1/tokens", JSON, format!(r#"{{"role": "reader", "name": "{}"}}"#, "n".repeat(MAX_BODY)), 413, p, raise),
        case("POST", "/v1/queues/measured/messages", JSON, format!(r#"{{"body": "{}"}}"#, "x".repeat(MAX_BODY)), 413, p, raise),
        case("POST", "/v1/jobs", JSON, format!(r#"{{"function": "ok", "events": ["{}"]}}"#, "x".repeat(MAX_BODY)), 413, p, raise),
        case("PUT", "/v1/categories/cat/docs/x", JSON, format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_BODY)), 413, p, raise),
        case("POST", "/v1/categories/cat/docs", JSON, many_docs, 413, p, "split it into several requests"),
        case("POST", "/v1/categories/cat/docs", JSON, format!(r#"[{{"id": "a"}}, {big_doc}]"#), 413, d, "document 2 is larger than the 1000-byte document limit; nothing was written"),
        case("PUT", "/v1/categories/cat/docs/big", JSON, format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_DOC)), 413, d, "document limit"),
    ];
    run_table(&app, "body limits", cases).await;
    // Nothing of the refused writes landed.
    let r = app
        .call("GET", "/v1/categories/cat", None, vec![])
        .await
        .json();
    assert_eq!(r["docs"], 1, "{r}");
    let r = app
        .call("GET", "/v1/categories/cat/docs/a", None, vec![])
        .await;
    check(&r, 404, "document_not_found", "`a`").unwrap();
    let r = app
        .call("GET", "/v1/queues/measured", None, vec![])
        .await
        .json();
    assert_eq!(r["counters"]["sent"], 0, "{r}");
}

/// 409 when a request conflicts with what exists.
#[tokio::test]
async fn conflicts_are_409() {
    let app = App::seeded().await;
    let thief = tar_of(&[
        (
            "shoal.toml",
            "name = \"thief\"\n[subscribe]\nqueue = \"jobs\"",
        ),
        ("main.py", "def handler(e, ctx):\n    return e\n"),
    ]);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/categories", JSON, r#"{"name": "cat"}"#, 409, "category_exists", "category `cat` exists already"),
        case("POST", "/v1/categories", JSON, r#"{"name": "cat", "shards": 4}"#, 409, "category_exists", "`cat`"),
        case("POST", "/v1/functions", TAR, thief, 409, "queue_taken", "a queue feeds one function"),
        case("DELETE", "/v1/limiters/vendor", None, "", 409, "limiter_in_use", "used by limited; change their shoal.toml first"),
    ];
    run_table(&app, "conflicts", cases).await;
    // The refused requests left everything as it was.
    let r = app
        .call("GET", "/v1/categories/cat", None, vec![])
        .await
        .json();
    assert_eq!(
        (r["shards"].as_u64(), r["docs"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let r = app
        .call("GET", "/v1/queues/jobs", None, vec![])
        .await
        .json();
    assert_eq!(r["subscriber"], "worker", "{r}");
    let r = app.call("GET", "/v1/functions/thief", None, vec![]).await;
    check(&r, 404, "function_not_found", "`thief`").unwrap();
    let r = app.call("GET", "/v1/limiters", None, vec![]).await.json();
    assert_eq!(r["limiters"][0]["name"], "vendor", "{r}");
}

/// Unknown routes are 404 `route_not_found`; a known route with another
/// method is 405 `method_not_allowed`. Both point at the OpenAPI document.
#[tokio::test]
async fn unknown_routes_and_methods() {
    let app = App::seeded().await;
    let r = "route_not_found";
    let m = "method_not_allowed";
    let doc = "see /v1/openapi.json";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("GET", "/v1/nothing-here", None, "", 404, r, doc),
        // (GET / redirects to the dashboard: ui.rs.)
        case("POST", "/", None, "", 404, r, doc),
        case("GET", "/v2/functions", None, "", 404, r, doc),
        case("GET", "/v1/functions/ok/history", None, "", 404, r, doc),
        case("POST", "/v1/categories/cat/docs/x/y", JSON, "{}", 404, r, doc),
        case("PUT", "/v1/functions", None, "", 405, m, doc),
        case("PATCH", "/v1/functions/ok", JSON, "{}", 405, m, doc),
        case("GET", "/v1/functions/ok/invoke", None, "", 405, m, doc),
        case("DELETE", "/v1/invocations/x", None, "", 405, m, doc),
        case("POST", "/healthz", None, "", 405, m, doc),
        case("DELETE", "/v1/jobs/x", None, "", 405, m, doc),
        // A node built without a metrics recorder (as here) has no /metrics.
        case("GET", "/metrics", None, "", 404, r, "metrics are not enabled on this node"),
    ];
    run_table(&app, "routing", cases).await;
}

/// 400 `invalid_function` for archives that are not a function, and none
/// of them leaves anything behind.
#[tokio::test]
async fn bad_function_archives_are_400_and_change_nothing() {
    let app = App::seeded().await;
    let v = "invalid_function";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/functions", TAR, b"definitely not a tar archive".repeat(40), 400, v, "not a tar archive"),
        case("POST", "/v1/functions", TAR, tar_of(&[("main.py", "x = 1")]), 400, v, "shoal.toml"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\ntimeout = \"forever\""), ("main.py", "")]), 400, v, "timeout"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\nretries = 500"), ("main.py", "")]), 400, v, "retries"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\""), ("other.py", "")]), 400, v, "main.py"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\""), ("main.py", ""), ("../evil.py", "")]), 400, v, "../evil.py"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\""), ("main.py", ""), ("/etc/evil.py", "")]), 400, v, "/etc/evil.py"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"Bad Name\""), ("main.py", "")]), 400, v, NAME_RULE),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\nsurprise = 1"), ("main.py", "")]), 400, v, "surprise"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"y\"\nlimiter = \"nope\""), ("main.py", "")]), 400, v, "create it first with `shoal limiters set nope"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\nconcurrency_per_key = 2"), ("main.py", "")]), 400, v, "needs concurrency_key"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\nconcurrency_key = \"a..b\""), ("main.py", "")]), 400, v, "must name an event field"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"x\"\nconcurrency = 2\nconcurrency_key = \"t\"\nconcurrency_per_key = 3"), ("main.py", "")]), 400, v, "between 1 and the function's concurrency"),
    ];
    run_table(&app, "bad archives", cases).await;
    // Nothing changed: the same functions, each at version 1, no code of
    // `x` unpacked and nothing written outside the data directory.
    let mut fs = app.functions().await;
    fs.sort();
    assert_eq!(
        fs,
        vec![
            ("limited".to_string(), 1),
            ("ok".to_string(), 1),
            ("worker".to_string(), 1)
        ]
    );
    let x = app.data_dir.path().join("functions/x");
    assert!(!x.exists() || std::fs::read_dir(&x).unwrap().next().is_none());
    assert!(!app.data_dir.path().join("evil.py").exists());
    assert!(
        !app.data_dir
            .path()
            .parent()
            .unwrap()
            .join("evil.py")
            .exists()
    );
    // And `ok` still works.
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, b"[1]".to_vec())
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "[1]"));
}

/// Unknown fields in a JSON body are refused, as they are for queues,
/// messages, dead-letter selections and limiters, so that a typo is not
/// silently dropped (`thne` would start a job without its fan-in).
#[tokio::test]
async fn unknown_body_fields_are_400() {
    let app = App::seeded().await;
    let x = "invalid_input";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/tokens", JSON, r#"{"role": "reader", "nmae": "ci"}"#, 400, x, "unknown field `nmae`"),
        case("POST", "/v1/categories", JSON, r#"{"name": "x", "shard": 4}"#, 400, x, "unknown field `shard`"),
        case("POST", "/v1/categories/cat/query", JSON, r#"{"function": "ok", "skip_error": true}"#, 400, x, "unknown field `skip_error`"),
        case("POST", "/v1/jobs", JSON, r#"{"function": "ok", "events": [], "thne": "ok"}"#, 400, x, "unknown field `thne`"),
    ];
    run_table(&app, "unknown body fields", cases).await;
}

/// A deploy refused after its archive was unpacked (a missing limiter, a
/// queue fed to another function) leaves no code behind in the data
/// directory, like one refused for its archive or manifest.
#[tokio::test]
async fn refused_deploys_leave_no_code_behind() {
    let app = App::seeded().await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"y\"\nlimiter = \"nope\""), ("main.py", "")]), 400, "invalid_function", "limiter `nope`"),
        case("POST", "/v1/functions", TAR, tar_of(&[("shoal.toml", "name = \"thief\"\n[subscribe]\nqueue = \"jobs\""), ("main.py", "")]), 409, "queue_taken", "`jobs`"),
    ];
    run_table(&app, "refused deploys", cases).await;
    for name in ["y", "thief"] {
        let dir = app.data_dir.path().join("functions").join(name);
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{} holds the code of a refused deploy",
            dir.display()
        );
    }
}
