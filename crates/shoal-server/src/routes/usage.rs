//! Usage and cost (`/v1/usage`, `/v1/usage/prices`, estimates), budgets per
//! token (`/v1/tokens/{id}/budget`), invocation stats (`/v1/stats`) and
//! counts (`/v1/invocations/count`), all from the store's usage rollups.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::usage as engine;
use shoal_protocol::{
    BudgetPeriod, BudgetSpec, BudgetUnit, BudgetView, ErrorBody, Estimate, EstimateBasis,
    EstimateCost, InvocationCount, NodeStats, Prices, Stats, StatsPoint, StoredUsage, UsageLine,
    UsageReport,
};
use shoal_types::{FunctionName, InvocationStatus};

use crate::AppState;
use crate::auth::{Admin, Auth, Reader};
use crate::error::ApiError;
use crate::routes::invocations::parse_time;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    /// `function`, `token` or `day` (UTC); absent: the total only.
    group_by: Option<String>,
    /// Created at or after (RFC 3339, epoch ms, or a duration back from
    /// now such as `7d`); default: 30 days ago (UTC midnight).
    since: Option<String>,
    /// Created before; default: now.
    until: Option<String>,
    /// Only this function.
    function: Option<String>,
    /// Only this token's work (its id; empty: work no token started).
    token: Option<String>,
}

/// Usage over a time range: finished invocations, GB-seconds and their
/// cost at the price table, grouped by function, token or day, at minute
/// precision; and what the store holds now.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody)))]
pub(crate) async fn usage(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(p) = params?;
    let now = state.handle.now_ms();
    let group_by = p
        .group_by
        .as_deref()
        .map(engine::GroupBy::parse)
        .transpose()?;
    let q = engine::UsageQuery {
        group_by,
        since_ms: time(&p.since, "since", now)?,
        until_ms: time(&p.until, "until", now)?,
        function: p.function,
        token: p.token,
    };
    let r = state.handle.usage().usage(&q).await?;
    Ok(Json(UsageReport {
        since_ms: r.since_ms,
        until_ms: r.until_ms,
        group_by: p.group_by,
        items: r.items.into_iter().map(line).collect(),
        total: line(r.total),
        prices: prices(r.prices),
        stored: StoredUsage {
            documents_bytes: r.stored.documents_bytes,
            blobs_bytes: r.stored.blobs_bytes,
            blobs_partial: r.stored.blobs_partial,
            cost_per_month: r.stored.cost_per_month,
        },
    }))
}

/// The price table (the defaults are AWS Lambda's and S3's list prices
/// until an admin sets it).
#[utoipa::path(get, path = "/v1/usage/prices", tag = "usage",
    responses((status = 200, body = Prices)))]
pub(crate) async fn get_prices(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<Prices>, ApiError> {
    Ok(Json(prices(state.handle.usage().prices().await?)))
}

/// Sets the price table, for every node.
#[utoipa::path(put, path = "/v1/usage/prices", tag = "usage", request_body = Prices,
    responses((status = 200, body = Prices), (status = 400, body = ErrorBody)))]
pub(crate) async fn put_prices(
    _: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<Prices>, JsonRejection>,
) -> Result<Json<Prices>, ApiError> {
    let Json(p) = body?;
    let set = engine::Prices {
        currency: p.currency,
        per_gb_s: p.per_gb_s,
        per_million_invocations: p.per_million_invocations,
        per_gb_month_stored: p.per_gb_month_stored,
    };
    Ok(Json(prices(state.handle.usage().set_prices(set).await?)))
}

/// What 1,000 calls of a function cost: its last 7 days' median duration
/// times its live version's memory, at the price table.
#[utoipa::path(get, path = "/v1/functions/{name}/estimate", tag = "usage",
    params(("name" = String, Path)),
    responses((status = 200, body = Estimate), (status = 404, body = ErrorBody)))]
