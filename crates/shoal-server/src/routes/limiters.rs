//! `/v1/limiters`: shared rate limiters, changeable at run time.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};

use shoal_engine::LimiterRecord;
use shoal_protocol::{Deleted, ErrorBody, LimiterList, LimiterView, PutLimiter};

use crate::AppState;
use crate::auth::{Auth, Developer, Reader};
use crate::error::ApiError;

/// Creates or changes a rate limiter; running consumers follow at once.
#[utoipa::path(put, path = "/v1/limiters/{name}", tag = "limiters",
    params(("name" = String, Path)), request_body = PutLimiter,
    responses((status = 200, body = LimiterView), (status = 400, body = ErrorBody)))]
pub(crate) async fn put(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PutLimiter>, JsonRejection>,
) -> Result<Json<LimiterView>, ApiError> {
    let Json(req) = body?;
    let record = state
        .handle
        .put_limiter(&name, req.per_second, req.burst.unwrap_or(1))
        .await?;
    Ok(Json(view(&record)))
}

/// Lists rate limiters.
#[utoipa::path(get, path = "/v1/limiters", tag = "limiters", responses((status = 200, body = LimiterList)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<LimiterList>, ApiError> {
    let limiters = state.handle.limiters().await?;
    Ok(Json(LimiterList {
        limiters: limiters.iter().map(view).collect(),
    }))
}

/// Removes a rate limiter no function uses.
#[utoipa::path(delete, path = "/v1/limiters/{name}", tag = "limiters",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.remove_limiter(&name).await?;
    Ok(Json(Deleted { deleted: true }))
}

fn view(r: &LimiterRecord) -> LimiterView {
    LimiterView {
        name: r.name.clone(),
        per_second: r.per_second,
        burst: r.burst,
        updated_at_ms: r.updated_at_ms,
    }
}
