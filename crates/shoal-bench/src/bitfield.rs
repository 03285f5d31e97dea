//! The bitfield phase (issue 12): single-pixel `set u4` operations per
//! second on a 1000 × 1000 board of 4-bit pixels (a fixed-size blob of
//! 500,000 bytes), each batch all or nothing and durable before its answer
//! (the stores group-commit concurrent batches).
//!
//! (a) Over HTTP: `clients` keep-alive connections (`http.rs`) post batches
//!     of `batch` ops to `POST /v1/blobs/{key}/bitfield` back to back for
//!     `window`; the pixels and colours are random, the bodies built before.
//! (b) From a function: `calls` concurrent sync invocations of a Python
//!     function that applies `batches` batches of `batch` ops each with
//!     `ctx.blob_apply` (a host call per batch); timed from the first call
//!     sent to the last answer.
//!
//! Both on the bench's node (embedded store) and on a node on a
//! `redis-server` (`redis_node.rs`).
//!
//! Every applied batch gives the blob a new version, so the version moves
//! by exactly the number of batches: checked for both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::task::JoinSet;

use crate::cpu::Usage;
use crate::functions::BITFIELD_APPLY;
use crate::node::Ctx;
use crate::redis_node::{RedisNode, Spec};
use crate::report::{Figure, Section};
use crate::stats::{fmt_ms, median, percentile, thousands};

const BOARD: &str = "bench-board";
const FUNCTION: &str = "bench-bitfield";
const PIXELS: u64 = 1_000_000;

/// Sizes of the bitfield phase.
pub struct Plan {
    pub batch: usize,
    pub clients: usize,
    pub window: Duration,
    /// Concurrent invocations of the function, and batches each applies.
    pub calls: usize,
    pub batches: usize,
}

struct Bitfield {
    batch: usize,
    clients: usize,
    http_batches: u64,
    http_s: f64,
    /// Sorted batch latencies, ms.
    http_ms: Vec<f64>,
    http_versions: u64,
    calls: usize,
    fn_batches: u64,
    fn_s: f64,
    /// Seconds each invocation spent in its `ctx.blob_apply` calls.
    fn_inner_s: Vec<f64>,
    fn_versions: u64,
    cpu_http: Usage,
    cpu_fn: Usage,
}

/// Measures on the bench's node (embedded store), then on a node on a
/// `redis-server` (`redis_node.rs`).
pub async fn run(ctx: &Ctx, plan: &Plan, spec: &Spec, dir: &Path) -> Result<Section> {
    let embedded = measure(ctx, plan).await?;
    crate::step("bitfield: the same on the Redis store");
    let redis = match RedisNode::start(spec, &dir.join("bitfield-redis")).await {
        Ok(r) => measure(&r.ctx, plan).await,
        Err(e) => Err(e),
    }
    .map_err(|e| format!("{e:#}"));
    Ok(section(&embedded, &redis))
}

