//! End to end: every way user code can fail is reported with its own error
//! type, the pool heals, and other functions keep working.

mod common;

use common::{TestNode, deploy};
use serde_json::json;

const FAILING: &str = r#"
import os, sys, time, signal

def handler(event, ctx):
    how = event.get("how")
    if how == "ok":
        return {"pid": os.getpid()}
    if how == "raise":
        raise KeyError("missing thing")
    if how == "timeout":
        while True:
            pass
    if how == "oom":
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
    if how == "segfault":
        import ctypes
        ctypes.string_at(0)
    if how == "exit":
        os._exit(7)
    if how == "sys_exit":
        sys.exit(3)
    if how == "fork":
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        return "forked"
    if how == "flood":
        while True:
            print("x" * 1000)
    if how == "fd_flood":
        while True:
            os.write(1, b"y" * 65536)
    if how == "bad_result":
        return {1, 2, 3}
    if how == "kill_self":
        os.kill(os.getpid(), signal.SIGKILL)
    return "unknown"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_has_its_own_type_and_the_pool_heals() {
    let node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"bad\"\ntimeout = \"1s\"\nmemory_mb = 128\nconcurrency = 2",
        FAILING,
    )
    .await;
    deploy(
        &c,
        "name = \"good\"",
        "def handler(e, ctx):\n    return 'fine'\n",
    )
    .await;

    let cases = [
        ("raise", "raised"),
        ("timeout", "timed_out"),
        ("oom", "out_of_memory"),
        ("segfault", "crashed"),
        ("exit", "exited"),
        ("sys_exit", "exited"),
        ("fork", "forked"),
        ("flood", "output_limit"),
        ("fd_flood", "output_limit"),
        ("bad_result", "bad_result"),
        ("kill_self", "crashed"),
    ];
    for (how, kind) in cases {
        let done = c
            .invoke("bad", &json!({"how": how}).to_string())
            .await
            .unwrap();
        let failure = done.result.expect_err(how);
        assert_eq!(failure.error.kind, kind, "{how}: {:?}", failure.error);
        assert!(!failure.error.message.is_empty(), "{how}");
        let inv = c.invocation(&done.id).await.unwrap();
        let expected_status = if kind == "timed_out" {
            "timed_out"
        } else {
            "failed"
        };
        assert_eq!(inv.status, expected_status, "{how}");
        assert_eq!(inv.error.unwrap().kind, kind);

        // The same function still works right after, and so does another.
        let ok = c.invoke("bad", r#"{"how": "ok"}"#).await.unwrap();
        assert!(
            ok.result.is_ok(),
            "{how}: pool did not heal: {:?}",
            ok.result
        );
        let other = c.invoke("good", "{}").await.unwrap();
        assert_eq!(other.result.unwrap(), json!("fine"), "{how}");
    }

    // The raised error carries the exception type, message and traceback.
    let done = c.invoke("bad", r#"{"how": "raise"}"#).await.unwrap();
    let e = done.result.unwrap_err().error;
    assert_eq!(e.exception.as_deref(), Some("KeyError"));
    assert!(e.message.contains("missing thing"), "{}", e.message);
    assert!(e.traceback.unwrap().contains("raise KeyError"), "traceback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_child_does_not_survive_its_invocation() {
    let node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"forker\"",
        "import os, time\ndef handler(e, ctx):\n    r, w = os.pipe()\n    pid = os.fork()\n    if pid == 0:\n        # Its pid as the node sees it (the worker may be in a pid namespace).\n        with open(e['path'], 'w') as f:\n            f.write(os.readlink('/proc/self'))\n        os.write(w, b'.')\n        time.sleep(60)\n        os._exit(0)\n    os.read(r, 1)\n    return pid\n",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pid");
    let done = c
        .invoke(
            "forker",
            &json!({"path": path.to_str().unwrap()}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(done.result.unwrap_err().error.kind, "forked");
    let pid: u32 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    // The child is killed with its worker's process group. SIGKILL is
    // delivered asynchronously, so allow the kernel a moment; a zombie
    // (state Z) is dead and only waits to be reaped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("gone")
            .to_string();
        if state == "gone" || state == "Z" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "forked child {pid} still alive: state {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_invocations_run_in_parallel_up_to_the_limit() {
    let node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"sleepy\"\nconcurrency = 4",
        "import time, os\ndef handler(e, ctx):\n    t0 = time.time()\n    time.sleep(0.5)\n    return [t0, time.time(), os.getpid()]\n",
    )
    .await;
    let calls = (0..4).map(|_| {
        let c = c.clone();
        #[allow(clippy::disallowed_methods)] // the test awaits this handle
        tokio::spawn(async move { c.invoke("sleepy", "{}").await.unwrap().result.unwrap() })
    });
    let calls: Vec<_> = calls.collect();
    let mut spans = Vec::new();
    for h in calls {
        let v = h.await.unwrap();
        spans.push((
            v[0].as_f64().unwrap(),
            v[1].as_f64().unwrap(),
            v[2].as_u64().unwrap(),
        ));
    }
    // All four overlapped: each started before any finished.
    let latest_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let earliest_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(latest_start < earliest_end, "{spans:?}");
    let mut pids: Vec<_> = spans.iter().map(|s| s.2).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four workers");
}
