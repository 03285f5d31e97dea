//! Host calls: a handler calling back into the node through `ctx.call` (and
//! `spawn`, `map`, `send`, ...), against a real python3 and a test `Host`
//! that records the calls (operation and re-encoded arguments) and answers
//! from a closure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use shoal_runtime::{Deployment, Host, HostCall, HostError, Request, Response, Runtime};
use shoal_types::{FailureKind, Outcome};

mod common;

use common::{Fixture, fixture, limits};

type Answer = BoxFuture<'static, Result<String, HostError>>;
type AnswerFn = dyn Fn(&str, Value) -> Answer + Send + Sync;

/// Records every call and answers it from a closure, which may answer at
/// once, later, never, or with an error.
struct TestHost {
    calls: Mutex<Vec<(String, Value)>>,
    answer: Box<AnswerFn>,
}

impl TestHost {
    fn new(answer: impl Fn(&str, Value) -> Answer + Send + Sync + 'static) -> Arc<TestHost> {
        Arc::new(TestHost {
            calls: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        })
    }

    /// Answers `{"op": op, "args": args}` at once.
    fn echo() -> Arc<TestHost> {
        // Where an operation's answer has the field its method returns
        // (`ctx.map` returns `["job"]`, ...), the echo goes there.
        TestHost::new(|op, args| {
            let echo = json!({"op": op, "args": args});
            ok(match op {
                "map" => json!({"job": echo}),
                "put_docs" => json!({"ids": [echo]}),
                "get_doc" => json!({"doc": echo}),
                _ => echo,
            })
        })
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Host for TestHost {
    fn call(&self, call: HostCall) -> Answer {
        let args: Value = serde_json::from_str(&call.encode_args()).expect("args are JSON");
        self.calls
            .lock()
            .unwrap()
            .push((call.op().to_string(), args.clone()));
        (self.answer)(call.op(), args)
    }
}

fn ok(value: Value) -> Answer {
    Box::pin(async move { Ok(value.to_string()) })
}

fn fail(code: &str, message: &str) -> Answer {
    let error = HostError {
        code: code.into(),
        message: message.into(),
    };
    Box::pin(async move { Err(error) })
}

/// An answer that never comes; `token` lives in the future, so its strong
/// count tells whether the future is still held.
fn never(token: &Arc<()>) -> Answer {
    let token = token.clone();
    Box::pin(async move {
        let _held = token;
        std::future::pending().await
    })
}

impl Fixture {
    async fn call(&self, dep: &Deployment, event: &str, host: Option<Arc<TestHost>>) -> Response {
        self.rt.invoke(dep, request(event, host)).await.unwrap()
    }
}

fn request(event: &str, host: Option<Arc<TestHost>>) -> Request {
    Request {
        invocation_id: "inv-1".into(),
        function: "fn".into(),
        version: 1,
        attempt: 1,
        event: event.into(),
        host: host.map(|h| h as Arc<dyn Host>),

        gate: None,
    }
}

#[track_caller]
fn succeeded(response: &Response) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_makes_several_calls_and_returns_their_answers() {
    let fx = fixture();
    let dep = fx.deploy(
        "calls@1",
        r#"
import os

def handler(event, ctx):
    return {
        "pid": int(os.readlink('/proc/self')),
        "answers": [
            ctx.spawn("echo", {"n": 1, "text": "héllo ✓"}),
            ctx.spawn("echo", [1, "two", None]),
            ctx.spawn("echo"),
            ctx.call("spawn", {"function": "echo"}),
            ctx.spawn("worker", {"job": 1}),
            ctx.map("worker", ({"i": i} for i in range(3)), then="collect"),
            ctx.send("orders", {"id": 7}, delay=1.5, dedup_id="o-7"),
            ctx.send("orders", "plain"),
            ctx.put("docs", "d-1", {"x": 1.5}),
            ctx.get("docs", "d-1"),
        ],
    }
"#,
    );
    let host = TestHost::echo();
    let response = fx.call(&dep, "null", Some(host.clone())).await;
    let value = succeeded(&response);
    let expected = [
        (
            "spawn",
            json!({"function": "echo", "event": {"n": 1, "text": "héllo ✓"}}),
        ),
        (
            "spawn",
            json!({"function": "echo", "event": [1, "two", null]}),
        ),
        ("spawn", json!({"function": "echo", "event": null})),
        // Left out, `event` is null too.
        ("spawn", json!({"function": "echo", "event": null})),
        ("spawn", json!({"function": "worker", "event": {"job": 1}})),
        (
            "map",
            json!({"function": "worker", "events": [{"i": 0}, {"i": 1}, {"i": 2}], "then": "collect"}),
        ),
        (
            "send",
            json!({"queue": "orders", "body": {"id": 7}, "delay_ms": 1500, "dedup_id": "o-7"}),
        ),
        (
            "send",
            json!({"queue": "orders", "body": "plain", "delay_ms": null, "dedup_id": null}),
        ),
        (
            "put_docs",
            json!({"category": "docs", "docs": [{"id": "d-1", "doc": {"x": 1.5}}]}),
        ),
        ("get_doc", json!({"category": "docs", "id": "d-1"})),
    ];
    let calls = host.calls();
    assert_eq!(calls.len(), expected.len());
    for (i, (op, args)) in expected.iter().enumerate() {
        assert_eq!(calls[i], (op.to_string(), args.clone()), "call {i}");
        assert_eq!(
            value["answers"][i],
            json!({"op": op, "args": args}),
            "answer {i}"
        );
    }

    // The worker is clean afterwards: reused, and calls work again.
    let again = succeeded(&fx.call(&dep, "null", Some(host.clone())).await);
    assert_eq!(again["pid"], value["pid"]);
    assert_eq!(host.calls().len(), 2 * expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_raises_host_error() {
    let fx = fixture();
    let dep = fx.deploy(
        "errors@1",
        r#"
def handler(event, ctx):
    try:
        ctx.send("missing", 1)
    except ctx.HostError as e:
        caught = [e.code, e.message, str(e), isinstance(e, Exception)]
    if event == "uncaught":
        ctx.spawn("nope", None)
    return caught
"#,
    );
    let host = TestHost::new(|op, _| match op {
        "send" => fail("not_found", "no queue \"missing\""),
        _ => fail("not_found", "no function \"nope\""),
    });
    let caught = fx.call(&dep, "null", Some(host.clone())).await;
    assert_eq!(
        succeeded(&caught),
        json!([
            "not_found",
            "no queue \"missing\"",
            "not_found: no queue \"missing\"",
            true
        ])
    );

    let uncaught = fx.call(&dep, "\"uncaught\"", Some(host.clone())).await;
    let failure = failed(&uncaught, FailureKind::Raised);
    assert_eq!(failure.exception.as_deref(), Some("HostError"));
    assert_eq!(failure.message, "not_found: no function \"nope\"");
    let traceback = failure.traceback.as_deref().unwrap();
    assert!(
        traceback.contains("ctx.spawn(\"nope\", None)"),
        "{traceback}"
    );
    assert!(!traceback.contains("_shoal_runner"), "{traceback}");
    assert_eq!(host.calls().len(), 3);
    // A raised HostError is an ordinary exception: the worker stays.
    assert_eq!(fx.rt.stats()[0].idle, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_host_calls_fail_with_no_host() {
    let fx = fixture();
    let dep = fx.deploy(
        "nohost@1",
        r#"
def handler(event, ctx):
    if event == "uncaught":
        ctx.send("q", 1)
    try:
        ctx.call("anything", {"x": 1})
    except ctx.HostError as e:
        return [e.code, e.message]
"#,
    );
    let value = succeeded(&fx.call(&dep, "null", None).await);
    assert_eq!(value[0], "no_host");
    assert!(
        value[1].as_str().unwrap().contains("\"anything\""),
        "{value}"
    );
    let uncaught = fx.call(&dep, "\"uncaught\"", None).await;
    let failure = failed(&uncaught, FailureKind::Raised);
    assert!(failure.message.starts_with("no_host: "), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_times_out_and_the_pool_heals() {
    let fx = fixture();
    let mut lim = limits();
    lim.timeout = Duration::from_millis(300);
    let dep = fx.deploy_with(
        "hang@1",
        r#"
import os

def handler(event, ctx):
    print("calling from", int(os.readlink('/proc/self')))
    return [int(os.readlink('/proc/self')), ctx.spawn(event)]
"#,
        lim,
    );
    let token = Arc::new(());
    let held = token.clone();
    let host = TestHost::new(move |_, args| match args["function"].as_str() {
        Some("hang") => never(&held),
        _ => ok(json!("answered")),
    });
    let started = Instant::now();
    let response = fx.call(&dep, "\"hang\"", Some(host.clone())).await;
    let failure = failed(&response, FailureKind::TimedOut);
    assert!(failure.message.contains("300ms"), "{}", failure.message);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The logs printed before the call are salvaged from the waiting worker.
    let text = logs(&response);
    assert!(text.contains("calling from"), "{text:?}");
    // The pending call was dropped with the invocation.
    assert_eq!(Arc::strong_count(&token), 2, "only `token` and `held`");
    assert_eq!(host.calls().len(), 1);

    let next = fx.call(&dep, "\"quick\"", Some(host.clone())).await;
    let value = succeeded(&next);
    assert_eq!(value[1], "answered");
    assert!(!next.cold_start);
    let old_pid: i64 = text.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert_ne!(value[0].as_i64().unwrap(), old_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_go_out_in_one_call() {
    let fx = fixture();
    let dep = fx.deploy(
        "fanout@1",
        r#"
import time

def handler(event, ctx):
    if event == "too big":
        try:
            ctx.spawn("work", "x" * (7 * 1024 * 1024))
        except ctx.HostError as e:
            return [e.code, e.message]
    events = [{"i": i, "user": "user-%d" % i} for i in range(100000)]
    t = time.perf_counter()
    job = ctx.map("work", events)
    took = time.perf_counter() - t
    return [job, took]
"#,
    );
    let host = TestHost::new(|op, args| {
        assert_eq!(op, "map");
        assert_eq!(args["function"], "work");
        assert_eq!(args["then"], Value::Null);
        let events = args["events"].as_array().unwrap();
        assert_eq!(events.len(), 100_000);
        assert_eq!(events[99_999], json!({"i": 99_999, "user": "user-99999"}));
        ok(json!({"job": "job-1"}))
    });
    let response = fx.call(&dep, "null", Some(host.clone())).await;
    let value = succeeded(&response);
    assert_eq!(value[0], "job-1");
    eprintln!(
        "map of 100,000 events (2.9 MB of args): {:.1} ms in the handler",
        value[1].as_f64().unwrap() * 1e3
    );

    // Beyond the limit (the result size, 6 MiB by default) the call is
    // refused in the worker; the host never sees it.
    let refused = succeeded(&fx.call(&dep, "\"too big\"", Some(host.clone())).await);
    assert_eq!(refused[0], "too_large");
    assert!(
        refused[1].as_str().unwrap().contains("6291456"),
        "{refused}"
    );
    assert_eq!(host.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_during_a_call_is_a_crash() {
    let fx = fixture();
    let dep = fx.deploy(
        "crash@1",
        r#"
import os

def handler(event, ctx):
    return [int(os.readlink('/proc/self')), ctx.spawn(event, {"pid": int(os.readlink('/proc/self'))})]
"#,
    );
    let token = Arc::new(());
    let held = token.clone();
    let host = TestHost::new(move |_, args| match args["function"].as_str() {
        Some("crash") => {
            // The worker dies while its call is pending.
            let pid = rustix::process::Pid::from_raw(args["event"]["pid"].as_i64().unwrap() as i32);
            rustix::process::kill_process(pid.unwrap(), rustix::process::Signal::SEGV).unwrap();
            never(&held)
        }
        _ => ok(json!("fine")),
    });
    let response = fx.call(&dep, "\"crash\"", Some(host.clone())).await;
    let failure = failed(&response, FailureKind::Crashed);
    assert!(failure.message.contains("SIGSEGV"), "{}", failure.message);
    assert_eq!(Arc::strong_count(&token), 2, "the pending call was dropped");

    let next = succeeded(&fx.call(&dep, "\"calm\"", Some(host)).await);
    assert_eq!(next[1], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_on_two_workers_calling_at_once_get_their_own_answers() {
    let fx = fixture();
    let dep = fx.deploy(
        "pair@1",
        r#"
import os

def handler(event, ctx):
    return [int(os.readlink('/proc/self')), ctx.spawn("whoami", event)]
"#,
    );
    // Both calls must be pending at the same time for either to be answered.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let host = |name: &'static str| {
        let barrier = barrier.clone();
        TestHost::new(move |_, args| {
            let barrier = barrier.clone();
            Box::pin(async move {
                barrier.wait().await;
                Ok(json!({"host": name, "args": args["event"]}).to_string())
            })
        })
    };
    let (a, b) = tokio::join!(
        fx.call(&dep, "\"from a\"", Some(host("a"))),
        fx.call(&dep, "\"from b\"", Some(host("b"))),
    );
    let (a, b) = (succeeded(&a), succeeded(&b));
    assert_eq!(a[1], json!({"host": "a", "args": "from a"}));
    assert_eq!(b[1], json!({"host": "b", "args": "from b"}));
    assert_ne!(a[0], b[0], "two workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_of_one_handler_call_at_once() {
    let fx = fixture();
    let dep = fx.deploy(
        "threads@1",
        r#"
import os, threading

def handler(event, ctx):
    answers = [None] * 4
    def work(i):
        answers[i] = ctx.spawn("echo", i)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 4)]
    for t in threads:
        t.start()
    work(0)
    for t in threads:
        t.join()
    return [int(os.readlink('/proc/self')), answers]
"#,
    );
    // All four calls are pending before any is answered, and they are
    // answered in reverse order: 3, 2, 1, 0.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let turns: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..4).map(|_| tokio::sync::Notify::new()).collect());
    let order = Arc::new(Mutex::new(Vec::new()));
    let answered = order.clone();
    let host = TestHost::new(move |_, args| {
        let (barrier, turns, order) = (barrier.clone(), turns.clone(), answered.clone());
        Box::pin(async move {
            let i = args["event"].as_u64().unwrap() as usize;
            barrier.wait().await;
            if i < 3 {
                turns[i].notified().await;
            }
            order.lock().unwrap().push(i);
            if i > 0 {
                turns[i - 1].notify_one();
            }
            Ok(json!(i * 10).to_string())
        })
    });
    let first = succeeded(&fx.call(&dep, "null", Some(host.clone())).await);
    assert_eq!(first[1], json!([0, 10, 20, 30]));
    assert_eq!(*order.lock().unwrap(), [3, 2, 1, 0]);

    // Every call finished before the handler returned: the worker stays.
    let simple = TestHost::new(|_, args| ok(args["event"].clone()));
    let second = succeeded(&fx.call(&dep, "null", Some(simple)).await);
    assert_eq!(second[0], first[0]);
    assert_eq!(second[1], json!([0, 1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_with_their_invocation() {
    let fx = fixture();
    let dep = fx.deploy(
        "ended@1",
        r#"
import os, threading

kept = []

def handler(event, ctx):
    if event == "keep":
        kept.append(ctx)
        return int(os.readlink('/proc/self'))
    if event == "stale":
        try:
            kept[0].spawn("echo", 1)
        except ctx.HostError as e:
            return [int(os.readlink('/proc/self')), e.code]
    if event == "leave":
        # A thread still waits for its answer when the handler returns.
        threading.Thread(target=ctx.spawn, args=("hang",), daemon=True).start()
        ctx.spawn("sync")
        return ["left", int(os.readlink('/proc/self'))]
    return int(os.readlink('/proc/self'))
"#,
    );
    let token = Arc::new(());
    let held = token.clone();
    let hang_arrived = Arc::new(tokio::sync::Notify::new());
    let arrived = hang_arrived.clone();
    let host = TestHost::new(move |_, args| match args["function"].as_str() {
        Some("hang") => {
            arrived.notify_one();
            never(&held)
        }
        Some("sync") => {
            let arrived = arrived.clone();
            Box::pin(async move {
                arrived.notified().await;
                Ok("null".into())
            })
        }
        _ => ok(args),
    });

    // A context kept for later can no longer call.
    let pid = succeeded(&fx.call(&dep, "\"keep\"", Some(host.clone())).await);
    let stale = succeeded(&fx.call(&dep, "\"stale\"", Some(host.clone())).await);
    assert_eq!(stale, json!([pid, "invocation_ended"]));
    assert!(host.calls().is_empty());

    // A call left in flight: the result stands, the call is dropped, and the
    // worker is replaced rather than reused.
    let left = fx.call(&dep, "\"leave\"", Some(host.clone())).await;
    let value = succeeded(&left);
    assert_eq!(value[0], "left");
    assert_eq!(value[1], pid, "the same worker ran it");
    assert!(logs(&left).contains("still in flight"), "{}", logs(&left));
    assert_eq!(Arc::strong_count(&token), 2, "the pending call was dropped");
    let mut called: Vec<Value> = host
        .calls()
        .into_iter()
        .map(|(_, args)| args["function"].clone())
        .collect();
    called.sort_by_key(|f| f.to_string());
    assert_eq!(called, ["hang", "sync"]);
    let next = succeeded(&fx.call(&dep, "null", Some(host)).await);
    assert_ne!(next, pid, "a fresh worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_operations_and_bad_arguments_never_reach_the_host() {
    let fx = fixture();
    let dep = fx.deploy(
        "typed@1",
        r#"
import os

def handler(event, ctx):
    out = [int(os.readlink('/proc/self'))]
    for op, args in [("echo", {"x": 1}), ("spawn", {"fn": "x"}), ("get_doc", ["c", "id"])]:
        try:
            ctx.call(op, args)
        except ctx.HostError as e:
            out.append([e.code, e.message])
    return out
"#,
    );
    let host = TestHost::echo();
    let value = succeeded(&fx.call(&dep, "null", Some(host.clone())).await);
    assert_eq!(value[1][0], "unknown_op");
    assert_eq!(
        value[1][1],
        "no host call named \"echo\"; the calls are spawn, send, map, job, job_results, put_docs, get_doc, kv_get, kv_set, kv_incr, kv_delete, kv_list, blob_open, blob_read, blob_apply, publish, channel_position, blob_create, blob_put, map_ranges and job_wait"
    );
    assert_eq!(value[2][0], "invalid_input");
    let message = value[2][1].as_str().unwrap();
    assert!(message.contains("\"spawn\""), "{message}");
    assert!(message.contains("missing field `function`"), "{message}");
    assert_eq!(value[3][0], "invalid_input");
    assert!(host.calls().is_empty());
    // A refused call is an ordinary answer: the worker stays.
    let again = succeeded(&fx.call(&dep, "null", Some(host)).await);
    assert_eq!(again[0], value[0]);
}
