//! Runtime tier: the Python runtime against a real python3, one test per
//! behaviour; every failure kind must heal the pool.

// Every task spawned here is awaited before the code that spawned it ends.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_runtime::{Deployment, Error, Request, Response, Runtime};
use shoal_types::{FailureKind, Outcome};

mod common;

use common::{Fixture, fixture, fixture_with, limits};

impl Fixture {
    async fn call(&self, deployment: &Deployment, event: &str) -> Response {
        self.rt.invoke(deployment, request(event)).await.unwrap()
    }
}

fn request(event: &str) -> Request {
    Request {
        invocation_id: "inv-1".into(),
        function: "fn".into(),
        version: 7,
        attempt: 2,
        event: event.into(),
        host: None,

        gate: None,
    }
}

#[track_caller]
fn succeeded(response: &Response) -> serde_json::Value {
    match &response.outcome {
        Outcome::Succeeded(json) => serde_json::from_str(json).unwrap(),
        Outcome::Failed(f) => panic!(
            "expected success, got {f:?}; logs: {}",
            String::from_utf8_lossy(&response.logs)
        ),
    }
}

#[track_caller]
fn failed(response: &Response, kind: FailureKind) -> &shoal_types::Failure {
    match &response.outcome {
        Outcome::Failed(f) if f.kind == kind => f,
        other => panic!(
            "expected {kind:?}, got {other:?}; logs: {}",
            String::from_utf8_lossy(&response.logs)
        ),
    }
}

fn logs(response: &Response) -> String {
    String::from_utf8_lossy(&response.logs).into_owned()
}

