//! Usage, cost, budgets and invocation counts, read from the store's usage
//! rollups (`shoal_store::usage`: per minute and per UTC day, function and
//! token, kept in the write that makes each invocation final).
//!
//! - Prices: one table for the cluster, a reserved KV entry (`\0U\0prices`).
//! - Usage: rollups summed per function, token or day over `[since, until)`
//!   at minute precision (whole days read the day rows, the edges the
//!   minute rows), turned into money with the prices.
//! - Budgets: per token, a reserved KV entry (`\0U\0budget\0<token>`):
//!   a limit in USD or GB-seconds per UTC day or month. [`UsageService::admit`]
//!   is called where new work starts; past the limit with `enforce` it
//!   refuses with [`Error::BudgetExceeded`]. A token's spend is cached for
//!   a second per node, so work admitted in that second (and work already
//!   running) may pass the limit by a little. At `notify_at` × limit the
//!   `budget.reached` event is emitted through `Notifications::emit` once
//!   per period (an absent-only KV write decides which node emits it).
//! - Counts: exact, from the rollups for the whole minutes of the range and
//!   the invocation indexes for its edge minutes and for records not final
//!   yet. Records removed by the retention sweep stay counted (rollups
//!   outlive records).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_store::usage::{Grain, Rollup, RollupQuery, RollupRow};
use shoal_store::{InvocationFilter, KvCondition};
use shoal_types::{FunctionName, InvocationStatus};

use crate::env::Env;
use crate::error::{Entity, Error, Result};

const PRICES_KEY: &str = "\0U\0prices";
const BUDGET_KEY: &str = "\0U\0budget\0";
const NOTIFIED_KEY: &str = "\0U\0notified\0";
/// `\0U\0stored\0YYYY-MM-DD`: the bytes stored that day (the last sample).
const STORED_KEY: &str = "\0U\0stored\0";
/// How often a node samples the bytes stored (the day's sample is kept
/// for 400 days).
const STORED_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
const MINUTE: u64 = 60_000;
const DAY: u64 = 86_400_000;
/// How long a node trusts a token's budget and spend before reading again.
const BUDGET_CACHE_MS: u64 = 1_000;
/// The most points one stats answer holds.
pub const MAX_POINTS: u64 = 10_000;
/// How far back an estimate looks.
const ESTIMATE_DAYS: u64 = 7;

/// The operator's price table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub currency: String,
    pub per_gb_s: f64,
    pub per_million_invocations: f64,
    pub per_gb_month_stored: f64,
}

impl Default for Prices {
    /// AWS Lambda's and S3's list prices (x86, us-east-1), until the
    /// operator sets theirs.
    fn default() -> Prices {
        Prices {
            currency: "USD".to_string(),
            per_gb_s: 0.000_016_666_7,
            per_million_invocations: 0.2,
            per_gb_month_stored: 0.023,
        }
    }
}

impl Prices {
    fn check(&self) -> Result<()> {
        let c = &self.currency;
        if c.is_empty() || c.len() > 8 || !c.chars().all(|ch| ch.is_ascii_alphabetic()) {
            return Err(Error::invalid(
                "currency",
                format!("{c:?} is not a currency code (1 to 8 letters, e.g. USD)"),
            ));
        }
        for (field, v) in [
            ("per_gb_s", self.per_gb_s),
            ("per_million_invocations", self.per_million_invocations),
            ("per_gb_month_stored", self.per_gb_month_stored),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(field, format!("{v} is not a price (≥ 0)")));
            }
        }
        Ok(())
    }

    /// The cost of `invocations` using `gb_s`.
    pub fn cost(&self, invocations: u64, gb_s: f64) -> f64 {
        gb_s * self.per_gb_s + invocations as f64 / 1e6 * self.per_million_invocations
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetUnit {
    Usd,
    GbS,
}

impl BudgetUnit {
    fn as_str(self) -> &'static str {
        match self {
            BudgetUnit::Usd => "USD",
            BudgetUnit::GbS => "GB-s",
        }
    }
}

/// A token's budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub period: BudgetPeriod,
    pub limit: f64,
    pub unit: BudgetUnit,
    /// The fraction of the limit at which `budget.reached` is emitted.
    pub notify_at: Option<f64>,
    /// Refuse new work past the limit.
    pub enforce: bool,
}

