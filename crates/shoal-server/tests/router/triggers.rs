//! `GET /v1/triggers`: every `[[trigger]]` of the live versions with its
//! settings.

use shoal_types::Role;

use crate::app::{App, Caller};

#[tokio::test]
async fn triggers_are_listed_with_their_settings() {
    let app = App::new().await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/triggers",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), serde_json::json!({"items": []}));
    app.deploy_ok(
        "name = \"t\"\nhandler = \"main:handler\"\n\
         [[trigger]]\non = \"docs\"\ncategory = \"photos\"\nbatch_size = 10\n\
         [[trigger]]\non = \"blob\"\nprefix = \"uploads/\"\nevents = [\"deleted\"]\n\
         [[trigger]]\non = \"outcome\"\nfunction = \"resize\"\nwhen = \"failure\"\n",
    )
    .await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/triggers",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        v["items"],
        serde_json::json!([
            {"function": "t", "version": 1, "index": 0, "on": "docs",
             "category": "photos", "batch_size": 10, "batch_window_ms": 500},
            {"function": "t", "version": 1, "index": 1, "on": "blob",
             "prefix": "uploads/", "events": ["deleted"]},
            {"function": "t", "version": 1, "index": 2, "on": "outcome",
             "source": "resize", "when": "failure"},
        ]),
        "{v}"
    );
    // A bad one is refused at deploy with invalid_function.
    let r = app
        .call(
            "POST",
            "/v1/functions",
            Some("application/x-tar"),
            crate::app::tar_of(&[
                ("shoal.toml", "name = \"u\"\n[[trigger]]\non = \"docs\"\n"),
                ("main.py", "def handler(e, ctx):\n    return e\n"),
            ]),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("needs `category`"), "{}", r.text);

    // A token scoped to other functions sees none of them.
    let r = app
        .call(
            "POST",
            "/v1/tokens",
            Some("application/json"),
            serde_json::json!({"role": "reader", "scopes": ["function:other*"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {secret}");
    let r = app
        .call_with(
            Caller::Nobody,
            "GET",
            "/v1/triggers",
            &[("authorization", bearer.as_str())],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), serde_json::json!({"items": []}));
}
