//! `/v1/functions/{name}/invoke` and `/v1/invocations/{id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::IntoParams;

use shoal_protocol::{
    Accepted, ErrorBody, FUNCTION_ERROR_HEADER, FunctionFailure, INVOCATION_ID_HEADER,
    InvocationView, LogsView,
};
use shoal_types::Outcome;

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
/// `FunctionFailure` body.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invocations",
    params(("name" = String, Path), InvokeParams),
    request_body(content = Object, content_type = "application/json", description = "the event"),
    responses(
        (status = 200, body = Object, description = "The function's return value, or a FunctionFailure when the Shoal-Function-Error header is set"),
        (status = 202, body = Accepted, description = "Queued (mode=async)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    ))]
pub(crate) async fn invoke(
    _: Auth<Invoker>,
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
        let id = state.handle.invoke_async(&name, event).await?;
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
    let done = state.handle.invoke(&name, event).await?;
    let mut resp = match &done.outcome {
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
