//! End to end: `kill -9` during an async workload loses nothing. Every
//! accepted invocation reaches a final state after restart, and deployed
//! functions survive.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, wait_final};

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_workload_then_every_accepted_invocation_finishes() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"work\"\nconcurrency = 2",
        "import time\ndef handler(e, ctx):\n    time.sleep(0.02)\n    return e['n'] * 2\n",
    )
    .await;
    deploy(
        &c,
        "name = \"other\"",
        "def handler(e, ctx):\n    return 'still here'\n",
    )
    .await;

    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push((
            n,
            c.invoke_async("work", &format!("{{\"n\": {n}}}"))
                .await
                .unwrap(),
        ));
    }
    // Some have run, most are queued or running: kill the node hard.
    let first = wait_final(&c, &ids[5].1, Duration::from_secs(30)).await;
    assert_eq!(first.status, "succeeded");
    node.kill9_and_restart();

    let c = node.client();
    let names: Vec<_> = c
        .functions()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, vec!["other", "work"]);
    for (n, id) in &ids {
        let inv = wait_final(&c, id, Duration::from_secs(60)).await;
        assert_eq!(inv.status, "succeeded", "{id}");
        assert_eq!(inv.output, Some(serde_json::json!(n * 2)));
    }
    assert_eq!(
        c.invoke("other", "{}").await.unwrap().result.unwrap(),
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_finishes_in_flight_work() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"slow\"",
        "import time\ndef handler(e, ctx):\n    time.sleep(0.5)\n    return 'done'\n",
    )
    .await;
    let call = {
        let c = c.clone();
        #[allow(clippy::disallowed_methods)] // the test awaits this handle
        tokio::spawn(async move { c.invoke("slow", "{}").await })
    };
    // Let the call reach the worker, then ask the node to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.get_text("/metrics").await.unwrap();
        if m.lines().any(|l| {
            l.starts_with("shoal_pool_workers") && l.contains("state=\"busy\"") && l.ends_with(" 1")
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = node.terminate();
        (s, node)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let done = call.await.unwrap().unwrap();
    assert_eq!(done.result.unwrap(), "done");
}
