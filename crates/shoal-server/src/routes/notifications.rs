//! `/v1/notifications`: webhooks told about events (invocations failed or
//! succeeded, dead letters, finished jobs, budgets reached), signed,
//! retried and logged. Admin only: a notification sends data out of the
//! node, and its secret signs for it.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::{DeliveryLog, DeliveryStatus, Notification, NotificationSpec};
use shoal_protocol::{
    Deleted, DeliveryList, DeliveryView, ErrorBody, NotificationList, NotificationView,
    PutNotification,
};

use crate::AppState;
use crate::auth::{Admin, Auth};
use crate::error::ApiError;

fn view(n: Notification, secret: Option<String>) -> NotificationView {
    NotificationView {
        name: n.name,
        url: n.url,
        events: n.events,
        functions: n.functions,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        secret,
    }
}

fn delivery(d: DeliveryLog) -> DeliveryView {
    DeliveryView {
        id: d.id,
        name: d.name,
        event: d.event,
        event_id: d.event_id,
        status: d.status.as_str().to_string(),
        attempts: d.attempts,
        last_status_code: d.last_status_code,
        last_error: d.last_error,
        created_at_ms: d.created_at_ms,
        delivered_at_ms: d.delivered_at_ms,
        next_attempt_at_ms: d.next_attempt_at_ms,
    }
}

/// Creates or replaces a notification. A generated secret is in this
/// answer only.
#[utoipa::path(put, path = "/v1/notifications/{name}", tag = "notifications",
    params(("name" = String, Path)), request_body = PutNotification,
    responses((status = 200, body = NotificationView), (status = 400, body = ErrorBody)))]
pub(crate) async fn put(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PutNotification>, JsonRejection>,
) -> Result<Json<NotificationView>, ApiError> {
    let Json(req) = body?;
    let (n, secret) = state
        .handle
        .put_notification(
            &name,
            NotificationSpec {
                url: req.url,
                events: req.events,
                functions: req.functions,
                secret: req.secret,
            },
        )
        .await?;
    Ok(Json(view(n, secret)))
}

/// Lists the notifications (never their secrets).
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications",
    responses((status = 200, body = NotificationList)))]
pub(crate) async fn list(
    _: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<NotificationList>, ApiError> {
    let items = state.handle.notification_list().await?;
    Ok(Json(NotificationList {
        items: items.into_iter().map(|n| view(n, None)).collect(),
    }))
}

/// One notification (never its secret).
#[utoipa::path(get, path = "/v1/notifications/{name}", tag = "notifications",
    params(("name" = String, Path)),
    responses((status = 200, body = NotificationView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let n = state.handle.notification(&name).await?;
    Ok(Json(view(n, None)))
}

/// Removes a notification; its pending deliveries end as `failed`.
#[utoipa::path(delete, path = "/v1/notifications/{name}", tag = "notifications",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Admin>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.remove_notification(&name).await?;
    Ok(Json(Deleted { deleted: true }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryParams {
    /// Only this notification's deliveries.
    name: Option<String>,
    /// Only `pending`, `delivered` or `failed` ones.
    status: Option<String>,
    /// At most this many (1 to 1000; default 100).
    limit: Option<usize>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

/// The delivery log, newest first (kept 7 days after each delivery's
/// last attempt). A page looks at no more than 5,000 entries, so a
/// filtered page may be short while a `cursor` says more may follow.
#[utoipa::path(get, path = "/v1/notifications/deliveries", tag = "notifications",
    params(DeliveryParams),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody)))]
pub(crate) async fn deliveries(
    _: Auth<Admin>,
    State(state): State<AppState>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(p) = params?;
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status {s:?} is not one of pending, delivered, failed"
            ))
        })?),
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let page = state
        .handle
        .notification_deliveries(
            p.name.as_deref().filter(|n| !n.is_empty()),
            status,
            p.cursor.as_deref().filter(|c| !c.is_empty()),
            limit,
        )
        .await?;
    Ok(Json(DeliveryList {
        items: page.items.into_iter().map(delivery).collect(),
        cursor: page.cursor,
    }))
}
