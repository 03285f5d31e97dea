//! `/v1/users`: named users with a role and several tokens each (admin
//! only). Deleting a user revokes its tokens; a token's role is at most its
//! user's (see `POST /v1/tokens` with `user`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;

use shoal_engine::{Token, UserRecord};
use shoal_protocol::{CreateUser, DeletedUser, ErrorBody, PatchUser, UserList, UserView};
use shoal_types::Role;

use crate::auth::{Admin, Auth};
use crate::error::ApiError;
use crate::{AppState, convert};

fn view(user: &UserRecord, tokens: &[Token]) -> UserView {
    UserView {
        name: user.name.clone(),
        role: user.role.as_str().to_string(),
        created_at_ms: user.created_at_ms,
        tokens: tokens.iter().map(convert::token).collect(),
    }
}

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Creates a user with a role: the highest any of its tokens may have.
#[utoipa::path(post, path = "/v1/users", tag = "users",
    request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "`user_exists`")))]
pub(crate) async fn create(
    _: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<CreateUser>, JsonRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let Json(req) = body?;
    let role = role(&req.role)?;
    let user = state.handle.create_user(&req.name, role).await?;
    Ok((StatusCode::CREATED, Json(view(&user, &[]))))
}

/// Lists users, each with its tokens (never their secrets).
#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = UserList), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    _: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<UserList>, ApiError> {
    let users = state.handle.users().await?;
    Ok(Json(UserList {
        users: users.iter().map(|(u, t)| view(u, t)).collect(),
    }))
}

/// A user with its tokens.
#[utoipa::path(get, path = "/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody, description = "`user_not_found`")))]
pub(crate) async fn show(
    _: Auth<Admin>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<UserView>, ApiError> {
    let Path(name) = name?;
    let (user, tokens) = state.handle.user(&name).await?;
    Ok(Json(view(&user, &tokens)))
}

/// Changes a user's role. Its tokens keep theirs but act with at most the
/// user's from now on (on every node within a catalog poll). Lowering the
/// user that holds the last admin token is refused (`last_admin_token`).
#[utoipa::path(patch, path = "/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    request_body = PatchUser,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn update(
    _: Auth<Admin>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<PatchUser>, JsonRejection>,
) -> Result<Json<UserView>, ApiError> {
    let Path(name) = name?;
    let Json(req) = body?;
    let role = role(&req.role)?;
    state.handle.set_user_role(&name, role).await?;
    let (user, tokens) = state.handle.user(&name).await?;
    Ok(Json(view(&user, &tokens)))
}

/// Deletes a user and revokes every token of theirs. Refused
/// (`last_admin_token`) when that would leave no admin token.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    responses((status = 200, body = DeletedUser), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Admin>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<DeletedUser>, ApiError> {
    let Path(name) = name?;
    let revoked_tokens = state.handle.delete_user(&name).await?;
    Ok(Json(DeletedUser {
        deleted: true,
        revoked_tokens,
    }))
}
