//! The fake runtime itself: scripts, latches, timeouts, gates, worker
//! limits and shutdown behave as the engine tests rely on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use shoal_runtime::fake::{FakeRuntime, Latch, Script};
use shoal_runtime::{Deployment, Error, Gate, Request, Runtime};
use shoal_types::{FailureKind, InvocationStatus, Limits, Outcome};

fn deployment(name: &str) -> Deployment {
    Deployment {
        key: format!("{name}@1"),
        code_dir: PathBuf::from("/nowhere"),
        handler: "main:handler".into(),
        env_dir: None,
        limits: Limits {
            timeout: Duration::from_secs(10),
            memory_mb: 128,
            concurrency: 2,
        },
        network: shoal_types::Network::Host,
        code_digest: None,
        env: Default::default(),
        max_invocations_per_worker: None,
    }
}

fn request(name: &str, event: &str) -> Request {
    Request {
        invocation_id: format!("id-{event}"),
        function: name.into(),
        version: 1,
        attempt: 1,
        event: event.into(),
        host: None,
        gate: None,
    }
}

#[tokio::test(start_paused = true)]
async fn scripts_run_in_turn_and_calls_are_recorded() {
    let rt = FakeRuntime::new();
    let d = deployment("f");
    rt.script_seq(
        "f",
        [
            Script::fail(FailureKind::Crashed),
            Script::ok(serde_json::json!({"a": 1}))
                .log("hi")
                .sleep(Duration::from_secs(2)),
        ],
    );
    let r = rt.invoke(&d, request("f", "1")).await.unwrap();
    assert_eq!(r.outcome.status(), InvocationStatus::Failed);
    assert!(r.cold_start);
    let t0 = Instant::now();
    for _ in 0..2 {
        let r = rt.invoke(&d, request("f", "2")).await.unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded(r#"{"a":1}"#.into()));
        assert_eq!(r.logs, b"hi");
        assert_eq!(r.duration, Duration::from_secs(2));
        assert!(!r.cold_start);
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(4));
    let echo = rt.invoke(&d, request("g", "[7]")).await.unwrap();
    assert_eq!(echo.outcome, Outcome::Succeeded("[7]".into()));
    let calls = rt.calls_of("f");
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[1].ended.unwrap() - calls[1].started,
        Duration::from_secs(2)
    );
    assert_eq!(rt.peak("f"), 1);
}

#[tokio::test(start_paused = true)]
async fn latches_hold_calls_and_timeouts_end_them() {
    let rt = FakeRuntime::new();
    let d = deployment("f");
    let latch = Latch::new();
    rt.script("f", Script::echo().wait(&latch));
    let calls: Vec<_> = (0..3)
        .map(|i| rt.invoke(&d, request("f", &i.to_string())))
        .collect();
    let all = futures_util::future::join_all(calls);
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => panic!("passed a closed latch"),
        _ = rt.wait_started("f", 3) => {}
    }
    assert_eq!((rt.running("f"), rt.peak("f")), (3, 3));
    latch.release(1);
    tokio::select! {
        _ = &mut all => panic!("all passed one pass"),
        _ = rt.wait_ended("f", 1) => {}
    }
    assert_eq!(rt.running("f"), 2);
    // Past the timeout of 10 s, the two left end as timed out.
    let out = all.await;
    let statuses: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().unwrap().outcome.status())
        .collect();
    use InvocationStatus::*;
    assert_eq!(statuses.iter().filter(|s| **s == TimedOut).count(), 2);
    assert_eq!(statuses.iter().filter(|s| **s == Succeeded).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn worker_limits_gates_and_shutdown() {
    struct Slow;
    impl Gate for Slow {
        fn wait(&self) -> BoxFuture<'static, ()> {
            Box::pin(tokio::time::sleep(Duration::from_secs(1)))
        }
    }
    let rt = FakeRuntime::new();
    rt.limit_workers();
    let d = deployment("f");
    rt.script("f", Script::echo().sleep(Duration::from_secs(1)));
    let t0 = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let mut r = request("f", &i.to_string());
            r.gate = Some(Arc::new(Slow));
            rt.invoke(&d, r)
        })
        .collect();
    for r in futures_util::future::join_all(calls).await {
        let r = r.unwrap();
        assert_eq!(r.duration, Duration::from_secs(1));
    }
    // Two at a time, each a second at the gate and a second running.
    assert_eq!(rt.peak("f"), 2);
    assert_eq!(t0.elapsed(), Duration::from_secs(4));
    let starts: Vec<_> = rt.calls().iter().map(|c| c.started - t0).collect();
    assert_eq!(starts[..2], [Duration::from_secs(1); 2]);
    assert_eq!(starts[2..], [Duration::from_secs(3); 2]);

    rt.script("f", Script::echo().wait(&Latch::new()));
    let stuck = rt.invoke(&d, request("f", "x"));
    let stop = async {
        rt.wait_started("f", 5).await;
        rt.shutdown();
    };
    let (r, ()) = tokio::join!(stuck, stop);
    assert!(matches!(r, Err(Error::ShuttingDown)), "{r:?}");
    assert!(matches!(
        rt.invoke(&d, request("f", "y")).await,
        Err(Error::ShuttingDown)
    ));
}
