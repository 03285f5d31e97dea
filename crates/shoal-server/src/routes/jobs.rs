//! `/v1/jobs`: fan-out jobs with fan-in, their progress, results and cancel.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::{ChildResult, JobNode, JobSpec};
use shoal_protocol::{
    ChildResultView, ErrorBody, JobCounts, JobList, JobNodeView, JobResults, JobSlotView,
    JobStarted, JobSummary, JobView, StartJob,
};

use crate::AppState;
use crate::auth::{Auth, Invoker, Reader};
use crate::convert;
use crate::error::ApiError;

/// Starts a job: one asynchronous invocation of `function` per event, then
/// `then` once all of them have finished (with `{"job": id, "count": n}`).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = StartJob,
    responses((status = 202, body = JobStarted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn start(
    auth: Auth<Invoker>,
    State(state): State<AppState>,
    body: Result<Json<StartJob>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobStarted>), ApiError> {
    let Json(req) = body?;
    auth.check(shoal_engine::Resource::Function(&req.function))?;
    if let Some(then) = &req.then {
        auth.check(shoal_engine::Resource::Function(then))?;
    }
    let spec = JobSpec {
        function: req.function,
        events: req.events.iter().map(|e| e.to_string()).collect(),
        then: req.then,
        max_in_flight: req.max_in_flight,
    };
    let job = state.handle.start_job_by(&auth.origin(), spec).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(JobStarted { job })))
}

/// Jobs a page holds unless `limit` says otherwise, and at most.
const DEFAULT_LIST_LIMIT: usize = 20;
const MAX_LIST_LIMIT: usize = 200;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// The `next` of the previous page: jobs strictly older than this job id.
    cursor: Option<String>,
    /// At most this many (1 to 200; default 20).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

/// Lists jobs, newest first (job ids are time-ordered UUIDv7s), nested
/// jobs included, with their counts and status, a page at a time. A token
/// with scopes sees the jobs of its functions only (a page may then hold
/// fewer than `limit` while `next` is set). On Redis, jobs created before
/// the node kept its jobs index are not listed (open them by id).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(p) = params?;
    let cursor = p.cursor.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let limit = match p.limit.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => DEFAULT_LIST_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit {l:?} is out of range; use a whole number from 1 to {MAX_LIST_LIMIT}"
                ))
            })?,
    };
    let page = state.handle.list_jobs(cursor, limit).await?;
    Ok(Json(JobList {
        jobs: page
            .jobs
            .iter()
            .filter(|j| auth.allows(shoal_engine::Resource::Function(j.record.function.as_str())))
            .map(summary)
            .collect(),
        next: page.next,
    }))
}

fn summary(j: &shoal_engine::JobSummary) -> JobSummary {
    let r = &j.record;
    JobSummary {
        id: r.id.clone(),
        status: j.status.to_string(),
        function: r.function.to_string(),
        then: r.then.as_ref().map(|t| t.to_string()),
        counts: counts(&j.counts),
        progress: j.progress,
        created_at_ms: r.created_at_ms,
        finished_at_ms: j.finished_at_ms,
        cancelled_at_ms: j.cancelled_at_ms,
        parent: r.parent.clone(),
    }
}

/// A job's counts by state, progress, first failures and the tree of jobs
/// its children created.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(view(&state, &id).await?))
}

async fn view(state: &AppState, id: &str) -> Result<JobView, ApiError> {
    let v = state.handle.job(id).await?;
    let r = &v.record;
    Ok(JobView {
        id: r.id.clone(),
        status: v.status.to_string(),
        function: r.function.to_string(),
        then: r.then.as_ref().map(|t| t.to_string()),
        counts: counts(&v.counts),
        progress: v.progress,
        created_at_ms: r.created_at_ms,
        finished_at_ms: v.finished_at_ms,
        cancelled_at_ms: v.cancelled_at_ms,
        invocation: r.invocation.clone(),
        parent: r.parent.clone(),
        continues: r.continues.as_ref().map(|s| JobSlotView {
            job: s.job.clone(),
            index: s.index,
        }),
        then_invocation: v.then_invocation.clone(),
        failures: v.failures.iter().map(child).collect(),
        jobs: v.sub_jobs.iter().map(node).collect(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultsParams {
    /// The first child index (default 0).
    offset: Option<u64>,
    /// At most this many (1 to 1000; default 100).
    limit: Option<usize>,
}

/// Finished children's results in index order (children still pending are
/// not listed).
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs",
    params(("id" = String, Path), ResultsParams),
    responses((status = 200, body = JobResults), (status = 404, body = ErrorBody)))]
pub(crate) async fn results(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<ResultsParams>, QueryRejection>,
) -> Result<Json<JobResults>, ApiError> {
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(100);
    let results = state
        .handle
        .job_results(&id, p.offset.unwrap_or(0), limit)
        .await?;
    let next = (results.len() == limit)
        .then(|| results.last().map(|r| r.index + 1))
        .flatten();
    Ok(Json(JobResults {
        results: results.iter().map(child).collect(),
        next,
    }))
}

/// Cancels a job and every job below it: children that have not run are
/// recorded as cancelled, running ones finish, no fan-in starts.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub(crate) async fn cancel(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    state.handle.cancel_job(&id).await?;
    Ok(Json(view(&state, &id).await?))
}

fn counts(c: &shoal_engine::JobCounts) -> JobCounts {
    JobCounts {
        total: c.total,
        pending: c.pending,
        succeeded: c.succeeded,
        failed: c.failed,
        cancelled: c.cancelled,
    }
}

fn node(n: &JobNode) -> JobNodeView {
    JobNodeView {
        id: n.record.id.clone(),
        status: n.status.to_string(),
        function: n.record.function.to_string(),
        counts: counts(&n.counts),
        jobs: n.sub_jobs.iter().map(node).collect(),
    }
}

fn child(r: &ChildResult) -> ChildResultView {
    ChildResultView {
        index: r.index,
        invocation: r.invocation.clone(),
        status: r.status.to_string(),
        output: r
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok()),
        error: r.error.as_ref().map(convert::error_record),
    }
}
