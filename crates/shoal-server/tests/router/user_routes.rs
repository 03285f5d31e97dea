//! Function routes (`[[route]]`) on the router's fallback, over the fake
//! runtime (whose functions echo their event unless scripted): the event a
//! request becomes, bodies, tokens, rate limits, CORS, conflicts at deploy,
//! binary answers with cookies, failures, and what stays the API's.

use serde_json::{Value, json};

use shoal_protocol::{INVOCATION_ID_HEADER, RESULT_HEADER};
use shoal_runtime::fake::Script;
use shoal_types::{FailureKind, Role};

use crate::app::{App, Caller, MAX_BODY, Reply, TAR, check, tar_of};

/// Deploys `name` with these `[[route]]` lines (and `code` as main.py).
async fn deploy(app: &App, name: &str, routes: &str, code: &str) -> Reply {
    let manifest = format!("name = \"{name}\"\n{routes}");
    app.call(
        "POST",
        "/v1/functions",
        TAR,
        tar_of(&[("shoal.toml", &manifest), ("main.py", code)]),
    )
    .await
}

async fn deployed(app: &App, name: &str, routes: &str) {
    let r = deploy(app, name, routes, "def handler(e, ctx):\n    return e\n").await;
    assert_eq!(r.status, 201, "deploy {name}: {}", r.text);
}

fn route(method: &str, path: &str, extra: &str) -> String {
    format!("[[route]]\nmethod = \"{method}\"\npath = \"{path}\"\n{extra}\n")
}

const PUBLIC: &str = "auth = \"public\"";

async fn get(app: &App, path: &str, headers: &[(&str, &str)]) -> Reply {
    app.call_with(Caller::Nobody, "GET", path, headers, vec![])
        .await
}

