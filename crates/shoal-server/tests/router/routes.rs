//! Every route: the OpenAPI document lists exactly the routes served, and
//! each route admits exactly the callers its role allows.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use shoal_types::Role;

use crate::app::{App, Caller, check};

/// The role each route needs; `None` for routes open to anyone. Every
/// route of the OpenAPI document must be here, and nothing else but the
/// two routes outside it (the document itself and `/metrics`).
const ROUTES: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/metrics", Some(Role::Reader)),
    ("GET", "/v1/openapi.json", Some(Role::Reader)),
    ("POST", "/v1/functions", Some(Role::Developer)),
    ("GET", "/v1/functions", Some(Role::Reader)),
    ("GET", "/v1/functions/{name}", Some(Role::Reader)),
    ("DELETE", "/v1/functions/{name}", Some(Role::Developer)),
    ("POST", "/v1/functions/{name}/invoke", Some(Role::Invoker)),
    ("GET", "/v1/functions/{name}/versions", Some(Role::Reader)),
    ("GET", "/v1/functions/{name}/files", Some(Role::Reader)),
    (
        "POST",
        "/v1/functions/{name}/rollback",
        Some(Role::Developer),
    ),
    (
        "PUT",
        "/v1/functions/{name}/aliases/{alias}",
        Some(Role::Developer),
    ),
    (
        "DELETE",
        "/v1/functions/{name}/aliases/{alias}",
        Some(Role::Developer),
    ),
    ("GET", "/v1/invocations/{id}", Some(Role::Reader)),
    ("GET", "/v1/invocations/{id}/logs", Some(Role::Reader)),
    ("POST", "/v1/invocations/{id}/replay", Some(Role::Invoker)),
    ("GET", "/v1/invocations", Some(Role::Reader)),
    ("GET", "/v1/functions/{name}/logs", Some(Role::Reader)),
    ("GET", "/v1/stats", Some(Role::Reader)),
    ("GET", "/v1/usage", Some(Role::Reader)),
    ("GET", "/v1/usage/prices", Some(Role::Reader)),
    ("PUT", "/v1/usage/prices", Some(Role::Admin)),
    ("GET", "/v1/functions/{name}/estimate", Some(Role::Reader)),
    ("GET", "/v1/tokens/{id}/budget", Some(Role::Admin)),
    ("PUT", "/v1/tokens/{id}/budget", Some(Role::Admin)),
    ("DELETE", "/v1/tokens/{id}/budget", Some(Role::Admin)),
    ("GET", "/v1/invocations/count", Some(Role::Reader)),
    ("GET", "/v1/nodes", Some(Role::Reader)),
    ("GET", "/v1/schedules", Some(Role::Reader)),
    (
        "POST",
        "/v1/schedules/{function}/{index}/pause",
        Some(Role::Developer),
    ),
    (
        "POST",
        "/v1/schedules/{function}/{index}/resume",
        Some(Role::Developer),
    ),
    (
        "GET",
        "/v1/schedules/{function}/{index}/history",
        Some(Role::Reader),
    ),
    ("GET", "/v1/triggers", Some(Role::Reader)),
    ("POST", "/v1/tokens", Some(Role::Admin)),
    ("GET", "/v1/tokens", Some(Role::Admin)),
    ("DELETE", "/v1/tokens/{id}", Some(Role::Admin)),
    ("POST", "/v1/users", Some(Role::Admin)),
    ("GET", "/v1/users", Some(Role::Admin)),
    ("GET", "/v1/users/{name}", Some(Role::Admin)),
    ("PATCH", "/v1/users/{name}", Some(Role::Admin)),
    ("DELETE", "/v1/users/{name}", Some(Role::Admin)),
    ("POST", "/v1/categories", Some(Role::Developer)),
    ("GET", "/v1/categories", Some(Role::Reader)),
    ("GET", "/v1/categories/{cat}", Some(Role::Reader)),
    ("DELETE", "/v1/categories/{cat}", Some(Role::Developer)),
    ("POST", "/v1/categories/{cat}/docs", Some(Role::Invoker)),
    ("GET", "/v1/categories/{cat}/docs", Some(Role::Reader)),
    ("GET", "/v1/categories/{cat}/docs/{id}", Some(Role::Reader)),
    ("PUT", "/v1/categories/{cat}/docs/{id}", Some(Role::Invoker)),
    (
        "DELETE",
        "/v1/categories/{cat}/docs/{id}",
        Some(Role::Invoker),
    ),
    ("POST", "/v1/categories/{cat}/query", Some(Role::Invoker)),
    ("GET", "/v1/queues", Some(Role::Reader)),
    ("PUT", "/v1/queues/{name}", Some(Role::Developer)),
    ("GET", "/v1/queues/{name}", Some(Role::Reader)),
    ("DELETE", "/v1/queues/{name}", Some(Role::Developer)),
    ("POST", "/v1/queues/{name}/messages", Some(Role::Invoker)),
    ("POST", "/v1/queues/{name}/purge", Some(Role::Developer)),
    ("GET", "/v1/queues/{name}/dead-letters", Some(Role::Reader)),
    (
        "POST",
        "/v1/queues/{name}/dead-letters/redrive",
        Some(Role::Developer),
    ),
    (
        "POST",
        "/v1/queues/{name}/dead-letters/purge",
        Some(Role::Developer),
    ),
    ("GET", "/v1/queues/{name}/stats", Some(Role::Reader)),
    ("GET", "/v1/limiters", Some(Role::Reader)),
    ("PUT", "/v1/limiters/{name}", Some(Role::Developer)),
    ("DELETE", "/v1/limiters/{name}", Some(Role::Developer)),
    ("GET", "/v1/notifications", Some(Role::Admin)),
    ("GET", "/v1/notifications/deliveries", Some(Role::Admin)),
    ("PUT", "/v1/notifications/{name}", Some(Role::Admin)),
    ("GET", "/v1/notifications/{name}", Some(Role::Admin)),
    ("DELETE", "/v1/notifications/{name}", Some(Role::Admin)),
    ("GET", "/v1/secrets", Some(Role::Admin)),
    ("PUT", "/v1/secrets/{name}", Some(Role::Admin)),
    ("DELETE", "/v1/secrets/{name}", Some(Role::Admin)),
    ("POST", "/v1/jobs", Some(Role::Invoker)),
    ("GET", "/v1/jobs", Some(Role::Reader)),
    ("GET", "/v1/jobs/{id}", Some(Role::Reader)),
    ("GET", "/v1/jobs/{id}/results", Some(Role::Reader)),
    ("POST", "/v1/jobs/{id}/cancel", Some(Role::Invoker)),
    ("GET", "/v1/kv", Some(Role::Reader)),
    ("GET", "/v1/kv/{key}", Some(Role::Reader)),
    ("PUT", "/v1/kv/{key}", Some(Role::Invoker)),
    ("DELETE", "/v1/kv/{key}", Some(Role::Invoker)),
    ("POST", "/v1/kv/{key}/incr", Some(Role::Invoker)),
    ("GET", "/v1/blobs", Some(Role::Reader)),
    ("GET", "/v1/blobs/{key}", Some(Role::Reader)),
    ("HEAD", "/v1/blobs/{key}", Some(Role::Reader)),
    ("PUT", "/v1/blobs/{key}", Some(Role::Invoker)),
    ("DELETE", "/v1/blobs/{key}", Some(Role::Invoker)),
    ("POST", "/v1/blobs/{key}/bitfield", Some(Role::Invoker)),
    ("GET", "/v1/sites", Some(Role::Reader)),
    ("GET", "/v1/sites/{name}", Some(Role::Reader)),
    ("PUT", "/v1/sites/{name}", Some(Role::Developer)),
    ("DELETE", "/v1/sites/{name}", Some(Role::Developer)),
    ("GET", "/v1/sites/{name}/versions", Some(Role::Reader)),
    ("POST", "/v1/sites/{name}/rollback", Some(Role::Developer)),
    ("GET", "/v1/channels", Some(Role::Reader)),
    ("GET", "/v1/channels/{name}", Some(Role::Reader)),
    ("PUT", "/v1/channels/{name}", Some(Role::Admin)),
    ("POST", "/v1/channels/{name}/messages", Some(Role::Invoker)),
    // Streams: answered 200 and not read to the end (see `App::call_with`).
    ("GET", "/v1/channels/{name}/events", Some(Role::Reader)),
    ("GET", "/v1/channels/{name}/ws", Some(Role::Reader)),
];