/// True while the process exists and is not a zombie.
fn running(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Polls a condition that another process or task makes true, up to 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ECHO: &str = r#"
import os

def handler(event, ctx):
    return {
        "event": event,
        "id": ctx.invocation_id,
        "function": ctx.function_name,
        "version": ctx.version,
        "attempt": ctx.attempt,
        "remaining": ctx.remaining_time_ms(),
        "pid": int(os.readlink('/proc/self')),
        "env": sorted(os.environ),
        "cwd": os.getcwd(),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_the_result_and_passes_the_context() {
    let fx = fixture();
    let dep = fx.deploy("echo@1", ECHO);

    let first = fx
        .call(&dep, r#"{"name": "shoal", "n": [1, 2.5, null]}"#)
        .await;
    let value = succeeded(&first);
    assert!(first.cold_start);
    assert_eq!(
        value["event"],
        serde_json::json!({"name": "shoal", "n": [1, 2.5, null]})
    );
    assert_eq!(value["id"], "inv-1");
    assert_eq!(value["function"], "fn");
    assert_eq!(value["version"], 7);
    assert_eq!(value["attempt"], 2);
    let remaining = value["remaining"].as_i64().unwrap();
    assert!(
        remaining > 5_000 && remaining <= 10_000,
        "remaining {remaining}"
    );

    // The node's own environment does not leak into user code.
    let env = value["env"].as_array().unwrap();
    assert!(
        env.iter().all(|name| name != "CARGO_MANIFEST_DIR"),
        "{env:?}"
    );
    assert!(env.iter().any(|name| name == "PATH"), "{env:?}");
    assert_eq!(value["cwd"], serde_json::json!(dep.code_dir));

    let second = fx.call(&dep, "\"plain string\"").await;
    let value2 = succeeded(&second);
    assert!(!second.cold_start);
    assert_eq!(value2["event"], "plain string");
    assert_eq!(value2["pid"], value["pid"], "the warm worker is reused");
    assert_eq!(fx.rt.stats()[0].idle, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_print_stderr_logging_and_fd_writes() {
    let fx = fixture();
    let dep = fx.deploy(
        "logs@1",
        r#"
import logging, os, subprocess, sys

def handler(event, ctx):
    print("printed", event)
    print("to stderr", file=sys.stderr)
    logging.getLogger("x").warning("logged warning")
    sys.stdout.buffer.write(b"binary\n")
    os.write(1, b"raw fd one\n")
    os.write(2, b"raw fd two\n")
    subprocess.run(["echo", "from a subprocess"], check=True)
    return None
"#,
    );
    let response = fx.call(&dep, "1").await;
    assert_eq!(succeeded(&response), serde_json::Value::Null);
    let text = logs(&response);
    for needle in [
        "printed 1\n",
        "to stderr\n",
        "logged warning",
        "binary\n",
        "raw fd one\n",
        "raw fd two\n",
        "from a subprocess\n",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing from logs {text:?}"
        );
    }

    // The next invocation starts with empty logs.
    let quiet = fx.deploy("quiet@1", "def handler(event, ctx):\n    return 1\n");
    let again = fx.call(&dep, "2").await;
    assert!(logs(&again).contains("printed 2"));
    assert!(!logs(&again).contains("printed 1"));
    assert!(fx.call(&quiet, "null").await.logs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_exception_reports_class_message_and_traceback() {
    let fx = fixture();
    let dep = fx.deploy(
        "raise@1",
        r#"
import os

def helper(n):
    raise ValueError(f"bad value {n}")

def handler(event, ctx):
    print("before raising")
    if event == "ok":
        return int(os.readlink('/proc/self'))
    helper(event)
"#,
    );
    let response = fx.call(&dep, "42").await;
    let failure = failed(&response, FailureKind::Raised);
    assert_eq!(failure.exception.as_deref(), Some("ValueError"));
    assert_eq!(failure.message, "bad value 42");
    let traceback = failure.traceback.as_deref().unwrap();
    assert!(traceback.contains("in helper"), "{traceback}");
    assert!(
        traceback.contains("ValueError: bad value 42"),
        "{traceback}"
    );
    assert!(
        !traceback.contains("_shoal_runner"),
        "runner frames are hidden: {traceback}"
    );
    assert!(logs(&response).contains("before raising"));

    // The worker survives an exception.
    let pid_before = fx.rt.stats()[0].idle;
    assert_eq!(pid_before, 1);
    let ok = fx.call(&dep, "\"ok\"").await;
    assert!(succeeded(&ok).is_i64());
    assert!(!ok.cold_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_worker_and_the_pool_heals() {
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(300);
    let dep = fx.deploy_with(
        "loop@1",
        r#"
import os

def handler(event, ctx):
    print("worker", int(os.readlink('/proc/self')))
    if event == "spin":
        while True:
            pass
    return int(os.readlink('/proc/self'))
"#,
        lim,
    );
    let started = Instant::now();
    let response = fx.call(&dep, "\"spin\"").await;
    let failure = failed(&response, FailureKind::TimedOut);
    assert!(failure.message.contains("300ms"), "{}", failure.message);
    assert!(started.elapsed() < Duration::from_secs(5));
    // What it printed before looping is kept.
    let text = logs(&response);
    assert!(text.contains("worker "), "{text:?}");
    let pid: i64 = text.trim().rsplit(' ').next().unwrap().parse().unwrap();
    eventually("the timed-out worker is gone", || !running(pid)).await;

    let next = fx.call(&dep, "\"fine\"").await;
    let new_pid = succeeded(&next).as_i64().unwrap();
    assert_ne!(new_pid, pid);
    assert!(
        !next.cold_start,
        "a new worker is forked from the warm template"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_handler_times_out_too() {
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(200);
    let dep = fx.deploy_with(
        "sleep@1",
        "import time\ndef handler(event, ctx):\n    print('napping')\n    time.sleep(60)\n",
        lim,
    );
    let response = fx.call(&dep, "null").await;
    failed(&response, FailureKind::TimedOut);
    assert!(logs(&response).contains("napping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_error_is_out_of_memory() {
    let fx = fixture();
    let mut lim = limits();
    lim.memory_mb = 64;
    let dep = fx.deploy_with(
        "oom@1",
        r#"
def handler(event, ctx):
    if event == "small":
        return len(bytearray(16 * 1024 * 1024))
    data = bytearray(512 * 1024 * 1024)
    return len(data)
"#,
        lim,
    );
    let response = fx.call(&dep, "\"big\"").await;
    let failure = failed(&response, FailureKind::OutOfMemory);
    assert!(failure.message.contains("64 MiB"), "{}", failure.message);
    assert_eq!(failure.exception.as_deref(), Some("MemoryError"));
    // Within the limit, allocation works, on a fresh worker.
    let ok = fx.call(&dep, "\"small\"").await;
    assert_eq!(succeeded(&ok), 16 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segfault_is_crashed() {
    let fx = fixture();
    let dep = fx.deploy(
        "segv@1",
        r#"
import ctypes

def handler(event, ctx):
    if event == "crash":
        print("about to crash")
        ctypes.string_at(0)
    return "alive"
"#,
    );
    let response = fx.call(&dep, "\"crash\"").await;
    let failure = failed(&response, FailureKind::Crashed);
    assert!(failure.message.contains("SIGSEGV"), "{}", failure.message);
    // faulthandler writes the Python stack to fd 2, which is the log pipe.
    assert!(
        logs(&response).contains("Segmentation fault"),
        "{}",
        logs(&response)
    );
    assert_eq!(succeeded(&fx.call(&dep, "null").await), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_exit_and_sys_exit_are_exited() {
    let fx = fixture();
    let dep = fx.deploy(
        "exit@1",
        r#"
import os, sys

def handler(event, ctx):
    if event == "os":
        os._exit(3)
    if event == "sys":
        sys.exit(4)
    return "alive"
"#,
    );
    let hard = fx.call(&dep, "\"os\"").await;
    assert!(
        failed(&hard, FailureKind::Exited)
            .message
            .contains("code 3")
    );
    let soft = fx.call(&dep, "\"sys\"").await;
    assert!(failed(&soft, FailureKind::Exited).message.contains('4'));
    assert_eq!(succeeded(&fx.call(&dep, "null").await), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_child_process_is_forked_and_killed() {
    let fx = fixture();
    let dep = fx.deploy(
        "fork@1",
        r#"
import os, subprocess, sys, time

# Children name their pids as the node sees them (/proc is the node's; the
# worker may be in a pid namespace of its own).
def handler(event, ctx):
    if event == "fork":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, os.readlink("/proc/self").encode())
            time.sleep(60)
            os._exit(0)
        print("child", os.read(r, 64).decode())
        return "forked"
    if event == "popen":
        p = subprocess.Popen(
            [sys.executable, "-c", "import os, time; print(os.readlink('/proc/self'), flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
        )
        print("child", p.stdout.readline().decode().strip())
        return "spawned"
    # A child that is waited for is fine.
    subprocess.run(["true"], check=True)
    return "clean"
"#,
    );
    for event in ["\"fork\"", "\"popen\""] {
        let response = fx.call(&dep, event).await;
        failed(&response, FailureKind::Forked);
        let text = logs(&response);
        let pid: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("child "))
            .unwrap_or_else(|| panic!("no child pid in {text:?}"))
            .trim()
            .parse()
            .unwrap();
        eventually("the leftover child is gone", || !running(pid)).await;
        assert_eq!(succeeded(&fx.call(&dep, "null").await), "clean");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_floods_are_output_limit() {
    let fx = fixture_with(|o| o.max_log_bytes = 64 * 1024);
    let dep = fx.deploy(
        "flood@1",
        r#"
import os

def handler(event, ctx):
    if event == "print":
        while True:
            print("x" * 100)
    if event == "fd":
        while True:
            os.write(1, b"y" * 4096)
    return "calm"
"#,
    );
    for (event, kind) in [("\"print\"", 'x'), ("\"fd\"", 'y')] {
        let response = fx.call(&dep, event).await;
        let failure = failed(&response, FailureKind::OutputLimit);
        assert!(failure.message.contains("65536"), "{}", failure.message);
        assert!(response.logs.len() <= 64 * 1024);
        assert!(logs(&response).starts_with(kind));
        assert_eq!(succeeded(&fx.call(&dep, "null").await), "calm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_must_be_json_and_small_enough() {
    let fx = fixture_with(|o| o.max_result_bytes = 1000);
    let dep = fx.deploy(
        "results@1",
        r#"
def handler(event, ctx):
    if event == "object":
        return object()
    if event == "nan":
        return float("nan")
    if event == "big":
        return "z" * 5000
    return {"unicode": "héllo ✓"}
"#,
    );
    let bad = fx.call(&dep, "\"object\"").await;
    assert!(
        failed(&bad, FailureKind::BadResult)
            .message
            .contains("not JSON")
    );
    failed(&fx.call(&dep, "\"nan\"").await, FailureKind::BadResult);
    let big = fx.call(&dep, "\"big\"").await;
    assert!(
        failed(&big, FailureKind::OutputLimit)
            .message
            .contains("1000")
    );
    let ok = fx.call(&dep, "null").await;
    assert_eq!(succeeded(&ok), serde_json::json!({"unicode": "héllo ✓"}));
    assert!(!ok.cold_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_failures_are_reported_and_retried() {
    let fx = fixture();
    let dep = fx.deploy(
        "broken@1",
        "print('importing')\nimport no_such_module_anywhere\ndef handler(e, c):\n    return 1\n",
    );
    let response = fx.call(&dep, "null").await;
    let failure = failed(&response, FailureKind::LoadFailed);
    assert_eq!(failure.exception.as_deref(), Some("ModuleNotFoundError"));
    assert!(
        failure
            .traceback
            .as_deref()
            .unwrap()
            .contains("no_such_module_anywhere")
    );
    assert!(logs(&response).contains("importing"));

    // The template was discarded: fixing the code makes the next call work.
    std::fs::write(
        dep.code_dir.join("main.py"),
        "def handler(e, c):\n    return 'fixed'\n",
    )
    .unwrap();
    assert_eq!(succeeded(&fx.call(&dep, "null").await), "fixed");

    let missing = fx.deploy("missing@1", "def other(e, c):\n    return 1\n");
    let response = fx.call(&missing, "null").await;
    let failure = failed(&response, FailureKind::LoadFailed);
    assert_eq!(failure.exception.as_deref(), Some("AttributeError"));
    assert!(failure.message.contains("handler"), "{}", failure.message);
}

/// `check` loads a deployment as its first worker would and keeps nothing:
/// no pool, no process, no scratch directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_does_not_load_and_keeps_nothing() {
    let fx = fixture();
    let cases = [
        ("good@check", "def handler(e, c):\n    return 1\n", None),
        ("query@check", "def map(doc):\n    return doc\n", None),
        (
            "nohandler@check",
            "def other(e, c):\n    return 1\n",
            Some("AttributeError"),
        ),
        (
            "import@check",
            "print('importing')\nimport no_such_module_anywhere\n",
            Some("ModuleNotFoundError"),
        ),
        ("syntax@check", "def handler(:\n", Some("SyntaxError")),
    ];
    for (key, code, refused) in cases {
        let dep = fx.deploy(key, code);
        let check = fx.rt.check(&dep).await.unwrap();
        match (refused, check) {
            (None, shoal_runtime::Check::Loads) => {}
            (Some(exception), shoal_runtime::Check::Fails { failure, logs }) => {
                assert_eq!(failure.kind, FailureKind::LoadFailed);
                assert_eq!(failure.exception.as_deref(), Some(exception), "{failure:?}");
                let tb = failure.traceback.unwrap_or_default();
                assert!(
                    !tb.contains("_shoal_runner") && !tb.contains("<frozen"),
                    "{tb}"
                );
                if key.starts_with("import") {
                    assert!(String::from_utf8_lossy(&logs).contains("importing"));
                }
            }
            (want, got) => panic!("{key}: want {want:?}, got {got:?}"),
        }
    }
    assert_eq!(fx.rt.stats(), Vec::new(), "no pool kept");
    let scratch: Vec<_> = std::fs::read_dir(fx.dir.path().join("work/scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("@check"))
        .collect();
    assert_eq!(scratch, Vec::<String>::new(), "scratch directories left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_event_is_a_platform_error_and_the_worker_survives() {
    let fx = fixture();
    let dep = fx.deploy("echo@1", ECHO);
    let pid = succeeded(&fx.call(&dep, "null").await)["pid"].clone();
    let err = fx.rt.invoke(&dep, request("{not json")).await.unwrap_err();
    assert!(
        matches!(err, Error::Platform(ref m) if m.contains("not valid JSON")),
        "{err}"
    );
    assert_eq!(succeeded(&fx.call(&dep, "null").await)["pid"], pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_deployments_keep_working_while_one_fails() {
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(500);
    let bad = fx.deploy_with(
        "bad@1",
        r#"
import ctypes, os
def handler(event, ctx):
    if event % 3 == 0:
        ctypes.string_at(0)
    if event % 3 == 1:
        os._exit(1)
    while True:
        pass
"#,
        lim,
    );
    let good = fx.deploy("good@1", "def handler(event, ctx):\n    return event * 2\n");
    let rt = fx.rt.clone();
    let bad_calls = tokio::spawn(async move {
        let mut kinds = Vec::new();
        for i in 0..6 {
            let response = rt.invoke(&bad, request(&i.to_string())).await.unwrap();
            match response.outcome {
                Outcome::Failed(f) => kinds.push(f.kind),
                Outcome::Succeeded(s) => panic!("bad function succeeded: {s}"),
            }
        }
        kinds
    });
    for i in 0..50 {
        let response = fx.call(&good, &i.to_string()).await;
        assert_eq!(succeeded(&response), i * 2);
    }
    let kinds = bad_calls.await.unwrap();
    assert_eq!(
        kinds,
        [
            FailureKind::Crashed,
            FailureKind::Exited,
            FailureKind::TimedOut,
            FailureKind::Crashed,
            FailureKind::Exited,
            FailureKind::TimedOut
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_invocations_overlap_up_to_the_concurrency() {
    let fx = fixture();
    let mut lim = limits();
    lim.concurrency = 4;
    let dep = fx.deploy_with(
        "slow@1",
        r#"
import os, time
def handler(event, ctx):
    start = time.time()
    time.sleep(0.5)
    return [start, time.time(), int(os.readlink('/proc/self'))]
"#,
        lim,
    );
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let rt = fx.rt.clone();
        let dep = dep.clone();
        tasks.push(tokio::spawn(async move {
            rt.invoke(&dep, request("null")).await.unwrap()
        }));
    }
    let mut spans = Vec::new();
    for task in tasks {
        let value = succeeded(&task.await.unwrap());
        spans.push((
            value[0].as_f64().unwrap(),
            value[1].as_f64().unwrap(),
            value[2].as_i64().unwrap(),
        ));
    }
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "all four ran at once: {spans:?}");
    let mut pids: Vec<i64> = spans.iter().map(|s| s.2).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4);
    assert_eq!(fx.rt.stats()[0].idle, 4);

    // A fifth call waits for a free worker instead of starting a fifth.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let rt = fx.rt.clone();
        let dep = dep.clone();
        tasks.push(tokio::spawn(async move {
            rt.invoke(&dep, request("null")).await.unwrap()
        }));
    }
    let mut queued = Vec::new();
    for task in tasks {
        let response = task.await.unwrap();
        let value = succeeded(&response);
        assert!(
            pids.contains(&value[2].as_i64().unwrap()),
            "no new worker beyond the limit"
        );
        queued.push(response.queued);
    }
    assert!(
        queued.iter().any(|q| *q >= Duration::from_millis(400)),
        "{queued:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_and_templates_are_reaped() {
    let fx = fixture_with(|o| o.idle_timeout = Duration::from_millis(200));
    let dep = fx.deploy("echo@1", ECHO);
    let first = fx.call(&dep, "null").await;
    let pid = succeeded(&first)["pid"].as_i64().unwrap();
    assert_eq!(fx.rt.stats()[0].idle, 1);
    eventually("the idle worker is reaped", || fx.rt.stats()[0].idle == 0).await;
    eventually("the reaped worker process is gone", || !running(pid)).await;

    // Once the template has gone too, the next call is a cold start.
    eventually("the template is reaped", || {
        std::fs::read_dir("/proc").unwrap().flatten().all(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmd| {
                    let cmd = String::from_utf8_lossy(&cmd);
                    !(cmd.contains("_shoal_runner")
                        && cmd.contains(&*dep.code_dir.to_string_lossy()))
                })
                .unwrap_or(true)
        })
    })
    .await;
    let again = fx.call(&dep, "null").await;
    succeeded(&again);
    assert!(again.cold_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_and_shutdown_stop_the_workers() {
    let fx = fixture();
    let dep = fx.deploy("echo@1", ECHO);
    let pid = succeeded(&fx.call(&dep, "null").await)["pid"]
        .as_i64()
        .unwrap();
    fx.rt.retire(&dep.key);
    assert!(fx.rt.stats().is_empty());
    eventually("the retired worker is gone", || !running(pid)).await;

    // A retired key starts afresh when invoked again.
    let again = fx.call(&dep, "null").await;
    assert!(again.cold_start);
    let pid = succeeded(&again)["pid"].as_i64().unwrap();
    fx.rt.shutdown();
    eventually("the worker is gone after shutdown", || !running(pid)).await;
    let err = fx.rt.invoke(&dep, request("null")).await.unwrap_err();
    assert!(matches!(err, Error::ShuttingDown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_without_requirements_needs_no_env() {
    let fx = fixture();
    let dep = fx.deploy("plain@1", ECHO);
    let prepared = fx.rt.prepare(dep.code_dir.clone()).await.unwrap();
    assert!(prepared.env_dir.is_none());
    assert!(!prepared.reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_builds_reuses_and_runs_in_the_venv() {
    let fx = fixture();
    let mut dep = fx.deploy(
        "venv@1",
        "import sys\ndef handler(e, c):\n    return sys.prefix\n",
    );
    std::fs::write(dep.code_dir.join("requirements.txt"), "# nothing yet\n\n").unwrap();
    let first = fx.rt.prepare(dep.code_dir.clone()).await.unwrap();
    let env_dir = first.env_dir.clone().unwrap();
    assert!(!first.reused);
    assert!(env_dir.starts_with(fx.dir.path().join("work").join("venvs")));

    // Same requirements elsewhere: the same venv, reused.
    let other = fx.deploy("venv@2", "def handler(e, c):\n    return 1\n");
    std::fs::write(other.code_dir.join("requirements.txt"), "# nothing yet\n\n").unwrap();
    let second = fx.rt.prepare(other.code_dir.clone()).await.unwrap();
    assert!(second.reused);
    assert_eq!(second.env_dir.as_deref(), Some(env_dir.as_path()));

    dep.env_dir = Some(env_dir.clone());
    let prefix = succeeded(&fx.call(&dep, "null").await);
    assert_eq!(Path::new(prefix.as_str().unwrap()), env_dir.as_path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_reports_pip_errors() {
    let fx = fixture();
    let dep = fx.deploy("pip@1", ECHO);
    std::fs::write(
        dep.code_dir.join("requirements.txt"),
        "shoal-this-package-does-not-exist-9f3a7c2e==0.0.1\n",
    )
    .unwrap();
    let err = fx.rt.prepare(dep.code_dir.clone()).await.unwrap_err();
    let Error::Prepare(message) = err else {
        panic!("expected a prepare error, got {err}")
    };
    assert!(message.contains("pip install failed"), "{message}");
    assert!(
        message.contains("shoal-this-package-does-not-exist-9f3a7c2e"),
        "pip's own message is kept: {message}"
    );
    // A failed build leaves nothing behind to be mistaken for a venv.
    assert_no_venv(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invocation_frees_its_worker() {
    let fx = fixture();
    let mut lim = limits();
    lim.concurrency = 1;
    let dep = fx.deploy_with(
        "cancel@1",
        "import os, time\ndef handler(event, ctx):\n    if event == 'slow':\n        time.sleep(60)\n    return int(os.readlink('/proc/self'))\n",
        lim,
    );
    let pid = succeeded(&fx.call(&dep, "null").await).as_i64().unwrap();
    // The caller gives up (an HTTP client went away): the future is dropped.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        fx.rt.invoke(&dep, request("\"slow\"")),
    )
    .await;
    assert!(gave_up.is_err());
    eventually("the abandoned worker is gone", || !running(pid)).await;
    let stats = &fx.rt.stats()[0];
    assert_eq!((stats.idle, stats.busy), (0, 0));
    // The only slot is free again.
    let next = fx.call(&dep, "null").await;
    assert_ne!(succeeded(&next).as_i64().unwrap(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_modules_named_like_the_runners_own_are_imported() {
    let fx = fixture();
    let dep = fx.deploy(
        "names@1",
        r#"
import sys

SHOAL_BEFORE = "shoal" in sys.modules

import capture, context, failures, host, process, protocol, query, template, worker
import shoal  # the client package, vendored into the function's directory

MODULES = (capture, context, failures, host, process, protocol, query, template, worker)

def handler(event, ctx):
    try:
        ctx.call("spawn", {"function": "x"})
        caught = None
    except shoal.HostError as e:
        caught = e.code
    return {
        "names": [m.NAME for m in MODULES],
        "runner_on_path": [p for p in sys.path if "_shoal_runner" in p or "/runner-" in p],
        "shoal_before": SHOAL_BEFORE,
        "is_context": isinstance(ctx, shoal.Context),
        "same_error": shoal.HostError is ctx.HostError,
        "caught": caught,
    }
"#,
    );
    let names = [
        "capture", "context", "failures", "host", "process", "protocol", "query", "template",
        "worker",
    ];
    for name in names {
        std::fs::write(
            dep.code_dir.join(format!("{name}.py")),
            format!("NAME = 'user {name}'\n"),
        )
        .unwrap();
    }
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/shoal"),
        &dep.code_dir.join("shoal"),
    );
    let value = succeeded(&fx.call(&dep, "null").await);
    let expected: Vec<String> = names.iter().map(|n| format!("user {n}")).collect();
    assert_eq!(value["names"], serde_json::json!(expected));
    assert_eq!(value["runner_on_path"], serde_json::json!([]));
    // The runner never imports the client package itself.
    assert_eq!(value["shoal_before"], false);
    // `shoal.Context` and `shoal.HostError` are the runtime's classes.
    assert_eq!(value["is_context"], true);
    assert_eq!(value["same_error"], true);
    assert_eq!(value["caught"], "no_host");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        if entry.file_type().unwrap().is_file() && name.to_string_lossy().ends_with(".py") {
            std::fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_refuses_requirements_that_pick_the_index_or_read_node_files() {
    let fx = fixture();
    let dep = fx.deploy("pipidx@1", ECHO);
    std::fs::write(
        dep.code_dir.join("requirements.txt"),
        "requests\n--index-url https://evil.example/simple\n",
    )
    .unwrap();
    let err = fx.rt.prepare(dep.code_dir.clone()).await.unwrap_err();
    let Error::Prepare(message) = err else {
        panic!("expected a prepare error, got {err}")
    };
    assert!(message.contains("line 2"), "{message}");
    assert!(
        message.contains("operator chooses the package index"),
        "{message}"
    );
    // Refused before anything ran: no virtualenv was started.
    assert_no_venv(&fx);
}

/// Nothing a failed or refused prepare could be mistaken for a virtualenv.
fn assert_no_venv(fx: &Fixture) {
    let venvs: Vec<PathBuf> = std::fs::read_dir(fx.dir.path().join("work").join("venvs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(venvs.is_empty(), "{venvs:?}");
}
