//! `shoal usage`: finished invocations, GB-seconds and cost per function,
//! token or day; the price table; a function's cost estimate; a token's
//! budget; exact invocation counts.
//!
//! `--json` prints the API's answer.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use shoal_client::Client;
use shoal_client::protocol::{
    BudgetPeriod, BudgetSpec, BudgetUnit, BudgetView, Prices, UsageLine, UsageReport,
};

use crate::output::{Out, time};

#[derive(Args)]
pub struct UsageArgs {
    /// Group by function, token or day (UTC); the total only without it.
    #[arg(long, value_enum)]
    group_by: Option<GroupBy>,
    /// From (RFC 3339, epoch ms, or back from now: 1h, 7d); default 30 days.
    #[arg(long)]
    since: Option<String>,
    /// Until (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only this function.
    #[arg(long)]
    function: Option<String>,
    /// Only this token's work (its id; `--token` is the caller's own).
    #[arg(long = "token-id", value_name = "ID")]
    token_id: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupBy {
    Function,
    Token,
    Day,
}

#[derive(Subcommand)]
pub enum UsageCommand {
    /// The price table; `prices set` changes it (admin).
    Prices {
        #[command(subcommand)]
        command: Option<PricesCommand>,
    },
    /// What 1,000 calls of a function cost (its recent p50 duration ×
    /// its memory, at the price table).
    Estimate { function: String },
    /// A token's budget and what it spent this period (admin); `set` or
    /// `rm` it.
    Budget {
        /// The token's id (`shoal tokens list`).
        #[arg(value_name = "TOKEN_ID")]
        token_id: String,
        #[command(subcommand)]
        command: Option<BudgetCommand>,
    },
    /// How many invocations match, exactly (fast over millions).
    Count {
        #[arg(long)]
        function: Option<String>,
        /// queued, running, succeeded, failed, timed_out or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PricesCommand {
    /// Set the price table (fields not given keep their value).
    Set {
        #[arg(long)]
        currency: Option<String>,
        #[arg(long)]
        per_gb_s: Option<f64>,
        #[arg(long)]
        per_million_invocations: Option<f64>,
        #[arg(long)]
        per_gb_month_stored: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Set the budget: a limit per day or month in usd or gb_s.
    Set {
        #[arg(long)]
        limit: f64,
        #[arg(long, value_enum, default_value = "month")]
        period: Period,
        #[arg(long, value_enum, default_value = "usd")]
        unit: Unit,
        /// Send `budget.reached` at this fraction of the limit (0 < x ≤ 1).
        #[arg(long)]
        notify_at: Option<f64>,
        /// Refuse the token's new work past the limit (429 budget_exceeded).
        #[arg(long)]
        enforce: bool,
    },
    /// Remove the budget.
    Rm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Period {
    Day,
    Month,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Unit {
    Usd,
    GbS,
}

/// Runs `shoal usage ...`.
pub async fn run(
    client: &Client,
    args: UsageArgs,
    command: Option<UsageCommand>,
    json: bool,
) -> Result<()> {
    let out = Out { json };
    match command {
        None => {
            let group_by = args.group_by.map(|g| match g {
                GroupBy::Function => "function",
                GroupBy::Token => "token",
                GroupBy::Day => "day",
            });
            let r = client
                .usage(&[
                    ("group_by", group_by),
                    ("since", args.since.as_deref()),
                    ("until", args.until.as_deref()),
                    ("function", args.function.as_deref()),
                    ("token", args.token_id.as_deref()),
                ])
                .await?;
            out.print(&r, || report(&r));
        }
        Some(UsageCommand::Prices { command: None }) => {
            let p = client.prices().await?;
            out.print(&p, || prices(&p));
        }
        Some(UsageCommand::Prices {
            command:
                Some(PricesCommand::Set {
                    currency,
                    per_gb_s,
                    per_million_invocations,
                    per_gb_month_stored,
                }),
        }) => {
            let old = client.prices().await?;
            let new = Prices {
                currency: currency.unwrap_or(old.currency),
                per_gb_s: per_gb_s.unwrap_or(old.per_gb_s),
                per_million_invocations: per_million_invocations
                    .unwrap_or(old.per_million_invocations),
                per_gb_month_stored: per_gb_month_stored.unwrap_or(old.per_gb_month_stored),
            };
            let p = client.set_prices(&new).await?;
            out.print(&p, || format!("Prices set.\n{}", prices(&p)));
        }
        Some(UsageCommand::Estimate { function }) => estimate(client, &function, json).await?,
        Some(UsageCommand::Budget { token_id, command }) => {
            budget(client, &token_id, command, json).await?
        }
        Some(UsageCommand::Count {
            function,
            status,
            since,
            until,
        }) => {
            let n = client
                .count_invocations(&[
                    ("function", function.as_deref()),
                    ("status", status.as_deref()),
                    ("since", since.as_deref()),
                    ("until", until.as_deref()),
                ])
                .await?;
            out.print(&serde_json::json!({ "count": n }), || n.to_string());
        }
    }
    Ok(())
}

/// `shoal usage estimate NAME` (also `shoal functions estimate NAME`).
pub async fn estimate(client: &Client, function: &str, json: bool) -> Result<()> {
    let e = client.estimate(function).await?;
    Out { json }.print(&e, || {
        let b = &e.based_on;
        match (e.per_1000_calls.gb_s, e.per_1000_calls.cost) {
            (Some(gb_s), Some(cost)) => format!(
                "{}: per 1,000 calls {gb_s:.3} GB-s, {cost:.6} {} \
                 (p50 {:.1} ms × {} MB, from {} invocations of the last 7 days)",
                e.function,
                e.per_1000_calls.currency,
                b.p50_ms.unwrap_or_default(),
                b.memory_mb,
                b.invocations
            ),
            _ => format!(
                "{}: no finished invocation in the last 7 days to estimate from ({} MB)",
                e.function, b.memory_mb
            ),
        }
    });
    Ok(())
}

/// `shoal usage budget TOKEN_ID [set|rm]` (also `shoal tokens budget`).
pub async fn budget(
    client: &Client,
    token: &str,
    command: Option<BudgetCommand>,
    json: bool,
) -> Result<()> {
    let out = Out { json };
    match command {
        None => {
            let b = client.budget(token).await?;
            out.print(&b, || budget_text(&b));
        }
        Some(BudgetCommand::Set {
            limit,
            period,
            unit,
            notify_at,
            enforce,
        }) => {
            let spec = BudgetSpec {
                period: match period {
                    Period::Day => BudgetPeriod::Day,
                    Period::Month => BudgetPeriod::Month,
                },
                limit,
                unit: match unit {
                    Unit::Usd => BudgetUnit::Usd,
                    Unit::GbS => BudgetUnit::GbS,
                },
                notify_at,
                enforce,
            };
            let b = client.set_budget(token, &spec).await?;
            out.print(&b, || format!("Budget set.\n{}", budget_text(&b)));
        }
        Some(BudgetCommand::Rm) => {
            client.remove_budget(token).await?;
            out.print(&serde_json::json!({"deleted": true}), || {
                format!("Removed the budget of token {token}.")
            });
        }
    }
    Ok(())
}

fn report(r: &UsageReport) -> String {
    let cur = &r.prices.currency;
    let mut rows: Vec<[String; 6]> = r.items.iter().map(|l| row(l, cur)).collect();
    let mut total = row(&r.total, cur);
    total[0] = "TOTAL".to_string();
    rows.push(total);
    let header = [
        r.group_by.as_deref().unwrap_or("").to_uppercase(),
        "INVOCATIONS".to_string(),
        "FAILED".to_string(),
        "GB-S".to_string(),
        "COST".to_string(),
        "COLD".to_string(),
    ];
    let mut s = format!("From {} to {}\n", time(r.since_ms), time(r.until_ms));
    s += &crate::output::columns(&header, &rows);
    s += &format!(
        "\nStored now: {} bytes of documents, {} of blobs{} ({:.6} {cur} a month)",
        r.stored.documents_bytes,
        r.stored.blobs_bytes,
        if r.stored.blobs_partial {
            " (first 100,000 blobs)"
        } else {
            ""
        },
        r.stored.cost_per_month
    );
    s
}

fn row(l: &UsageLine, currency: &str) -> [String; 6] {
    [
        if l.key.is_empty() {
            "(no token)".to_string()
        } else {
            l.key.clone()
        },
        l.invocations.to_string(),
        (l.failed + l.timed_out).to_string(),
        format!("{:.3}", l.gb_s),
        format!("{:.6} {currency}", l.cost),
        l.cold_starts.to_string(),
    ]
}

fn prices(p: &Prices) -> String {
    format!(
        "currency                 {}\nper GB-second            {}\nper million invocations  {}\nper GB-month stored      {}",
        p.currency, p.per_gb_s, p.per_million_invocations, p.per_gb_month_stored
    )
}

fn budget_text(b: &BudgetView) -> String {
    let unit = match b.unit {
        BudgetUnit::Usd => "usd",
        BudgetUnit::GbS => "GB-s",
    };
    let period = match b.period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    };
    let mut s = format!(
        "Token {}: {:.6} of {} {unit} this {period} (since {}, resets {})",
        b.token,
        b.spent,
        b.limit,
        time(b.period_start_ms),
        time(b.resets_at_ms)
    );
    if let Some(n) = b.notify_at {
        s += &format!("; notifies at {:.0}%", n * 100.0);
    }
    s += if b.enforce {
        "; enforced"
    } else {
        "; not enforced"
    };
    if b.exceeded {
        s += "; EXCEEDED";
    }
    s
}
