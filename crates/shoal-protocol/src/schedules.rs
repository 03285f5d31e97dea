//! Schedules' state: the last tick and the history of fired ticks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The last tick of a schedule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleLastTick {
    /// The tick's time, in ms since the epoch.
    pub tick_ms: u64,
    /// When a node fired it (claimed it and queued its run).
    pub fired_at_ms: u64,
    /// The id of the invocation it started.
    pub invocation: String,
}

/// `GET /v1/schedules/{function}/{index}/history`: fired ticks, newest
/// first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleHistory {
    pub items: Vec<ScheduleTick>,
    /// Pass as `cursor` for the next (older) page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One fired tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleTick {
    pub tick_ms: u64,
    pub fired_at_ms: u64,
    /// The invocation it started.
    pub invocation: String,
    /// The address of the node that fired it.
    pub node: String,
    /// The invocation's status (`queued`, `running`, `succeeded`, ...);
    /// absent when there is no record of it (the node died between
    /// claiming the tick and queueing the run, or retention removed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}
