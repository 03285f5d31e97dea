//! Bearer-token authentication: the `Auth<R>` extractor admits a request only
//! when its token's role allows `R`.
//!
//! It runs before any body extractor, so an unauthenticated request is
//! answered 401/403 without reading its body.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use shoal_protocol::ErrorCode;
use shoal_types::Role;

use crate::AppState;
use crate::error::ApiError;

/// The role a route needs.
pub trait Needs: Send + Sync + 'static {
    const ROLE: Role;
}

pub struct Reader;
pub struct Invoker;
pub struct Developer;
pub struct Admin;

impl Needs for Reader {
    const ROLE: Role = Role::Reader;
}
impl Needs for Invoker {
    const ROLE: Role = Role::Invoker;
}
impl Needs for Developer {
    const ROLE: Role = Role::Developer;
}
impl Needs for Admin {
    const ROLE: Role = Role::Admin;
}

/// An authenticated caller whose role allows `R`.
pub struct Auth<R: Needs> {
    #[allow(dead_code)]
    pub role: Role,
    _needs: PhantomData<R>,
}

impl<R: Needs> FromRequestParts<AppState> for Auth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized =
            |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header; the admin token is in the node's data directory (admin.token)"))?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let caller = state
            .handle
            .caller(secret)
            .await?
            .ok_or_else(|| unauthorized("unknown or revoked token"))?;
        if caller.scoped() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!(
                    "this token is limited to the channel scopes {:?}; use an ordinary token here",
                    caller.channels
                ),
            ));
        }
        let role = caller.role;
        if !role.allows(R::ROLE) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("this needs a {} token; yours is {}", R::ROLE, role),
            ));
        }
        Ok(Auth {
            role,
            _needs: PhantomData,
        })
    }
}
