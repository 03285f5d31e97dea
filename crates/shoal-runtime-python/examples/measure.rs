//! Prints (never asserts) the Python runtime's main costs: cold start, warm
//! round trip, throughput, host calls (one small call; 100,000 documents
//! written in one call), and adding a worker to a warm deployment whose module imports
//! something heavy.
//!
//! `cargo run --release -p shoal-runtime-python --example measure [python]`

// Every task spawned here is awaited before the code that spawned it ends.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use shoal_runtime::{Deployment, Host, HostCall, HostError, Request, Runtime};
use shoal_runtime_python::{Options, PythonRuntime};
use shoal_types::{Limits, Outcome};

const HELLO: &str = "def handler(event, ctx):\n    return {'hello': event}\n";

const HEAVY: &str = r#"
import asyncio, decimal, email.mime.multipart, email.parser, http.client, json
import logging.handlers, sqlite3, unittest, urllib.request, xml.etree.ElementTree
import time

def handler(event, ctx):
    time.sleep(event)
    return decimal.Decimal("1.5").as_integer_ratio()
"#;

const HOST_CALLS: &str = r#"
import time

EVENTS = [{"i": i, "user": "user-%d" % i} for i in range(100000)]

def handler(event, ctx):
    t = time.perf_counter()
    if event == "put_docs":
        ids = ctx.put_docs("work", EVENTS)
        assert len(ids) == len(EVENTS)
    else:
        for _ in range(event):
            ctx.job("ping")
    return time.perf_counter() - t
"#;

/// Answers `job` with `null` and `put_docs` with 100,000 ids made in advance
/// (what an engine would answer; its own work is not measured here).
struct Answers {
    ids: Arc<String>,
}

