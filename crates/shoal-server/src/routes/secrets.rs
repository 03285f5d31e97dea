//! `/v1/secrets`: secrets functions get as environment variables. Values go
//! in and are never given out again; listing shows names only. Admin only.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};

use shoal_protocol::{Deleted, ErrorBody, SecretList, SecretView, SetSecret};

use crate::AppState;
use crate::auth::{Admin, Auth};
use crate::error::ApiError;

/// Sets a secret. Functions naming it get the new value from their next
/// cold start; their warm workers are retired at once.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)), request_body = SetSecret,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody)))]
pub(crate) async fn set(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<SetSecret>, JsonRejection>,
) -> Result<Json<SecretView>, ApiError> {
    let Json(req) = body?;
    state.handle.set_secret(&name, &req.value).await?;
    let listed = state.handle.secrets().await?;
    let info = listed
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| SecretView {
            name: s.name,
            updated_at_ms: s.updated_at_ms,
        })
        .unwrap_or(SecretView {
            name,
            updated_at_ms: state.handle.now_ms(),
        });
    Ok(Json(info))
}

/// Lists the secrets' names.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, body = SecretList)))]
pub(crate) async fn list(
    _: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<SecretList>, ApiError> {
    let secrets = state.handle.secrets().await?;
    Ok(Json(SecretList {
        secrets: secrets
            .into_iter()
            .map(|s| SecretView {
                name: s.name,
                updated_at_ms: s.updated_at_ms,
            })
            .collect(),
    }))
}

/// Removes a secret no function names.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.remove_secret(&name).await?;
    Ok(Json(Deleted { deleted: true }))
}
