//! `/v1/functions`: deploy, list, show, remove.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};

use shoal_protocol::{
    ARCHIVE_CONTENT_TYPE, Deleted, ErrorBody, ErrorCode, FunctionList, FunctionView,
};

use crate::auth::{Auth, Developer, Reader};
use crate::error::ApiError;
use crate::{AppState, convert};

/// Deploys a function: the body is a tar archive of a directory holding
/// `shoal.toml` and the code. Each deploy makes a new immutable version.
#[utoipa::path(post, path = "/v1/functions", tag = "functions",
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "tar archive of the function directory"),
    responses(
        (status = 201, body = FunctionView, description = "Deployed"),
        (status = 400, body = ErrorBody, description = "Invalid archive or shoal.toml"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "pip install failed"),
    ))]
pub(crate) async fn deploy(
    _: Auth<Developer>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with(ARCHIVE_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "send the function as a tar archive with `Content-Type: {ARCHIVE_CONTENT_TYPE}` (`shoal deploy DIR` does this)"
            ),
        ));
    }
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "the function archive is larger than this node accepts; leave data and environments out of it or raise --max-archive-bytes",
        ),
        _ => ApiError::from(r),
    })?;
    let record = state.handle.deploy(body.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(convert::function(&record))))
}

/// Lists the latest version of every function.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, body = FunctionList)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<FunctionList>, ApiError> {
    let functions = state.handle.functions().await?;
    Ok(Json(FunctionList {
        functions: functions.iter().map(convert::function).collect(),
    }))
}

/// Shows the latest version of a function.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 200, body = FunctionView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    Ok(Json(convert::function(
        &state.handle.function(&name).await?,
    )))
}

/// Removes a function with all its versions.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.remove_function(&name).await?;
    Ok(Json(Deleted { deleted: true }))
}
