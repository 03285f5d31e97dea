//! Answers that need user code to run (on the fake runtime): the empty
//! event, a function's failure, the record of a call.

use shoal_protocol::{FUNCTION_ERROR_HEADER, INVOCATION_ID_HEADER, RESULT_HEADER};
use shoal_runtime::fake::Script;

use crate::app::{App, JSON, check};

/// An empty body (or only whitespace) is the event `{}`.
#[tokio::test]
async fn an_empty_body_is_the_empty_event() {
    let app = App::seeded().await;
    for (ct, body) in [(None, ""), (JSON, ""), (None, " \n\t ")] {
        let r = app
            .call("POST", "/v1/functions/ok/invoke", ct, body.into())
            .await;
        assert_eq!((r.status, r.text.as_str()), (200, "{}"), "{body:?}");
        assert!(r.content_type.starts_with("application/json"));
    }
    let events: Vec<String> = app
        .runtime
        .calls_of("ok")
        .into_iter()
        .map(|c| c.event)
        .collect();
    assert_eq!(events, vec!["{}"; 3]);
}

/// The event reaches the function as the text sent (not re-encoded), and
/// the result comes back as the function returned it.
#[tokio::test]
async fn events_and_results_pass_through_as_text() {
    let app = App::seeded().await;
    let event = r#"{"b": 1,  "a": [1.50, "x"]}"#;
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, event.into())
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, event));
    let id = r.headers[INVOCATION_ID_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    let calls = app.runtime.calls_of("ok");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].event.as_str(), calls[0].invocation_id.as_str()),
        (event, id.as_str())
    );
    let inv = app
        .call("GET", &format!("/v1/invocations/{id}"), None, vec![])
        .await;
    assert_eq!(inv.status, 200, "{}", inv.text);
    let inv = inv.json();
    assert_eq!(inv["status"], "succeeded", "{inv}");
    assert_eq!(inv["input"], serde_json::json!({"a": [1.5, "x"], "b": 1}));
}

/// A failing function is still a 200 (the call worked), with the
/// `Shoal-Function-Error` header and a `FunctionFailure` body.
#[tokio::test]
async fn a_function_failure_is_200_with_the_error_header() {
    let app = App::seeded().await;
    app.runtime
        .script("ok", Script::raise("ValueError", "no thanks"));
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers[FUNCTION_ERROR_HEADER], "raised");
    let body = r.json();
    assert_eq!(body["error"]["type"], "raised", "{body}");
    assert_eq!(body["error"]["exception"], "ValueError", "{body}");
    assert_eq!(body["error"]["message"], "no thanks", "{body}");
    assert_eq!(
        body["invocation_id"].as_str(),
        r.headers[INVOCATION_ID_HEADER].to_str().ok()
    );
}

/// A platform failure (not the user's code) is a 503 `unavailable` with a
/// message, never a 500.
#[tokio::test]
async fn a_platform_failure_is_503() {
    let app = App::seeded().await;
    app.runtime
        .script("ok", Script::platform_error("spawn failed"));
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
        .await;
    check(&r, 503, "unavailable", "spawn failed").unwrap();
}

/// A function's `shoal.Response` is answered as it is: its bytes, status,
/// content type and headers, marked `Shoal-Result: response`; its record
/// holds the JSON form.
#[tokio::test]
async fn a_response_is_answered_as_its_bytes() {
    let app = App::seeded().await;
    let tile = shoal_engine::BinaryResult {
        status: 201,
        content_type: "image/png".into(),
        headers: [("x-tile".to_string(), "3/4".to_string())].into(),
        body: b"\x89PNG\r\n\x1a\n\x00\xff".to_vec(),
        cookies: vec![],
    };
    app.runtime.script("ok", Script::ok_raw(tile.to_json()));
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.bytes, tile.body);
    assert_eq!(r.content_type, "image/png");
    assert_eq!(r.headers["x-tile"], "3/4");
    assert_eq!(r.headers[RESULT_HEADER], "response");
    assert!(!r.headers.contains_key(FUNCTION_ERROR_HEADER));
    let id = r.headers[INVOCATION_ID_HEADER].to_str().unwrap();
    let inv = app
        .call("GET", &format!("/v1/invocations/{id}"), None, vec![])
        .await
        .json();
    assert_eq!(
        inv["output"],
        serde_json::from_str::<serde_json::Value>(&tile.to_json()).unwrap()
    );

    // A JSON result carries no such mark.
    app.runtime.script("ok", Script::ok(serde_json::json!(1)));
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "1"));
    assert!(!r.headers.contains_key(RESULT_HEADER));
}

/// A `Response` that breaks the rules (a hop-by-hop header, a status out of
/// range) fails the invocation as `bad_result`: an answer like any failure,
/// never a 500.
#[tokio::test]
async fn a_broken_response_is_a_failure_not_a_500() {
    let app = App::seeded().await;
    for (json, says) in [
        (
            r#"{"$response":{"status":200,"content_type":"a/b","headers":{"connection":"close"},"body_base64":""}}"#,
            "connection",
        ),
        (
            r#"{"$response":{"status":99,"content_type":"a/b","headers":{},"body_base64":""}}"#,
            "status 99",
        ),
    ] {
        app.runtime.script("ok", Script::ok_raw(json));
        let r = app
            .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.headers[FUNCTION_ERROR_HEADER], "bad_result");
        let body = r.json();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
}
