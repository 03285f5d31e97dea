//! The dashboard (`/ui`) in a real browser: a node on the embedded store
//! with a few functions, a queue with a backlog, a queue with dead letters,
//! a long job and a schedule; then headless Chromium driven by
//! `fixtures/dashboard_browser.py` (selenium) signs in with the admin token
//! and, through the page only, deploys a function by editing its code,
//! invokes it, deploys a second version and rolls back, finds the
//! invocation by filter, reads its logs and replays it, pages through a
//! list with the API's cursor, watches a queue's depth chart move as
//! messages arrive, redrives a dead letter, cancels a job, pauses a
//! schedule, adds a user and a token, saves a webhook and sees its delivery
//! logged, and sees invocations finish live on the overview. Each of these is then checked here
//! against the node's API, independently of the page. A screenshot of each
//! view goes to `docs/screenshots/dashboard-<view>.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` and the `selenium` Python
//! package (`scripts/test` installs them).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shoal_client::protocol::{PutQueue, SendMessage};

use common::{TestNode, deploy, repo_root, until};

const VIEWS: [&str; 10] = [
    "overview",
    "functions",
    "invocations",
    "queues",
    "jobs",
    "schedules",
    "usage",
    "users",
    "notifications",
    "nodes",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_runs_the_platform_from_a_browser() {
    common::require_browser();
    let node = TestNode::start();
    let c = node.client();

    // What the views show and the script acts on.
    deploy(
        &c,
        "name = \"greeter\"\nmemory_mb = 256\n",
        "def handler(event, ctx):\n    print('greeting', event.get('who'))\n    if event.get('fail'):\n        raise ValueError('asked to fail')\n    return {'hi': event.get('who')}\n",
    )
    .await;
    for i in 0..12 {
        let event = json!({"who": format!("n{i}"), "fail": i % 4 == 3}).to_string();
        let _ = c.invoke("greeter", &event).await.expect("invoke greeter");
    }
    deploy(
        &c,
        "name = \"slow\"\nconcurrency = 1\n",
        "import time\n\ndef handler(event, ctx):\n    time.sleep(1)\n    return event\n",
    )
    .await;
    // Fails until the KV key says the bug is fixed: its messages go to the
    // dead letters (one attempt), and a redrive after the fix succeeds.
    deploy(
        &c,
        "name = \"inbox-worker\"\nretries = 0\n\n[subscribe]\nqueue = \"inbox\"\n",
        "def handler(event, ctx):\n    if not ctx.kv.get('inbox/fixed'):\n        raise RuntimeError('inbox-worker is broken until inbox/fixed is set')\n    ctx.kv.incr('inbox/done')\n    return event\n",
    )
    .await;
    deploy(
        &c,
        "name = \"ticker\"\n\n[[schedule]]\nevery = \"1h\"\nevent = { kind = \"tick\" }\n",
        "def handler(event, ctx):\n    return event\n",
    )
    .await;
    deploy(
        &c,
        "name = \"pulse\"\n\n[[schedule]]\nevery = \"1s\"\n",
        "def handler(event, ctx):\n    return 1\n",
    )
    .await;
    c.put_queue(
        "backlog",
        &PutQueue {
            max_attempts: Some(1),
            visibility_timeout: None,
            retry_delay: None,
            dedup_window: None,
        },
    )
    .await
    .expect("queue backlog");
    c.send(
        "inbox",
        (0..3)
            .map(|i| SendMessage {
                body: json!({"order": i}),
                delay: None,
                dedup_id: None,
            })
            .collect(),
    )
    .await
    .expect("send to inbox");
    until(
        "three dead letters in inbox",
        Duration::from_secs(30),
        async || c.queue("inbox").await.is_ok_and(|q| q.depth.dead == 3),
    )
    .await;
    let job = c
        .start_job("slow", (0..60).map(|i| json!({"i": i})).collect(), None)
        .await
        .expect("start job");

    let shots = repo_root().join("docs/screenshots");
    std::fs::create_dir_all(&shots).expect("docs/screenshots");
    let setup =
        json!({"job": job, "backlog": "backlog", "dead_queue": "inbox", "schedule": "ticker"});
    let mut browser = Command::new("python3")
        .arg(repo_root().join("crates/shoal/tests/fixtures/dashboard_browser.py"))
        .arg("--url")
        .arg(&node.url)
        .arg("--token")
        .arg(&node.token)
        .arg("--screenshots")
        .arg(&shots)
        .arg("--setup")
        .arg(setup.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run dashboard_browser.py");
    let mut result = None;
    for line in BufReader::new(browser.stdout.take().expect("stdout")).lines() {
        let line = line.expect("the script's stdout");
        match line.strip_prefix("RESULT ") {
            Some(j) => result = Some(serde_json::from_str::<Value>(j).expect("RESULT json")),
            None => panic!("unexpected line from the browser script: {line}"),
        }
    }
    let status = browser.wait().expect("wait for the browser script");
    assert!(
        status.success(),
        "the browser script failed ({status}); its stderr is above"
    );
    let result = result.expect("the script printed no RESULT");

    // Deployed from the page's editor: the code the page typed is live.
    let name = result["deployed"]["name"].as_str().expect("deployed name");
    let marker = result["marker"].as_str().expect("marker");
    let f = c.function(name).await.expect("the page's function");
    assert_eq!(
        Value::from(f.version),
        result["deployed"]["version"],
        "{name}"
    );
    // (Version 1's code, read back through the client.)
    let files = c.function_files(name, Some(1)).await.expect("files");
    let main = files
        .files
        .iter()
        .find(|f| f.path == "main.py")
        .expect("main.py");
    assert!(
        main.text.as_deref().unwrap_or("").contains(marker),
        "{:?}",
        main.text
    );
    assert_eq!(
        c.function_files(name, None)
            .await
            .expect("live files")
            .version,
        1
    );

    // Version 2 deployed from the page, then version 1 made live again.
    let versions: Value = serde_json::from_str(
        &c.get_text(&format!("/v1/functions/{name}/versions"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(versions["live"], 1, "{versions}");
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    // Invoked from the page, found by the filter, its logs read there.
    let id = result["invocation"].as_str().expect("invocation id");
    let inv = c.invocation(id).await.expect("the page's invocation");
    assert_eq!(inv.function, name);
    assert_eq!(inv.status, "succeeded");
    assert_eq!(inv.input, json!({"from": "the dashboard"}));
    let logs = c.logs(id).await.expect("logs");
    assert!(logs.contains(marker), "{logs}");
    assert!(
        result["page_logs"].as_str().unwrap().contains(marker),
        "{}",
        result["page_logs"]
    );

    // Replayed from the page: a new asynchronous run with the same event.
    let replay = result["replay"].as_str().expect("replay id");
    let again = common::wait_final(&c, replay, Duration::from_secs(30)).await;
    assert_eq!(again.function, name);
    assert_eq!(again.mode, "async");
    assert_eq!(again.input, inv.input);
    assert_eq!(again.status, "succeeded");

    // The depth chart moved with the backlog the script sent.
    let sent = result["backlog_sent"].as_u64().unwrap();
    assert_eq!(c.queue("backlog").await.unwrap().depth.waiting, sent);
    assert_eq!(result["chart_waiting"].as_u64(), Some(sent));

    // The dead letter redriven from the page ran again, fixed.
    let inbox = c.queue("inbox").await.expect("inbox");
    assert_eq!(
        inbox.depth.dead, 2,
        "one of three dead letters redriven: {inbox:?}"
    );
    until(
        "the redriven message to succeed",
        Duration::from_secs(30),
        async || {
            c.kv_get("inbox/done")
                .await
                .is_ok_and(|e| e.value == json!(1))
        },
    )
    .await;

    // The job cancelled from the page.
    let j = c.job(&job).await.expect("job");
    assert!(
        ["cancelling", "cancelled"].contains(&j.status.as_str()),
        "{j:?}"
    );
    assert!(j.cancelled_at_ms.is_some());
    assert!(j.counts.succeeded < 60, "{:?}", j.counts);

    // The schedule paused from the page.
    let s: Value = serde_json::from_str(&c.get_text("/v1/schedules").await.unwrap()).unwrap();
    let list = s
        .get("schedules")
        .or_else(|| s.get("items"))
        .and_then(Value::as_array)
        .expect("schedules");
    let ticker = list
        .iter()
        .find(|x| x["function"] == "ticker")
        .expect("ticker");
    assert_eq!(ticker["paused"], json!(true), "{ticker}");

    // The user and her token added from the page; the token works.
    let users: Value = serde_json::from_str(&c.get_text("/v1/users").await.unwrap()).unwrap();
    let ana = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ana")
        .unwrap_or_else(|| panic!("no user ana: {users}"));
    assert_eq!(ana["role"], "developer");
    let token = &result["token"];
    assert!(
        ana["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == token["id"] && t["name"] == "ana-laptop" && t["role"] == "invoker"),
        "{ana}"
    );
    let budget: Value = serde_json::from_str(
        &c.get_text(&format!(
            "/v1/tokens/{}/budget",
            token["id"].as_str().unwrap()
        ))
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&budget["limit"], &budget["unit"], &budget["enforce"]),
        (&json!(2.0), &json!("gb_s"), &json!(true)),
        "{budget}"
    );
    let as_ana = node.client_with(token["secret"].as_str());
    as_ana
        .invoke("greeter", r#"{"who": "ana"}"#)
        .await
        .expect("ana's token invokes");

    // The webhook saved from the page, and its failed delivery logged.
    let hooks: Value =
        serde_json::from_str(&c.get_text("/v1/notifications").await.unwrap()).unwrap();
    let ops = hooks["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "ops")
        .unwrap_or_else(|| panic!("no webhook ops: {hooks}"));
    assert_eq!(ops["url"], "http://127.0.0.1:9/hook");
    assert_eq!(ops["events"], json!(["invocation.failed"]));
    let log: Value = serde_json::from_str(
        &c.get_text("/v1/notifications/deliveries?name=ops")
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        log["items"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["event"] == "invocation.failed")),
        "{log}"
    );

    // The price set from the page.
    let prices: Value =
        serde_json::from_str(&c.get_text("/v1/usage/prices").await.unwrap()).unwrap();
    assert_eq!(prices["per_gb_s"], json!(0.5), "{prices}");

    for view in VIEWS {
        let name = format!("dashboard-{view}.png");
        let len = std::fs::metadata(shots.join(&name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "screenshot {name}: {len} bytes");
    }
}
