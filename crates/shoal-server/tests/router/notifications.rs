//! `/v1/notifications`: a notification's shape, its secret answered once
//! and never listed, the delivery log's filters, and every bad input a 4xx
//! with a JSON error that says why.

use serde_json::json;
use shoal_types::Role;

use crate::app::{App, Caller, JSON, case, run_table};

fn body(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[tokio::test]
async fn put_list_show_remove_and_the_secret_shown_once() {
    let app = App::new().await;
    let r = app
        .call(
            "PUT",
            "/v1/notifications/ops",
            JSON,
            body(json!({"url": "http://127.0.0.1:9/hook", "events": ["invocation.failed"], "functions": ["resize*"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let n = r.json();
    assert_eq!(n["name"], "ops");
    assert_eq!(n["url"], "http://127.0.0.1:9/hook");
    assert_eq!(n["events"], json!(["invocation.failed"]));
    assert_eq!(n["functions"], json!(["resize*"]));
    let secret = n["secret"].as_str().expect("a generated secret, once");
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );

    let listed = app.call("GET", "/v1/notifications", None, vec![]).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let items = listed.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("secret").is_none(), "{}", listed.text);
    assert!(!listed.text.contains(secret), "the secret never again");

    let shown = app.call("GET", "/v1/notifications/ops", None, vec![]).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    assert!(!shown.text.contains(secret));
    assert_eq!(shown.json()["created_at_ms"], n["created_at_ms"]);

    // A given secret is not echoed; all event types by default.
    let r = app
        .call(
            "PUT",
            "/v1/notifications/ops",
            JSON,
            body(json!({"url": "http://h/x", "secret": "a given secret"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json().get("secret").is_none(), "{}", r.text);
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 5);
    assert_eq!(r.json()["created_at_ms"], n["created_at_ms"], "replaced");

    let r = app
        .call("DELETE", "/v1/notifications/ops", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"deleted": true}));
    let r = app.call("GET", "/v1/notifications", None, vec![]).await;
    assert_eq!(r.json()["items"], json!([]));

    // Admin only: a developer may not read where events go.
    let r = app
        .call_as(
            Caller::As(Role::Developer),
            "GET",
            "/v1/notifications",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

#[tokio::test]
async fn the_delivery_log_pages_and_filters() {
    let app = App::new().await;
    let r = app
        .call(
            "GET",
            "/v1/notifications/deliveries?status=failed&name=x&limit=5",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"items": []}));
}

#[tokio::test]
async fn bad_requests_say_why() {
    let app = App::new().await;
    let n = run_table(
        &app,
        "notifications",
        vec![
            case(
                "PUT",
                "/v1/notifications/ops",
                JSON,
                body(json!({"url": "https://example.com"})),
                400,
                "invalid_input",
                "http://",
            ),
            case(
                "PUT",
                "/v1/notifications/ops",
                JSON,
                body(json!({"url": "http://h/", "events": ["invocation.exploded"]})),
                400,
                "invalid_input",
                "invocation.exploded",
            ),
            case(
                "PUT",
                "/v1/notifications/ops",
                JSON,
                body(json!({"url": "http://h/", "functions": ["a*b"]})),
                400,
                "invalid_input",
                "prefix ending in *",
            ),
            case(
                "PUT",
                "/v1/notifications/ops",
                JSON,
                body(json!({"url": "http://h/", "secret": "short"})),
                400,
                "invalid_input",
                "8 to 1024",
            ),
            case(
                "PUT",
                "/v1/notifications/ops",
                JSON,
                body(json!({"url": "http://h/", "colour": "red"})),
                400,
                "invalid_input",
                "colour",
            ),
            case(
                "PUT",
                "/v1/notifications/Bad%20Name",
                JSON,
                body(json!({"url": "http://h/"})),
                400,
                "invalid_name",
                "",
            ),
            case(
                "DELETE",
                "/v1/notifications/nope",
                None,
                "",
                404,
                "notification_not_found",
                "nope",
            ),
            case(
                "GET",
                "/v1/notifications/nope",
                None,
                "",
                404,
                "notification_not_found",
                "nope",
            ),
            case(
                "GET",
                "/v1/notifications/deliveries?status=lost",
                None,
                "",
                400,
                "invalid_input",
                "pending, delivered, failed",
            ),
            case(
                "GET",
                "/v1/notifications/deliveries?limit=0",
                None,
                "",
                400,
                "invalid_input",
                "1 to 1000",
            ),
        ],
    )
    .await;
    assert_eq!(n, 10);
}
