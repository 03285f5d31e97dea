//! `/v1/tokens`: create, list, revoke (admin only).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use shoal_protocol::{CreateToken, CreatedToken, Deleted, ErrorBody, TokenList};
use shoal_types::Role;

use crate::auth::{Admin, Auth};
use crate::error::ApiError;
use crate::{AppState, convert};

/// Creates a token with a role, of a user (its role at most the user's)
/// and limited to scopes when given. The secret is shown only in this
/// answer.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn create(
    _: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(req) = body?;
    let role = Role::parse(&req.role).map_err(|e| ApiError::invalid(e.to_string()))?;
    let name = req.name.unwrap_or_default();
    if name.len() > 200 {
        return Err(ApiError::invalid("token name must be at most 200 bytes"));
    }
    let mut scopes = req.channels;
    scopes.extend(req.scopes);
    let (token, secret) = state
        .handle
        .create_user_token(role, &name, req.user, scopes)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: token.id,
            role: token.role.as_str().to_string(),
            name: token.name,
            token: secret,
        }),
    ))
}

/// Lists tokens (without secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = TokenList)))]
pub(crate) async fn list(
    _: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.handle.tokens().await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(convert::token).collect(),
    }))
}

/// Revokes a token by id.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.revoke_token(&id).await?;
    Ok(Json(Deleted { deleted: true }))
}
