//! `/v1/kv`: the key-value store. A key is one path segment: a key holding
//! `/` (or any byte a path cannot carry) is sent percent-encoded (`%2F`),
//! and arrives decoded. Reads need a reader token, writes an invoker's.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::IntoParams;

use shoal_engine::manifest::parse_duration;
use shoal_engine::{KvEntry, KvWhen};
use shoal_protocol::{ErrorBody, ErrorCode, KvEntryView, KvList};

use crate::AppState;
use crate::auth::{Auth, Invoker, Reader};
use crate::error::ApiError;

/// Reads one key.
#[utoipa::path(get, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "percent-encoded key")),
    responses((status = 200, body = KvEntryView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    _: Auth<Reader>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let entry = state.handle.kv_get(&key).await?;
    view(entry)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetParams {
    /// Expire the entry after this long (`500ms`, `30s`, `5m`, `24h`;
    /// 1 ms to 10 years). Without it the entry never expires.
    ttl: Option<String>,
    /// Write only if the key is absent.
    nx: Option<bool>,
    /// Write only if the key is present.
    xx: Option<bool>,
    /// Write only if the key is at this version (compare-and-set).
    version: Option<u64>,
}

/// Stores a JSON value (the body) under a key. `nx`, `xx` and `version`
/// are conditions (at most one); a write whose condition fails is a 409
/// `key_conflict` naming the current version.
#[utoipa::path(put, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "percent-encoded key"), SetParams),
    request_body(content = Object, description = "the JSON value"),
    responses((status = 200, body = KvEntryView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn set(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<SetParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let Query(p) = params?;
    check_json_content_type(&headers)?;
    let body = body?;
    let ttl = match p.ttl.as_deref() {
        None => None,
        Some(s) => Some(parse_duration(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "ttl: {s:?} is not a duration; use e.g. \"500ms\", \"30s\", \"5m\""
            ))
        })?),
    };
    let conds = [
        p.nx.filter(|&b| b).map(|_| KvWhen::Absent),
        p.xx.filter(|&b| b).map(|_| KvWhen::Present),
        p.version.map(KvWhen::Version),
    ];
    let mut given = conds.into_iter().flatten();
    let when = given.next().unwrap_or_default();
    if given.next().is_some() {
        return Err(ApiError::invalid(
            "nx, xx and version are exclusive: give at most one",
        ));
    }
    let entry = state.handle.kv_set(&key, &body, ttl, when).await?;
    view(entry)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncrParams {
    /// What to add (a 64-bit integer, may be negative; default 1).
    by: Option<i64>,
}

/// Adds to a key's integer value (an absent key counts as 0 and is
/// created without expiry; a present key keeps its expiry). A value that
/// is not an integer is a 409 `not_an_integer`.
#[utoipa::path(post, path = "/v1/kv/{key}/incr", tag = "kv",
    params(("key" = String, Path, description = "percent-encoded key"), IncrParams),
    responses((status = 200, body = KvEntryView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn incr(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<IncrParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let Query(p) = params?;
    let entry = state.handle.kv_incr(&key, p.by.unwrap_or(1)).await?;
    view(entry)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteParams {
    /// Delete only if the key is at this version.
    version: Option<u64>,
}

/// Deletes a key: 204; 404 when absent; 409 `key_conflict` when at
/// another version than `version`.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "percent-encoded key"), DeleteParams),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(key) = key?;
    let Query(p) = params?;
    state.handle.kv_delete(&key, p.version).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only keys starting with this (default: every key).
    prefix: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Keys looked at per page (1 to 1000; default 100).
    limit: Option<usize>,
}

/// Lists live entries by key prefix, in key order, a page at a time.
#[utoipa::path(get, path = "/v1/kv", tag = "kv", params(ListParams),
    responses((status = 200, body = KvList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params?;
    let page = state
        .handle
        .kv_list(
            p.prefix.as_deref().unwrap_or(""),
            p.cursor.as_deref(),
            p.limit.unwrap_or(100),
        )
        .await?;
    #[derive(Serialize)]
    struct ListOut<'a> {
        entries: Vec<EntryOut<'a>>,
        next: Option<String>,
    }
    let entries = page.entries.iter().map(out).collect::<Result<_, _>>()?;
    Ok(Json(ListOut {
        entries,
        next: page.next,
    })
    .into_response())
}

/// An entry as the API answers it ([`KvEntryView`]), its value spliced in
/// as the JSON text stored, so no number is changed on its way back.
#[derive(Serialize)]
struct EntryOut<'a> {
    key: &'a str,
    value: &'a RawValue,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    updated_at_ms: u64,
}

fn out(e: &KvEntry) -> Result<EntryOut<'_>, ApiError> {
    let value = serde_json::from_slice::<&RawValue>(&e.value).map_err(|err| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("the stored value of key `{}` is not JSON: {err}", e.key),
        )
    })?;
    Ok(EntryOut {
        key: &e.key,
        value,
        version: e.version,
        expires_at_ms: e.expires_at_ms,
        updated_at_ms: e.updated_at_ms,
    })
}

fn view(e: KvEntry) -> Result<Response, ApiError> {
    Ok(Json(out(&e)?).into_response())
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.is_empty() || essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("send the value as JSON with `Content-Type: application/json`, not {ct:?}"),
        ))
    }
}
