//! `/v1/schedules`: the schedules of live versions, their next fire times,
//! pause and resume, and the history of fired ticks.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_protocol::{
    ErrorBody, ScheduleHistory, ScheduleLastTick, ScheduleList, ScheduleTick, ScheduleView,
};

use crate::AppState;
use crate::auth::{Auth, Developer, Reader};
use crate::error::ApiError;

/// Every `[[schedule]]` of every live version, by function and index: its
/// interval or cron expression and time zone, event, missed-tick policy,
/// next five fire times, whether it is paused, and its last fired tick.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = ScheduleList)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: state
            .handle
            .schedules()
            .await?
            .into_iter()
            .filter(|v| auth.allows(shoal_engine::Resource::Function(v.function.as_str())))
            .map(view)
            .collect(),
    }))
}

/// Pauses a schedule on every node: its ticks are skipped until it is
/// resumed (kept across deploys of the function while the schedule keeps
/// its index). Answers the schedule.
#[utoipa::path(post, path = "/v1/schedules/{function}/{index}/pause", tag = "schedules",
    params(("function" = String, Path), ("index" = u64, Path, description = "the schedule's place among the function's [[schedule]] entries, from 0")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
pub(crate) async fn pause(
    _: Auth<Developer>,
    State(state): State<AppState>,
    path: Result<Path<(String, usize)>, PathRejection>,
) -> Result<Json<ScheduleView>, ApiError> {
    let Path((function, index)) = path?;
    Ok(Json(view(
        state.handle.pause_schedule(&function, index, true).await?,
    )))
}

/// Resumes a paused schedule. The ticks skipped while it was paused are
/// not run, except with `missed = "catch_up"` (the last 10 at most).
#[utoipa::path(post, path = "/v1/schedules/{function}/{index}/resume", tag = "schedules",
    params(("function" = String, Path), ("index" = u64, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
pub(crate) async fn resume(
    _: Auth<Developer>,
    State(state): State<AppState>,
    path: Result<Path<(String, usize)>, PathRejection>,
) -> Result<Json<ScheduleView>, ApiError> {
    let Path((function, index)) = path?;
    Ok(Json(view(
        state.handle.pause_schedule(&function, index, false).await?,
    )))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    /// Most ticks in the page (1 to 1000, default 50).
    limit: Option<usize>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

/// The ticks of a schedule that fired, newest first: when, on which node,
/// the invocation and its status. Kept 7 days, or 1,000 periods when that
/// is shorter.
#[utoipa::path(get, path = "/v1/schedules/{function}/{index}/history", tag = "schedules",
    params(("function" = String, Path), ("index" = u64, Path), HistoryParams),
    responses((status = 200, body = ScheduleHistory), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn history(
    _: Auth<Reader>,
    State(state): State<AppState>,
    path: Result<Path<(String, usize)>, PathRejection>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<ScheduleHistory>, ApiError> {
    let Path((function, index)) = path?;
    let Query(p) = params?;
    let before = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                shoal_protocol::ErrorCode::InvalidInput,
                "cursor: must be the cursor of a previous page".to_string(),
            )
        })?),
    };
    let (items, cursor) = state
        .handle
        .schedule_history(&function, index, before, p.limit.unwrap_or(50))
        .await?;
    Ok(Json(ScheduleHistory {
        items: items
            .into_iter()
            .map(|t| ScheduleTick {
                tick_ms: t.tick_ms,
                fired_at_ms: t.fired_at_ms,
                invocation: t.invocation,
                node: t.node,
                status: t.status.map(|s| s.as_str().to_string()),
            })
            .collect(),
        cursor: cursor.map(|c| c.to_string()),
    }))
}

fn view(v: shoal_engine::ScheduleView) -> ScheduleView {
    let s = v.schedule;
    ScheduleView {
        function: v.function,
        version: v.version,
        index: v.index as u64,
        every_ms: s.every_ms,
        cron: s.cron,
        timezone: s.timezone.unwrap_or_else(|| "UTC".to_string()),
        event: serde_json::from_str(&s.event).unwrap_or_default(),
        missed: if s.catch_up { "catch_up" } else { "skip" }.to_string(),
        next_ms: v.next_ms,
        paused: v.paused,
        last: v.last.map(|l| ScheduleLastTick {
            tick_ms: l.tick_ms,
            fired_at_ms: l.fired_at_ms,
            invocation: l.invocation,
        }),
    }
}