impl Budget {
    fn check(&self) -> Result<()> {
        if !(self.limit.is_finite() && self.limit >= 0.0) {
            return Err(Error::invalid("limit", "a budget's limit is a number ≥ 0"));
        }
        if let Some(n) = self.notify_at
            && !(n > 0.0 && n <= 1.0)
        {
            return Err(Error::invalid(
                "notify_at",
                "notify_at is a fraction of the limit, above 0 and at most 1",
            ));
        }
        Ok(())
    }
}

/// A budget with what its token spent in the current period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub token: String,
    pub budget: Budget,
    /// In the budget's unit.
    pub spent: f64,
    pub period_start_ms: u64,
    pub resets_at_ms: u64,
    pub exceeded: bool,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Function,
    Token,
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Result<GroupBy> {
        match s {
            "function" => Ok(GroupBy::Function),
            "token" => Ok(GroupBy::Token),
            "day" => Ok(GroupBy::Day),
            _ => Err(Error::invalid(
                "group_by",
                format!("{s:?} is not a grouping; use function, token or day"),
            )),
        }
    }
}

/// What `usage` sums over.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub group_by: Option<GroupBy>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub function: Option<String>,
    pub token: Option<String>,
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageLine {
    /// Function name, token id (`""` = no token), or day (`YYYY-MM-DD`).
    pub key: String,
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub cold_starts: u64,
    pub gb_s: f64,
    pub cost: f64,
    /// Grouped by day: the bytes of documents and blobs stored that day
    /// (the day's last sample, taken every 10 minutes), if sampled.
    pub stored_bytes: Option<u64>,
}

impl UsageLine {
    fn add(&mut self, r: &Rollup) {
        self.invocations += r.invocations();
        self.succeeded += r.of_status(InvocationStatus::Succeeded);
        self.failed += r.of_status(InvocationStatus::Failed);
        self.timed_out += r.of_status(InvocationStatus::TimedOut);
        self.cancelled += r.of_status(InvocationStatus::Cancelled);
        self.cold_starts += r.cold_starts();
        self.gb_s += r.gb_s();
    }
}

/// Bytes the store holds now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stored {
    pub documents_bytes: u64,
    pub blobs_bytes: u64,
    /// Blobs past the first 100,000 are not counted.
    pub blobs_partial: bool,
    /// What keeping them a month costs.
    pub cost_per_month: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub since_ms: u64,
    pub until_ms: u64,
    pub items: Vec<UsageLine>,
    pub total: UsageLine,
    pub prices: Prices,
    pub stored: Stored,
}

/// One step of the stats.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsPoint {
    pub t_ms: u64,
    pub invocations: u64,
    pub failed: u64,
    pub cold_starts: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub gb_s: f64,
}

