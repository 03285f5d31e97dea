//! Finding invocations on a real node: `GET /v1/invocations` and
//! `shoal invocations` (filters, table, `--json`), `shoal logs --function`
//! (and `--follow` over SSE), `shoal logs ID` and `shoal invocations show`
//! as before, `GET /v1/stats` and `shoal status`, `--retain`, and the
//! index built for an old data directory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestNode, deploy, wait_final};
use serde_json::Value;

const MAIN: &str = r#"
import time

def handler(event, ctx):
    time.sleep(event.get("sleep", 0))
    print("hello", event.get("n"))
    if event.get("fail"):
        raise ValueError("asked to fail")
    return event
"#;

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filter_and_read_logs_through_http_and_the_cli() {
    let node = TestNode::start();
    let client = node.client();
    deploy(&client, "name = \"greet\"", MAIN).await;
    deploy(&client, "name = \"other\"", MAIN).await;
    let mut failed = Vec::new();
    let mut ok = Vec::new();
    for n in 0..6 {
        let event = format!(r#"{{"n": {n}, "fail": {}}}"#, n % 3 == 0);
        let r = client.invoke("greet", &event).await.unwrap();
        if n % 3 == 0 {
            failed.push(r.id.clone());
        } else {
            ok.push(r.id.clone());
        }
    }
    let queued = client.invoke_async("greet", r#"{"n": 9}"#).await.unwrap();
    wait_final(&client, &queued, Duration::from_secs(30)).await;
    client.invoke("other", "{}").await.unwrap();
    // A sync call's record is written behind its answer.
    common::until(
        "the last record to be written",
        Duration::from_secs(10),
        async || {
            client
                .list_invocations(&[("function", "other")])
                .await
                .unwrap()
                .invocations
                .len()
                == 1
        },
    )
    .await;

    // HTTP: the failed ones of greet, newest first.
    let (status, body) = client
        .raw(
            "GET",
            "/v1/invocations?function=greet&status=failed",
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![failed[1].as_str(), failed[0].as_str()]);
    assert_eq!(page["invocations"][0]["error_message"], "asked to fail");
    // A bad filter is a 400 that says what is valid.
    let (status, body) = client
        .raw("GET", "/v1/invocations?status=broken", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("use one of queued, running, succeeded"),
        "{body}"
    );

    // The CLI table.
    let table = stdout(&node.cli(&["invocations", "--function", "greet", "--status", "failed"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("DURATION"),
        "{table}"
    );
    assert!(lines[1].starts_with(&failed[1]), "{table}");
    assert!(
        lines[1].contains("greet@1") && lines[1].contains("failed"),
        "{table}"
    );
    assert!(lines[1].contains(" UTC"), "a readable start time: {table}");
    assert!(
        lines[1].contains(" ms") || lines[1].contains(" s"),
        "{table}"
    );
    // Mode, since and limit; the next page's cursor is shown.
    let table = stdout(&node.cli(&["invocations", "--mode", "async", "--since", "1h"]));
    assert!(
        table.contains(&queued) && table.contains("async"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2, "{table}");
    let table = stdout(&node.cli(&["invocations", "--function", "greet", "--limit", "2"]));
    assert!(table.contains("More: add --cursor "), "{table}");
    // --json: the API's page.
    let json = stdout(&node.cli(&["--json", "invocations", "--function", "other"]));
    let page: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1, "{json}");
    assert!(page.get("next").is_none(), "{json}");
    // A bad filter from the CLI: the API's message, non-zero exit.
    let bad = node.cli(&["invocations", "--status", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use one of"));

    // One invocation, as before.
    let show = stdout(&node.cli(&["invocations", "show", &failed[0]]));
    assert!(show.contains("asked to fail"), "{show}");
    let logs = stdout(&node.cli(&["logs", &ok[0]]));
    assert_eq!(logs, "hello 1\n");

    // A function's logs: the latest invocations, oldest first.
    let logs = stdout(&node.cli(&["logs", "--function", "greet", "--limit", "2"]));
    let heads: Vec<&str> = logs.lines().filter(|l| l.starts_with("── ")).collect();
    assert_eq!(heads.len(), 2, "{logs}");
    assert!(
        heads[1].contains(&queued) && heads[1].contains("greet@1"),
        "{logs}"
    );
    assert!(
        logs.contains("hello 5\n") && logs.contains("hello 9"),
        "{logs}"
    );
    let nd = stdout(&node.cli(&["--json", "logs", "--function", "greet", "--limit", "3"]));
    let entries: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 3, "{nd}");
    assert_eq!(entries[2]["logs"], "hello 9\n");
    // A function's name where an id goes: told how to get its logs.
    let named = node.cli(&["logs", "greet"]);
    assert!(!named.status.success());
    let err = String::from_utf8_lossy(&named.stderr);
    assert!(err.contains("shoal logs --function greet"), "{err}");
    let unknown = node.cli(&["logs", "--function", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"));
}

/// `shoal logs --function F --follow` prints the logs of invocations as
/// they finish, whichever way they were started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_invocations() {
    let node = TestNode::start();
    let client = node.client();
    deploy(
        &client,
        "name = \"greet\"\nretries = 1\nretry_delay = \"1s\"",
        MAIN,
    )
    .await;
    client.invoke("greet", r#"{"n": 1}"#).await.unwrap();
    // One still running when the follow starts: listed as running, then
    // shown again when it finishes.
    let slow = client
        .invoke_async("greet", r#"{"n": 0, "sleep": 3}"#)
        .await
        .unwrap();
    common::until("the slow one to run", Duration::from_secs(20), async || {
        client.invocation(&slow).await.unwrap().status == "running"
    })
    .await;
    let mut follow = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["logs", "--function", "greet", "--follow", "--limit", "2"])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line for {what}"))
    };
    // The latest ones first, oldest first, then what finishes from now on.
    assert!(next("the header").starts_with("── "));
    assert_eq!(next("the first logs"), "hello 1");
    // (Running, or still `queued` if its start record is not written yet.)
    let head = next("the running one");
    assert!(
        head.contains(&slow) && (head.contains("  running  ") || head.contains("  queued  ")),
        "{head}"
    );
    let head = next("the running one, finished");
    assert!(head.contains(&slow) && head.contains("succeeded"), "{head}");
    assert_eq!(next("its logs"), "hello 0");
    let sync = client.invoke("greet", r#"{"n": 2}"#).await.unwrap();
    let head = next("a new invocation");
    assert!(
        head.contains(&sync.id) && head.contains("succeeded"),
        "{head}"
    );
    assert_eq!(next("its logs"), "hello 2");
    let id = client
        .invoke_async("greet", r#"{"n": 3, "fail": true}"#)
        .await
        .unwrap();
    // Each attempt: the first is retried, the second fails for good.
    let head = next("the async one's first attempt");
    assert!(
        head.contains(&id) && head.contains("failed, retrying"),
        "{head}"
    );
    assert_eq!(next("its logs"), "hello 3");
    let head = next("its second attempt");
    assert!(
        head.contains(&id) && head.ends_with(&format!("failed  {id}")),
        "{head}"
    );
    assert_eq!(next("its logs"), "hello 3");
    follow.kill().unwrap();
    follow.wait().unwrap();
    reader.join().unwrap();
}

/// `GET /v1/stats` and `shoal status` report the data directory's size,
/// the stored invocations and the retention; `--retain` sets it
/// (`--retention` still works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_retain() {
    let node = TestNode::start_with(&["--retain", "2h"]);
    let client = node.client();
    deploy(&client, "name = \"greet\"", MAIN).await;
    client.invoke("greet", "{}").await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.retain_seconds, Some(7200));
    assert!(stats.data_dir_bytes > 100_000, "{stats:?}");
    common::until(
        "the record to be written",
        Duration::from_secs(10),
        async || client.stats().await.unwrap().invocations == 1,
    )
    .await;
    let status = stdout(&node.cli(&["status"]));
    let data = status
        .lines()
        .find(|l| l.starts_with("data:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(data.contains("iB, 1 invocations (kept"), "{data}");
    let json = stdout(&node.cli(&["--json", "status"]));
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["stats"]["invocations"], 1, "{json}");

    let old = TestNode::start_with(&["--retention", "90m"]);
    assert_eq!(
        old.client().stats().await.unwrap().retain_seconds,
        Some(5400)
    );
    let default = TestNode::start();
    assert_eq!(
        default.client().stats().await.unwrap().retain_seconds,
        Some(30 * 86_400)
    );
}

/// A data directory of the first release gets its invocations indexed
/// when it is opened: they are listed and filtered like new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_data_directory_is_indexed() {
    let fixture = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data-v1"
    ));
    let node = TestNode::start_on_copy_of(fixture);
    let client = node.client();
    let all = client.list_invocations(&[("limit", "1000")]).await.unwrap();
    assert!(all.invocations.len() >= 3, "{all:?}");
    let created: Vec<u64> = all.invocations.iter().map(|i| i.created_at_ms).collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    let boom = client
        .list_invocations(&[("function", "boom"), ("status", "failed")])
        .await
        .unwrap();
    assert!(!boom.invocations.is_empty());
    assert!(
        boom.invocations
            .iter()
            .all(|i| i.function == "boom" && i.status == "failed")
    );
    let hello = client
        .list_invocations(&[("function", "hello")])
        .await
        .unwrap();
    assert!(hello.invocations.iter().all(|i| i.function == "hello"));
    assert!(!hello.invocations.is_empty());
}

/// `--failed` (failed and timed out), `--grep TEXT` (text in the logs, the
/// event, the output or the error, a bounded scan) and `shoal invocations
/// replay` on a real node with python3 workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_only_text_search_and_replay_through_the_cli() {
    let node = TestNode::start();
    let client = node.client();
    deploy(
        &client,
        "name = \"greet\"\nretries = 0\ntimeout = \"1s\"",
        MAIN,
    )
    .await;
    let ok = client.invoke("greet", r#"{"n": 1}"#).await.unwrap().id;
    let raised = client
        .invoke("greet", r#"{"n": 2, "fail": true}"#)
        .await
        .unwrap()
        .id;
    let slow = client
        .invoke("greet", r#"{"n": 3, "sleep": 5}"#)
        .await
        .unwrap()
        .id;
    let marked = client
        .invoke("greet", r#"{"n": "needle-42"}"#)
        .await
        .unwrap()
        .id;
    common::until(
        "four records written",
        Duration::from_secs(10),
        async || {
            client
                .list_invocations(&[("function", "greet")])
                .await
                .unwrap()
                .invocations
                .len()
                == 4
        },
    )
    .await;

    let json = stdout(&node.cli(&["--json", "invocations", "--failed"]));
    let page: Value = serde_json::from_str(&json).unwrap();
    let ids: Vec<&str> = page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [slow.as_str(), raised.as_str()], "{json}");
    assert_eq!(page["invocations"][0]["status"], "timed_out");

    // In the logs (print) of one invocation only; then in an error.
    let table = stdout(&node.cli(&["invocations", "--grep", "HELLO NEEDLE-42"]));
    assert!(table.contains(&marked), "{table}");
    assert!(!table.contains(&ok), "{table}");
    assert!(table.contains("looked at 4 records"), "{table}");
    let table = stdout(&node.cli(&["invocations", "--grep", "asked to fail"]));
    assert!(
        table.contains(&raised) && !table.contains(&marked),
        "{table}"
    );
    let bad = node.cli(&["invocations", "--grep", "x", "--scan", "0"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("from 1 to 10000"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Replay: a new async invocation with the same event.
    let again = stdout(&node.cli(&["invocations", "replay", &marked]))
        .trim()
        .to_string();
    assert_ne!(again, marked);
    let r = wait_final(&client, &again, Duration::from_secs(30)).await;
    assert_eq!(r.status, "succeeded", "{r:?}");
    assert_eq!(r.mode, "async");
    assert_eq!(r.output, Some(serde_json::json!({"n": "needle-42"})));
}
