//! Bad input and limits (issue 9, item 8): documents that are not UTF-8 or
//! nest too deep, caps on waiting messages, out-of-range settings and
//! page limits. Each refusal is a 4xx whose code and message say why, and
//! a refused request changes nothing.

use shoal_types::Role;

use crate::app::{App, Caller, Case, JSON, TAR, case, check, run_table, tar_of};

const NDJSON: Option<&str> = Some("application/x-ndjson");

/// The ids of category `cat`'s documents.
async fn doc_ids(app: &App) -> Vec<String> {
    let page = app
        .call("GET", "/v1/categories/cat/docs?limit=1000", None, vec![])
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    page.json()["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn documents_must_be_utf8_and_at_most_128_deep_and_a_refused_write_writes_nothing() {
    let app = App::seeded().await;
    let docs = "/v1/categories/cat/docs";
    let deep = |n: usize| {
        format!(
            "{{\"id\": \"deep\", \"v\": {}1{}}}",
            "[".repeat(n - 1),
            "]".repeat(n - 1)
        )
    };

    // NDJSON: the refusal names the line.
    let mut body = b"{\"id\": \"a\"}\n{\"id\": \"b\"}\n{\"id\": \"c\", \"v\": \"".to_vec();
    body.extend_from_slice(&[0xc3, 0x28]);
    body.extend_from_slice(b"\"}\n");
    let r = app.call("POST", docs, NDJSON, body).await;
    check(
        &r,
        400,
        "invalid_input",
        "line 3 (document 3) is not valid UTF-8",
    )
    .unwrap();

    let body = format!("{{\"id\": \"a\"}}\n{}\n", deep(129));
    let r = app.call("POST", docs, NDJSON, body.into_bytes()).await;
    check(
        &r,
        400,
        "invalid_input",
        "line 2 (document 2) nests objects and arrays more than 128 levels deep",
    )
    .unwrap();

    // A JSON array: the refusal names the document, counted from 1.
    let body = format!("[{{\"id\": \"a\"}}, {{\"id\": \"b\"}}, {}]", deep(129));
    let r = app.call("POST", docs, JSON, body.into_bytes()).await;
    check(
        &r,
        400,
        "invalid_input",
        "document 3 nests objects and arrays more than 128 levels deep",
    )
    .unwrap();
    let r = app
        .call("PUT", &format!("{docs}/deep"), JSON, deep(200).into_bytes())
        .await;
    check(&r, 400, "invalid_input", "more than 128 levels deep").unwrap();

    // Nothing of a refused write was stored.
    assert_eq!(doc_ids(&app).await, ["keep"]);

    // 128 levels are accepted.
    let r = app
        .call("POST", docs, JSON, format!("[{}]", deep(128)).into_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // (Read back as text: inside a page's envelope it is deeper than
    // serde_json's own recursion limit.)
    let r = app.call("GET", &format!("{docs}/deep"), None, vec![]).await;
    assert_eq!((r.status, r.text.as_str()), (200, deep(128).as_str()));
}

#[tokio::test]
async fn a_send_to_a_full_queue_is_429_queue_full_and_nothing_is_sent() {
    let app = App::with(|o| o.max_queue_messages = 3).await;
    let r = app
        .call("PUT", "/v1/queues/inbox", JSON, b"{}".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let send = "/v1/queues/inbox/messages";
    let batch = br#"{"messages": [{"body": 1}, {"body": 2}]}"#.to_vec();
    let r = app.call("POST", send, JSON, batch.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.call("POST", send, JSON, batch).await;
    check(&r, 429, "queue_full", "queue `inbox` holds 2 messages").unwrap();
    check(
        &r,
        429,
        "queue_full",
        "at most 3 per queue (--max-queue-messages)",
    )
    .unwrap();
    let r = app.call("GET", "/v1/queues/inbox", None, vec![]).await;
    assert_eq!(r.json()["depth"]["waiting"], 2, "{}", r.text);
}

#[tokio::test]
async fn a_job_over_the_nodes_children_cap_is_400_and_says_the_cap() {
    let app = App::with(|o| o.max_job_children = 2).await;
    let r = app
        .call(
            "POST",
            "/v1/jobs",
            JSON,
            br#"{"function": "nope", "events": [1, 2, 3]}"#.to_vec(),
        )
        .await;
    check(
        &r,
        400,
        "invalid_input",
        "at most 2 children on this node (--max-job-children), not 3",
    )
    .unwrap();
}

#[tokio::test]
async fn metrics_need_a_reader_token_unless_the_node_makes_them_public() {
    let app = App::with_metrics(false).await;
    let r = app
        .call_as(Caller::Nobody, "GET", "/metrics", None, vec![])
        .await;
    check(
        &r,
        401,
        "unauthorized",
        "missing `Authorization: Bearer <token>` header",
    )
    .unwrap();
    let r = app
        .call_as(Caller::Revoked, "GET", "/metrics", None, vec![])
        .await;
    check(&r, 401, "unauthorized", "unknown or revoked token").unwrap();
    let r = app
        .call_as(Caller::As(Role::Reader), "GET", "/metrics", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );

    let public = App::with_metrics(true).await;
    let r = public
        .call_as(Caller::Nobody, "GET", "/metrics", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Settings out of their range are refused saying the range, and page
/// limits above the maximum are refused saying the maximum (never cut
/// down without a word).
#[tokio::test]
async fn out_of_range_settings_and_page_limits_are_400_saying_the_range() {
    let app = App::seeded().await;
    let x = "invalid_input";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("PUT", "/v1/limiters/slow", JSON, r#"{"per_second": 1e-300, "burst": 1}"#, 400, x, "must be above 0: at least 0.001 (one call in 1000 s) and at most 1,000,000"),
        case("PUT", "/v1/limiters/slow", JSON, r#"{"per_second": 0.0009, "burst": 1}"#, 400, x, "at least 0.001"),
        case("PUT", "/v1/limiters/fast", JSON, r#"{"per_second": 2e6, "burst": 1}"#, 400, x, "at most 1,000,000"),
        case("PUT", "/v1/queues/spin", JSON, r#"{"max_attempts": 100, "retry_delay": "0s"}"#, 400, x, "must be at least 100ms when max_attempts is above 1"),
        case("PUT", "/v1/queues/spin", JSON, r#"{"max_attempts": 2, "retry_delay": "99ms"}"#, 400, x, "at least 100ms"),
        case("GET", "/v1/categories/cat/docs?limit=10001", None, "", 400, x, "must be between 1 and 10000 (it is 10001)"),
        case("GET", "/v1/categories/cat/docs?limit=0", None, "", 400, x, "must be between 1 and 10000"),
        case("GET", "/v1/queues/measured/dead-letters?limit=1001", None, "", 400, x, "must be between 1 and 1000 (it is 1001)"),
        case("GET", "/v1/jobs/01900000-0000-7000-8000-000000000000/results?limit=5000", None, "", 400, x, "must be between 1 and 1000"),
    ];
    run_table(&app, "out of range", cases).await;
    let r = app
        .call(
            "POST",
            "/v1/functions",
            TAR,
            tar_of(&[
                (
                    "shoal.toml",
                    "name = \"spin\"\nretries = 100\nretry_delay = \"0s\"",
                ),
                ("main.py", "def handler(e, ctx):\n    return e\n"),
            ]),
        )
        .await;
    check(
        &r,
        400,
        "invalid_function",
        "retry_delay must be at least 100ms when retries is above 0",
    )
    .unwrap();

    // At the edges, accepted.
    for (path, body) in [
        ("/v1/limiters/slow", r#"{"per_second": 0.001, "burst": 1}"#),
        (
            "/v1/queues/spin",
            r#"{"max_attempts": 100, "retry_delay": "100ms"}"#,
        ),
        (
            "/v1/queues/once",
            r#"{"max_attempts": 1, "retry_delay": "0s"}"#,
        ),
    ] {
        let r = app.call("PUT", path, JSON, body.as_bytes().to_vec()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    let r = app
        .call("GET", "/v1/categories/cat/docs?limit=10000", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call(
            "GET",
            "/v1/queues/measured/dead-letters?limit=1000",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
