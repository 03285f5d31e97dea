//! `/v1/functions/{name}/invoke`, `/v1/invocations` (the list, one by id,
//! its logs) and `/v1/functions/{name}/logs` (a function's logs, followed
//! as server-sent events).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::IntoParams;

use shoal_engine::{
    BinaryResult, Feed, FeedItem, InvocationCursor, InvocationFilter, InvocationRecord,
    MAX_LIST_LIMIT, MAX_SCAN, Resource, Search,
};
use shoal_protocol::{
    Accepted, ErrorBody, FUNCTION_ERROR_HEADER, FunctionFailure, FunctionLogs,
    INVOCATION_ID_HEADER, InvocationList, InvocationLogs, InvocationSummary, InvocationView,
    LogsLagged, LogsView, RESULT_HEADER,
};
use shoal_types::{FunctionName, InvocationMode, InvocationStatus, Outcome};

use crate::auth::{Auth, Invoker, Reader};
use crate::error::ApiError;
use crate::{AppState, convert};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeParams {
    /// `sync` (default): wait for the result. `async`: queue it and answer 202.
    mode: Option<String>,
}

/// Invokes a function with the body as its event (JSON).
///
/// Synchronous calls answer 200 with the function's return value. When the
/// function fails, the answer is still 200 (the call worked) with the
/// `Shoal-Function-Error` header set to the error type and a
/// `FunctionFailure` body. A function that returned a `shoal.Response` is
/// answered with its status, content type, headers and bytes, and the
/// header `Shoal-Result: response`.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invocations",
    params(("name" = String, Path), InvokeParams),
    request_body(content = Object, content_type = "application/json", description = "the event"),
    responses(
        (status = 200, body = Object, description = "The function's return value, or a FunctionFailure when the Shoal-Function-Error header is set"),
        (status = 202, body = Accepted, description = "Queued (mode=async)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    ))]
pub(crate) async fn invoke(
    auth: Auth<Invoker>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<InvokeParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let is_async = match params.mode.as_deref() {
        None | Some("sync") => false,
        Some("async") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "mode {other:?} is not known; use sync or async"
            )));
        }
    };
    let body = body?;
    let event = event_text(&body)?;
    if is_async {
        let id = state
            .handle
            .invoke_async_by(&auth.origin(), &name, event)
            .await?;
        let mut resp = (
            StatusCode::ACCEPTED,
            Json(Accepted {
                id: id.clone(),
                status: "queued".into(),
            }),
        )
            .into_response();
        set_header(&mut resp, INVOCATION_ID_HEADER, &id);
        return Ok(resp);
    }
    let done = state.handle.invoke_by(&auth.origin(), &name, event).await?;
    let mut resp = match &done.outcome {
        Outcome::Succeeded(json) if let Some(Ok(binary)) = BinaryResult::parse(json) => {
            binary_answer(binary)
        }
        Outcome::Succeeded(json) => {
            let mut r = json.clone().into_response();
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Outcome::Failed(f) => {
            let mut r = Json(FunctionFailure {
                invocation_id: done.id.clone(),
                error: convert::failure(f),
            })
            .into_response();
            set_header(&mut r, FUNCTION_ERROR_HEADER, f.kind.as_str());
            r
        }
    };
    set_header(&mut resp, INVOCATION_ID_HEADER, &done.id);
    Ok(resp)
}

/// A `shoal.Response` the function returned, answered as it is: its status,
/// content type, headers, one `Set-Cookie` per cookie and body bytes
/// (checked by the engine, so every name and value is a legal header),
/// marked with `Shoal-Result: response`.
pub(crate) fn binary_answer(binary: BinaryResult) -> Response {
    let BinaryResult {
        status,
        content_type,
        headers,
        body,
        cookies,
    } = binary;
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let map = r.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            map.insert(name, value);
        }
    }
    for cookie in cookies {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            map.append(axum::http::header::SET_COOKIE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        map.insert(CONTENT_TYPE, v);
    }
    map.insert(RESULT_HEADER, HeaderValue::from_static("response"));
    r
}

/// An empty body is the event `{}`; anything else must be one JSON value.
fn event_text(body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok("{}".to_string());
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("the event is not UTF-8 text; send JSON"))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(format!("the event is not valid JSON: {e}")))?;
    Ok(raw.get().to_string())
}

fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Shows an invocation: status, output or error, timings, attempts, billing.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations",
    params(("id" = String, Path)),
    responses((status = 200, body = InvocationView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InvocationView>, ApiError> {
    Ok(Json(convert::invocation(
        &state.handle.invocation(&id).await?,
    )))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayParams {
    /// `live` (default): the function's live version. `same`: the version
    /// that ran the original.
    version: Option<String>,
}

/// Runs an invocation again: a new asynchronous invocation of the same
/// function with the same event (answer 202 with its id).
#[utoipa::path(post, path = "/v1/invocations/{id}/replay", tag = "invocations",
    params(("id" = String, Path), ReplayParams),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn replay(
    auth: Auth<Invoker>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<ReplayParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params?;
    let same = match p.version.as_deref() {
        None | Some("live") => false,
        Some("same") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "version={other:?} is not known; use live or same"
            )));
        }
    };
    let new_id = state.handle.replay_by(&auth.origin(), &id, same).await?;
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: new_id.clone(),
            status: "queued".into(),
        }),
    )
        .into_response();
    set_header(&mut resp, INVOCATION_ID_HEADER, &new_id);
    Ok(resp)
}

/// The logs (stdout and stderr) of an invocation's latest attempt.
#[utoipa::path(get, path = "/v1/invocations/{id}/logs", tag = "invocations",
    params(("id" = String, Path)),
    responses((status = 200, body = LogsView), (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LogsView>, ApiError> {
    let logs = state.handle.logs(&id).await?;
    Ok(Json(LogsView {
        id,
        logs: String::from_utf8_lossy(&logs).into_owned(),
    }))
}

/// The filters of `GET /v1/invocations`. An empty value is no filter.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only this function's invocations.
    function: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or `cancelled`.
    status: Option<String>,
    /// `sync`, `async` or `queue`.
    mode: Option<String>,
    /// Created at or after: RFC 3339 (`2026-12-04T17:00:00Z`), a duration
    /// back from now (`90s`, `15m`, `1h`, `7d`) or epoch milliseconds.
    since: Option<String>,
    /// Created before; the same forms as `since`.
    until: Option<String>,
    /// `true`: only invocations that failed or timed out (not with `status`).
    #[param(value_type = Option<bool>)]
    failed: Option<String>,
    /// Text to find, case-insensitive, in the logs, event, output or error.
    /// A bounded scan: it looks at `scan` records at most, and `next`
    /// continues it where it stopped.
    q: Option<String>,
    /// With `q`, `token` or `user`: records to look at, at most, 1 to
    /// 10000 (default 2000).
    #[param(value_type = Option<u32>)]
    scan: Option<String>,
    /// Only invocations started by this token id (or whose origin was):
    /// not indexed, so a bounded scan like `q`.
    token: Option<String>,
    /// Only invocations started by a token of this user: a bounded scan
    /// like `q`.
    user: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Invocations per page, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

/// The default page size of `GET /v1/invocations`.
const DEFAULT_LIMIT: usize = 50;

/// Records a text search looks at by default.
const DEFAULT_SCAN: usize = 2_000;

/// Lists invocations, newest first (by creation time), filtered by
/// function, status (or `failed=true`: failed and timed out), mode and
/// creation time, a page at a time. Those filters are indexed, so a page is
/// fast however many records the node keeps. `q` finds text in the logs,
/// event, output or error by scanning at most `scan` records from the
/// cursor: a page may then hold fewer matches than `limit` while `next`
/// is set, and `scanned` says how many records it looked at.
#[utoipa::path(get, path = "/v1/invocations", tag = "invocations",
    params(ListParams),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<InvocationList>, ApiError> {
    let Query(p) = params?;
    if let Some(f) = given(&p.function) {
        auth.check(Resource::Function(f))?;
    }
    let now = state.handle.now_ms();
    let filter = InvocationFilter {
        function: given(&p.function).map(function_name).transpose()?,
        status: given(&p.status).map(parse_status).transpose()?,
        mode: given(&p.mode).map(parse_mode).transpose()?,
        since_ms: given(&p.since)
            .map(|s| parse_time("since", s, now))
            .transpose()?,
        until_ms: given(&p.until)
            .map(|s| parse_time("until", s, now))
            .transpose()?,
    };
    let failed = match given(&p.failed) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "failed={other:?} is not a boolean; use true or false"
            )));
        }
    };
    if failed && filter.status.is_some() {
        return Err(ApiError::invalid(
            "failed=true already picks the statuses failed and timed_out; leave out status",
        ));
    }
    let scan = match given(&p.scan) {
        None => DEFAULT_SCAN,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SCAN).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("scan must be a number from 1 to {MAX_SCAN}"))
            })?,
    };
    let after = given(&p.cursor).map(parse_cursor).transpose()?;
    let limit = parse_limit(given(&p.limit), DEFAULT_LIMIT)?;
    let search = Search {
        filter,
        failed,
        text: given(&p.q).map(str::to_string),
        scan,
        token: given(&p.token).map(str::to_string),
        user: given(&p.user).map(str::to_string),
    };
    let found = state
        .handle
        .search_invocations(&search, after.as_ref(), limit)
        .await?;
    Ok(Json(InvocationList {
        // A scoped token sees its functions' invocations only (a page may
        // then hold fewer than `limit`; the cursor goes on as usual).
        invocations: found
            .page
            .records
            .iter()
            .filter(|r| auth.allows(Resource::Function(r.function.as_str())))
            .map(summary)
            .collect(),
        next: found
            .page
            .next
            .map(|c| format!("{}.{}", c.created_at_ms, c.id)),
        scanned: found.scanned.map(|n| n as u64),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct FunctionLogsParams {
    /// `true`: answer `text/event-stream`, the latest invocations' logs
    /// then each new one as it finishes, until the client goes away.
    follow: Option<bool>,
    /// How many of the latest invocations, 1 to 1000 (default 20; 10 when
    /// following).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

/// The logs of a function's latest invocations, oldest first; with
/// `follow=true`, a server-sent event stream: `event: invocation` with an
/// `InvocationLogs` for each of the latest, then for every attempt that
/// finishes, and `event: lagged` with a `LogsLagged` when the reader fell
/// behind and attempts were skipped.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "invocations",
    params(("name" = String, Path), FunctionLogsParams),
    responses(
        (status = 200, body = FunctionLogs, description = "JSON, or text/event-stream with follow=true"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn function_logs(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<FunctionLogsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params?;
    let function = function_name(&name)?;
    // Unknown (or removed) functions are told so, with the engine's hints.
    state.handle.function(function.as_str()).await?;
    let follow = p.follow.unwrap_or(false);
    let limit = parse_limit(given(&p.limit), if follow { 10 } else { 20 })?;
    // Subscribe before listing, so nothing finishes unseen in between.
    let feed = follow.then(|| state.handle.follow_invocations());
    let filter = InvocationFilter {
        function: Some(function.clone()),
        ..InvocationFilter::default()
    };
    let page = state.handle.list_invocations(&filter, None, limit).await?;
    let mut entries = Vec::with_capacity(page.records.len());
    for r in page.records.iter().rev() {
        let logs = state.handle.logs(&r.id).await.unwrap_or_default();
        entries.push(logs_entry(r, &logs));
    }
    let Some(feed) = feed else {
        return Ok(Json(FunctionLogs { entries }).into_response());
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    state.handle.spawn(follow_logs(feed, function, entries, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
}

/// Writes the first entries, then every finished attempt of `function`,
/// until the client goes away or the node stops. A comment line every 15 s
/// keeps idle proxies from closing the stream.
async fn follow_logs(
    mut feed: Feed,
    function: FunctionName,
    first: Vec<InvocationLogs>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    // What the first entries showed; an attempt whose write landed before
    // the list was read comes through the feed too: once is enough. A
    // listed invocation that was still running is shown again when it
    // finishes.
    let mut seen = std::collections::HashSet::new();
    for e in first {
        seen.insert((e.id.clone(), e.status.clone()));
        if tx.send(sse_event("invocation", &e)).await.is_err() {
            return;
        }
    }
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
            item = feed.next() => item,
        };
        let bytes = match item {
            FeedItem::Attempt(a) if a.record.function == function => {
                let entry = logs_entry(&a.record, &a.logs);
                if seen.remove(&(entry.id.clone(), entry.status.clone())) {
                    continue;
                }
                sse_event("invocation", &entry)
            }
            FeedItem::Attempt(_) => continue,
            FeedItem::Lagged(missed) => sse_event("lagged", &LogsLagged { missed }),
            FeedItem::Closed => return,
        };
        if tx.send(bytes).await.is_err() {
            return;
        }
    }
}

fn sse_event<T: serde::Serialize>(name: &str, data: &T) -> Bytes {
    let mut out = format!("event: {name}\ndata: ").into_bytes();
    out.extend_from_slice(&serde_json::to_vec(data).expect("a view encodes"));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn logs_entry(r: &InvocationRecord, logs: &[u8]) -> InvocationLogs {
    InvocationLogs {
        id: r.id.clone(),
        function: r.function.to_string(),
        version: r.version,
        status: r.status.to_string(),
        at_ms: r.finished_at_ms.unwrap_or(r.created_at_ms),
        next_attempt_at_ms: r.next_attempt_at_ms,
        logs: String::from_utf8_lossy(logs).into_owned(),
    }
}

fn summary(r: &InvocationRecord) -> InvocationSummary {
    InvocationSummary {
        id: r.id.clone(),
        function: r.function.to_string(),
        version: r.version,
        mode: r.mode.to_string(),
        status: r.status.to_string(),
        attempts: r.attempts,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        duration_ms: r.duration_ms,
        error_type: r.error.as_ref().map(|e| e.kind.to_string()),
        error_message: r.error.as_ref().map(|e| e.message.clone()),
        token: r.token.clone(),
        user: r.user.clone(),
    }
}

/// A query value that is present and not empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn function_name(s: &str) -> Result<FunctionName, ApiError> {
    FunctionName::parse(s).map_err(|e| ApiError::invalid(format!("function {s:?}: {e}")))
}

fn parse_status(s: &str) -> Result<InvocationStatus, ApiError> {
    InvocationStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = InvocationStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::invalid(format!(
            "status {s:?} is not known; use one of {}",
            all.join(", ")
        ))
    })
}

fn parse_mode(s: &str) -> Result<InvocationMode, ApiError> {
    InvocationMode::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = InvocationMode::ALL.iter().map(|m| m.as_str()).collect();
            ApiError::invalid(format!(
                "mode {s:?} is not known; use one of {}",
                all.join(", ")
            ))
        })
}

fn parse_limit(s: Option<&str>, default: usize) -> Result<usize, ApiError> {
    let Some(s) = s else {
        return Ok(default);
    };
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "limit {s:?} is out of range; use a whole number from 1 to {MAX_LIST_LIMIT}"
        ))),
    }
}

