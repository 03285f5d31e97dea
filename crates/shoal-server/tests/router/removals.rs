//! Removals that lose data need `?force=true`; the last admin token cannot
//! be revoked; a deduplicated send says it was a duplicate.
//!
//! Against `App::seeded()`: category `cat` (document `keep`), queue `jobs`
//! fed to `worker`, empty queue `measured`.

use serde_json::Value;

use crate::app::{App, JSON, check};

#[tokio::test]
async fn a_category_with_documents_is_deleted_only_when_forced() {
    let app = App::seeded().await;
    let r = app.call("DELETE", "/v1/categories/cat", None, vec![]).await;
    check(&r, 409, "force_required", "category `cat` holds 1 document").unwrap();
    check(&r, 409, "force_required", "?force=true").unwrap();
    let r = app
        .call("GET", "/v1/categories/cat/docs/keep", None, vec![])
        .await;
    assert_eq!(r.status, 200, "refused, so nothing was deleted: {}", r.text);

    let r = app
        .call("DELETE", "/v1/categories/cat?force=maybe", None, vec![])
        .await;
    check(&r, 400, "invalid_input", "force").unwrap();
    let r = app
        .call("DELETE", "/v1/categories/cat?force=true", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.call("GET", "/v1/categories/cat", None, vec![]).await;
    assert_eq!(r.status, 404);

    // An empty category needs no force.
    let r = app
        .call(
            "POST",
            "/v1/categories",
            JSON,
            br#"{"name": "empty"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .call("DELETE", "/v1/categories/empty", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_queue_with_messages_or_a_subscriber_is_deleted_only_when_forced() {
    let app = App::seeded().await;
    // Subscribed.
    let r = app.call("DELETE", "/v1/queues/jobs", None, vec![]).await;
    check(&r, 409, "force_required", "function `worker` subscribed").unwrap();
    assert_eq!(
        app.call("GET", "/v1/queues/jobs", None, vec![])
            .await
            .status,
        200
    );
    let r = app
        .call("DELETE", "/v1/queues/jobs?force=true", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Waiting messages: neither deleted nor purged without force.
    let r = app
        .call(
            "POST",
            "/v1/queues/measured/messages",
            JSON,
            br#"{"messages": [{"body": 1}, {"body": 2}]}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call("DELETE", "/v1/queues/measured", None, vec![])
        .await;
    check(&r, 409, "force_required", "queue `measured` has 2 messages").unwrap();
    let r = app
        .call("POST", "/v1/queues/measured/purge", None, vec![])
        .await;
    check(&r, 409, "force_required", "2 messages waiting").unwrap();
    let depth = app.call("GET", "/v1/queues/measured", None, vec![]).await;
    assert_eq!(depth.json()["depth"]["waiting"], 2, "refused, so kept");
    let r = app
        .call("POST", "/v1/queues/measured/purge?force=true", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["count"], 2);
    // Empty now: a purge or a delete needs no force.
    let r = app
        .call("POST", "/v1/queues/measured/purge", None, vec![])
        .await;
    assert_eq!((r.status, r.json()["count"].clone()), (200, Value::from(0)));
    let r = app
        .call("DELETE", "/v1/queues/measured", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked() {
    let app = App::new().await;
    let admins = |list: &Value| -> Vec<String> {
        list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["role"] == "admin")
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list = app.call("GET", "/v1/tokens", None, vec![]).await.json();
    let only = admins(&list);
    assert_eq!(only.len(), 1, "{list}");
    let r = app
        .call("DELETE", &format!("/v1/tokens/{}", only[0]), None, vec![])
        .await;
    check(
        &r,
        409,
        "last_admin_token",
        "create another admin token first",
    )
    .unwrap();

    // With a second admin token, one of the two can go; then the other is
    // the last again.
    let r = app
        .call(
            "POST",
            "/v1/tokens",
            JSON,
            br#"{"role": "admin", "name": "spare"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let spare = r.json()["id"].as_str().unwrap().to_string();
    let r = app
        .call("DELETE", &format!("/v1/tokens/{spare}"), None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call("DELETE", &format!("/v1/tokens/{}", only[0]), None, vec![])
        .await;
    check(&r, 409, "last_admin_token", "last admin token").unwrap();
    // Other roles' tokens are revoked as before.
    let list = app.call("GET", "/v1/tokens", None, vec![]).await.json();
    let reader = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .call("DELETE", &format!("/v1/tokens/{reader}"), None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_deduplicated_send_says_it_was_a_duplicate() {
    let app = App::seeded().await;
    let send = |body: &'static str| {
        let app = &app;
        async move {
            let r = app
                .call(
                    "POST",
                    "/v1/queues/measured/messages",
                    JSON,
                    body.as_bytes().to_vec(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()
        }
    };
    let first = send(r#"{"body": {"n": 1}, "dedup_id": "order-7"}"#).await;
    assert_eq!(first["duplicate"], false);
    assert!(first.get("duplicates").is_none(), "{first}");
    let id = first["ids"][0].as_str().unwrap().to_string();

    let again = send(r#"{"body": {"n": 2}, "dedup_id": "order-7"}"#).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        again["ids"][0],
        id.as_str(),
        "names the message it duplicates"
    );
    assert_eq!(again["duplicates"], serde_json::json!([0]));

    let batch = send(
        r#"{"messages": [{"body": 3, "dedup_id": "new"}, {"body": 4, "dedup_id": "order-7"}, {"body": 5}]}"#,
    )
    .await;
    assert_eq!(batch["duplicate"], true);
    assert_eq!(batch["duplicates"], serde_json::json!([1]));
    assert_eq!(batch["ids"][1], id.as_str());
    let q = app
        .call("GET", "/v1/queues/measured", None, vec![])
        .await
        .json();
    assert_eq!(q["depth"]["waiting"], 3, "duplicates were not stored: {q}");
}