#[tokio::test]
async fn the_event_carries_the_request() {
    let app = App::new().await;
    deployed(&app, "items", &route("GET", "/api/items/{id}", PUBLIC)).await;
    let r = get(
        &app,
        "/api/items/a%20b?k=v&k=w&n=1",
        &[
            ("cookie", "sid=s1; theme=\"dark\""),
            ("x-a", "1"),
            ("authorization", "Bearer not-checked"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("application/json"));
    assert!(r.headers.contains_key(INVOCATION_ID_HEADER));
    let e = r.json();
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/api/items/a%20b");
    assert_eq!(e["route"], "/api/items/{id}");
    assert_eq!(e["params"], json!({"id": "a b"}));
    assert_eq!(e["query"], json!({"k": "v", "n": "1"}));
    assert_eq!(e["cookies"], json!({"sid": "s1", "theme": "dark"}));
    assert_eq!(e["headers"]["x-a"], "1");
    // A public route passes every header on.
    assert_eq!(e["headers"]["authorization"], "Bearer not-checked");
    assert_eq!(e["client"], "unknown");
    assert_eq!(e["body"], Value::Null);
    assert!(e.get("body_base64").is_none(), "{e}");
    // HEAD is answered by the GET route.
    let r = app
        .call_with(Caller::Nobody, "HEAD", "/api/items/1", &[], vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn bodies_arrive_as_json_text_or_base64() {
    let app = App::new().await;
    deployed(&app, "post", &route("POST", "/in", PUBLIC)).await;
    let send = |ct: &'static str, body: Vec<u8>| {
        let app = &app;
        async move {
            app.call_with(Caller::Nobody, "POST", "/in", &[("content-type", ct)], body)
                .await
        }
    };
    let r = send("application/json", br#"{"b": [1, 2.50]}"#.to_vec()).await;
    assert_eq!(r.json()["body"], json!({"b": [1, 2.5]}), "{}", r.text);
    let r = send("application/merge-patch+json", b"3".to_vec()).await;
    assert_eq!(r.json()["body"], json!(3));
    let r = send("text/plain", "héllo".as_bytes().to_vec()).await;
    assert_eq!(r.json()["body"], "héllo");
    // Not UTF-8: base64, and a null body.
    let r = send("application/octet-stream", vec![0xff, 0x00, 0x80]).await;
    let e = r.json();
    assert_eq!(
        (&e["body"], &e["body_base64"]),
        (&Value::Null, &json!("/wCA"))
    );
    let r = send("application/json", b"{nope".to_vec()).await;
    check(&r, 400, "invalid_input", "not valid JSON").unwrap();
    let r = send("text/plain", vec![b'a'; MAX_BODY + 1]).await;
    check(&r, 413, "payload_too_large", "").unwrap();
    let r = send("text/plain", vec![b'a'; MAX_BODY]).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn token_routes_need_a_token_with_invoke_rights() {
    let app = App::new().await;
    deployed(&app, "private", &route("POST", "/private", "")).await;
    for (caller, status, code) in [
        (Caller::Nobody, 401, "unauthorized"),
        (Caller::Unknown, 401, "unauthorized"),
        (Caller::Revoked, 401, "unauthorized"),
        (Caller::As(Role::Reader), 403, "forbidden"),
    ] {
        let r = app.call_with(caller, "POST", "/private", &[], vec![]).await;
        check(&r, status, code, "").unwrap_or_else(|e| panic!("{caller:?}: {e}"));
    }
    assert!(app.runtime.calls_of("private").is_empty());
    for role in [Role::Invoker, Role::Developer, Role::Admin] {
        let r = app
            .call_with(
                Caller::As(role),
                "POST",
                "/private",
                &[("x-b", "2")],
                vec![],
            )
            .await;
        assert_eq!(r.status, 200, "{role:?}: {}", r.text);
        let e = r.json();
        // The token is not handed to the function.
        assert!(e["headers"].get("authorization").is_none(), "{e}");
        assert_eq!(e["headers"]["x-b"], "2");
    }
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_answers_429_then_admits_again() {
    let app = App::new().await;
    deployed(
        &app,
        "limited",
        &route(
            "GET",
            "/limited",
            "auth = \"public\"\nrate_limit = { per_second = 0.5, burst = 2 }",
        ),
    )
    .await;
    deployed(&app, "free", &route("GET", "/free", PUBLIC)).await;
    for _ in 0..2 {
        assert_eq!(get(&app, "/limited", &[]).await.status, 200);
    }
    let r = get(&app, "/limited", &[]).await;
    check(&r, 429, "rate_limited", "retry in").unwrap();
    assert_eq!(r.headers["retry-after"], "2");
    // Other routes are not limited.
    assert_eq!(get(&app, "/free", &[]).await.status, 200);
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert_eq!(get(&app, "/limited", &[]).await.status, 200);
    check(&get(&app, "/limited", &[]).await, 429, "rate_limited", "").unwrap();
    assert_eq!(app.runtime.calls_of("limited").len(), 3);
}

#[tokio::test]
async fn cors_preflights_and_answers() {
    let app = App::new().await;
    deployed(
        &app,
        "api",
        &(route(
            "POST",
            "/api/{x}",
            "auth = \"public\"\ncors = { origins = [\"https://app.example\"], methods = [\"GET\", \"POST\"], headers = [\"Content-Type\", \"x-k\"], credentials = true, max_age_s = 60 }",
        ) + &route("GET", "/open", "auth = \"public\"\ncors = { origins = [\"*\"] }")
            + &route("GET", "/plain", PUBLIC)),
    )
    .await;
    let pre = |origin: &'static str, method: &'static str, path: &'static str| {
        let app = &app;
        async move {
            app.call_with(
                Caller::Nobody,
                "OPTIONS",
                path,
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                ],
                vec![],
            )
            .await
        }
    };
    let r = pre("https://app.example", "POST", "/api/1").await;
    assert_eq!(r.status, 204, "{}", r.text);
    let h = &r.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-k");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "60");
    assert_eq!(h["vary"], "origin");
    assert!(
        app.runtime.calls_of("api").is_empty(),
        "a preflight runs nothing"
    );
    check(
        &pre("https://evil.example", "POST", "/api/1").await,
        403,
        "forbidden",
        "may not call",
    )
    .unwrap();
    // No route answers DELETE there: not a preflight of a route.
    let r = pre("https://app.example", "DELETE", "/api/1").await;
    check(&r, 405, "method_not_allowed", "POST").unwrap();
    // Answers carry the headers for an allowed origin only.
    let r = app
        .call_with(
            Caller::Nobody,
            "POST",
            "/api/1",
            &[("origin", "https://app.example")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let r = app
        .call_with(
            Caller::Nobody,
            "POST",
            "/api/1",
            &[("origin", "https://evil.example")],
            vec![],
        )
        .await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = get(&app, "/open", &[("origin", "https://any.example")]).await;
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
    let r = get(&app, "/plain", &[("origin", "https://any.example")]).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn overlapping_routes_are_refused_until_the_path_is_free() {
    let app = App::new().await;
    deployed(&app, "a", &route("GET", "/x/{id}", PUBLIC)).await;
    let r = deploy(
        &app,
        "b",
        &route("*", "/x/{name}", PUBLIC),
        "def handler(e, c):\n    return 1\n",
    )
    .await;
    check(&r, 409, "route_taken", "function `a`").unwrap();
    assert!(r.error().unwrap().1.contains("GET /x/{id}"), "{}", r.text);
    // Another method, or a static segment beside the parameter, is fine.
    deployed(
        &app,
        "b",
        &(route("POST", "/x/{name}", PUBLIC) + &route("GET", "/x/me", PUBLIC)),
    )
    .await;
    assert_eq!(get(&app, "/x/me", &[]).await.status, 200);
    assert_eq!(app.runtime.calls_of("b").len(), 1);
    // The removal frees the path.
    let r = app.call("DELETE", "/v1/functions/a", None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    check(
        &get(&app, "/x/7", &[]).await,
        405,
        "method_not_allowed",
        "POST",
    )
    .unwrap();
    deployed(&app, "c", &route("GET", "/x/{n}", PUBLIC)).await;
    assert_eq!(get(&app, "/x/7", &[]).await.status, 200);
    assert_eq!(app.runtime.calls_of("c").len(), 1);

    // A rollback may not bring back a route another function took since.
    deployed(&app, "d", &route("GET", "/d", PUBLIC)).await;
    let r = deploy(&app, "d", "", "def handler(e, c):\n    return 2\n").await;
    assert_eq!(r.status, 201, "{}", r.text);
    check(&get(&app, "/d", &[]).await, 404, "route_not_found", "").unwrap();
    deployed(&app, "e", &route("GET", "/d", PUBLIC)).await;
    let r = app
        .call("POST", "/v1/functions/d/rollback", None, vec![])
        .await;
    check(&r, 409, "route_taken", "function `e`").unwrap();
    app.call("DELETE", "/v1/functions/e", None, vec![]).await;
    let r = app
        .call("POST", "/v1/functions/d/rollback", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&app, "/d", &[]).await.status, 200);
    assert_eq!(app.runtime.calls_of("d").len(), 1);
}

#[tokio::test]
async fn bad_routes_are_refused_at_deploy() {
    let app = App::new().await;
    for (routes, says) in [
        (route("GET", "/v1/mine", PUBLIC), "prefix the node serves"),
        (route("GET", "/metrics", PUBLIC), "prefix the node serves"),
        (route("GET", "/ui/app", PUBLIC), "prefix the node serves"),
        (route("FETCH", "/a", PUBLIC), "method must be one of"),
        (route("GET", "/a/{*r}/b", PUBLIC), "not a valid pattern"),
        (
            route("GET", "/a", "auth = \"anyone\""),
            "use \"public\" or \"token\"",
        ),
    ] {
        let r = deploy(&app, "bad", &routes, "def handler(e, c):\n    return 1\n").await;
        check(&r, 400, "invalid_function", says).unwrap_or_else(|e| panic!("{routes}: {e}"));
    }
    assert!(app.functions().await.is_empty());
}

#[tokio::test]
async fn responses_with_cookies_and_failures() {
    let app = App::new().await;
    deployed(
        &app,
        "page",
        &(route("GET", "/page", PUBLIC) + &route("GET", "/private-page", "")),
    )
    .await;
    let page = shoal_engine::BinaryResult {
        status: 201,
        content_type: "text/html; charset=utf-8".into(),
        headers: [("cache-control".to_string(), "no-store".to_string())].into(),
        body: b"<p>hi</p>".to_vec(),
        cookies: vec!["sid=abc; Path=/; HttpOnly".into(), "theme=dark".into()],
    };
    app.runtime.script("page", Script::ok_raw(page.to_json()));
    let r = get(&app, "/page", &[]).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.bytes, page.body);
    assert_eq!(r.content_type, "text/html; charset=utf-8");
    assert_eq!(r.headers["cache-control"], "no-store");
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["sid=abc; Path=/; HttpOnly", "theme=dark"]);
    assert!(!r.headers.contains_key(RESULT_HEADER));

    // A failure is a 502 (504 for a timeout) that names the invocation; a
    // public route keeps the function's own message to the record.
    app.runtime
        .script("page", Script::raise("ValueError", "secret detail"));
    let r = get(&app, "/page", &[]).await;
    check(&r, 502, "function_error", "see invocation").unwrap();
    assert!(!r.text.contains("secret detail"), "{}", r.text);
    let id = r.json()["error"]["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r.headers[INVOCATION_ID_HEADER], id.as_str());
    let r = app
        .call_with(
            Caller::As(Role::Invoker),
            "GET",
            "/private-page",
            &[],
            vec![],
        )
        .await;
    check(&r, 502, "function_error", "secret detail").unwrap();
    app.runtime
        .script("page", Script::fail(FailureKind::TimedOut));
    let r = get(&app, "/page", &[]).await;
    check(&r, 504, "function_timed_out", "timed_out").unwrap();
    assert_eq!(r.json()["error"]["type"], "timed_out");
}

#[tokio::test]
async fn the_api_keeps_its_paths_and_unknown_paths_are_404() {
    let app = App::new().await;
    deployed(
        &app,
        "all",
        &(route("*", "/{*rest}", PUBLIC) + &route("POST", "/only-post", PUBLIC)),
    )
    .await;
    // The catch-all takes any path but the reserved ones.
    let r = get(&app, "/some/page", &[]).await;
    assert_eq!(r.json()["params"], json!({"rest": "some/page"}));
    for path in [
        "/v1/nothing-here",
        "/v1",
        "/healthz/x",
        "/ui/x",
        "/metrics/x",
    ] {
        let r = get(&app, path, &[]).await;
        check(&r, 404, "route_not_found", "see /v1/openapi.json")
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let r = app
        .call_with(Caller::Nobody, "GET", "/only-post", &[], vec![])
        .await;
    assert_eq!(r.status, 200, "the catch-all takes GET: {}", r.text);
    app.call("DELETE", "/v1/functions/all", None, vec![]).await;
    check(
        &get(&app, "/some/page", &[]).await,
        404,
        "route_not_found",
        "/some/page",
    )
    .unwrap();
}

#[tokio::test]
async fn functions_show_their_routes() {
    let app = App::new().await;
    deployed(
        &app,
        "shown",
        &route(
            "post",
            "/api/{id}",
            "auth = \"public\"\nrate_limit = { per_second = 5, burst = 10 }\ncors = { origins = [\"*\"] }",
        ),
    )
    .await;
    let want = json!([{
        "method": "POST", "path": "/api/{id}", "auth": "public",
        "rate_limit": {"per_second": 5.0, "burst": 10},
        "cors": {"origins": ["*"], "methods": ["POST"], "headers": [], "credentials": false, "max_age_s": 600},
    }]);
    let f = app
        .call("GET", "/v1/functions/shown", None, vec![])
        .await
        .json();
    assert_eq!(f["routes"], want, "{f}");
    let v = app
        .call("GET", "/v1/functions/shown/versions", None, vec![])
        .await
        .json();
    assert_eq!(v["routes"], want, "{v}");
}
