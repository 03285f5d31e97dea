//! The router's fallback: function routes (`[[route]]` of `shoal.toml`),
//! then static sites, at any path outside the node's reserved prefixes.
//!
//! A matched route runs its function synchronously, through the same path
//! as `POST /v1/functions/{name}/invoke`, with the request as its event
//! (method, path, params, query, headers, cookies, body, client address).
//! In order: CORS preflight, the per-client rate limit (before the token
//! check, so guessing tokens is limited too), the token (`auth = "token"`:
//! the API's own check, a token with invoke rights), the body (the node's
//! body limit), the call. Paths under the reserved prefixes keep the API's
//! own 404.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;

use shoal_engine::{BinaryResult, RouteCors, RouteHit, RouteMatch, is_reserved};
use shoal_protocol::{ErrorCode, INVOCATION_ID_HEADER, RESULT_HEADER};
use shoal_types::{FailureKind, Outcome};

use crate::AppState;
use crate::auth::{Auth, Invoker};
use crate::error::ApiError;

/// Serves a request no API route took.
pub(crate) async fn serve(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    // The body is not `Sync`: only the head is held across awaits.
    let (req, body) = req.into_parts();
    let path = req.uri.path().to_string();
    if is_reserved(&path) {
        return not_found("no such route; see /v1/openapi.json");
    }
    let origin = req
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(answer) = preflight(&state, &req, &path, origin.as_deref()) {
        return answer;
    }
    let method = req.method.clone();
    let mut found = state.handle.match_route(method.as_str(), &path);
    if method == Method::HEAD && !matches!(found, RouteMatch::Hit(_)) {
        // A GET route answers HEAD too (the server sends no body).
        if let RouteMatch::Hit(hit) = state.handle.match_route("GET", &path) {
            found = RouteMatch::Hit(hit);
        }
    }
    let hit = match found {
        RouteMatch::Hit(hit) => hit,
        RouteMatch::OtherMethods(allow) => {
            if let Some(r) = site(&state, &req).await {
                return r;
            }
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                format!(
                    "{path} does not take {method}; it takes {}",
                    allow.join(", ")
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return r;
        }
        RouteMatch::None => {
            return match site(&state, &req).await {
                Some(r) => r,
                // Nothing of the user's at the root: the dashboard is there.
                None if path == "/" && matches!(method, Method::GET | Method::HEAD) => {
                    axum::response::Redirect::to("/ui/").into_response()
                }
                None => not_found(&format!(
                    "no function route or site serves {path}; the API is under /v1 (see /v1/openapi.json)"
                )),
            };
        }
    };
    let cors = hit.route.cors.clone();
    let mut answer = match call(&state, req, body, &hit).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let (Some(cors), Some(origin)) = (&cors, &origin) {
        allow_origin(answer.headers_mut(), cors, origin);
    }
    answer
}

/// Runs the route's function for the request, after its rate limit and
/// token check.
async fn call(
    state: &AppState,
    mut parts: Parts,
    body: axum::body::Body,
    hit: &RouteHit,
) -> Result<Response, ApiError> {
    let client = client_of(&parts);
    if let Err(wait) = state.handle.admit_route(hit, &client) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "too many calls of {} {} from {client}; retry in {} ms",
                hit.route.method,
                hit.route.path,
                wait.as_micros().div_ceil(1000)
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Ok(r);
    }
    // A token's call (a scoped one needs the function's scope) records
    // who made it; a public route's call records no one.
    let origin = if hit.route.public {
        shoal_engine::Origin::default()
    } else {
        let resource = shoal_engine::Resource::Function(hit.function.as_str());
        Auth::<Invoker>::for_resource(&mut parts, state, resource)
            .await?
            .origin()
    };
    let req = axum::extract::Request::from_parts(parts.clone(), body);
    let bytes = Bytes::from_request(req, state).await?;
    let event = event(&parts, hit, &client, &bytes)?;
    let done = state
        .handle
        .invoke_by(&origin, &hit.function, event)
        .await?;
    let mut resp = match &done.outcome {
        Outcome::Succeeded(json) if let Some(Ok(binary)) = BinaryResult::parse(json) => {
            let mut r = crate::routes::invocations::binary_answer(binary);
            r.headers_mut().remove(RESULT_HEADER);
            r
        }
        Outcome::Succeeded(json) => {
            let mut r = json.clone().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Outcome::Failed(f) => {
            let (status, code) = match f.kind {
                FailureKind::TimedOut => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::FunctionTimedOut),
                _ => (StatusCode::BAD_GATEWAY, ErrorCode::FunctionError),
            };
            // A public route's caller is anyone: the function's own
            // message and traceback stay in its invocation record.
            let message = if hit.route.public {
                format!(
                    "function `{}` failed ({}); see invocation {}",
                    hit.function, f.kind, done.id
                )
            } else {
                format!(
                    "function `{}` failed ({}): {}; see invocation {}",
                    hit.function, f.kind, f.message, done.id
                )
            };
            let body = serde_json::json!({"error": {
                "code": code,
                "message": message,
                "type": f.kind.as_str(),
                "invocation_id": done.id,
            }});
            (status, axum::Json(body)).into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&done.id) {
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    Ok(resp)
}

/// The event a route's function gets (see `docs/routes.md`).
#[derive(Serialize)]
struct Event<'a> {
    method: &'a str,
    path: &'a str,
    route: &'a str,
    params: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    cookies: BTreeMap<String, String>,
    client: &'a str,
    body: EventBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EventBody<'a> {
    Json(&'a RawValue),
    Text(&'a str),
    Null(()),
}

fn event(parts: &Parts, hit: &RouteHit, client: &str, body: &[u8]) -> Result<String, ApiError> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let params = hit
        .params
        .iter()
        .map(|(k, v)| (k.clone(), decode(v)))
        .collect();
    let mut query = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        // The first of repeated keys.
        query
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    let mut headers = BTreeMap::new();
    for name in parts.headers.keys() {
        if *name == header::AUTHORIZATION && !hit.route.public {
            continue;
        }
        let sep = if *name == header::COOKIE { "; " } else { ", " };
        let joined: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_string(), joined.join(sep));
    }
    let mut cookies = BTreeMap::new();
    for value in parts.headers.get_all(header::COOKIE) {
        for pair in String::from_utf8_lossy(value.as_bytes()).split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                cookies
                    .entry(k.trim().to_string())
                    .or_insert_with(|| v.to_string());
            }
        }
    }
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
    let text = std::str::from_utf8(body).ok();
    let (body, body_base64) = match text {
        _ if body.is_empty() => (EventBody::Null(()), None),
        Some(text) if is_json => {
            let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
                ApiError::invalid(format!(
                    "the body is not valid JSON ({e}); send JSON, or another content type"
                ))
            })?;
            (EventBody::Json(raw), None)
        }
        Some(text) => (EventBody::Text(text), None),
        None => (
            EventBody::Null(()),
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    };
    let event = Event {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        route: &hit.route.path,
        params,
        query,
        headers,
        cookies,
        client,
        body,
        body_base64,
    };
    serde_json::to_string(&event)
        .map_err(|e| ApiError::invalid(format!("the request cannot be passed on: {e}")))
}