/// Routes served but not in the document.
const UNDOCUMENTED: &[&str] = &["GET /metrics", "GET /v1/openapi.json"];

fn concrete(path: &str) -> String {
    path.replace("{name}", "zzz")
        .replace("{id}", "zzz")
        .replace("{cat}", "zzz")
        .replace("{alias}", "zzz")
        .replace("{key}", "zzz")
        .replace("{function}", "zzz")
        .replace("{index}", "0")
}

async fn documented_routes(app: &App) -> BTreeSet<String> {
    let r = app.call("GET", "/v1/openapi.json", None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.json();
    let mut listed = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            listed.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed
}

/// The OpenAPI document lists exactly the routes of the table (but the
/// undocumented two), and every route it lists is served.
#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let app = App::new().await;
    let listed = documented_routes(&app).await;
    let table: BTreeSet<String> = ROUTES
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .filter(|r| !UNDOCUMENTED.contains(&r.as_str()))
        .collect();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        table.iter().collect::<Vec<_>>(),
        "the OpenAPI document and this table differ"
    );
    assert_eq!(listed.len(), 98);
    for r in &listed {
        let (method, path) = r.split_once(' ').unwrap();
        let reply = app.call(method, &concrete(path), None, vec![]).await;
        assert!(
            !reply.text.contains("route_not_found") && reply.status != 405,
            "{r} is documented but not served: {} {}",
            reply.status,
            reply.text
        );
    }
}