impl StatsPoint {
    fn of(t_ms: u64, r: &Rollup) -> StatsPoint {
        StatsPoint {
            t_ms,
            invocations: r.invocations(),
            failed: r.failed(),
            cold_starts: r.cold_starts(),
            p50_ms: r.quantile_ms(0.5),
            p99_ms: r.quantile_ms(0.99),
            gb_s: r.gb_s(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub step_s: u64,
    pub since_ms: u64,
    pub until_ms: u64,
    /// Only the steps with finished invocations.
    pub points: Vec<StatsPoint>,
    pub total: StatsPoint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub function: String,
    pub memory_mb: u32,
    /// Finished invocations of the last 7 days it is based on.
    pub invocations: u64,
    pub p50_ms: Option<f64>,
    /// Per 1,000 calls at the p50 duration (none without a duration yet).
    pub gb_s_per_1000: Option<f64>,
    pub cost_per_1000: Option<f64>,
    pub prices: Prices,
}

/// A token's budget and spend as last read by this node.
#[derive(Clone)]
struct Cached {
    at_ms: u64,
    view: Option<BudgetView>,
}

/// The usage service.
pub struct UsageService {
    env: Arc<Env>,
    budgets: Mutex<HashMap<String, Cached>>,
}

impl UsageService {
    pub(crate) fn new(env: Arc<Env>) -> UsageService {
        UsageService {
            env,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    // ---- prices ----

    pub async fn prices(&self) -> Result<Prices> {
        let now = self.env.now_ms();
        match self.env.backend.kv.kv_get(PRICES_KEY, now).await? {
            Some(e) => serde_json::from_slice(&e.value).map_err(|e| {
                Error::unavailable(format!("the stored price table does not decode: {e}"))
            }),
            None => Ok(Prices::default()),
        }
    }

    pub async fn set_prices(&self, prices: Prices) -> Result<Prices> {
        prices.check()?;
        let value = serde_json::to_vec(&prices).expect("prices encode");
        let now = self.env.now_ms();
        self.env
            .backend
            .kv
            .kv_set(PRICES_KEY, value, None, KvCondition::Always, now)
            .await?;
        Ok(prices)
    }

    // ---- rollups ----

    /// The rows of `[since, until)` rounded out to whole minutes: day rows
    /// for the whole days inside, hour rows for the whole hours left, minute
    /// rows for the rest.
    /// `function` None: the rows of every function together, or with
    /// `each_function` every function's own rows.
    async fn gather(
        &self,
        since_ms: u64,
        until_ms: u64,
        function: Option<&str>,
        each_function: bool,
        token: Option<&str>,
    ) -> Result<Vec<RollupRow>> {
        let mut spans = Vec::new();
        split(
            floor(since_ms, MINUTE),
            ceil(until_ms, MINUTE),
            &Grain::ALL,
            &mut spans,
        );
        let mut rows = Vec::new();
        for (grain, a, b) in spans {
            let q = RollupQuery {
                grain,
                since_ms: a,
                until_ms: b,
                function: function.map(str::to_string),
                each_function,
                token: token.map(str::to_string),
            };
            rows.extend(self.env.backend.usage.rollups(&q).await?);
        }
        Ok(rows)
    }

    pub async fn usage(&self, q: &UsageQuery) -> Result<UsageReport> {
        let now = self.env.now_ms();
        let until = q.until_ms.unwrap_or(now + 1);
        let since = q.since_ms.unwrap_or(floor(now, DAY) - 29 * DAY);
        if since >= until {
            return Err(Error::invalid("since", "since must be before until"));
        }
        let prices = self.prices().await?;
        let rows = self
            .gather(
                since,
                until,
                q.function.as_deref(),
                q.group_by == Some(GroupBy::Function),
                q.token.as_deref(),
            )
            .await?;
        let mut groups: BTreeMap<String, UsageLine> = BTreeMap::new();
        let mut total = UsageLine {
            key: "total".to_string(),
            ..UsageLine::default()
        };
        for row in &rows {
            total.add(&row.rollup);
            let key = match q.group_by {
                None => continue,
                Some(GroupBy::Function) => row.function.clone(),
                Some(GroupBy::Token) => row.token.clone(),
                Some(GroupBy::Day) => day_label(row.start_ms),
            };
            groups
                .entry(key.clone())
                .or_insert_with(|| UsageLine {
                    key,
                    ..UsageLine::default()
                })
                .add(&row.rollup);
        }
        if q.group_by == Some(GroupBy::Day) {
            // Days with a sample of the bytes stored but no invocation.
            let now = self.env.now_ms();
            let mut day = floor(since, DAY);
            while day < until {
                let label = day_label(day);
                let key = format!("{STORED_KEY}{label}");
                if let Some(e) = self.env.backend.kv.kv_get(&key, now).await?
                    && let Some(bytes) = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                {
                    groups
                        .entry(label.clone())
                        .or_insert_with(|| UsageLine {
                            key: label,
                            ..UsageLine::default()
                        })
                        .stored_bytes = Some(bytes);
                }
                day += DAY;
            }
        }
        let mut items: Vec<UsageLine> = groups.into_values().collect();
        for line in items.iter_mut().chain(std::iter::once(&mut total)) {
            line.cost = prices.cost(line.invocations, line.gb_s);
        }
        let stored = self.stored(&prices).await?;
        Ok(UsageReport {
            since_ms: floor(since, MINUTE),
            until_ms: ceil(until, MINUTE),
            items,
            total,
            prices,
            stored,
        })
    }

    /// Samples the bytes stored every 10 minutes into the day's KV entry,
    /// on the engine's tasks, until shutdown.
    pub(crate) fn start_sampling(env: Arc<Env>) {
        let tasks = env.tasks.clone();
        tasks.spawn(async move {
            let usage = UsageService::new(env.clone());
            loop {
                if let Err(e) = usage.sample_stored().await {
                    tracing::debug!(error = %e, "sampling the bytes stored failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(STORED_EVERY) => {}
                    _ = env.tasks.stopping() => return,
                }
            }
        });
    }

    /// Writes today's sample of the bytes stored.
    pub async fn sample_stored(&self) -> Result<u64> {
        let stored = self.stored(&Prices::default()).await?;
        let bytes = stored.documents_bytes + stored.blobs_bytes;
        let now = self.env.now_ms();
        let key = format!("{STORED_KEY}{}", day_label(now));
        self.env
            .backend
            .kv
            .kv_set(
                &key,
                bytes.to_string().into_bytes(),
                Some(400 * DAY),
                KvCondition::Always,
                now,
            )
            .await?;
        Ok(bytes)
    }

    async fn stored(&self, prices: &Prices) -> Result<Stored> {
        let backend = &self.env.backend;
        let mut stored = Stored::default();
        for c in backend.docs.categories().await? {
            for s in backend.docs.shard_stats(&c.name).await? {
                stored.documents_bytes += s.bytes;
            }
        }
        let mut after: Option<String> = None;
        for _ in 0..100 {
            let page = backend.blobs.blob_list("", after.as_deref(), 1_000).await?;
            stored.blobs_bytes += page.blobs.iter().map(|b| b.size).sum::<u64>();
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        stored.blobs_partial = after.is_some();
        let gb = (stored.documents_bytes + stored.blobs_bytes) as f64 / 1e9;
        stored.cost_per_month = gb * prices.per_gb_month_stored;
        Ok(stored)
    }

    /// Points of `step_s` seconds (a multiple of 60) over `[since, until)`.
    pub async fn stats(
        &self,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        step_s: Option<u64>,
        function: Option<&str>,
    ) -> Result<Stats> {
        let now = self.env.now_ms();
        let step_s = step_s.unwrap_or(60);
        if step_s == 0 || !step_s.is_multiple_of(60) {
            return Err(Error::invalid(
                "step_s",
                format!("{step_s} is not a step; use a multiple of 60 seconds"),
            ));
        }
        let step = step_s * 1_000;
        // The coarsest rows a step is made of (a step of whole hours reads
        // hour rows); the range is rounded out to them, so the points start
        // on whole minutes, hours or days.
        let grain = [Grain::Day, Grain::Hour]
            .into_iter()
            .find(|g| step.is_multiple_of(g.ms()))
            .unwrap_or(Grain::Minute);
        let until = ceil(until_ms.unwrap_or(now + 1), grain.ms());
        let since = floor(
            since_ms.unwrap_or(until.saturating_sub(3_600_000)),
            grain.ms(),
        );
        if since >= until {
            return Err(Error::invalid("since", "since must be before until"));
        }
        if (until - since).div_ceil(step) > MAX_POINTS {
            return Err(Error::invalid(
                "step_s",
                format!("at most {MAX_POINTS} points: take a larger step or a shorter range"),
            ));
        }
        let q = RollupQuery {
            grain,
            since_ms: since,
            until_ms: until,
            function: function.map(str::to_string),
            each_function: false,
            token: None,
        };
        let rows = self.env.backend.usage.rollups(&q).await?;
        let mut steps: BTreeMap<u64, Rollup> = BTreeMap::new();
        let mut all = Rollup::default();
        for row in &rows {
            let t = since + (row.start_ms - since) / step * step;
            steps.entry(t).or_default().add(&row.rollup);
            all.add(&row.rollup);
        }
        Ok(Stats {
            step_s,
            since_ms: since,
            until_ms: until,
            points: steps.iter().map(|(t, r)| StatsPoint::of(*t, r)).collect(),
            total: StatsPoint::of(since, &all),
        })
    }

    /// How many invocations were created in `[since, until)` (and are in
    /// `status`, of `function`), exactly.
    pub async fn count(
        &self,
        function: Option<&FunctionName>,
        status: Option<InvocationStatus>,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
    ) -> Result<u64> {
        let lo = since_ms.unwrap_or(0);
        let hi = until_ms.unwrap_or(u64::MAX);
        if lo >= hi {
            return Ok(0);
        }
        let indexed = |status: Option<InvocationStatus>, a: u64, b: u64| {
            let filter = InvocationFilter {
                function: function.cloned(),
                status,
                mode: None,
                since_ms: Some(a),
                until_ms: (b != u64::MAX).then_some(b),
            };
            let usage = self.env.backend.usage.clone();
            async move {
                if a >= b {
                    return Ok(0);
                }
                usage.count_indexed(&filter).await
            }
        };
        // Not final: few records, straight from the status index.
        if status.is_some_and(|s| !s.is_final()) {
            return Ok(indexed(status, lo, hi).await?);
        }
        let (m_lo, m_hi) = (ceil(lo, MINUTE), floor(hi, MINUTE));
        if m_lo >= m_hi {
            return Ok(indexed(status, lo, hi).await?);
        }
        let mut n = indexed(status, lo, m_lo).await? + indexed(status, m_hi, hi).await?;
        let rows = self
            .gather(m_lo, m_hi, function.map(FunctionName::as_str), false, None)
            .await?;
        for row in &rows {
            n += match status {
                Some(s) => row.rollup.of_status(s),
                None => row.rollup.invocations(),
            };
        }
        if status.is_none() {
            for s in [InvocationStatus::Queued, InvocationStatus::Running] {
                n += indexed(Some(s), m_lo, m_hi).await?;
            }
        }
        Ok(n)
    }

    /// What 1,000 calls of a function cost, from its last 7 days' p50
    /// duration and its live version's memory.
    pub async fn estimate(&self, function: &str, memory_mb: u32) -> Result<Estimate> {
        let now = self.env.now_ms();
        let rows = self
            .gather(
                now.saturating_sub(ESTIMATE_DAYS * DAY),
                now + 1,
                Some(function),
                false,
                None,
            )
            .await?;
        let mut all = Rollup::default();
        for row in &rows {
            all.add(&row.rollup);
        }
        let prices = self.prices().await?;
        let p50_ms = all.quantile_ms(0.5);
        let gb_s = p50_ms.map(|ms| 1_000.0 * f64::from(memory_mb) / 1024.0 * ms / 1_000.0);
        Ok(Estimate {
            function: function.to_string(),
            memory_mb,
            invocations: all.invocations(),
            p50_ms,
            gb_s_per_1000: gb_s,
            cost_per_1000: gb_s.map(|g| prices.cost(1_000, g)),
            prices,
        })
    }

    // ---- budgets ----

    pub async fn set_budget(&self, token: &str, budget: Budget) -> Result<BudgetView> {
        budget.check()?;
        self.token_exists(token).await?;
        let value = serde_json::to_vec(&budget).expect("budget encodes");
        let now = self.env.now_ms();
        self.env
            .backend
            .kv
            .kv_set(&budget_key(token), value, None, KvCondition::Always, now)
            .await?;
        self.forget(token);
        self.budget(token).await
    }

    pub async fn budget(&self, token: &str) -> Result<BudgetView> {
        self.read_budget(token)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Budget, token))
    }

    pub async fn remove_budget(&self, token: &str) -> Result<()> {
        let now = self.env.now_ms();
        let removed = self
            .env
            .backend
            .kv
            .kv_delete(&budget_key(token), None, now)
            .await?;
        self.forget(token);
        if !removed {
            return Err(Error::not_found(Entity::Budget, token));
        }
        Ok(())
    }

    async fn token_exists(&self, token: &str) -> Result<()> {
        let tokens = self.env.backend.catalog.tokens().await?;
        if tokens.iter().any(|t| t.id == token) {
            Ok(())
        } else {
            Err(Error::not_found(Entity::Token, token))
        }
    }

    fn forget(&self, token: &str) {
        self.budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(token);
    }

    async fn read_budget(&self, token: &str) -> Result<Option<BudgetView>> {
        let now = self.env.now_ms();
        let Some(entry) = self.env.backend.kv.kv_get(&budget_key(token), now).await? else {
            return Ok(None);
        };
        let budget: Budget = serde_json::from_slice(&entry.value).map_err(|e| {
            Error::unavailable(format!("the budget of token {token} does not decode: {e}"))
        })?;
        let (start, end) = period(budget.period, now);
        let rows = self
            .gather(start, now + 1, None, false, Some(token))
            .await?;
        let mut line = UsageLine::default();
        for row in &rows {
            line.add(&row.rollup);
        }
        let spent = match budget.unit {
            BudgetUnit::GbS => line.gb_s,
            BudgetUnit::Usd => self.prices().await?.cost(line.invocations, line.gb_s),
        };
        Ok(Some(BudgetView {
            token: token.to_string(),
            exceeded: spent >= budget.limit,
            budget,
            spent,
            period_start_ms: start,
            resets_at_ms: end,
        }))
    }

    /// Whether `token` may start new work: an error past an enforced
    /// budget. Emits `budget.reached` at the threshold (once per period).
    /// Work no token started has no budget.
    pub async fn admit(&self, token: Option<&str>) -> Result<()> {
        let Some(token) = token else {
            return Ok(());
        };
        let now = self.env.now_ms();
        let cached = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .filter(|c| now < c.at_ms + BUDGET_CACHE_MS)
            .cloned();
        let view = match cached {
            Some(c) => c.view,
            None => {
                let view = self.read_budget(token).await?;
                self.budgets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        token.to_string(),
                        Cached {
                            at_ms: now,
                            view: view.clone(),
                        },
                    );
                if let Some(v) = &view {
                    self.maybe_notify(v).await;
                }
                view
            }
        };
        match view {
            Some(v) if v.exceeded && v.budget.enforce => Err(Error::BudgetExceeded(format!(
                "token {} is past its {} budget: spent {:.6} of {} {} since {}; it resets at {}",
                v.token,
                match v.budget.period {
                    BudgetPeriod::Day => "daily",
                    BudgetPeriod::Month => "monthly",
                },
                v.spent,
                v.budget.limit,
                v.budget.unit.as_str(),
                rfc3339(v.period_start_ms),
                rfc3339(v.resets_at_ms),
            ))),
            _ => Ok(()),
        }
    }

    /// Emits `budget.reached` once per period when the spend is past the
    /// threshold: the node whose absent-only KV write succeeds emits it.
    async fn maybe_notify(&self, v: &BudgetView) {
        let Some(at) = v.budget.notify_at else {
            return;
        };
        if v.spent < at * v.budget.limit {
            return;
        }
        let now = self.env.now_ms();
        let key = format!("{NOTIFIED_KEY}{}\0{}", v.token, v.period_start_ms);
        let ttl = v.resets_at_ms.saturating_sub(now) + DAY;
        let claimed = self
            .env
            .backend
            .kv
            .kv_set(&key, b"1".to_vec(), Some(ttl), KvCondition::Absent, now)
            .await;
        if let Ok(shoal_store::KvSet::Written(_)) = claimed {
            emit_budget_reached(&self.env, v).await;
        }
    }
}

/// The data of a `budget.reached` event.
pub(crate) fn budget_event(v: &BudgetView) -> serde_json::Value {
    serde_json::json!({
        "token": v.token,
        "period": v.budget.period,
        "unit": v.budget.unit,
        "limit": v.budget.limit,
        "notify_at": v.budget.notify_at,
        "spent": v.spent,
        "period_start_ms": v.period_start_ms,
        "resets_at_ms": v.resets_at_ms,
        "enforce": v.budget.enforce,
    })
}

/// Emits `budget.reached` through the notifications (webhooks and the
/// `_events` channel), keyed by token and period so it notifies once.
async fn emit_budget_reached(env: &Env, v: &BudgetView) {
    let data = budget_event(v);
    tracing::info!(event = "budget.reached", %data, "a token reached its budget threshold");
    let Some(notifications) = env.notifications() else {
        return;
    };
    let event = crate::notifications::Event {
        kind: "budget.reached".to_string(),
        data,
        function: None,
        key: Some(format!("budget.reached:{}:{}", v.token, v.period_start_ms)),
    };
    if let Err(e) = notifications.emit(event).await {
        tracing::warn!(token = %v.token, error = %e, "budget.reached was not emitted");
    }
}

/// Splits `[lo, hi)` (whole minutes) into spans of the coarsest grains
/// that fit: `grains` from fine to coarse.
fn split(lo: u64, hi: u64, grains: &[Grain], out: &mut Vec<(Grain, u64, u64)>) {
    if lo >= hi {
        return;
    }
    let Some((&coarse, finer)) = grains.split_last() else {
        return;
    };
    if finer.is_empty() {
        out.push((coarse, lo, hi));
        return;
    }
    let (a, b) = (ceil(lo, coarse.ms()), floor(hi, coarse.ms()));
    if a < b {
        split(lo, a, finer, out);
        out.push((coarse, a, b));
        split(b, hi, finer, out);
    } else {
        split(lo, hi, finer, out);
    }
}

fn budget_key(token: &str) -> String {
    format!("{BUDGET_KEY}{token}")
}

fn floor(t: u64, unit: u64) -> u64 {
    t - t % unit
}

fn ceil(t: u64, unit: u64) -> u64 {
    match t % unit {
        0 => t,
        r => t.saturating_add(unit - r),
    }
}

/// The UTC day or month holding `now_ms`: (start, end).
fn period(p: BudgetPeriod, now_ms: u64) -> (u64, u64) {
    match p {
        BudgetPeriod::Day => (floor(now_ms, DAY), floor(now_ms, DAY) + DAY),
        BudgetPeriod::Month => {
            let days = (now_ms / DAY) as i64;
            let (y, m, _) = civil_from_days(days);
            let start = days_from_civil(y, m, 1);
            let end = if m == 12 {
                days_from_civil(y + 1, 1, 1)
            } else {
                days_from_civil(y, m + 1, 1)
            };
            (start as u64 * DAY, end as u64 * DAY)
        }
    }
}

/// (year, month, day) of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a time.
pub fn day_label(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / DAY) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1_000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3_600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-12-05T04:50:00Z
        let t = 1_796_446_200_000;
        assert_eq!(rfc3339(t), "2026-12-05T04:50:00Z");
        let (a, b) = period(BudgetPeriod::Day, t);
        assert_eq!(
            (rfc3339(a), rfc3339(b)),
            ("2026-12-05T00:00:00Z".into(), "2026-12-06T00:00:00Z".into())
        );
        let (a, b) = period(BudgetPeriod::Month, t);
        assert_eq!(
            (rfc3339(a), rfc3339(b)),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        let (a, b) = period(BudgetPeriod::Month, 951_782_400_000); // 2000-02-29
        assert_eq!(
            (rfc3339(a), rfc3339(b)),
            ("2000-02-01T00:00:00Z".into(), "2000-03-01T00:00:00Z".into())
        );
        assert_eq!(day_label(t), "2026-12-05");
    }

    #[test]
    fn ranges_split_into_the_coarsest_rows() {
        let h = 3_600_000;
        let mut out = Vec::new();
        // 23:58 of day 0 to 02:03 of day 2.
        split(
            DAY - 2 * MINUTE,
            2 * DAY + 2 * h + 3 * MINUTE,
            &Grain::ALL,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                (Grain::Minute, DAY - 2 * MINUTE, DAY),
                (Grain::Day, DAY, 2 * DAY),
                (Grain::Hour, 2 * DAY, 2 * DAY + 2 * h),
                (Grain::Minute, 2 * DAY + 2 * h, 2 * DAY + 2 * h + 3 * MINUTE),
            ]
        );
        out.clear();
        split(10 * MINUTE, 20 * MINUTE, &Grain::ALL, &mut out);
        assert_eq!(out, vec![(Grain::Minute, 10 * MINUTE, 20 * MINUTE)]);
        out.clear();
        split(0, u64::MAX - u64::MAX % MINUTE, &Grain::ALL, &mut out);
        assert_eq!(out[0], (Grain::Day, 0, u64::MAX - u64::MAX % DAY));
    }

    #[test]
    fn rounding_to_minutes() {
        assert_eq!(floor(61_000, MINUTE), 60_000);
        assert_eq!(ceil(61_000, MINUTE), 120_000);
        assert_eq!(ceil(120_000, MINUTE), 120_000);
        assert_eq!(ceil(u64::MAX, MINUTE), u64::MAX);
    }
}
