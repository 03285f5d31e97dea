//! `/v1/schedules`: the schedules of live versions and their next fire times.

use axum::Json;
use axum::extract::State;

use shoal_protocol::{ScheduleList, ScheduleView};

use crate::AppState;
use crate::auth::{Auth, Reader};
use crate::error::ApiError;

/// Every `[[schedule]]` of every live version, by function and index: its
/// interval or cron expression and time zone, event, missed-tick policy and next
/// five fire times.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = ScheduleList)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: state.handle.schedules().into_iter().map(view).collect(),
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
    }
}
