//! Shared rate limiters (`limiter = "v"`, N per second with burst B): the
//! calls started in any one-second window never exceed N + B, the rate
//! over a long window approaches N, and synchronous calls over the limit
//! wait their turn instead of failing.

mod common;

use std::time::Duration;

use common::{Node, Script, ms, peak_in_window, secs};
use shoal_types::{InvocationStatus, Outcome};

#[tokio::test(start_paused = true)]
async fn a_shared_limiter_holds_its_rate_across_two_functions() {
    let node = Node::start().await;
    node.engine.put_limiter("v", 10.0, 3).await.unwrap();
    for f in ["a", "b"] {
        node.deploy(&format!(
            "name = \"{f}\"\nlimiter = \"v\"\nconcurrency = 20"
        ))
        .await;
        // Calls overlap: the limit is on starts, not on running calls.
        node.fake.script(f, Script::echo().sleep(ms(350)));
    }
    let per_function = 150;
    let mut ids = Vec::new();
    for i in 0..per_function {
        for f in ["a", "b"] {
            let event = serde_json::json!({ "i": i }).to_string();
            ids.push(node.engine.invoke_async(f, event).await.unwrap());
        }
    }
    node.ended("a", per_function).await;
    node.ended("b", per_function).await;
    for id in &ids {
        assert_eq!(
            node.engine.invocation(id).await.unwrap().status,
            InvocationStatus::Succeeded
        );
    }

    let calls = node.fake.calls();
    let mut starts = node.starts(&calls);
    starts.sort();
    let n = starts.len();
    assert_eq!(n, 2 * per_function);
    let peak = peak_in_window(&starts, secs(1));
    assert!(peak <= 10 + 3, "{peak} calls started within one second");
    // The burst goes at once; then one call every 100 ms: 300 calls take
    // (300 - 3) / 10 s, a rate of 10 per second to within 1%.
    assert_eq!(starts[..3], [Duration::ZERO; 3]);
    let span = (starts[n - 1] - starts[0]).as_secs_f64();
    let rate = (n - 3) as f64 / span;
    assert!(
        (rate - 10.0).abs() <= 0.1,
        "rate {rate:.3}/s over {span:.3}s"
    );
    // Exactly GCRA's schedule: the burst, then a token every 100 ms.
    let schedule: Vec<Duration> = (0..n as u64)
        .map(|k| ms(100 * k.saturating_sub(2)))
        .collect();
    assert_eq!(starts, schedule);
    // Both functions took their turns.
    assert!(node.fake.peak_of(|c| c.function == "a") >= 2);
    assert!(node.fake.peak_of(|c| c.function == "b") >= 2);
}

#[tokio::test(start_paused = true)]
async fn synchronous_calls_over_the_limit_wait_their_turn() {
    let node = Node::start().await;
    node.engine.put_limiter("s", 5.0, 1).await.unwrap();
    node.deploy("name = \"limited\"\nlimiter = \"s\"\nconcurrency = 10")
        .await;
    let calls = (0..10).map(|i| node.engine.invoke("limited", format!("{i}")));
    let done = futures_util::future::join_all(calls).await;
    for (i, d) in done.into_iter().enumerate() {
        let d = d.unwrap();
        assert_eq!(d.outcome, Outcome::Succeeded(i.to_string()));
    }
    let mut starts = node.starts(&node.fake.calls_of("limited"));
    starts.sort();
    let expected: Vec<Duration> = (0..10).map(|i| ms(200 * i)).collect();
    assert_eq!(starts, expected);
}

#[tokio::test(start_paused = true)]
async fn a_limiter_changed_at_run_time_takes_effect_at_once() {
    let node = Node::start().await;
    node.engine.put_limiter("v", 1.0, 1).await.unwrap();
    node.deploy("name = \"limited\"\nlimiter = \"v\"\nconcurrency = 10")
        .await;
    for i in 0..40 {
        node.engine
            .invoke_async("limited", i.to_string())
            .await
            .unwrap();
    }
    node.ended("limited", 3).await;
    // 1 per second so far; now 20 per second.
    let changed_at = tokio::time::Instant::now();
    node.engine.put_limiter("v", 20.0, 1).await.unwrap();
    let calls = node.ended("limited", 40).await;
    let after: Vec<Duration> = calls
        .iter()
        .filter(|c| c.started > changed_at)
        .map(|c| c.started - changed_at)
        .collect();
    // The limiter keeps its position: the token due a second after the
    // third call comes first, then one every 50 ms (at 1 per second the
    // 37 calls left would take 37 s).
    let expected: Vec<Duration> = (0..37).map(|k| ms(1000 + 50 * k)).collect();
    assert_eq!(after, expected);
    assert!(peak_in_window(&node.starts(&calls), secs(1)) <= 20 + 1);
}
