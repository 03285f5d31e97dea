//! Usage, prices, estimates, budgets, stats and counts (`docs/usage.md`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::NodeStats;

/// `GET`/`PUT /v1/usage/prices`: what the operator charges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// 1 to 8 letters (`USD`).
    pub currency: String,
    /// Per GB-second of billed function time.
    pub per_gb_s: f64,
    pub per_million_invocations: f64,
    /// Per GB of documents and blobs stored for a month (30 days).
    pub per_gb_month_stored: f64,
}

/// One group of `GET /v1/usage`, or its total.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// The function, the token id (`""`: work no token started, such as
    /// schedules), the day (`YYYY-MM-DD`, UTC), or `total`.
    pub key: String,
    /// Finished invocations (every final status).
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub cold_starts: u64,
    /// Billed GB-seconds.
    pub gb_s: f64,
    /// In the prices' currency: `gb_s × per_gb_s + invocations / 10⁶ × per_million_invocations`.
    pub cost: f64,
    /// Grouped by day: the bytes of documents and blobs stored that day
    /// (its last sample; a node samples every 10 minutes), when sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
}

/// Bytes stored now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct StoredUsage {
    pub documents_bytes: u64,
    pub blobs_bytes: u64,
    /// True when there are more than 100,000 blobs (the rest not counted).
    pub blobs_partial: bool,
    /// What keeping them for a month costs.
    pub cost_per_month: f64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// The range summed, rounded out to whole minutes.
    pub since_ms: u64,
    pub until_ms: u64,
    /// `function`, `token` or `day`; absent: only the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    pub items: Vec<UsageLine>,
    pub total: UsageLine,
    pub prices: Prices,
    pub stored: StoredUsage,
}

/// `per_1000_calls` of an estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EstimateCost {
    /// Absent until the function has a finished invocation with a duration.
    pub gb_s: Option<f64>,
    pub cost: Option<f64>,
    pub currency: String,
}

/// What an estimate is based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EstimateBasis {
    /// Finished invocations of the last 7 days.
    pub invocations: u64,
    /// Their median duration (±12%: from the rollups' histogram).
    pub p50_ms: Option<f64>,
    /// The live version's memory.
    pub memory_mb: u32,
}

/// `GET /v1/functions/{name}/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    pub function: String,
    pub per_1000_calls: EstimateCost,
    pub based_on: EstimateBasis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetUnit {
    /// Money, at the price table (whatever its currency).
    Usd,
    /// Billed GB-seconds.
    GbS,
}

/// `PUT /v1/tokens/{id}/budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub period: BudgetPeriod,
    /// ≥ 0, in `unit`.
    pub limit: f64,
    pub unit: BudgetUnit,
    /// The fraction of the limit (above 0, at most 1) at which the event
    /// `budget.reached` is sent, once per period.
    #[serde(default)]
    pub notify_at: Option<f64>,
    /// Refuse the token's new work (429 `budget_exceeded`) past the limit.
    #[serde(default)]
    pub enforce: bool,
}

/// A token's budget and its spend in the current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    pub token: String,
    pub period: BudgetPeriod,
    pub limit: f64,
    pub unit: BudgetUnit,
    pub notify_at: Option<f64>,
    pub enforce: bool,
    /// Spent in the current period, in `unit`.
    pub spent: f64,
    pub period_start_ms: u64,
    pub resets_at_ms: u64,
    /// `spent ≥ limit`.
    pub exceeded: bool,
}

/// One step of `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct StatsPoint {
    /// The step's start.
    pub t_ms: u64,
    /// Invocations created in the step that finished (any final status).
    pub invocations: u64,
    /// Failed or timed out.
    pub failed: u64,
    pub cold_starts: u64,
    /// Durations (±12%); absent without one.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub gb_s: f64,
}

/// `GET /v1/stats`: the node's storage (as before) and invocation stats
/// over time from the usage rollups.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    #[serde(flatten)]
    pub node: NodeStats,
    pub step_s: u64,
    pub since_ms: u64,
    pub until_ms: u64,
    /// The steps that have finished invocations, oldest first.
    pub points: Vec<StatsPoint>,
    pub total: StatsPoint,
}

/// `GET /v1/invocations/count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvocationCount {
    pub count: u64,
}
