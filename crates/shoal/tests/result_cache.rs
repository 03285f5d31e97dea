//! End to end: a function with `[cache]` runs once for identical events
//! (the same canonical JSON); the hit is an invocation of its own, marked
//! `cache_hit`, counted in `/metrics`; failures are not cached; a deploy
//! empties the cache. The function counts its runs in a temporary file.

mod common;

use common::{TestNode, deploy};
use serde_json::json;

const MAIN_PY: &str = r#"
import os

def handler(event, ctx):
    with open(os.environ["RUNS"], "a") as f:
        f.write("x")
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"got": event}
"#;

fn manifest(runs: &std::path::Path, ttl: &str) -> String {
    format!(
        "name = \"cached\"\n[env]\nRUNS = \"{}\"\n[cache]\nttl = \"{ttl}\"\nmax_mb = 8\n",
        runs.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_events_run_once() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let runs_file = tmp.path().canonicalize().unwrap().join("runs");
    let runs = || {
        std::fs::read_to_string(&runs_file)
            .map(|s| s.len())
            .unwrap_or(0)
    };
    deploy(&c, &manifest(&runs_file, "60s"), MAIN_PY).await;

    let first = c.invoke("cached", r#"{"a": 1, "b": 2}"#).await.unwrap();
    assert_eq!(first.result.unwrap(), json!({"got": {"a": 1, "b": 2}}));
    assert_eq!(runs(), 1);
    let second = c.invoke("cached", r#"{"b":2,"a":1}"#).await.unwrap();
    assert_eq!(second.result.unwrap(), json!({"got": {"a": 1, "b": 2}}));
    assert_eq!(runs(), 1, "answered from the cache");
    assert_ne!(first.id, second.id);
    let hit = c.invocation(&second.id).await.unwrap();
    assert!(hit.cache_hit, "{hit:?}");
    assert_eq!(hit.status, "succeeded");
    assert!(!c.invocation(&first.id).await.unwrap().cache_hit);

    let out = node.cli(&["invocations", "show", &second.id]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cache:     hit"), "{text}");

    // Another event runs; a failure is never cached.
    c.invoke("cached", r#"{"a": 2}"#).await.unwrap();
    assert_eq!(runs(), 2);
    for n in 3..=4 {
        let failed = c.invoke("cached", r#"{"fail": true}"#).await.unwrap();
        assert!(failed.result.is_err());
        assert_eq!(runs(), n);
    }

    let metrics = c.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"shoal_cache_hits_total{function="cached"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"shoal_cache_misses_total{function="cached"} 4"#),
        "{metrics}"
    );

    // A new version starts with an empty cache.
    deploy(&c, &manifest(&runs_file, "2m"), MAIN_PY).await;
    c.invoke("cached", r#"{"a": 1, "b": 2}"#).await.unwrap();
    assert_eq!(runs(), 5);
    c.invoke("cached", r#"{"a": 1, "b": 2}"#).await.unwrap();
    assert_eq!(runs(), 5);
}
