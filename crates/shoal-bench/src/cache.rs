//! The cache phase (issue 12): the latency of a result-cache hit over HTTP.
//! A function with `[cache] ttl = "60s"` is called once (a miss: it runs),
//! then `n` times with the same event on one keep-alive connection, one
//! call after another; each is timed from the request's write to the whole
//! answer read. Beside it, the same calls of the same code without
//! `[cache]` (warm workers). The node's `/metrics` must count the hits.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cpu::Usage;
use crate::functions::{CACHED, ECHO};
use crate::http::invoke_path;
use crate::node::Ctx;
use crate::report::{Figure, Section};
use crate::stats::{fmt_ms, percentile, thousands};

const CACHED_NAME: &str = "bench-cached";
const UNCACHED_NAME: &str = "bench-uncached";
const EVENT: &str = r#"{"board":"b1","region":[0,0,100,100]}"#;

/// Sizes of the cache phase.
pub struct Plan {
    pub n: usize,
    pub warmup: usize,
}

struct Cache {
    n: usize,
    miss_ms: f64,
    /// Sorted, ms.
    hits: Vec<f64>,
    uncached: Vec<f64>,
    /// Hits and misses the node counted for the cached function.
    counted_hits: u64,
    counted_misses: u64,
    cpu: Usage,
}

pub async fn run(ctx: &Ctx, plan: &Plan) -> Result<Section> {
    CACHED
        .deploy(&ctx.client, &ctx.scratch, CACHED_NAME, None, &[])
        .await?;
    ECHO.deploy(&ctx.client, &ctx.scratch, UNCACHED_NAME, None, &[])
        .await?;
    let mut conn = ctx.target.connect().await?;

    // The uncached reference, warm.
    let path = invoke_path(UNCACHED_NAME, false);
    for _ in 0..plan.warmup {
        conn.invoke_ok(&path, EVENT.as_bytes()).await?;
    }
    let mut uncached = Vec::with_capacity(plan.n);
    for _ in 0..plan.n {
        let t = Instant::now();
        conn.invoke_ok(&path, EVENT.as_bytes()).await?;
        uncached.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let path = invoke_path(CACHED_NAME, false);
    let t = Instant::now();
    let first = conn.invoke_ok(&path, EVENT.as_bytes()).await?.body.to_vec();
    let miss_ms = t.elapsed().as_secs_f64() * 1000.0;
    for _ in 0..plan.warmup {
        conn.invoke_ok(&path, EVENT.as_bytes()).await?;
    }
    let cpu0 = ctx.cpu();
    let mut hits = Vec::with_capacity(plan.n);
    for _ in 0..plan.n {
        let t = Instant::now();
        let r = conn.invoke_ok(&path, EVENT.as_bytes()).await?;
        hits.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.body != first.as_slice() {
            bail!("a hit answered {:?}, the miss {:?}", r.body_text(), first);
        }
    }
    let cpu = cpu0.usage_until(&ctx.cpu());
    let metrics = ctx.client.get_text("/metrics").await?;
    let counted_hits = counter(&metrics, "shoal_cache_hits_total", CACHED_NAME)
        .context("no shoal_cache_hits_total for the cached function in /metrics")?;
    let counted_misses = counter(&metrics, "shoal_cache_misses_total", CACHED_NAME).unwrap_or(0);
    hits.sort_by(f64::total_cmp);
    uncached.sort_by(f64::total_cmp);
    Ok(section(&Cache {
        n: plan.n + plan.warmup,
        miss_ms,
        hits,
        uncached,
        counted_hits,
        counted_misses,
        cpu,
    }))
}

/// The value of `name{function="F"}` in Prometheus text.
fn counter(metrics: &str, name: &str, function: &str) -> Option<u64> {
    let want = format!("function=\"{function}\"");
    metrics.lines().find_map(|l| {
        let (labels, value) = l.strip_prefix(name)?.strip_prefix('{')?.split_once('}')?;
        if !labels.split(',').any(|x| x == want) {
            return None;
        }
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

fn section(c: &Cache) -> Section {
    let mut s = Section::new("cache");
    let p = |v: &[f64], q| fmt_ms(percentile(v, q));
    let counted_ok = c.counted_hits == c.n as u64 && c.counted_misses == 1;
    let counted = format!(
        "the node counted {} hits and {} misses, {} and 1 expected",
        thousands(c.counted_hits as f64),
        thousands(c.counted_misses as f64),
        thousands(c.n as f64)
    );
    s.add(
        Figure::new("cache.hit_p50", percentile(&c.hits, 0.5))
            .setting(format!("{} hits", thousands(c.hits.len() as f64)))
            .paren(format!(
                "the same call without `[cache]`, warm: p50 {}",
                p(&c.uncached, 0.5)
            ))
            .flaw_if(!counted_ok, counted.clone()),
    );
    s.add(
        Figure::new("cache.hit_p99", percentile(&c.hits, 0.99))
            .paren(format!("without `[cache]`: p99 {}", p(&c.uncached, 0.99)))
            .flaw_if(!counted_ok, counted.clone()),
    );
    s.detail(format!(
        "Cache: the first call of the cached function (a miss: it ran, on a new worker) took {}; \
         hits p50 {}, p90 {}, p99 {}, max {}; {counted}. The uncached reference is the same \
         code without `[cache]`, after the same warm-up, on the same connection.",
        fmt_ms(c.miss_ms),
        p(&c.hits, 0.5),
        p(&c.hits, 0.9),
        p(&c.hits, 0.99),
        p(&c.hits, 1.0),
    ));
    s.cpu("cache: hits", &c.cpu);
    s
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    vec![section(&Cache {
        n: 3,
        miss_ms: 40.0,
        hits: vec![0.1, 0.12, 0.3],
        uncached: vec![0.3, 0.35, 0.5],
        counted_hits: 3,
        counted_misses: 1,
        cpu: Usage::default(),
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_of_one_function() {
        let text = "\
# TYPE shoal_cache_hits_total counter
shoal_cache_hits_total{function=\"a\"} 12
shoal_cache_hits_total{function=\"bench-cached\"} 5001
shoal_cache_misses_total{function=\"bench-cached\"} 1
";
        assert_eq!(
            counter(text, "shoal_cache_hits_total", "bench-cached"),
            Some(5001)
        );
        assert_eq!(
            counter(text, "shoal_cache_misses_total", "bench-cached"),
            Some(1)
        );
        assert_eq!(counter(text, "shoal_cache_misses_total", "a"), None);
    }
}
