//! The ui phase (issue 14): the dashboard's first load in a real browser.
//!
//! The node gets `records` invocations of a trivial function first (the
//! overview computes its figures from them), then `crates/shoal-bench/ui_load.py`
//! opens `/ui/#/overview` in headless Chromium `runs` times, each with an
//! empty cache, signed in (the token in the tab's sessionStorage), and
//! waits until the overview has rendered (figures and both charts). The
//! figures: the median time from the navigation's start to that render;
//! the bytes of the page and its assets as they crossed the wire
//! (compressed, headers included; Resource Timing's `transferSize`), and
//! apart from them the API calls the overview made; the same load again
//! with the browser's cache warm.
//!
//! Needs Debian's `chromium`, `chromium-driver` and the `selenium` Python
//! package (`scripts/test` installs them); without them the figures are
//! misses saying so.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::functions::ECHO;
use crate::http::invoke_path;
use crate::node::Ctx;
use crate::report::{Figure, Section, one_line};
use crate::stats::{fmt_ms, median, thousands};

const NAME: &str = "bench-ui";

/// Sizes of the ui phase.
pub struct Plan {
    pub records: usize,
    pub runs: usize,
}

pub async fn run(ctx: &Ctx, url: &str, token: &str, plan: &Plan) -> Result<Section> {
    let mut s = Section::new("ui");
    for (what, path) in [
        ("chromium", "/usr/bin/chromium"),
        ("chromedriver", "/usr/bin/chromedriver"),
    ] {
        if !Path::new(path).exists() {
            let why = format!("{what} is not installed at {path} (apt: chromium chromium-driver)");
            for id in ["ui.first_load", "ui.first_bytes", "ui.warm_load"] {
                s.add(Figure::unmeasured(id, &why));
            }
            return Ok(s);
        }
    }
    ECHO.deploy(&ctx.client, &ctx.scratch, NAME, None, &[])
        .await?;
    let mut conn = ctx.target.connect().await?;
    let path = invoke_path(NAME, false);
    for i in 0..plan.records {
        conn.invoke_ok(&path, format!("{{\"i\":{i}}}").as_bytes())
            .await?;
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui_load.py");
    let out = tokio::task::spawn_blocking({
        let (url, token, runs) = (url.to_string(), token.to_string(), plan.runs);
        move || {
            Command::new("python3")
                .arg(&script)
                .args([
                    "--url",
                    &url,
                    "--token",
                    &token,
                    "--runs",
                    &runs.to_string(),
                ])
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .output()
        }
    })
    .await?
    .context("running ui_load.py")?;
    if !out.status.success() {
        bail!(
            "ui_load.py failed ({}): {}",
            out.status,
            one_line(&String::from_utf8_lossy(&out.stderr))
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("ui_load.py's answer")?;
    let field = |runs: &Value, key: &str| -> Vec<f64> {
        runs.as_array()
            .map(|a| a.iter().filter_map(|r| r[key].as_f64()).collect())
            .unwrap_or_default()
    };
    let cold_ms = field(&v["cold"], "ms");
    let warm_ms = field(&v["warm"], "ms");
    if cold_ms.is_empty() || warm_ms.is_empty() {
        bail!("ui_load.py measured nothing: {v}");
    }
    let cold_assets = median(
        &field(&v["cold"], "page")
            .iter()
            .zip(field(&v["cold"], "assets"))
            .map(|(p, a)| p + a)
            .collect::<Vec<_>>(),
    );
    let cold_api = median(&field(&v["cold"], "api"));
    let decoded = median(&field(&v["cold"], "decoded"));
    let warm_assets = median(
        &field(&v["warm"], "page")
            .iter()
            .zip(field(&v["warm"], "assets"))
            .map(|(p, a)| p + a)
            .collect::<Vec<_>>(),
    );
    let files = v["cold"][0]["files"].as_u64().unwrap_or(0);
    let calls = v["cold"][0]["calls"].as_u64().unwrap_or(0);
    s.add(
        Figure::new("ui.first_load", median(&cold_ms))
            .setting(format!("{} runs, empty cache", cold_ms.len()))
            .paren(format!("runs: {}", list(&cold_ms))),
    );
    s.add(
        Figure::new("ui.first_bytes", cold_assets / 1024.0)
            .setting(format!("page + {files} assets"))
            .note(format!(
                "{} KiB uncompressed; the overview's {calls} API calls another {} KiB",
                thousands((decoded / 1024.0).round()),
                thousands((cold_api / 1024.0).round())
            )),
    );
    s.add(
        Figure::new("ui.warm_load", median(&warm_ms))
            .setting("the same tab again, cache warm")
            .note(format!(
                "{:.1} KiB of page and assets transferred",
                warm_assets / 1024.0
            )),
    );
    s.detail(format!(
        "{} invocation records of `{NAME}` on the node; the overview said: {}",
        thousands(plan.records as f64),
        one_line(v["cold"][0]["source"].as_str().unwrap_or("?"))
    ));
    Ok(s)
}

fn list(ms: &[f64]) -> String {
    ms.iter().map(|m| fmt_ms(*m)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let mut s = Section::new("ui");
    s.add(Figure::new("ui.first_load", 247.0).setting("7 runs, empty cache"));
    s.add(Figure::new("ui.first_bytes", 43.6).setting("page + 4 assets"));
    s.add(Figure::new("ui.warm_load", 130.0).setting("the same tab again, cache warm"));
    vec![s]
}
