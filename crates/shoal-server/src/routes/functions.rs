//! `/v1/functions`: deploy (with its load check and dry run), list, show,
//! versions, rollback, aliases, remove.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use serde::Deserialize;

use shoal_engine::{DeployOptions, DeployOutcome, DeployedBy};
use shoal_protocol::{
    ARCHIVE_CONTENT_TYPE, AliasRequest, AliasView, Deleted, ErrorBody, ErrorCode, FunctionFileView,
    FunctionFilesView, FunctionList, FunctionVersions, FunctionView, RollbackRequest,
};

use crate::auth::{Auth, Developer, Reader};
use crate::error::ApiError;
use crate::{AppState, convert};

/// Deploys a function: the body is a tar archive of a directory holding
/// `shoal.toml` and the code. Each deploy makes a new immutable version.
#[utoipa::path(post, path = "/v1/functions", tag = "functions",
    params(DeployParams),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "tar archive of the function directory"),
    responses(
        (status = 201, body = FunctionView, description = "Deployed"),
        (status = 200, body = FunctionView, description = "Unchanged (`unchanged`), or checked only (`dry_run`)"),
        (status = 400, body = ErrorBody, description = "Invalid archive or shoal.toml, or the code does not load (`invalid_function`, with the traceback)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "pip install failed"),
    ))]
pub(crate) async fn deploy(
    auth: Auth<Developer>,
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<DeployParams>, QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let Query(params) = params?;
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
    if auth.caller.scoped() {
        // A scoped token deploys only the functions its scopes name.
        let name = shoal_engine::archive_function_name(&body)?;
        auth.check(shoal_engine::Resource::Function(&name))?;
    }
    let by = Some(DeployedBy {
        token_id: auth.caller.token_id.clone(),
        token_name: auth.caller.token_name.clone(),
        user: auth.caller.user.clone(),
    });
    let opts = DeployOptions {
        dry_run: params.dry_run.unwrap_or(false),
        by,
    };
    Ok(match state.handle.deploy_with(body.to_vec(), opts).await? {
        DeployOutcome::Deployed(r) => (StatusCode::CREATED, Json(convert::function(&r))),
        DeployOutcome::Unchanged(r) => {
            let mut view = convert::function(&r);
            view.unchanged = true;
            (StatusCode::OK, Json(view))
        }
        DeployOutcome::Checked(r) => {
            let mut view = convert::function(&r);
            view.dry_run = true;
            (StatusCode::OK, Json(view))
        }
    })
}

/// Query of `POST /v1/functions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct DeployParams {
    /// Only check that the version loads; record and keep nothing.
    dry_run: Option<bool>,
}

/// Lists a function's versions: when each was deployed, by whom, its code
/// hash, which one is live and the aliases.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions",
    params(("name" = String, Path)),
    responses((status = 200, body = FunctionVersions), (status = 404, body = ErrorBody)))]
pub(crate) async fn versions(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionVersions>, ApiError> {
    let v = state.handle.function_versions(&name).await?;
    Ok(Json(convert::versions(&v)))
}

/// A version's files as deployed (the live one, or `?version=N`): the
/// text of each UTF-8 file up to 1 MiB, the size of every file.
#[utoipa::path(get, path = "/v1/functions/{name}/files", tag = "functions",
    params(("name" = String, Path), FilesParams),
    responses((status = 200, body = FunctionFilesView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn files(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<FilesParams>, QueryRejection>,
) -> Result<Json<FunctionFilesView>, ApiError> {
    let Query(params) = params?;
    let f = state.handle.function_files(&name, params.version).await?;
    Ok(Json(FunctionFilesView {
        name: f.record.name.to_string(),
        version: f.record.version,
        code_sha256: f.record.code_sha256.clone(),
        files: f
            .files
            .into_iter()
            .map(|f| FunctionFileView {
                path: f.path,
                size: f.size,
                text: f.text,
            })
            .collect(),
    }))
}

/// Query of `GET /v1/functions/{name}/files`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct FilesParams {
    /// The version (default: the live one).
    version: Option<u64>,
}

/// Makes another version live at once: the one named in the body, or the
/// one before the live one. Returns the version now live.
#[utoipa::path(post, path = "/v1/functions/{name}/rollback", tag = "functions",
    params(("name" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = FunctionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn rollback(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FunctionView>, ApiError> {
    let body = body?;
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the body must be {{\"version\": N}} or empty ({e})"
            ))
        })?
    };
    let record = state.handle.rollback(&name, req.version).await?;
    Ok(Json(convert::function(&record)))
}

/// Points an alias at a version (moving it when it exists): `NAME@ALIAS`
/// then runs that version.
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "functions",
    params(("name" = String, Path), ("alias" = String, Path)), request_body = AliasRequest,
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_alias(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: Result<Json<AliasRequest>, JsonRejection>,
) -> Result<Json<AliasView>, ApiError> {
    let Json(req) = body?;
    state.handle.set_alias(&name, &alias, req.version).await?;
    Ok(Json(AliasView {
        function: name,
        alias,
        version: req.version,
    }))
}

/// Removes an alias.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "functions",
    params(("name" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_alias(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.remove_alias(&name, &alias).await?;
    Ok(Json(Deleted { deleted: true }))
}

/// Lists the latest version of every function.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, body = FunctionList)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<FunctionList>, ApiError> {
    let functions = state.handle.functions().await?;
    Ok(Json(FunctionList {
        functions: functions
            .iter()
            .filter(|f| auth.allows(shoal_engine::Resource::Function(f.name.as_str())))
            .map(convert::function)
            .collect(),
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