async fn measure(ctx: &Ctx, plan: &Plan) -> Result<Bitfield> {
    let client = &ctx.client;
    client
        .create_fixed_blob(BOARD, PIXELS / 2, false)
        .await
        .context("creating the board")?;
    let path = format!("/v1/blobs/{BOARD}/bitfield");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let bodies: Vec<Vec<u8>> = (0..32).map(|_| body(&mut rng, plan.batch)).collect();

    // (a) HTTP.
    let mut conns = Vec::new();
    for _ in 0..plan.clients {
        let mut c = ctx.target.connect().await?;
        // Warm-up: one batch each.
        let r = c.post(&path, &bodies[0]).await?;
        if r.status != 200 {
            bail!("bitfield answered HTTP {}: {}", r.status, r.body_text());
        }
        conns.push(c);
    }
    let v0 = client.blob_meta(BOARD).await?.version;
    crate::step("bitfield: HTTP batches");
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let until = t + plan.window;
    let mut set: JoinSet<Result<Vec<f64>>> = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (bodies, path) = (bodies.clone(), path.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut k = i * 7;
            while Instant::now() < until {
                let t = Instant::now();
                let r = c.post(&path, &bodies[k % bodies.len()]).await?;
                if r.status != 200 {
                    bail!("bitfield answered HTTP {}: {}", r.status, r.body_text());
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                k += 1;
            }
            Ok(lat)
        });
    }
    let mut http_ms = Vec::new();
    while let Some(r) = set.join_next().await {
        http_ms.extend(r??);
    }
    let http_s = t.elapsed().as_secs_f64();
    let cpu_http = cpu0.usage_until(&ctx.cpu());
    http_ms.sort_by(f64::total_cmp);
    let v1 = client.blob_meta(BOARD).await?.version;

    // (b) From a function.
    let f = BITFIELD_APPLY
        .deploy(client, &ctx.scratch, FUNCTION, None, &[])
        .await?;
    if (f.concurrency as usize) < plan.calls {
        bail!(
            "{FUNCTION} runs {} at once, fewer than {} calls",
            f.concurrency,
            plan.calls
        );
    }
    let event = |seed: usize, batches: usize| {
        json!({"key": BOARD, "batch": plan.batch, "batches": batches, "pixels": PIXELS,
               "seed": seed})
        .to_string()
    };
    // Warm-up: start the function's workers (not measured).
    let mut warm = JoinSet::new();
    for i in 0..plan.calls {
        let (c, e) = (client.clone(), event(1000 + i, 1));
        warm.spawn(async move { c.invoke(FUNCTION, &e).await });
    }
    while let Some(r) = warm.join_next().await {
        r??.result
            .map_err(|e| anyhow!("{FUNCTION} failed: {e:?}"))?;
    }
    let v2 = client.blob_meta(BOARD).await?.version;
    crate::step("bitfield: from a function");
    let cpu0 = ctx.cpu();
    let t = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..plan.calls {
        let (c, e) = (client.clone(), event(i, plan.batches));
        set.spawn(async move { c.invoke(FUNCTION, &e).await });
    }
    let mut fn_inner_s = Vec::new();
    let mut fn_ops = 0;
    while let Some(r) = set.join_next().await {
        let out = r??
            .result
            .map_err(|e| anyhow!("{FUNCTION} failed: {e:?}"))?;
        fn_ops += out["ops"].as_u64().context("no ops in the result")?;
        fn_inner_s.push(out["s"].as_f64().context("no s in the result")?);
    }
    let fn_s = t.elapsed().as_secs_f64();
    let cpu_fn = cpu0.usage_until(&ctx.cpu());
    let v3 = client.blob_meta(BOARD).await?.version;
    let fn_batches = (plan.calls * plan.batches) as u64;
    if fn_ops != fn_batches * plan.batch as u64 {
        bail!(
            "the function applied {fn_ops} ops, not {}",
            fn_batches * plan.batch as u64
        );
    }
    let _ = client.delete_blob(BOARD).await;
    Ok(Bitfield {
        batch: plan.batch,
        clients: plan.clients,
        http_batches: http_ms.len() as u64,
        http_s,
        http_ms,
        http_versions: v1 - v0,
        calls: plan.calls,
        fn_batches,
        fn_s,
        fn_inner_s,
        fn_versions: v3 - v2,
        cpu_http,
        cpu_fn,
    })
}

