//! End to end: deploy, invoke sync and async, logs, versions, removal — via
//! the CLI and the HTTP client against a real `shoal serve`.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, repo_root, wait_final};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn readme_tour_through_the_cli() {
    let node = TestNode::start();
    let hello = repo_root().join("examples/hello");

    let out = node.cli(&["deploy", hello.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Deployed hello version 1"));

    let out = node.cli(&["invoke", "hello", r#"{"name": "Ada"}"#]);
    assert!(
        out.status.success(),
        "invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"hello": "Ada"}));

    // From stdin, with --json to get the id.
    let out = node.cli_with_stdin(
        &["--json", "invoke", "hello", "-"],
        Some(r#"{"name": "Bo"}"#),
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["output"], json!({"hello": "Bo"}));
    let id = v["id"].as_str().unwrap().to_string();

    let out = node.cli(&["logs", &id]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello from invocation {id}\n")
    );

    let out = node.cli(&["invoke", "hello", r#"{"name": "Cy"}"#, "--async"]);
    assert!(out.status.success());
    let async_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let inv = wait_final(&node.client(), &async_id, Duration::from_secs(30)).await;
    assert_eq!(inv.status, "succeeded");
    assert_eq!(inv.output, Some(json!({"hello": "Cy"})));

    let out = node.cli(&["invocations", "show", &async_id]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status:    succeeded"), "{text}");
    assert!(text.contains("mode:      async"), "{text}");

    let out = node.cli(&["functions"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    // Failures of the CLI itself: non-zero exit and a message.
    let out = node.cli(&["invoke", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("function `nope` not found"));
    let out = node.cli(&["invoke", "hello", "{not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    // Removal asks first; without a terminal it needs --force.
    let out = node.cli(&["functions", "rm", "hello"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = node.cli(&["functions", "rm", "hello", "--force"]);
    assert!(out.status.success());
    let out = node.cli(&["invoke", "hello"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_and_async_invocations_are_recorded() {
    let node = TestNode::start();
    let c = node.client();
    let f = deploy(
        &c,
        "name = \"echo\"\nmemory_mb = 512",
        "import sys\ndef handler(event, ctx):\n    print('out', event)\n    print('err', file=sys.stderr)\n    return {'event': event, 'id': ctx.invocation_id, 'attempt': ctx.attempt, 'fn': ctx.function_name}\n",
    )
    .await;
    assert_eq!((f.name.as_str(), f.version, f.memory_mb), ("echo", 1, 512));

    let done = c
        .invoke("echo", r#"[1, "two", {"three": 3.5}]"#)
        .await
        .unwrap();
    let out = done.result.unwrap();
    assert_eq!(out["event"], json!([1, "two", {"three": 3.5}]));
    assert_eq!(out["id"], json!(done.id));
    assert_eq!(out["fn"], json!("echo"));

    // The record is readable right away and says what happened; the first
    // call after a deploy was a cold start, the next one is warm.
    let inv = c.invocation(&done.id).await.unwrap();
    assert!(inv.cold_start);
    let warm = c.invoke("echo", "{}").await.unwrap();
    assert!(!c.invocation(&warm.id).await.unwrap().cold_start);
    assert_eq!(inv.status, "succeeded");
    assert_eq!(inv.mode, "sync");
    assert_eq!(inv.attempts, 1);
    assert_eq!(inv.input, json!([1, "two", {"three": 3.5}]));
    assert!(inv.duration_ms.unwrap() > 0.0);
    assert!(inv.billed_gb_seconds > 0.0);
    // 512 MB for the run's duration.
    let expect = 0.5 * inv.duration_ms.unwrap() / 1000.0;
    assert!(
        (inv.billed_gb_seconds - expect).abs() < 1e-9,
        "{} vs {expect}",
        inv.billed_gb_seconds
    );
    let logs = c.logs(&done.id).await.unwrap();
    assert!(logs.contains("out [1, 'two', {'three': 3.5}]"), "{logs}");
    assert!(logs.contains("err\n"), "{logs}");

    // Many async invocations, all finished with their own output.
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            c.invoke_async("echo", &format!("{{\"n\": {i}}}"))
                .await
                .unwrap(),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let inv = wait_final(&c, id, Duration::from_secs(60)).await;
        assert_eq!(inv.status, "succeeded");
        assert_eq!(inv.mode, "async");
        assert_eq!(inv.output.as_ref().unwrap()["event"], json!({"n": i}));
        assert_eq!(inv.output.as_ref().unwrap()["attempt"], json!(1));
    }

    // Redeploying makes version 2; the list shows the latest.
    let f2 = deploy(
        &c,
        "name = \"echo\"",
        "def handler(e, ctx):\n    return 'v2'\n",
    )
    .await;
    assert_eq!(f2.version, 2);
    assert_eq!(
        c.invoke("echo", "{}").await.unwrap().result.unwrap(),
        json!("v2")
    );
    let list = c.functions().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].version, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn async_retries_with_backoff_until_success() {
    let node = TestNode::start();
    let c = node.client();
    // Fails on the first two attempts, succeeds on the third.
    deploy(
        &c,
        "name = \"flaky\"\nretries = 5\nretry_delay = \"100ms\"",
        "def handler(event, ctx):\n    if ctx.attempt < 3:\n        raise RuntimeError(f'attempt {ctx.attempt} fails')\n    return ctx.attempt\n",
    )
    .await;
    let id = c.invoke_async("flaky", "{}").await.unwrap();
    let inv = wait_final(&c, &id, Duration::from_secs(30)).await;
    assert_eq!(inv.status, "succeeded");
    assert_eq!(inv.attempts, 3);
    assert_eq!(inv.output, Some(json!(3)));

    // Out of retries: failed, with the last error.
    deploy(
        &c,
        "name = \"broken\"\nretries = 2\nretry_delay = \"100ms\"",
        "def handler(event, ctx):\n    raise ValueError('always')\n",
    )
    .await;
    let id = c.invoke_async("broken", "{}").await.unwrap();
    let inv = wait_final(&c, &id, Duration::from_secs(30)).await;
    assert_eq!(inv.status, "failed");
    assert_eq!(inv.attempts, 3);
    assert_eq!(inv.max_attempts, 3);
    let err = inv.error.unwrap();
    assert_eq!(err.kind, "raised");
    assert_eq!(err.exception.as_deref(), Some("ValueError"));
    assert!(
        err.traceback
            .unwrap()
            .contains("raise ValueError('always')")
    );
    // Billing adds up over attempts.
    assert!(inv.billed_gb_seconds > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_and_openapi() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"m\"", "def handler(e, ctx):\n    return 1\n").await;
    c.invoke("m", "{}").await.unwrap();
    // The default body limit is 6 MiB.
    let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024 + 1));
    let (status, body) = c
        .raw(
            "POST",
            "/v1/functions/m/invoke",
            Some("application/json"),
            big.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    let just_under = format!("\"{}\"", "x".repeat(6 * 1024 * 1024 - 16));
    let (status, _) = c
        .raw(
            "POST",
            "/v1/functions/m/invoke",
            Some("application/json"),
            just_under.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metrics = c.get_text("/metrics").await.unwrap();
    assert!(
        metrics
            .contains(r#"shoal_invocations_total{function="m",mode="sync",outcome="succeeded"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_invocation_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_pool_workers"), "{metrics}");
    assert!(metrics.contains("shoal_queue_depth"), "{metrics}");
}
