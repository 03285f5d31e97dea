//! `GET /v1/jobs`: jobs newest first, a page at a time with `next`, the
//! same counts and status as `GET /v1/jobs/{id}`; a scoped token sees its
//! functions' jobs only; a bad `limit` is 400.

use serde_json::{Value, json};

use crate::app::{App, Caller, JSON, check};

async fn start(app: &App, function: &str, events: usize) -> String {
    let body = json!({"function": function, "events": vec![json!({}); events]});
    let r = app
        .call("POST", "/v1/jobs", JSON, body.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.json()["job"].as_str().unwrap().to_string()
}

async fn get(app: &App, path: &str) -> Value {
    let r = app.call("GET", path, None, vec![]).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.json()
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn jobs_listed_newest_first_in_pages() {
    let app = App::new().await;
    for name in ["resize-png", "billing"] {
        app.deploy_ok(&format!("name = \"{name}\"")).await;
    }
    let empty = get(&app, "/v1/jobs").await;
    assert_eq!(empty, json!({"jobs": [], "next": null}));

    let a = start(&app, "resize-png", 2).await;
    let b = start(&app, "billing", 1).await;
    let c = start(&app, "resize-png", 3).await;

    // Pages of two, newest first; the second page ends the list.
    let first = get(&app, "/v1/jobs?limit=2").await;
    assert_eq!(ids(&first), vec![c.clone(), b.clone()]);
    let next = first["next"].as_str().expect("a full page has next");
    assert_eq!(next, b);
    let second = get(&app, &format!("/v1/jobs?limit=2&cursor={next}")).await;
    assert_eq!(ids(&second), vec![a.clone()]);
    assert_eq!(second["next"], Value::Null);

    // An item says what the job's own view says.
    let item = &first["jobs"][0];
    let view = get(&app, &format!("/v1/jobs/{c}")).await;
    for field in [
        "id",
        "status",
        "function",
        "then",
        "created_at_ms",
        "parent",
    ] {
        assert_eq!(item[field], view[field], "{field}");
    }
    assert_eq!(item["counts"]["total"], json!(3));
    assert_eq!(item["counts"]["total"], view["counts"]["total"]);
    assert!(item["progress"].as_f64().unwrap() >= 0.0);

    // The default page holds all three.
    assert_eq!(ids(&get(&app, "/v1/jobs").await), vec![c, b, a.clone()]);

    // A token scoped to `resize-*` sees those jobs only.
    let r = app
        .call(
            "POST",
            "/v1/tokens",
            JSON,
            json!({"role": "reader", "scopes": ["function:resize-*"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = app
        .call_with(
            Caller::Nobody,
            "GET",
            "/v1/jobs",
            &[("authorization", bearer.as_str())],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = r.json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    assert!(!r.text.contains("billing"), "{}", r.text);
    // A token scoped to no function is refused.
    let r = app
        .call(
            "POST",
            "/v1/tokens",
            JSON,
            json!({"role": "reader", "scopes": ["queue:jobs*"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = app
        .call_with(
            Caller::Nobody,
            "GET",
            "/v1/jobs",
            &[("authorization", bearer.as_str())],
            vec![],
        )
        .await;
    check(&r, 403, "forbidden", "function:").unwrap();

    // Bad pages.
    for bad in ["limit=0", "limit=201", "limit=ten"] {
        let r = app
            .call("GET", &format!("/v1/jobs?{bad}"), None, vec![])
            .await;
        check(&r, 400, "invalid_input", "limit").unwrap();
    }
    let r = app.call("GET", "/v1/jobs?after=x", None, vec![]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    // The oldest job's id as the cursor: nothing older.
    let last = get(&app, &format!("/v1/jobs?cursor={a}")).await;
    assert_eq!(last, json!({"jobs": [], "next": null}));
}
