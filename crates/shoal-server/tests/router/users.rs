//! Users, tokens of users, and scopes: `/v1/users` (admin), a token's role
//! at most its user's, deleting a user revokes its tokens, and a scoped
//! token refused on every route outside its scopes (the routes walked from
//! the OpenAPI document, so a route added later is checked too).

use std::fmt::Write as _;

use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use shoal_types::Role;

use crate::app::{App, Caller, JSON, Reply, TAR, check, tar_of};

/// A request with a bearer secret of our own.
async fn call_bearer(
    app: &App,
    secret: &str,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {secret}"));
    if let Some(ct) = ct {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = if content_type == "text/event-stream" {
        axum::body::Bytes::new()
    } else {
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
    };
    Reply {
        status,
        headers,
        content_type,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes: bytes.to_vec(),
    }
}

async fn post_json(app: &App, path: &str, body: Value) -> Reply {
    app.call("POST", path, JSON, body.to_string().into_bytes())
        .await
}

/// A token made by the admin; returns (id, secret).
async fn token(app: &App, body: Value) -> (String, String) {
    let r = post_json(app, "/v1/tokens", body.clone()).await;
    assert_eq!(r.status, 201, "{body}: {}", r.text);
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

fn archive(name: &str) -> Vec<u8> {
    tar_of(&[
        ("shoal.toml", &format!("name = \"{name}\"")),
        ("main.py", "def handler(e, ctx):\n    return e\n"),
    ])
}

#[tokio::test]
async fn users_have_roles_and_tokens_and_take_them_when_deleted() {
    let app = App::new().await;
    let r = post_json(
        &app,
        "/v1/users",
        json!({"name": "ana", "role": "developer"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["role"], "developer");
    let again = post_json(&app, "/v1/users", json!({"name": "ana", "role": "reader"})).await;
    check(&again, 409, "user_exists", "ana").unwrap();
    let bad = post_json(&app, "/v1/users", json!({"name": "a b", "role": "reader"})).await;
    check(&bad, 400, "invalid_name", "not a user name").unwrap();
    let bad = post_json(&app, "/v1/users", json!({"name": "bo", "role": "boss"})).await;
    check(&bad, 400, "invalid_input", "not a role").unwrap();

    // Two tokens; none above the user's role; none for a user never made.
    let (laptop, laptop_secret) = token(
        &app,
        json!({"role": "developer", "name": "laptop", "user": "ana"}),
    )
    .await;
    let (ci, _) = token(
        &app,
        json!({"role": "invoker", "name": "ci", "user": "ana", "scopes": ["function:resize-*"]}),
    )
    .await;
    let over = post_json(
        &app,
        "/v1/tokens",
        json!({"role": "admin", "name": "x", "user": "ana"}),
    )
    .await;
    check(&over, 400, "invalid_input", "at most").unwrap();
    let nobody = post_json(
        &app,
        "/v1/tokens",
        json!({"role": "reader", "name": "x", "user": "zed"}),
    )
    .await;
    check(&nobody, 404, "user_not_found", "zed").unwrap();
    let bad_scope = post_json(
        &app,
        "/v1/tokens",
        json!({"role": "reader", "scopes": ["kv:*"]}),
    )
    .await;
    check(&bad_scope, 400, "invalid_input", "function:PATTERN").unwrap();

    let shown = app.call("GET", "/v1/users/ana", None, vec![]).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    let v = shown.json();
    let ids: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&laptop.as_str()) && ids.contains(&ci.as_str()));
    let ci_view = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == ci.as_str())
        .unwrap()
        .clone();
    assert_eq!(ci_view["user"], "ana");
    assert_eq!(ci_view["scopes"], json!(["function:resize-*"]));
    let listed = app.call("GET", "/v1/users", None, vec![]).await.json();
    assert_eq!(listed["users"][0]["name"], "ana");
    let tokens = app.call("GET", "/v1/tokens", None, vec![]).await.json();
    assert!(
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == laptop.as_str() && t["user"] == "ana")
    );

    // Lowered to reader: the developer token can no longer deploy.
    let r = app
        .call(
            "PATCH",
            "/v1/users/ana",
            JSON,
            br#"{"role": "reader"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["role"], "reader");
    let deploy = call_bearer(
        &app,
        &laptop_secret,
        "POST",
        "/v1/functions",
        TAR,
        archive("f"),
    )
    .await;
    check(
        &deploy,
        403,
        "forbidden",
        "this needs a developer token; yours is reader",
    )
    .unwrap();

    // Only admins manage users.
    let r = app
        .call_as(
            Caller::As(Role::Developer),
            "GET",
            "/v1/users",
            None,
            vec![],
        )
        .await;
    check(&r, 403, "forbidden", "admin").unwrap();

    // Deleting the user revokes both tokens.
    let r = app.call("DELETE", "/v1/users/ana", None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut revoked: Vec<String> =
        serde_json::from_value(r.json()["revoked_tokens"].clone()).unwrap();
    revoked.sort();
    let mut want = vec![laptop.clone(), ci.clone()];
    want.sort();
    assert_eq!(revoked, want);
    let r = call_bearer(&app, &laptop_secret, "GET", "/v1/functions", None, vec![]).await;
    check(&r, 401, "unauthorized", "unknown or revoked token").unwrap();
    let r = app.call("GET", "/v1/users/ana", None, vec![]).await;
    check(&r, 404, "user_not_found", "ana").unwrap();
    let r = app.call("DELETE", "/v1/users/ana", None, vec![]).await;
    check(&r, 404, "user_not_found", "ana").unwrap();
}

/// The names a scoped token may use, and others it may not.
const SCOPES: &[&str] = &[
    "function:resize-*",
    "category:photos",
    "queue:jobs*",
    "channel:subscribe:board.*",
];

fn outside(path: &str, invocation: &str, job: &str) -> String {
    path.replace("{name}", "billing")
        .replace("{function}", "billing")
        .replace("{cat}", "secret")
        .replace("{alias}", "live")
        .replace("{key}", "k")
        .replace("{index}", "0")
        .replace(
            "{id}",
            if path.starts_with("/v1/jobs/") {
                job
            } else {
                invocation
            },
        )
}

/// Routes whose resource is named in the body: the body for an
/// out-of-scope one.
fn outside_body(method: &str, path: &str) -> Option<(Option<&'static str>, Vec<u8>)> {
    match (method, path) {
        ("POST", "/v1/functions") => Some((TAR, archive("billing"))),
        ("POST", "/v1/categories") => Some((JSON, br#"{"name": "secret"}"#.to_vec())),
        ("POST", "/v1/jobs") => Some((JSON, br#"{"function": "billing", "events": [1]}"#.to_vec())),
        ("POST", "/v1/categories/{cat}/query") => {
            Some((JSON, br#"{"function": "billing"}"#.to_vec()))
        }
        _ => None,
    }
}

/// Lists a scoped token gets, filtered to its scopes.
const FILTERED: &[&str] = &[
    "GET /v1/functions",
    "GET /v1/invocations",
    "GET /v1/jobs",
    "GET /v1/categories",
    "GET /v1/queues",
    "GET /v1/schedules",
    "GET /v1/triggers",
];

#[tokio::test]
async fn scopes_enforced_on_every_route() {
    let app = App::new().await;
    for name in ["resize-png", "billing"] {
        app.deploy_ok(&format!("name = \"{name}\"")).await;
    }
    for cat in ["photos", "secret"] {
        let r = post_json(&app, "/v1/categories", json!({"name": cat})).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    for q in ["jobs", "other"] {
        let r = app
            .call("PUT", &format!("/v1/queues/{q}"), JSON, b"{}".to_vec())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = app
        .call("POST", "/v1/functions/billing/invoke", JSON, b"{}".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let billing_call = r.headers["shoal-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let r = post_json(
        &app,
        "/v1/jobs",
        json!({"function": "billing", "events": [1]}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let billing_job = r.json()["job"].as_str().unwrap().to_string();

    // An admin token with scopes: its role allows every route, so only the
    // scopes refuse.
    let (_, scoped) = token(
        &app,
        json!({"role": "admin", "name": "scoped", "scopes": SCOPES}),
    )
    .await;

    let doc = app
        .call("GET", "/v1/openapi.json", None, vec![])
        .await
        .json();
    let mut failures = String::new();
    let mut refused = 0;
    let mut filtered = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let route = format!("{method} {path}");
            if route == "GET /healthz" {
                continue;
            }
            let concrete = outside(path, &billing_call, &billing_job);
            let (ct, body) = outside_body(&method, path).unwrap_or((None, Vec::new()));
            let r = call_bearer(&app, &scoped, &method, &concrete, ct, body).await;
            if FILTERED.contains(&route.as_str()) {
                filtered += 1;
                let leaked = ["billing", "secret", "\"other\""]
                    .iter()
                    .any(|n| r.text.contains(n));
                if r.status != 200 || leaked {
                    let _ = writeln!(
                        failures,
                        "{route}: want 200 without out-of-scope names, got {} {}",
                        r.status, r.text
                    );
                }
                continue;
            }
            refused += 1;
            let outcome = if method == "HEAD" {
                if r.status == 403 {
                    Ok(())
                } else {
                    Err(format!("HEAD answered {}", r.status))
                }
            } else {
                check(&r, 403, "forbidden", "")
            };
            if let Err(why) = outcome {
                let _ = writeln!(failures, "{route} as {concrete}: {why}");
            }
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
    assert_eq!(filtered, FILTERED.len());
    assert!(refused > 60, "only {refused} routes checked");

    // The messages name the missing scope.
    let r = call_bearer(
        &app,
        &scoped,
        "POST",
        "/v1/functions/billing/invoke",
        JSON,
        b"{}".to_vec(),
    )
    .await;
    check(&r, 403, "forbidden", "function:billing").unwrap();
    let r = call_bearer(&app, &scoped, "GET", "/v1/kv", None, vec![]).await;
    check(
        &r,
        403,
        "forbidden",
        "names no function, category, queue or channel",
    )
    .unwrap();

    // Inside its scopes it works, and lists show what it may see.
    let ok = |r: &Reply, what: &str| assert!(r.status < 300, "{what}: {} {}", r.status, r.text);
    let r = call_bearer(
        &app,
        &scoped,
        "POST",
        "/v1/functions/resize-png/invoke",
        JSON,
        b"{\"a\":1}".to_vec(),
    )
    .await;
    ok(&r, "invoke resize-png");
    let own_call = r.headers["shoal-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    // A version of an allowed function is allowed; of another, not.
    let r = call_bearer(
        &app,
        &scoped,
        "POST",
        "/v1/functions/resize-png@1/invoke",
        JSON,
        b"{}".to_vec(),
    )
    .await;
    ok(&r, "invoke resize-png@1");
    let r = call_bearer(
        &app,
        &scoped,
        "POST",
        "/v1/functions/billing@1/invoke",
        JSON,
        b"{}".to_vec(),
    )
    .await;
    check(&r, 403, "forbidden", "function:billing").unwrap();
    ok(
        &call_bearer(
            &app,
            &scoped,
            "GET",
            &format!("/v1/invocations/{own_call}"),
            None,
            vec![],
        )
        .await,
        "its invocation",
    );
    ok(
        &call_bearer(
            &app,
            &scoped,
            "GET",
            "/v1/categories/photos/docs",
            None,
            vec![],
        )
        .await,
        "photos",
    );
    ok(
        &call_bearer(
            &app,
            &scoped,
            "POST",
            "/v1/queues/jobs/messages",
            JSON,
            br#"{"body": 1}"#.to_vec(),
        )
        .await,
        "send to jobs",
    );
    let r = call_bearer(
        &app,
        &scoped,
        "POST",
        "/v1/functions",
        TAR,
        archive("resize-gif"),
    )
    .await;
    assert_eq!(r.status, 201, "deploy resize-gif: {}", r.text);
    let list = call_bearer(&app, &scoped, "GET", "/v1/functions", None, vec![])
        .await
        .json();
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["resize-gif", "resize-png"]);
    let list = call_bearer(&app, &scoped, "GET", "/v1/invocations", None, vec![])
        .await
        .json();
    // Its two calls of resize-png; not the admin's call of billing.
    let seen: Vec<(&str, &str)> = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["function"].as_str().unwrap()))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(_, f)| *f == "resize-png"), "{seen:?}");
    assert!(seen.iter().any(|(id, _)| *id == own_call), "{seen:?}");

    // A token with channel scopes only: refused on function lists.
    let (_, channel_only) = token(
        &app,
        json!({"role": "reader", "scopes": ["subscribe:board.*"]}),
    )
    .await;
    let r = call_bearer(&app, &channel_only, "GET", "/v1/functions", None, vec![]).await;
    check(&r, 403, "forbidden", "name no function").unwrap();
}

/// Who deployed a version and who started an invocation are recorded and
/// shown.
#[tokio::test]
async fn deploys_and_invocations_name_their_token_and_user() {
    let app = App::new().await;
    let r = post_json(
        &app,
        "/v1/users",
        json!({"name": "ana", "role": "developer"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (tid, secret) = token(
        &app,
        json!({"role": "developer", "name": "laptop", "user": "ana"}),
    )
    .await;
    let r = call_bearer(&app, &secret, "POST", "/v1/functions", TAR, archive("f")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let versions = app
        .call("GET", "/v1/functions/f/versions", None, vec![])
        .await
        .json();
    assert_eq!(
        versions["versions"][0]["deployed_by"],
        json!({"token_id": tid, "token_name": "laptop", "user": "ana"})
    );
    let r = call_bearer(
        &app,
        &secret,
        "POST",
        "/v1/functions/f/invoke",
        JSON,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.headers["shoal-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let shown = app
        .call("GET", &format!("/v1/invocations/{id}"), None, vec![])
        .await
        .json();
    assert_eq!(
        (shown["token"].as_str(), shown["user"].as_str()),
        (Some(tid.as_str()), Some("ana"))
    );
    let list = app
        .call("GET", "/v1/invocations?function=f", None, vec![])
        .await
        .json();
    assert_eq!(list["invocations"][0]["user"], "ana");
    assert_eq!(list["invocations"][0]["token"], tid.as_str());

    // The list filters by token and by user (a bounded scan, like q).
    let r = app
        .call("POST", "/v1/functions/f/invoke", JSON, b"{}".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let by_admin = r.headers["shoal-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let ids = |v: Value| -> Vec<String> {
        v["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    for query in [
        "user=ana",
        &format!("token={tid}"),
        &format!("user=ana&token={tid}"),
    ] {
        let v = app
            .call("GET", &format!("/v1/invocations?{query}"), None, vec![])
            .await
            .json();
        assert_eq!(ids(v.clone()), vec![id.clone()], "{query}: {v}");
        assert!(v["scanned"].as_u64().unwrap() >= 2, "{query}: {v}");
    }
    let v = app
        .call("GET", "/v1/invocations?user=bo", None, vec![])
        .await
        .json();
    assert!(ids(v).is_empty());
    let all = app
        .call("GET", "/v1/invocations", None, vec![])
        .await
        .json();
    assert!(ids(all).contains(&by_admin));

    // A replay names who replayed it: here the admin's token, of no user.
    let r = app
        .call(
            "POST",
            &format!("/v1/invocations/{id}/replay"),
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let again = r.json()["id"].as_str().unwrap().to_string();
    let shown = app
        .call("GET", &format!("/v1/invocations/{again}"), None, vec![])
        .await
        .json();
    assert!(shown["token"].is_string(), "{shown}");
    assert_ne!(shown["token"], tid.as_str());
    assert_eq!(shown.get("user"), None, "{shown}");
}

/// A function's own `[[route]]` admits a scoped token only when its scopes
/// name the function, and the call records the token.
#[tokio::test]
async fn function_routes_check_scopes_and_record_the_caller() {
    let app = App::new().await;
    for name in ["resize-png", "billing"] {
        let manifest =
            format!("name = \"{name}\"\n[[route]]\nmethod = \"POST\"\npath = \"/{name}\"\n");
        app.deploy_ok(&manifest).await;
    }
    let (tid, scoped) = token(
        &app,
        json!({"role": "invoker", "scopes": ["function:resize-*"]}),
    )
    .await;
    let r = call_bearer(&app, &scoped, "POST", "/resize-png", JSON, b"{}".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.headers["shoal-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let shown = app
        .call("GET", &format!("/v1/invocations/{id}"), None, vec![])
        .await
        .json();
    assert_eq!(shown["token"], tid.as_str());
    let r = call_bearer(&app, &scoped, "POST", "/billing", JSON, b"{}".to_vec()).await;
    check(&r, 403, "forbidden", "function:billing").unwrap();
    assert!(app.runtime.calls_of("billing").is_empty());
}
