//! End to end: function routes (`[[route]]`) on a real node with real
//! Python workers, over HTTP: path parameters, the query, headers and
//! cookies in the event; JSON, text and binary bodies; public routes and
//! token routes (401/403); the per-client rate limit (429, then admitted);
//! CORS preflights and headers; `shoal.Response` with cookies (also binary);
//! failures (502, 504); overlapping routes refused at deploy (409) until a
//! removal frees the path, also for a rollback; reserved prefixes refused;
//! `shoal functions show` listing the routes; a route winning over a
//! static site on its path. And a route deployed through one node is served
//! by another sharing its Redis.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, function_dir, until};
use serde_json::{Value, json};
use shoal_client::Client;
use shoal_client::protocol::ErrorCode;
use shoal_store_redis::testing::RedisServer;

const SITE_TOML: &str = r#"name = "site"
timeout = "2s"

[[route]]
method = "*"
path = "/echo/{id}"
auth = "public"

[[route]]
method = "POST"
path = "/login"
auth = "public"

[[route]]
method = "GET"
path = "/pixel.png"
auth = "public"

[[route]]
method = "GET"
path = "/private"

[[route]]
method = "GET"
path = "/limited"
auth = "public"
rate_limit = { per_second = 2, burst = 1 }

[[route]]
method = "GET"
path = "/boom"
auth = "public"

[[route]]
method = "GET"
path = "/slow"
auth = "public"

[[route]]
method = "POST"
path = "/api/{x}"
auth = "public"
cors = { origins = ["https://app.example"], methods = ["POST"], headers = ["content-type"], credentials = true, max_age_s = 120 }
"#;

const SITE_PY: &str = r#"
import time

PIXEL = bytes(range(256)) * 4

def handler(event, ctx):
    route = event["route"]
    if route == "/login":
        return ctx.Response(
            "welcome " + event["body"]["user"],
            status=201,
            cookies=[
                ctx.cookie("sid", "s-" + event["body"]["user"], max_age=60),
                ctx.cookie("theme", "dark", http_only=False, same_site=None, path=None),
            ],
        )
    if route == "/pixel.png":
        return ctx.Response(PIXEL, content_type="image/png", headers={"cache-control": "max-age=5"},
                            cookies=[ctx.cookie("seen", "1")])
    if route == "/private":
        return {"private": True, "saw_token": "authorization" in event["headers"]}
    if route == "/boom":
        raise ValueError("the secret reason")
    if route == "/slow":
        time.sleep(10)
    return event
"#;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `(status, headers, body)` of a request.
async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