/// `<created_at_ms>.<id>`, as `next` gives it.
fn parse_cursor(s: &str) -> Result<InvocationCursor, ApiError> {
    s.split_once('.')
        .and_then(|(ms, id)| {
            let created_at_ms = ms.parse().ok()?;
            (!id.is_empty()).then(|| InvocationCursor {
                created_at_ms,
                id: id.to_string(),
            })
        })
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "cursor {s:?} is not one this API gave; pass the `next` of the previous page"
            ))
        })
}

/// A time filter: RFC 3339, a duration back from `now_ms`, or epoch ms.
pub(crate) fn parse_time(what: &str, s: &str, now_ms: u64) -> Result<u64, ApiError> {
    time_ms(s, now_ms).ok_or_else(|| {
        ApiError::invalid(format!(
            "{what} {s:?} is not a time; use RFC 3339 (2026-12-04T17:00:00Z), a duration \
             back from now (90s, 15m, 1h, 7d) or epoch milliseconds"
        ))
    })
}

fn time_ms(s: &str, now_ms: u64) -> Option<u64> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    if let Some(back) = duration_ms(s) {
        return Some(now_ms.saturating_sub(back));
    }
    rfc3339_ms(s)
}

/// `500ms`, `90s`, `15m`, `1h`, `7d`, `2w`: a whole number and a unit.
fn duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// RFC 3339 (`2026-12-04T17:00:00Z`, `...+01:30`, a space for the `T`),
/// parsed by jiff; times before 1970 are not times of any record.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let t: jiff::Timestamp = s.parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_cursor, time_ms};

    const NOW: u64 = 1_764_867_600_000; // 2025-12-04T17:00:00Z

    #[test]
    fn times_in_every_form() {
        assert_eq!(time_ms("2025-12-04T17:00:00Z", 0), Some(NOW));
        assert_eq!(time_ms("2025-12-04 17:00:00.25Z", 0), Some(NOW + 250));
        assert_eq!(time_ms("2025-12-04T18:30:00+01:30", 0), Some(NOW));
        assert_eq!(
            time_ms("2025-12-04T16:00:00.123456-01:00", 0),
            Some(NOW + 123)
        );
        // ISO 8601's offset without a colon reads the same.
        assert_eq!(time_ms("2025-12-04T18:00:00+0100", 0), Some(NOW));
        assert_eq!(time_ms("1970-01-01T00:00:00Z", 0), Some(0));
        assert_eq!(time_ms("2000-02-29T00:00:00Z", 0), Some(951_782_400_000));
        assert_eq!(time_ms("1h", NOW), Some(NOW - 3_600_000));
        assert_eq!(time_ms("90s", NOW), Some(NOW - 90_000));
        assert_eq!(time_ms("7d", NOW), Some(NOW - 7 * 86_400_000));
        assert_eq!(time_ms("500ms", NOW), Some(NOW - 500));
        assert_eq!(time_ms("1764867600000", 5), Some(NOW));
        for bad in [
            "yesterday",
            "1y",
            "h",
            "2025-12-04",
            "2025-13-04T17:00:00Z",
            "2025-12-04T17:00:00",
            "2025-12-04T17:00:00.Z",
            "2025-12-04T24:00:00Z",
            "１h",
        ] {
            assert_eq!(time_ms(bad, NOW), None, "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_or_are_refused() {
        let c = parse_cursor("17.0193-abc.d").ok().unwrap();
        assert_eq!((c.created_at_ms, c.id.as_str()), (17, "0193-abc.d"));
        for bad in ["", "17", "x.id", "17.", ".id"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