pub(crate) async fn estimate(
    _: Auth<Reader>,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Estimate>, ApiError> {
    let Path(name) = path?;
    let e = state.handle.estimate(&name).await?;
    Ok(Json(Estimate {
        function: e.function,
        per_1000_calls: EstimateCost {
            gb_s: e.gb_s_per_1000,
            cost: e.cost_per_1000,
            currency: e.prices.currency,
        },
        based_on: EstimateBasis {
            invocations: e.invocations,
            p50_ms: e.p50_ms,
            memory_mb: e.memory_mb,
        },
    }))
}

/// A token's budget and what it spent in the current period.
#[utoipa::path(get, path = "/v1/tokens/{id}/budget", tag = "usage",
    params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_budget(
    _: Auth<Admin>,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BudgetView>, ApiError> {
    let Path(id) = path?;
    Ok(Json(budget_view(state.handle.usage().budget(&id).await?)))
}

/// Sets a token's budget: a limit per UTC day or month, in USD (at the
/// price table) or GB-seconds; `budget.reached` at `notify_at` × limit;
/// with `enforce`, the token's new work is refused past the limit (429
/// `budget_exceeded`).
#[utoipa::path(put, path = "/v1/tokens/{id}/budget", tag = "usage",
    params(("id" = String, Path)), request_body = BudgetSpec,
    responses((status = 200, body = BudgetView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn put_budget(
    _: Auth<Admin>,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BudgetSpec>, JsonRejection>,
) -> Result<Json<BudgetView>, ApiError> {
    let Path(id) = path?;
    let Json(b) = body?;
    let budget = engine::Budget {
        period: match b.period {
            BudgetPeriod::Day => engine::BudgetPeriod::Day,
            BudgetPeriod::Month => engine::BudgetPeriod::Month,
        },
        limit: b.limit,
        unit: match b.unit {
            BudgetUnit::Usd => engine::BudgetUnit::Usd,
            BudgetUnit::GbS => engine::BudgetUnit::GbS,
        },
        notify_at: b.notify_at,
        enforce: b.enforce,
    };
    Ok(Json(budget_view(
        state.handle.usage().set_budget(&id, budget).await?,
    )))
}

/// Removes a token's budget.
#[utoipa::path(delete, path = "/v1/tokens/{id}/budget", tag = "usage",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_budget(
    _: Auth<Admin>,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = path?;
    state.handle.usage().remove_budget(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsParams {
    /// Default: an hour before `until`.
    since: Option<String>,
    /// Default: now.
    until: Option<String>,
    /// Seconds per point, a multiple of 60 (default 60); at most 10,000 points.
    step_s: Option<u64>,
    function: Option<String>,
}

/// The node's storage, and invocation stats per step (count, failures,
/// p50/p99 duration, GB-seconds) of the invocations created in the range
/// that finished.
#[utoipa::path(get, path = "/v1/stats", tag = "usage", params(StatsParams),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody)))]
pub(crate) async fn stats(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Json<Stats>, ApiError> {
    let Query(p) = params?;
    let now = state.handle.now_ms();
    let function = p.function.as_deref().map(function_name).transpose()?;
    let s = state
        .handle
        .usage()
        .stats(
            time(&p.since, "since", now)?,
            time(&p.until, "until", now)?,
            p.step_s,
            function.as_ref().map(FunctionName::as_str),
        )
        .await?;
    let node = state.handle.stats().await?;
    Ok(Json(Stats {
        node: NodeStats {
            data_dir_bytes: node.data_dir_bytes,
            invocations: node.invocations,
            retain_seconds: node.retention.map(|d| d.as_secs()),
        },
        step_s: s.step_s,
        since_ms: s.since_ms,
        until_ms: s.until_ms,
        points: s.points.into_iter().map(point).collect(),
        total: point(s.total),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountParams {
    function: Option<String>,
    /// queued, running, succeeded, failed, timed_out or cancelled.
    status: Option<String>,
    /// Created at or after (RFC 3339, epoch ms, or a duration back from now).
    since: Option<String>,
    /// Created before.
    until: Option<String>,
}

/// How many invocations match, exactly: created in `[since, until)`, of a
/// function, in a status. Answered from the usage rollups (whole minutes)
/// and the indexes (the edge minutes, records not final yet), so it costs
/// about the same over a million records as over ten. Counts records the
/// retention sweep removed.
#[utoipa::path(get, path = "/v1/invocations/count", tag = "usage", params(CountParams),
    responses((status = 200, body = InvocationCount), (status = 400, body = ErrorBody)))]
pub(crate) async fn count(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Result<Json<InvocationCount>, ApiError> {
    let Query(p) = params?;
    let now = state.handle.now_ms();
    let function = p.function.as_deref().map(function_name).transpose()?;
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(InvocationStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status {s:?} is not a status; use queued, running, succeeded, failed, \
                 timed_out or cancelled"
            ))
        })?),
    };
    let count = state
        .handle
        .usage()
        .count(
            function.as_ref(),
            status,
            time(&p.since, "since", now)?,
            time(&p.until, "until", now)?,
        )
        .await?;
    Ok(Json(InvocationCount { count }))
}

fn time(v: &Option<String>, what: &str, now: u64) -> Result<Option<u64>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => parse_time(what, s, now).map(Some),
    }
}

fn function_name(s: &str) -> Result<FunctionName, ApiError> {
    FunctionName::parse(s).map_err(|e| ApiError::invalid(e.to_string()))
}

fn line(l: engine::UsageLine) -> UsageLine {
    UsageLine {
        key: l.key,
        invocations: l.invocations,
        succeeded: l.succeeded,
        failed: l.failed,
        timed_out: l.timed_out,
        cancelled: l.cancelled,
        cold_starts: l.cold_starts,
        gb_s: l.gb_s,
        cost: l.cost,
        stored_bytes: l.stored_bytes,
    }
}

fn prices(p: engine::Prices) -> Prices {
    Prices {
        currency: p.currency,
        per_gb_s: p.per_gb_s,
        per_million_invocations: p.per_million_invocations,
        per_gb_month_stored: p.per_gb_month_stored,
    }
}

fn point(p: engine::StatsPoint) -> StatsPoint {
    StatsPoint {
        t_ms: p.t_ms,
        invocations: p.invocations,
        failed: p.failed,
        cold_starts: p.cold_starts,
        p50_ms: p.p50_ms,
        p99_ms: p.p99_ms,
        gb_s: p.gb_s,
    }
}

fn budget_view(v: engine::BudgetView) -> BudgetView {
    BudgetView {
        token: v.token,
        period: match v.budget.period {
            engine::BudgetPeriod::Day => BudgetPeriod::Day,
            engine::BudgetPeriod::Month => BudgetPeriod::Month,
        },
        limit: v.budget.limit,
        unit: match v.budget.unit {
            engine::BudgetUnit::Usd => BudgetUnit::Usd,
            engine::BudgetUnit::GbS => BudgetUnit::GbS,
        },
        notify_at: v.budget.notify_at,
        enforce: v.budget.enforce,
        spent: v.spent,
        period_start_ms: v.period_start_ms,
        resets_at_ms: v.resets_at_ms,
        exceeded: v.exceeded,
    }
}