/// Answers a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) for a route with `cors`; `None` for
/// any other request.
fn preflight(state: &AppState, req: &Parts, path: &str, origin: Option<&str>) -> Option<Response> {
    if req.method != Method::OPTIONS {
        return None;
    }
    let origin = origin?;
    let wanted = req
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()?
        .to_ascii_uppercase();
    let RouteMatch::Hit(hit) = state.handle.match_route(&wanted, path) else {
        return None;
    };
    let cors = hit.route.cors.as_ref()?;
    let refuse = |why: String| {
        Some(ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why).into_response())
    };
    if !origin_allowed(cors, origin) {
        return refuse(format!(
            "origin {origin} may not call {} {} (its cors origins: {})",
            hit.route.method,
            hit.route.path,
            cors.origins.join(", ")
        ));
    }
    if !cors.methods.contains(&wanted) {
        return refuse(format!(
            "{wanted} is not among the cors methods of {} ({})",
            hit.route.path,
            cors.methods.join(", ")
        ));
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    allow_origin(h, cors, origin);
    if let Ok(v) = HeaderValue::from_str(&cors.methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cors.headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.headers.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age_s),
    );
    Some(r)
}

fn origin_allowed(cors: &RouteCors, origin: &str) -> bool {
    cors.origins.iter().any(|o| o == "*" || o == origin)
}

/// The `Access-Control-Allow-*` headers of an answer to `origin`, when the
/// route's cors allows it.
fn allow_origin(h: &mut HeaderMap, cors: &RouteCors, origin: &str) {
    if !origin_allowed(cors, origin) {
        return;
    }
    let any = cors.origins.iter().any(|o| o == "*") && !cors.credentials;
    let value = if any {
        Ok(HeaderValue::from_static("*"))
    } else {
        HeaderValue::from_str(origin)
    };
    if let Ok(v) = value {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if !any {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The client's address: the connection's peer (`unknown` when the
/// request did not come over a socket, as in the router tests).
fn client_of(req: &Parts) -> String {
    req.extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

async fn site(state: &AppState, req: &Parts) -> Option<Response> {
    crate::routes::sites::serve(state, &req.method, &req.uri, &req.headers).await
}

fn not_found(message: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, message).into_response()
}