/// Every route × every caller: no or a bad token is 401 `unauthorized`, a
/// role below the route's is 403 `forbidden` naming both roles, and a role
/// at or above it gets past authentication (whatever the route then says,
/// never a 5xx and never an error without a JSON body; lists answer 200).
#[tokio::test]
async fn every_route_by_every_caller() {
    let app = App::with_metrics(false).await;
    let callers = [
        (
            Caller::Nobody,
            "missing `Authorization: Bearer <token>` header",
        ),
        (Caller::NotBearer, "must be `Bearer <token>`"),
        (Caller::EmptyBearer, "must be `Bearer <token>`"),
        (Caller::Unknown, "unknown or revoked token"),
        (Caller::Revoked, "unknown or revoked token"),
    ];
    let mut failures = String::new();
    let mut cells = 0;
    for (method, route, needs) in ROUTES {
        let path = concrete(route);
        for (caller, says) in callers {
            cells += 1;
            let r = app.call_as(caller, method, &path, None, vec![]).await;
            let outcome = match needs {
                // A HEAD answer has no body: only its status tells.
                Some(_) if *method == "HEAD" => status_is(&r, 401),
                Some(_) => check(&r, 401, "unauthorized", says),
                None if r.status == 401 || r.status == 403 => {
                    Err(format!("open route refused: {} {}", r.status, r.text))
                }
                None => Ok(()),
            };
            if let Err(why) = outcome {
                let _ = writeln!(failures, "{method} {route} as {caller:?}: {why}");
            }
        }
        for role in Role::ALL {
            cells += 1;
            let r = app
                .call_as(Caller::As(role), method, &path, None, vec![])
                .await;
            let outcome = match needs {
                Some(need) if !role.allows(*need) && *method == "HEAD" => status_is(&r, 403),
                Some(need) if !role.allows(*need) => check(
                    &r,
                    403,
                    "forbidden",
                    &format!("this needs a {need} token; yours is {role}"),
                ),
                _ if r.status == 401 || r.status == 403 || r.status >= 500 => {
                    Err(format!("allowed caller got {} {}", r.status, r.text))
                }
                // Lists (GET without a path parameter) answer 200 outright.
                Some(_) if *method == "GET" && !route.contains('{') && r.status != 200 => {
                    Err(format!("a list answered {} {}", r.status, r.text))
                }
                _ if r.status >= 400 && *method != "HEAD" => r.error().map(|_| ()),
                _ => Ok(()),
            };
            if let Err(why) = outcome {
                let _ = writeln!(failures, "{method} {route} as {role}: {why}");
            }
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
    assert_eq!(cells, ROUTES.len() * 9);
}

fn status_is(r: &crate::app::Reply, status: u16) -> Result<(), String> {
    if r.status == status {
        Ok(())
    } else {
        Err(format!("answered {} instead of {status}", r.status))
    }
}

/// `/healthz` answers without a token.
#[tokio::test]
async fn health_needs_no_token() {
    let app = App::new().await;
    let r = app
        .call_as(Caller::Nobody, "GET", "/healthz", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "ok");
}

/// A revoked token stops working at once; revoking it again is 404.
#[tokio::test]
async fn revoked_tokens_stop_working_at_once() {
    let app = App::new().await;
    let r = app
        .call(
            "POST",
            "/v1/tokens",
            crate::app::JSON,
            br#"{"role": "developer", "name": "dev"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    );
    let get_as = async |secret: &str| {
        let req = axum::http::Request::builder()
            .uri("/v1/functions")
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::empty())
            .unwrap();
        use tower::ServiceExt;
        app.router.clone().oneshot(req).await.unwrap().status()
    };
    assert_eq!(get_as(&secret).await, 200);
    let r = app
        .call("DELETE", &format!("/v1/tokens/{id}"), None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get_as(&secret).await, 401);
    let r = app
        .call("DELETE", &format!("/v1/tokens/{id}"), None, vec![])
        .await;
    check(&r, 404, "token_not_found", &id).unwrap();
}

/// Each role does what it may: an invoker invokes, a reader reads the
/// invocation and its logs, a developer deploys, an admin lists tokens.
#[tokio::test]
async fn each_role_does_what_it_may() {
    let app = App::seeded().await;
    let r = app
        .call_as(
            Caller::As(Role::Invoker),
            "POST",
            "/v1/functions/ok/invoke",
            crate::app::JSON,
            b"{}".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    let id = r.headers[shoal_protocol::INVOCATION_ID_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/v1/invocations/{id}"),
        format!("/v1/invocations/{id}/logs"),
    ] {
        let r = app
            .call_as(Caller::As(Role::Reader), "GET", &path, None, vec![])
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.json()["id"], id.as_str());
    }
    let archive = crate::app::tar_of(&[
        ("shoal.toml", "name = \"g\""),
        ("main.py", "def handler(e, c):\n    return 2\n"),
    ]);
    let r = app
        .call_as(
            Caller::As(Role::Developer),
            "POST",
            "/v1/functions",
            crate::app::TAR,
            archive,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["name"], "g");
    let r = app
        .call_as(Caller::As(Role::Admin), "GET", "/v1/tokens", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // One token per role, and the revoked one is gone.
    assert_eq!(r.json()["tokens"].as_array().unwrap().len(), 4);
    assert!(
        !r.text.contains(app.secret(Role::Admin)),
        "a secret is listed"
    );
}