fn error_code(body: &[u8]) -> String {
    json_of(body)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn routes_serve_requests_end_to_end() {
    let node = TestNode::start();
    let c = node.client();
    let f = deploy(&c, SITE_TOML, SITE_PY).await;
    assert_eq!(f.routes.len(), 8, "{f:?}");
    let h = http();
    let url = |p: &str| format!("{}{p}", node.url);

    // Params, the query, headers, cookies, the client; no body.
    let (status, _, body) = send(
        h.get(url("/echo/a%2Fb%20c?k=v&n=1&k=w"))
            .header("cookie", "sid=s1; theme=dark")
            .header("x-trace", "t-1"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let e = json_of(&body);
    assert_eq!(e["method"], "GET");
    assert_eq!(e["route"], "/echo/{id}");
    assert_eq!(e["path"], "/echo/a%2Fb%20c");
    assert_eq!(e["params"], json!({"id": "a/b c"}));
    assert_eq!(e["query"], json!({"k": "v", "n": "1"}));
    assert_eq!(e["cookies"], json!({"sid": "s1", "theme": "dark"}));
    assert_eq!(e["headers"]["x-trace"], "t-1");
    assert_eq!(e["client"], "127.0.0.1");
    assert_eq!(e["body"], Value::Null);

    // Bodies: JSON, text, bytes.
    let (_, _, body) = send(h.put(url("/echo/1")).json(&json!({"a": [1, "x"]}))).await;
    assert_eq!(json_of(&body)["body"], json!({"a": [1, "x"]}));
    let (_, _, body) = send(
        h.post(url("/echo/1"))
            .header("content-type", "text/plain")
            .body("héllo"),
    )
    .await;
    assert_eq!(json_of(&body)["body"], "héllo");
    let (_, _, body) = send(
        h.post(url("/echo/1"))
            .header("content-type", "application/octet-stream")
            .body(vec![0xffu8, 0, 0x80]),
    )
    .await;
    let e = json_of(&body);
    assert_eq!(
        (&e["body"], &e["body_base64"]),
        (&Value::Null, &json!("/wCA"))
    );

    // A Response with cookies: one Set-Cookie each.
    let (status, headers, body) = send(h.post(url("/login")).json(&json!({"user": "ada"}))).await;
    assert_eq!(status, 201);
    assert_eq!(body, b"welcome ada");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "sid=s-ada; Max-Age=60; Path=/; HttpOnly; SameSite=Lax",
            "theme=dark"
        ]
    );
    // Binary, with a cookie.
    let (status, headers, body) = send(h.get(url("/pixel.png"))).await;
    assert_eq!(status, 200);
    let pixel: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    assert_eq!(body, pixel);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["cache-control"], "max-age=5");
    assert_eq!(
        headers["set-cookie"],
        "seen=1; Path=/; HttpOnly; SameSite=Lax"
    );
    assert!(!headers.contains_key("shoal-result"));

    // Token routes: 401 without, 403 with a reader token, the answer with
    // an invoker's (which the function does not see).
    let (status, _, body) = send(h.get(url("/private"))).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let reader = c.create_token("reader", Some("r")).await.unwrap().token;
    let invoker = c.create_token("invoker", Some("i")).await.unwrap().token;
    let (status, _, body) = send(h.get(url("/private")).bearer_auth(&reader)).await;
    assert_eq!((status, error_code(&body).as_str()), (403, "forbidden"));
    let (status, _, body) = send(h.get(url("/private")).bearer_auth(&invoker)).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body), json!({"private": true, "saw_token": false}));

    // The rate limit: 2/s, burst 1, per client address.
    let (status, _, _) = send(h.get(url("/limited"))).await;
    assert_eq!(status, 200);
    let (status, headers, body) = send(h.get(url("/limited"))).await;
    assert_eq!((status, error_code(&body).as_str()), (429, "rate_limited"));
    assert_eq!(headers["retry-after"], "1");
    // The answer says when (at most half a second here): after that, the
    // client is admitted again.
    let message = json_of(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    let ms: u64 = message
        .rsplit("retry in ")
        .next()
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(ms <= 500, "{message}");
    tokio::time::sleep(Duration::from_millis(ms + 5)).await;
    let (status, _, body) = send(h.get(url("/limited"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // CORS: the preflight, then the answer's headers.
    let (status, headers, _) = send(
        h.request(reqwest::Method::OPTIONS, url("/api/x"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-methods"], "POST");
    assert_eq!(headers["access-control-allow-headers"], "content-type");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-max-age"], "120");
    let (status, _, _) = send(
        h.request(reqwest::Method::OPTIONS, url("/api/x"))
            .header("origin", "https://other.example")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, headers, _) = send(
        h.post(url("/api/x"))
            .header("origin", "https://app.example")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["vary"], "origin");

    // Failures: 502 naming the invocation (the message stays in its
    // record on a public route), 504 for a timeout.
    let (status, headers, body) = send(h.get(url("/boom"))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (502, "function_error")
    );
    assert!(!String::from_utf8_lossy(&body).contains("the secret reason"));
    let id = headers["shoal-invocation-id"].to_str().unwrap().to_string();
    let record = c.invocation(&id).await.unwrap();
    assert!(
        record.error.unwrap().message.contains("the secret reason"),
        "the record keeps the message"
    );
    let (status, _, body) = send(h.get(url("/slow"))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (504, "function_timed_out")
    );

    // Unknown paths, and the API's own.
    let (status, _, body) = send(h.get(url("/nothing"))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "route_not_found")
    );
    let (status, _, body) = send(h.get(url("/v1/nothing"))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "route_not_found")
    );
    let (status, headers, _) = send(h.delete(url("/login"))).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");

    // `shoal functions show` lists the routes.
    let out = node.cli(&["functions", "show", "site"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("routes:"), "{text}");
    assert!(
        text.contains("GET     /limited  public, 2/s per client (burst 1)"),
        "{text}"
    );
    assert!(text.contains("GET     /private  token"), "{text}");
}

async fn deploy_err(c: &Client, manifest: &str) -> (ErrorCode, String) {
    let dir = function_dir(manifest, "def handler(e, ctx):\n    return e['route']\n");
    match c.deploy(shoal_client::pack_dir(dir.path()).unwrap()).await {
        Err(shoal_client::Error::Api { code, message, .. }) => (code, message),
        other => panic!("{manifest}: {other:?}"),
    }
}

fn routed(name: &str, method: &str, path: &str) -> String {
    format!(
        "name = \"{name}\"\n[[route]]\nmethod = \"{method}\"\npath = \"{path}\"\nauth = \"public\"\n"
    )
}

const ROUTE_PY: &str = "def handler(e, ctx):\n    return e['route']\n";

#[tokio::test]
async fn overlapping_routes_are_refused_until_the_path_is_free() {
    let node = TestNode::start();
    let c = node.client();
    let h = http();
    let get = |p: &str| h.get(format!("{}{p}", node.url));
    deploy(&c, &routed("first", "GET", "/items/{id}"), ROUTE_PY).await;
    let (code, message) = deploy_err(&c, &routed("second", "GET", "/items/{name}")).await;
    assert_eq!(code, ErrorCode::RouteTaken, "{message}");
    assert!(
        message.contains("function `first`") && message.contains("/items/{id}"),
        "{message}"
    );
    // Reserved prefixes are refused.
    let (code, message) = deploy_err(&c, &routed("second", "GET", "/v1/items")).await;
    assert_eq!(code, ErrorCode::InvalidFunction, "{message}");
    assert!(message.contains("prefix the node serves"), "{message}");
    // Removing the function frees the path.
    c.remove_function("first").await.unwrap();
    let (status, _, _) = send(get("/items/1")).await;
    assert_eq!(status, 404);
    deploy(&c, &routed("second", "GET", "/items/{name}"), ROUTE_PY).await;
    let (status, _, body) = send(get("/items/1")).await;
    assert_eq!((status, json_of(&body)), (200, json!("/items/{name}")));

    // A rollback may not bring back a path another function took since.
    deploy(&c, &routed("third", "GET", "/old"), ROUTE_PY).await;
    deploy(&c, &routed("third", "GET", "/new"), ROUTE_PY).await;
    deploy(&c, &routed("fourth", "GET", "/old"), ROUTE_PY).await;
    let err = c.rollback("third", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RouteTaken), "{err}");
    assert!(err.to_string().contains("function `fourth`"), "{err}");
    c.remove_function("fourth").await.unwrap();
    c.rollback("third", None).await.unwrap();
    let (status, _, body) = send(get("/old")).await;
    assert_eq!((status, json_of(&body)), (200, json!("/old")));
    let (status, _, _) = send(get("/new")).await;
    assert_eq!(status, 404);
}

/// A route deployed (and removed) through one node is served (and no
/// longer) by another sharing its Redis.
#[tokio::test]
async fn routes_follow_the_catalog_across_nodes() {
    let redis = RedisServer::start(&[]);
    let args = ["--store", &redis.url(), "--redis-namespace", "routes"];
    let a = TestNode::start_with(&args);
    let b = TestNode::start_with(&args);
    deploy(
        &a.client(),
        &routed("shared", "GET", "/shared/{x}"),
        ROUTE_PY,
    )
    .await;
    let h = http();
    let on_b = format!("{}/shared/1", b.url);
    until(
        "node b serves the route",
        Duration::from_secs(10),
        async || send(h.get(&on_b)).await.0 == 200,
    )
    .await;
    // The other node refuses an overlapping deploy too.
    let (code, _) = deploy_err(&b.client(), &routed("rival", "GET", "/shared/{y}")).await;
    assert_eq!(code, ErrorCode::RouteTaken);
    a.client().remove_function("shared").await.unwrap();
    until(
        "node b stops serving it",
        Duration::from_secs(10),
        async || send(h.get(&on_b)).await.0 == 404,
    )
    .await;
}

/// Precedence on the same node: a function route wins over a static site
/// mounted on its path; the site answers every other path under its mount.
#[tokio::test]
async fn a_route_wins_over_a_site_on_its_path() {
    let node = TestNode::start();
    let c = node.client();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>site</p>").unwrap();
    std::fs::create_dir(site.path().join("api")).unwrap();
    std::fs::write(site.path().join("api/1"), "a file").unwrap();
    let out = node.cli(&[
        "sites",
        "deploy",
        "web",
        site.path().to_str().unwrap(),
        "--path",
        "/",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deploy(&c, &routed("api", "GET", "/api/{x}"), ROUTE_PY).await;
    let h = http();
    let get = |p: &str| h.get(format!("{}{p}", node.url));
    let (status, _, body) = send(get("/api/1")).await;
    assert_eq!((status, json_of(&body)), (200, json!("/api/{x}")));
    let (status, _, body) = send(get("/index.html")).await;
    assert_eq!((status, body.as_slice()), (200, b"<p>site</p>".as_slice()));
    // Removing the function uncovers the site's file.
    c.remove_function("api").await.unwrap();
    let (status, _, body) = send(get("/api/1")).await;
    assert_eq!((status, body.as_slice()), (200, b"a file".as_slice()));
}
