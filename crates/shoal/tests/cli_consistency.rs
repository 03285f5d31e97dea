//! End to end: one consistent CLI against a real `shoal serve` — `--json`
//! answers and errors with the API's codes, events from an argument, @file
//! or stdin, readable times, `--url`/`--listen` forms, `--force` for
//! removals that lose data, duplicate sends, the last admin token and
//! `shoal tokens recover`.

mod common;

use std::process::{Command, Output, Stdio};

use common::{TestNode, deploy, wait_final};
use serde_json::{Value, json};

const ECHO: &str = "def handler(event, ctx):\n    return event\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stdout as one JSON value (fails the test, showing stderr, otherwise).
fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", text(&out.stdout)))
}

/// The `{"error": {"code", "message"}}` a failed `--json` command printed on
/// stderr, as (code, message); stdout must be empty.
fn json_error(out: &Output) -> (String, String) {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "", "stdout of a failed --json command");
    let v: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("stderr is not one JSON value ({e}): {}", text(&out.stderr)));
    let e = &v["error"];
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    (
        e["code"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
    )
}

/// Runs the CLI with only the environment given (no SHOAL_URL/SHOAL_TOKEN
/// from the node unless passed).
fn shoal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.args(args)
        .env_remove("SHOAL_URL")
        .env_remove("SHOAL_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run shoal")
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_one_line_or_json_with_the_api_codes() {
    let node = TestNode::start();

    let out = node.cli(&["--json", "get", "nope", "x"]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "category_not_found");
    assert!(message.contains("category `nope` not found"), "{message}");

    let out = node.cli(&["get", "nope", "x"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: category `nope` not found"), "{err}");
    assert!(err.contains("category_not_found"), "the API's code: {err}");
    assert!(!err.contains("CategoryNotFound"), "{err}");

    // An error of the CLI's own (bad JSON) has the API's code too.
    let out = node.cli(&["--json", "invoke", "hello", "{oops"]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "invalid_input");
    assert!(message.contains("not valid JSON"), "{message}");
    // A usage error under --json too.
    let out = node.cli(&["--json", "invoke"]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "invalid_input");
    assert!(message.contains("<NAME>"), "{message}");
    assert_eq!(out.status.code(), Some(2));
    // And a node that is not there: `unavailable`.
    let out = shoal(&["--json", "status", "--url", "127.0.0.1:9"], &[]);
    assert_eq!(json_error(&out).0, "unavailable");

    // A function that fails: its failure on stdout, the error on stderr.
    let c = node.client();
    deploy(
        &c,
        "name = \"boom\"",
        "def handler(event, ctx):\n    raise ValueError('no')\n",
    )
    .await;
    let out = node.cli(&["--json", "invoke", "boom"]);
    assert!(!out.status.success());
    let failure: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failure["error"]["exception"], "ValueError", "{failure}");
    let v: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["code"], "function_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_json_answer_is_json() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"echo\"", ECHO).await;

    let out = node.cli(&["--json", "invoke", "echo", r#"{"a": 1}"#]);
    let v = json_out(&out);
    assert_eq!(v["output"], json!({"a": 1}));
    let id = v["id"].as_str().unwrap().to_string();
    let v = json_out(&node.cli(&["--json", "logs", &id]));
    assert_eq!(v["id"], id.as_str());
    assert!(v["logs"].is_string());
    let v = json_out(&node.cli(&["--json", "invocations", "show", &id]));
    assert!(v["created_at_ms"].is_u64(), "raw numbers in --json: {v}");
    assert!(v["duration_ms"].is_f64());
    let v = json_out(&node.cli(&["--json", "tokens", "create", "--role", "reader"]));
    assert!(v["token"].as_str().unwrap().starts_with("shoal_"));
    for cmd in [
        &["--json", "functions"][..],
        &["--json", "queues"],
        &["--json", "categories"],
        &["--json", "limiters"],
        &["--json", "status"],
        &["--json", "tokens", "list"],
    ] {
        json_out(&node.cli(cmd));
    }

    // A query streams NDJSON: a `value` line per document, then `done`.
    node.cli_with_stdin(&["write", "things", "-"], Some(r#"[{"n": 1}, {"n": 2}]"#));
    deploy(&c, "name = \"ns\"", "def map(doc):\n    return doc['n']\n").await;
    let out = node.cli(&["--json", "query", "things", "ns"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut values: Vec<i64> = lines[..2]
        .iter()
        .map(|l| l["value"].as_i64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, vec![1, 2]);
    assert_eq!(lines[2]["done"]["docs"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_come_from_an_argument_a_file_or_stdin() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"echo\"", ECHO).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("event.json");
    std::fs::write(&file, r#"{"from": "file"}"#).unwrap();
    let at_file = format!("@{}", file.display());

    let output = |out: Output| json_out(&out)["output"].clone();
    assert_eq!(
        output(node.cli(&["--json", "invoke", "echo", r#"{"from": "arg"}"#])),
        json!({"from": "arg"})
    );
    assert_eq!(
        output(node.cli(&["--json", "invoke", "echo", &at_file])),
        json!({"from": "file"})
    );
    assert_eq!(
        output(node.cli_with_stdin(&["--json", "invoke", "echo", "-"], Some(r#"{"from": "-"}"#))),
        json!({"from": "-"})
    );
    // Piped stdin without an argument (`shoal invoke echo < event.json`).
    assert_eq!(
        output(node.cli_with_stdin(&["--json", "invoke", "echo"], Some(r#"{"from": "pipe"}"#))),
        json!({"from": "pipe"})
    );
    // Nothing at all: `{}`.
    assert_eq!(output(node.cli(&["--json", "invoke", "echo"])), json!({}));
    let out = node.cli(&["invoke", "echo", "@/no/such/file.json"]);
    assert!(text(&out.stderr).contains("/no/such/file.json"));

    // The same forms for a queue's message body...
    c.put_queue("inbox", &Default::default()).await.unwrap();
    for (args, stdin) in [
        (vec!["queues", "send", "inbox", r#"{"m": 1}"#], None),
        (vec!["queues", "send", "inbox", &at_file], None),
        (vec!["queues", "send", "inbox"], Some(r#"{"m": 3}"#)),
    ] {
        let out = node.cli_with_stdin(&args, stdin);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(c.queue("inbox").await.unwrap().depth.waiting, 3);
    let out = node.cli(&["--json", "queues", "send", "inbox"]);
    assert_eq!(json_error(&out).0, "invalid_input");

    // ... documents to write ...
    let docs = tmp.path().join("docs.ndjson");
    std::fs::write(&docs, "{\"id\": \"f\"}\n").unwrap();
    let out = node.cli(&["write", "cat", &format!("@{}", docs.display())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = node.cli_with_stdin(&["write", "cat"], Some(r#"[{"id": "p"}]"#));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(c.category("cat").await.unwrap().docs, 2);

    // ... and a job's events.
    let out = node.cli_with_stdin(&["--json", "jobs", "start", "echo"], Some("[{}, {}]"));
    let job = json_out(&out)["job"].as_str().unwrap().to_string();
    let view = common::wait_job(&c, &job, std::time::Duration::from_secs(30)).await;
    assert_eq!(view.counts.succeeded, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn human_output_shows_readable_times_and_durations() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"echo\"", ECHO).await;
    let done = c.invoke("echo", "{}").await.unwrap();
    let inv = wait_final(&c, &done.id, std::time::Duration::from_secs(10)).await;
    let out = node.cli(&["invocations", "show", &done.id]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The record's own creation time, to the second, in UTC.
    let secs = inv.created_at_ms / 1000;
    let date = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .unwrap();
    let created = format!("created:   {} UTC", text(&date.stdout).trim());
    assert!(shown.contains(&created), "want {created:?} in:\n{shown}");
    let duration = shown
        .lines()
        .find(|l| l.starts_with("duration:"))
        .expect("a duration line");
    assert!(
        duration.contains(" ms") || duration.contains(" s"),
        "{duration}"
    );
    assert!(
        !shown.contains(&inv.created_at_ms.to_string()),
        "no raw epoch milliseconds: {shown}"
    );

    let out = node.cli(&["queues", "create", "q", "--visibility-timeout", "90s"]);
    assert!(
        text(&out.stdout).contains("visibility:   1 min 30 s"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn url_and_listen_accept_host_port_and_names() {
    let node = TestNode::start();
    let hostport = node.url.trim_start_matches("http://").to_string();
    let port = hostport.rsplit(':').next().unwrap().to_string();
    let token = ("SHOAL_TOKEN", node.token.as_str());
    for url in [
        hostport.clone(),
        format!("localhost:{port}"),
        node.url.clone(),
        format!("{}/", node.url),
    ] {
        let out = shoal(&["--json", "status"], &[("SHOAL_URL", &url), token]);
        assert_eq!(json_out(&out)["status"], "ok", "SHOAL_URL={url}");
        let out = shoal(&["--json", "--url", &url, "functions"], &[token]);
        json_out(&out);
    }
    let out = shoal(&["--json", "status", "--url", "ftp://x:1"], &[]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "invalid_input");
    assert!(message.contains("http or https"), "{message}");

    // A usage line never shows --url as if it were required.
    let out = shoal(&["invoke"], &[("SHOAL_URL", &hostport), token]);
    let err = text(&out.stderr);
    assert!(err.contains("Usage: shoal invoke"), "{err}");
    assert!(!err.contains("--url"), "{err}");
    assert!(!err.contains("--token"), "{err}");

    // `serve --listen localhost:0` resolves the name.
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(data.path().join("data"))
        .env("SHOAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let listening = lines
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("Shoal listening on "))
        .expect("the node listens");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        listening.starts_with("Shoal listening on http://127.0.0.1:"),
        "{listening}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removals_that_lose_data_need_force_without_a_terminal() {
    let node = TestNode::start();
    let c = node.client();

    // A category with documents.
    let out = node.cli_with_stdin(&["write", "keep", "-"], Some(r#"[{"n": 1}]"#));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = node.cli(&["categories", "rm", "keep"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("holds 1 document"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(c.category("keep").await.unwrap().docs, 1, "nothing lost");
    let (code, _) = json_error(&node.cli(&["--json", "categories", "rm", "keep"]));
    assert_eq!(code, "force_required");
    let out = node.cli(&["categories", "rm", "keep", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(c.category("keep").await.unwrap_err().status(), Some(404));
    // An empty one goes without --force.
    c.create_category("empty", None).await.unwrap();
    assert!(node.cli(&["categories", "rm", "empty"]).status.success());

    // A queue with a waiting message: neither purged nor removed.
    c.put_queue("work", &Default::default()).await.unwrap();
    assert!(node.cli(&["queues", "send", "work", "1"]).status.success());
    for args in [&["queues", "purge", "work"][..], &["queues", "rm", "work"]] {
        let out = node.cli(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains("--force"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(c.queue("work").await.unwrap().depth.waiting, 1);
    let v = json_out(&node.cli(&["--json", "queues", "purge", "work", "--force"]));
    assert_eq!(v["count"], 1);
    assert!(node.cli(&["queues", "rm", "work"]).status.success());

    // A queue a function subscribes to.
    deploy(&c, "name = \"sub\"\n[subscribe]\nqueue = \"feed\"", ECHO).await;
    let out = node.cli(&["queues", "rm", "feed"]);
    assert!(
        text(&out.stderr).contains("function `sub` subscribed"),
        "{}",
        text(&out.stderr)
    );
    assert!(c.queue("feed").await.is_ok());

    // A function: always asked.
    let out = node.cli(&["functions", "rm", "sub"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert!(c.function("sub").await.is_ok());
    assert!(
        node.cli(&["functions", "rm", "sub", "--force"])
            .status
            .success()
    );
    assert_eq!(c.function("sub").await.unwrap_err().status(), Some(404));
    let out = node.cli(&["--json", "functions", "rm", "nope", "--force"]);
    assert_eq!(json_error(&out).0, "function_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_send_says_so() {
    let node = TestNode::start();
    node.client()
        .put_queue("orders", &Default::default())
        .await
        .unwrap();
    let send = [
        "queues",
        "send",
        "orders",
        r#"{"n": 1}"#,
        "--dedup-id",
        "o-1",
    ];
    let out = node.cli(&send);
    assert!(out.status.success());
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 36, "an id: {id}");

    let out = node.cli(&send);
    assert!(out.status.success(), "a duplicate is no error");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("duplicate of {id}: not sent again")
    );
    let mut json_send = vec!["--json"];
    json_send.extend(send);
    let v = json_out(&node.cli(&json_send));
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["ids"], json!([id]));
    let q = node.client().queue("orders").await.unwrap();
    assert_eq!(q.depth.waiting, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_admin_token_stays_and_a_lost_one_is_recovered_locally() {
    let mut node = TestNode::start();
    let c = node.client();
    let admin = c
        .tokens()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .find(|t| t.role == "admin")
        .unwrap();
    let out = node.cli(&["--json", "tokens", "revoke", &admin.id]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "last_admin_token");
    assert!(
        message.contains("create another admin token first"),
        "{message}"
    );
    assert!(c.tokens().await.is_ok(), "the admin token still works");

    // A wrong token points at the way back.
    let out = shoal(
        &["tokens", "list"],
        &[("SHOAL_URL", &node.url), ("SHOAL_TOKEN", "shoal_wrong")],
    );
    let err = text(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("\nhint: ") && err.contains("shoal tokens recover"),
        "{err}"
    );

    let data_dir = node.data_dir.display().to_string();
    // Not while the node runs: the store is locked.
    let out = shoal(&["tokens", "recover", "--data-dir", &data_dir], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stop the node"),
        "{}",
        text(&out.stderr)
    );
    // Nor over the network: there is no such route.
    let (status, _) = c
        .raw("POST", "/v1/tokens/recover", None, Vec::new())
        .await
        .unwrap();
    assert!(status == 404 || status == 405, "{status}");

    // The admin token is lost: the file is gone, the secret forgotten.
    node.kill9();
    let file = node.data_dir.join("admin.token");
    std::fs::remove_file(&file).unwrap();
    let out = shoal(
        &["--json", "tokens", "recover", "--data-dir", &data_dir],
        &[],
    );
    let v = json_out(&out);
    assert_eq!(v["role"], "admin");
    let recovered = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(recovered.starts_with("shoal_"));
    assert!(
        !text(&out.stdout).contains(&recovered),
        "the secret stays in the file"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The node starts on it, and the recovered token is an admin.
    node.kill9_and_restart();
    assert_eq!(node.token, recovered);
    let names: Vec<String> = node
        .client()
        .tokens()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .filter(|t| t.role == "admin")
        .map(|t| t.name)
        .collect();
    assert!(
        names.contains(&"admin (recovered)".to_string()),
        "{names:?}"
    );
}

/// Runs `shoal ARGS` on a terminal (a pty from `script`), typing `answer`.
fn on_a_terminal(node: &TestNode, args: &str, answer: &str) -> (bool, String) {
    use std::io::Write;
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_shoal"));
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_removals_ask_first() {
    let node = TestNode::start();
    let c = node.client();
    let out = node.cli_with_stdin(&["write", "keep", "-"], Some(r#"[{"n": 1}, {"n": 2}]"#));
    assert!(out.status.success());

    let (ok, shown) = on_a_terminal(&node, "categories rm keep", "n\n");
    assert!(!ok, "{shown}");
    assert!(shown.contains("holds 2 documents"), "{shown}");
    assert!(shown.contains("Go ahead? [y/N]"), "{shown}");
    assert_eq!(c.category("keep").await.unwrap().docs, 2, "a no keeps it");

    let (ok, shown) = on_a_terminal(&node, "categories rm keep", "y\n");
    assert!(ok, "{shown}");
    assert_eq!(c.category("keep").await.unwrap_err().status(), Some(404));
}
