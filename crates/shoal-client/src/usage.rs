//! Usage and cost (`/v1/usage`), prices, estimates, budgets per token,
//! invocation stats (`/v1/stats`) and counts (`/v1/invocations/count`).

use reqwest::Method;

use shoal_protocol::{
    BudgetSpec, BudgetView, Estimate, InvocationCount, Prices, Stats, UsageReport,
};

use crate::{Client, Result, seg};

/// `?k=v&...` of the pairs whose value is set, or `""`.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", seg(k), seg(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

impl Client {
    /// Usage over a range (`filters`: `group_by`, `since`, `until`,
    /// `function`, `token`).
    pub async fn usage(&self, filters: &[(&str, Option<&str>)]) -> Result<UsageReport> {
        self.json(
            Method::GET,
            &format!("/v1/usage{}", query(filters)),
            None::<&()>,
        )
        .await
    }

    pub async fn prices(&self) -> Result<Prices> {
        self.json(Method::GET, "/v1/usage/prices", None::<&()>)
            .await
    }

    /// Sets the price table (admin).
    pub async fn set_prices(&self, prices: &Prices) -> Result<Prices> {
        self.json(Method::PUT, "/v1/usage/prices", Some(prices))
            .await
    }

    /// What 1,000 calls of a function cost.
    pub async fn estimate(&self, function: &str) -> Result<Estimate> {
        self.json(
            Method::GET,
            &format!("/v1/functions/{}/estimate", seg(function)),
            None::<&()>,
        )
        .await
    }

    /// A token's budget and spend (admin).
    pub async fn budget(&self, token: &str) -> Result<BudgetView> {
        self.json(
            Method::GET,
            &format!("/v1/tokens/{}/budget", seg(token)),
            None::<&()>,
        )
        .await
    }

    /// Sets a token's budget (admin).
    pub async fn set_budget(&self, token: &str, spec: &BudgetSpec) -> Result<BudgetView> {
        self.json(
            Method::PUT,
            &format!("/v1/tokens/{}/budget", seg(token)),
            Some(spec),
        )
        .await
    }

    /// Removes a token's budget (admin).
    pub async fn remove_budget(&self, token: &str) -> Result<()> {
        self.delete_no_content(&format!("/v1/tokens/{}/budget", seg(token)))
            .await
    }

    /// Invocation stats per step (`filters`: `since`, `until`, `step_s`,
    /// `function`) with the node's storage.
    pub async fn invocation_stats(&self, filters: &[(&str, Option<&str>)]) -> Result<Stats> {
        self.json(
            Method::GET,
            &format!("/v1/stats{}", query(filters)),
            None::<&()>,
        )
        .await
    }

    /// How many invocations match (`filters`: `function`, `status`,
    /// `since`, `until`), exactly.
    pub async fn count_invocations(&self, filters: &[(&str, Option<&str>)]) -> Result<u64> {
        let c: InvocationCount = self
            .json(
                Method::GET,
                &format!("/v1/invocations/count{}", query(filters)),
                None::<&()>,
            )
            .await?;
        Ok(c.count)
    }
}