/// A JSON body of `n` single-pixel `set u4` ops at random pixels.
fn body(rng: &mut u64, n: usize) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let ops: Vec<String> = (0..n)
        .map(|_| {
            let px = next() % PIXELS;
            let colour = next() % 16;
            format!(r##"{{"op":"set","type":"u4","offset":"#{px}","value":{colour}}}"##)
        })
        .collect();
    format!(r#"{{"ops":[{}]}}"#, ops.join(",")).into_bytes()
}

fn section(embedded: &Bitfield, redis: &Result<Bitfield, String>) -> Section {
    let mut s = Section::new("bitfield");
    let [http, func] = figures(
        embedded,
        "embedded store",
        ["bitfield.http", "bitfield.function"],
    );
    s.add(http);
    s.add(func);
    let ids = ["bitfield.http_redis", "bitfield.function_redis"];
    match redis {
        Ok(r) => {
            let [http, func] = figures(r, "Redis store (AOF, `appendfsync everysec`)", ids);
            s.add(http);
            s.add(func);
        }
        Err(e) => {
            for id in ids {
                s.add(Figure::unmeasured(id, e));
            }
        }
    }
    let versions = |b: &Bitfield| {
        format!(
            "{} over HTTP, {} from the function",
            thousands(b.http_versions as f64),
            thousands(b.fn_versions as f64)
        )
    };
    s.detail(format!(
        "Bitfield: a fixed-size blob of 500,000 bytes (1000 × 1000 pixels of 4 bits); every op \
         is `{{\"op\": \"set\", \"type\": \"u4\", \"offset\": \"#N\", \"value\": C}}` at a random \
         pixel, a batch of {} such ops is one request (HTTP) or one `ctx.blob_apply` host call \
         (function), applied all or nothing and committed before its answer (embedded: a redb \
         commit, group-committed with the batches beside it; Redis: one Lua script per batch, \
         in the AOF, fsynced every second); the blob's version moved by exactly the number of \
         batches (embedded: {}{}).",
        thousands(embedded.batch as f64),
        versions(embedded),
        match redis {
            Ok(r) => format!("; Redis: {}", versions(r)),
            Err(_) => String::new(),
        }
    ));
    s.cpu("bitfield: HTTP batches, embedded", &embedded.cpu_http);
    s.cpu("bitfield: from a function, embedded", &embedded.cpu_fn);
    if let Ok(r) = redis {
        s.cpu("bitfield: HTTP batches, Redis (in Other)", &r.cpu_http);
        s.cpu("bitfield: from a function, Redis (in Other)", &r.cpu_fn);
    }
    s
}

/// The HTTP and the function figure of one store.
fn figures(b: &Bitfield, store: &str, ids: [&'static str; 2]) -> [Figure; 2] {
    let http_ops = b.http_batches as f64 * b.batch as f64;
    let http = Figure::new(ids[0], http_ops / b.http_s)
        .setting(format!(
            "batches of {}, {} connections, {store}",
            thousands(b.batch as f64),
            b.clients
        ))
        .paren(format!(
            "{} batches in {:.1} s; a batch p50 {}, p99 {}",
            thousands(b.http_batches as f64),
            b.http_s,
            fmt_ms(percentile(&b.http_ms, 0.5)),
            fmt_ms(percentile(&b.http_ms, 0.99))
        ))
        .flaw_if(
            b.http_versions != b.http_batches,
            format!(
                "the blob's version moved by {}, not by the {} batches",
                b.http_versions, b.http_batches
            ),
        );
    let fn_ops = b.fn_batches as f64 * b.batch as f64;
    let func = Figure::new(ids[1], fn_ops / b.fn_s)
        .setting(format!(
            "{} invocations × {} batches of {}, {store}",
            b.calls,
            b.fn_batches / b.calls.max(1) as u64,
            thousands(b.batch as f64)
        ))
        .paren(format!(
            "{} ops in {:.1} s from the first call sent to the last answer; inside the \
             handlers the `blob_apply` calls took {:.1} s (median)",
            thousands(fn_ops),
            b.fn_s,
            median(&b.fn_inner_s)
        ))
        .flaw_if(
            b.fn_versions != b.fn_batches,
            format!(
                "the blob's version moved by {}, not by the {} batches",
                b.fn_versions, b.fn_batches
            ),
        );
    [http, func]
}

/// The section from fixed measurements (for the report's tests).
#[cfg(test)]
pub fn examples() -> Vec<Section> {
    let b = |fn_versions| Bitfield {
        batch: 1000,
        clients: 4,
        http_batches: 600,
        http_s: 5.0,
        http_ms: vec![20.0, 30.0],
        http_versions: 600,
        calls: 4,
        fn_batches: 200,
        fn_s: 10.0,
        fn_inner_s: vec![9.0],
        fn_versions,
        cpu_http: Usage::default(),
        cpu_fn: Usage::default(),
    };
    vec![section(&b(199), &Ok(b(200)))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_batches_of_single_pixel_sets() {
        let mut rng = 7;
        let b: serde_json::Value = serde_json::from_slice(&body(&mut rng, 50)).unwrap();
        let ops = b["ops"].as_array().unwrap();
        assert_eq!(ops.len(), 50);
        for op in ops {
            assert_eq!(op["op"], "set");
            assert_eq!(op["type"], "u4");
            let px: u64 = op["offset"].as_str().unwrap()[1..].parse().unwrap();
            assert!(px < PIXELS);
            assert!(op["value"].as_u64().unwrap() < 16);
        }
    }
}
