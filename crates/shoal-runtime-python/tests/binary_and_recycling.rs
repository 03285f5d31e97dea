//! Runtime tier: a handler's `Response` (its JSON form, its checks in the
//! runner) and `max_invocations_per_worker` (workers retired after N
//! invocations, never during one), against a real python3.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use shoal_runtime::response::BinaryResult;
use shoal_runtime::{Request, Response, Runtime};
use shoal_types::{FailureKind, Outcome};

mod common;

use common::{fixture, fixture_with};

fn request(event: &str) -> Request {
    Request {
        invocation_id: "inv-1".into(),
        function: "fn".into(),
        version: 1,
        attempt: 1,
        event: event.into(),
        host: None,
        gate: None,
    }
}

#[track_caller]
fn output(response: &Response) -> &str {
    match &response.outcome {
        Outcome::Succeeded(json) => json,
        Outcome::Failed(f) => panic!(
            "expected success, got {f:?}; logs: {}",
            String::from_utf8_lossy(&response.logs)
        ),
    }
}

#[track_caller]
fn failure(response: &Response, kind: FailureKind) -> String {
    match &response.outcome {
        Outcome::Failed(f) if f.kind == kind => f.message.clone(),
        other => panic!("expected {kind:?}, got {other:?}"),
    }
}

const RESPONSES: &str = r#"
def handler(event, ctx):
    kind = event["kind"]
    if kind == "png":
        return ctx.Response(bytes(range(256)) * 4, content_type="image/png", status=201, headers={"X-Tile": "3/4"})
    if kind == "text":
        return ctx.Response("héllo", content_type="text/html")
    if kind == "big":
        return ctx.Response(b"\0" * event["n"])
    if kind == "bad_header":
        return ctx.Response(b"x", headers={"Transfer-Encoding": "chunked"})
    if kind == "reserved":
        return {"$response": {"status": 200}}
    if kind == "not_reserved":
        return {"$response": 1, "other": 2}
    raise ValueError(kind)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_travel_as_their_json_form() {
    let fx = fixture_with(|o| o.max_result_bytes = 4000);
    let dep = fx.deploy("responses@1", RESPONSES);
    let call = |event: &'static str| fx.rt.invoke(&dep, request(event));

    let png = call(r#"{"kind":"png"}"#).await.unwrap();
    let parsed = BinaryResult::parse(output(&png)).unwrap().unwrap();
    let expected: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
    assert_eq!(parsed.body, expected);
    assert_eq!(parsed.status, 201);
    assert_eq!(parsed.content_type, "image/png");
    assert_eq!(parsed.headers["x-tile"], "3/4");

    let text = call(r#"{"kind":"text"}"#).await.unwrap();
    let parsed = BinaryResult::parse(output(&text)).unwrap().unwrap();
    assert_eq!(parsed.body, "héllo".as_bytes());
    assert_eq!(parsed.content_type, "text/html; charset=utf-8");
    assert_eq!(parsed.status, 200);

    // The limit counts the body, not its base64: 4000 bytes pass (5336 of
    // base64), 4001 do not.
    let at_limit = call(r#"{"kind":"big","n":4000}"#).await.unwrap();
    assert_eq!(
        BinaryResult::parse(output(&at_limit))
            .unwrap()
            .unwrap()
            .body
            .len(),
        4000
    );
    let over = call(r#"{"kind":"big","n":4001}"#).await.unwrap();
    let message = failure(&over, FailureKind::OutputLimit);
    assert!(
        message.contains("4001") && message.contains("4000"),
        "{message}"
    );

    // A bad header fails where the Response is made.
    let bad = call(r#"{"kind":"bad_header"}"#).await.unwrap();
    let message = failure(&bad, FailureKind::Raised);
    assert!(message.contains("transfer-encoding"), "{message}");

    // A plain dict shaped like the JSON form is refused; one with more keys
    // is a plain result.
    let reserved = call(r#"{"kind":"reserved"}"#).await.unwrap();
    let message = failure(&reserved, FailureKind::BadResult);
    assert!(message.contains("reserved for shoal.Response"), "{message}");
    let plain = call(r#"{"kind":"not_reserved"}"#).await.unwrap();
    assert_eq!(BinaryResult::parse(output(&plain)), None);
}

/// With the default limit (6 MiB), a body of the whole limit travels (8 MiB
/// of base64 in its frame) and one byte more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_may_take_the_whole_result_limit() {
    let fx = fixture();
    let dep = fx.deploy("big@1", RESPONSES);
    let limit = 6 * 1024 * 1024;
    let event = format!(r#"{{"kind":"big","n":{limit}}}"#);
    let r = fx.rt.invoke(&dep, request(&event)).await.unwrap();
    let body = BinaryResult::parse(output(&r)).unwrap().unwrap().body;
    assert_eq!(body.len(), limit);
    assert!(body.iter().all(|b| *b == 0));
    let event = format!(r#"{{"kind":"big","n":{}}}"#, limit + 1);
    let r = fx.rt.invoke(&dep, request(&event)).await.unwrap();
    failure(&r, FailureKind::OutputLimit);
}

/// The pids the handler reports, one invocation after another.
const PID: &str = r#"
import os, time

def handler(event, ctx):
    time.sleep(event.get("sleep", 0))
    return int(os.readlink("/proc/self"))
"#;

fn pid_of(response: &Response) -> i64 {
    output(response).parse().unwrap()
}

fn running(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_replaced_after_n_invocations() {
    let fx = fixture();
    let mut dep = fx.deploy("recycled@1", PID);
    dep.max_invocations_per_worker = NonZeroU32::new(3);
    let mut pids = Vec::new();
    for _ in 0..10 {
        let r = fx.rt.invoke(&dep, request("{}")).await.unwrap();
        pids.push(pid_of(&r));
    }
    // Served in threes: one worker after another, each exactly 3 times
    // (the last one once so far).
    let runs: Vec<(i64, usize)> = pids
        .chunk_by(|a, b| a == b)
        .map(|run| (run[0], run.len()))
        .collect();
    assert_eq!(
        runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        [3, 3, 3, 1],
        "{pids:?}"
    );
    let distinct: BTreeSet<i64> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");
    // The retired ones exit; the live one stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs[..3].iter().any(|(pid, _)| running(*pid)) {
        assert!(
            Instant::now() < deadline,
            "retired workers still run: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running(runs[3].0));

    // Without the setting, one worker serves them all.
    let kept = fx.deploy("kept@1", PID);
    let mut pids = BTreeSet::new();
    for _ in 0..5 {
        pids.insert(pid_of(&fx.rt.invoke(&kept, request("{}")).await.unwrap()));
    }
    assert_eq!(pids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_never_cuts_an_invocation_short() {
    let fx = fixture();
    let mut dep = fx.deploy("once@1", PID);
    dep.max_invocations_per_worker = NonZeroU32::new(1);
    // Concurrent slow calls on workers that each serve one: every call
    // finishes, each on a worker of its own.
    let calls: Vec<_> = (0..6)
        .map(|_| fx.rt.invoke(&dep, request(r#"{"sleep":0.2}"#)))
        .collect();
    let mut pids = BTreeSet::new();
    for call in calls {
        pids.insert(pid_of(&call.await.unwrap()));
    }
    assert_eq!(pids.len(), 6, "{pids:?}");
}