impl Host for Answers {
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<String, HostError>> {
        let answer = match call {
            HostCall::PutDocs(_) => self.ids.as_str().to_owned(),
            _ => "null".to_owned(),
        };
        Box::pin(async move { Ok(answer) })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(dir.path().join("work"));
    if let Some(python) = std::env::args().nth(1) {
        options.python = python.into();
    }
    println!("python: {}", options.python.display());
    let rt = PythonRuntime::new(options).unwrap();

    // The first start also resolves the interpreter (once per node).
    let warmup = deploy(&dir, "warmup", HELLO, 1);
    let t = Instant::now();
    check(call(&rt, &warmup, "1").await);
    println!(
        "first cold start (incl. resolving python): {:.1} ms",
        ms(t.elapsed())
    );

    let hello = deploy(&dir, "hello", HELLO, 4);
    let mut colds = Vec::new();
    for i in 0..5 {
        let key = format!("hello-cold-{i}");
        let d = deploy(&dir, &key, HELLO, 1);
        let t = Instant::now();
        let r = call(&rt, &d, "1").await;
        assert!(r.cold_start);
        check(r);
        colds.push(t.elapsed());
        rt.retire(&key);
    }
    colds.sort();
    println!(
        "cold start (template + fork + call): median {:.1} ms",
        ms(colds[2])
    );

    check(call(&rt, &hello, "1").await);
    let mut times = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = Instant::now();
        check(call(&rt, &hello, r#"{"name":"world"}"#).await);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "warm round trip (sequential, 5000 calls): p50 {:.0} µs, p99 {:.0} µs",
        us(times[times.len() / 2]),
        us(times[times.len() * 99 / 100])
    );

    for tasks in [2, 4, 8] {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let rt = rt.clone();
            let hello = hello.clone();
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    check(call(&rt, &hello, "1").await);
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        println!(
            "throughput, {tasks} concurrent callers, concurrency 4: {:.0} invocations/s",
            total as f64 / 2.0
        );
    }

    let ids: Vec<String> = (0..100_000)
        .map(|i| format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"))
        .collect();
    let host: Arc<dyn Host> = Arc::new(Answers {
        ids: Arc::new(serde_json::json!({ "ids": ids }).to_string()),
    });
    let calling = deploy(&dir, "host-calls", HOST_CALLS, 1);
    check(call_with(&rt, &calling, "0", Some(host.clone())).await);
    let mut one = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        check(call_with(&rt, &calling, "1", Some(host.clone())).await);
        one.push(t.elapsed());
    }
    one.sort();
    let r = call_with(&rt, &calling, "2000", Some(host.clone())).await;
    let per_call = seconds(&r.outcome) / 2000.0;
    check(r);
    println!(
        "invocation making one host call: p50 {:.0} µs, p99 {:.0} µs; 2000 calls in a loop: {:.0} µs per call",
        us(one[one.len() / 2]),
        us(one[one.len() * 99 / 100]),
        per_call * 1e6
    );
    let mut maps = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let r = call_with(&rt, &calling, "\"put_docs\"", Some(host.clone())).await;
        let inside = seconds(&r.outcome);
        check(r);
        maps.push((t.elapsed(), inside));
    }
    maps.sort_by_key(|m| m.0);
    println!(
        "ctx.put_docs of 100,000 documents (5.0 MB out, 3.9 MB of ids back): median {:.1} ms in the handler, {:.1} ms per invocation",
        maps[3].1 * 1e3,
        ms(maps[3].0)
    );

    let heavy = deploy(&dir, "heavy", HEAVY, 16);
    let t = Instant::now();
    check(call(&rt, &heavy, "0").await);
    println!("cold start, heavy imports: {:.1} ms", ms(t.elapsed()));
    let mut forks = Vec::new();
    for round in 2..=9 {
        // `round - 1` workers are idle: exactly one call of the round forks.
        let mut handles = Vec::new();
        for _ in 0..round {
            let rt = rt.clone();
            let heavy = heavy.clone();
            handles.push(tokio::spawn(async move { call(&rt, &heavy, "0.2").await }));
        }
        let mut worst = Duration::ZERO;
        for h in handles {
            let r = h.await.unwrap();
            worst = worst.max(r.queued);
            check(r);
        }
        forks.push(worst);
    }
    forks.sort();
    println!(
        "new worker for a warm heavy deployment (fork): median {:.2} ms, max {:.2} ms",
        ms(forks[forks.len() / 2]),
        ms(forks[forks.len() - 1])
    );
    rt.shutdown();
}

fn deploy(dir: &tempfile::TempDir, key: &str, code: &str, concurrency: u32) -> Deployment {
    let code_dir = dir.path().join(key);
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("main.py"), code).unwrap();
    Deployment {
        key: key.into(),
        code_dir,
        handler: "main:handler".into(),
        env_dir: None,
        limits: Limits {
            timeout: Duration::from_secs(30),
            memory_mb: 256,
            concurrency,
        },
        network: shoal_types::Network::Host,
        code_digest: None,
        env: Default::default(),
        max_invocations_per_worker: None,
    }
}

async fn call(rt: &Arc<PythonRuntime>, d: &Deployment, event: &str) -> shoal_runtime::Response {
    call_with(rt, d, event, None).await
}

async fn call_with(
    rt: &Arc<PythonRuntime>,
    d: &Deployment,
    event: &str,
    host: Option<Arc<dyn Host>>,
) -> shoal_runtime::Response {
    let request = Request {
        invocation_id: "bench".into(),
        function: d.key.clone(),
        version: 1,
        attempt: 1,
        event: event.into(),
        host,

        gate: None,
    };
    rt.invoke(d, request).await.unwrap()
}

/// The seconds a handler measured and returned.
fn seconds(outcome: &Outcome) -> f64 {
    match outcome {
        Outcome::Succeeded(json) => json.parse().unwrap_or(f64::NAN),
        Outcome::Failed(_) => f64::NAN,
    }
}

fn check(r: shoal_runtime::Response) {
    if let Outcome::Failed(f) = r.outcome {
        panic!("{f:?}: {}", String::from_utf8_lossy(&r.logs));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
