//! `/healthz` (no auth), `/v1/stats` and `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use shoal_engine::StoreHealth;
use shoal_protocol::{ErrorBody, ErrorCode, Health};

use crate::AppState;
use crate::auth::{Auth, Reader};
use crate::error::ApiError;

/// Liveness and write health: 200 while the node serves requests and its
/// store takes writes; 503 with an `insufficient_storage` error body while
/// the disk is full (writes fail with 507 then; reads still work). It turns
/// 200 again by itself once space is freed.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses(
    (status = 200, body = Health),
    (status = 503, body = ErrorBody, description = "The store cannot take writes: the disk is full."),
))]
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    match state.handle.store_health() {
        StoreHealth::Ok => Json(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sandbox: state.sandbox.to_string(),
        })
        .into_response(),
        StoreHealth::Full(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InsufficientStorage,
            format!("the store cannot take writes: {why}"),
        )
        .into_response(),
    }
}

/// Prometheus metrics: invocations by function and outcome, durations, pool
/// sizes, queue depth. Needs a reader token unless the node was started
/// with `--metrics-public`.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    auth: Result<Auth<Reader>, ApiError>,
) -> Response {
    if !state.metrics_public
        && let Err(e) = auth
    {
        return e.into_response();
    }
    let Some(prom) = &state.metrics else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RouteNotFound,
            "metrics are not enabled on this node; a node started with `shoal serve` serves them",
        )
        .into_response();
    };
    for pool in state.handle.pool_stats() {
        metrics::gauge!("shoal_pool_workers", "deployment" => pool.key.clone(), "state" => "idle")
            .set(pool.idle as f64);
        metrics::gauge!("shoal_pool_workers", "deployment" => pool.key, "state" => "busy")
            .set(pool.busy as f64);
    }
    if let Ok(depths) = state.handle.queue_depths().await {
        for (function, depth) in depths {
            metrics::gauge!("shoal_queue_depth", "function" => function.clone(), "state" => "waiting").set(depth.waiting as f64);
            metrics::gauge!("shoal_queue_depth", "function" => function, "state" => "in_flight")
                .set(depth.in_flight as f64);
        }
    }
    if let Ok(queues) = state.handle.queues().await {
        let now = state.handle.now_ms();
        for q in queues {
            let name = q.record.name.clone();
            metrics::gauge!("shoal_queue_depth", "queue" => name.clone(), "state" => "waiting")
                .set(q.depth.waiting as f64);
            metrics::gauge!("shoal_queue_depth", "queue" => name.clone(), "state" => "in_flight")
                .set(q.depth.in_flight as f64);
            metrics::gauge!("shoal_queue_depth", "queue" => name.clone(), "state" => "dead")
                .set(q.depth.dead as f64);
            let age = q
                .depth
                .oldest_sent_ms
                .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
            metrics::gauge!("shoal_queue_oldest_age_seconds", "queue" => name.clone()).set(age);
            for (what, n) in [
                ("sent", q.counters.sent),
                ("acked", q.counters.acked),
                ("retried", q.counters.nacked),
                ("dead_lettered", q.counters.dead_lettered),
            ] {
                metrics::gauge!("shoal_queue_totals", "queue" => name.clone(), "event" => what)
                    .set(n as f64);
            }
        }
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], prom.render()).into_response()
}
