//! `GET /v1/jobs`: the jobs, newest first, a page at a time.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::JobCounts;

/// A job as the list shows it (`GET /v1/jobs/{id}` has its failures and
/// the tree below it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub id: String,
    /// `running`, `cancelling`, `finished` or `cancelled`.
    pub status: String,
    /// The children's function.
    pub function: String,
    /// The fan-in function.
    pub then: Option<String>,
    pub counts: JobCounts,
    /// Finished children over all (1.0 for a job without children).
    pub progress: f64,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
    /// The job whose child created it, for a nested job.
    pub parent: Option<String>,
}

/// A page of jobs, newest first (nested jobs included).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// The `cursor` of the next page, when there may be one.
    pub next: Option<String>,
}
