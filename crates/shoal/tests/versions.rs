//! End to end: versions through the CLI and HTTP against a real `shoal
//! serve` — show (who deployed, code hash, which is live), rollback,
//! pinned invocations (`NAME@N`), aliases (`NAME@ALIAS`), unchanged
//! deploys, the live pointer and aliases across a restart, and `shoal init`.

mod common;

use common::TestNode;
use serde_json::{Value, json};

fn code(answer: &str) -> String {
    format!("def handler(event, ctx):\n    return {answer:?}\n")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn answer(c: &shoal_client::Client, name: &str) -> Value {
    c.invoke(name, "{}").await.unwrap().result.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_rollback_pinned_versions_and_aliases_through_cli_and_http() {
    let mut node = TestNode::start();
    let c = node.client();
    let dir = common::function_dir("name = \"hello\"", &code("v1"));
    let path = dir.path().to_str().unwrap();

    let out = ok(&node.cli(&["deploy", path]));
    assert!(out.contains("Deployed hello version 1"), "{out}");
    // The same code again changes nothing, and says so.
    let out = ok(&node.cli(&["deploy", path]));
    assert_eq!(out.trim(), "hello: unchanged, still version 1.");
    let out = ok(&node.cli(&["--json", "deploy", path]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["unchanged"].clone(), v["version"].clone()),
        (json!(true), json!(1))
    );
    for n in ["v2", "v3"] {
        std::fs::write(dir.path().join("main.py"), code(n)).unwrap();
        ok(&node.cli(&["deploy", path]));
    }
    assert_eq!(answer(&c, "hello").await, json!("v3"));

    // Show: every version, who deployed it, its code hash, which is live.
    let admin = c.tokens().await.unwrap().tokens[0].clone();
    let v = c.function_versions("hello").await.unwrap();
    assert_eq!(v.live, 3);
    assert_eq!(
        v.versions.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let by = v.versions[0].deployed_by.clone().expect("who deployed");
    assert_eq!((by.token_id, by.token_name), (admin.id, admin.name.clone()));
    assert!(v.versions.iter().all(|r| r.code_digest.is_some()));
    assert!(v.versions[2].live && !v.versions[1].live);
    let table = ok(&node.cli(&["functions", "show", "hello"]));
    assert!(table.starts_with("hello: version 3 is live"), "{table}");
    let live_row = table.lines().find(|l| l.starts_with("live")).unwrap();
    assert!(
        live_row.contains(" 3 ") && live_row.contains(&admin.name),
        "{table}"
    );
    let digest = v.versions[0].code_digest.clone().unwrap();
    assert!(table.contains(&digest[..12]), "{table}");
    let shown: Value =
        serde_json::from_str(&ok(&node.cli(&["--json", "functions", "show", "hello"]))).unwrap();
    assert_eq!(shown["live"], json!(3));

    // Pinned versions, by CLI and HTTP.
    let out = ok(&node.cli(&["invoke", "hello@1"]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!("v1"));
    assert_eq!(answer(&c, "hello@2").await, json!("v2"));
    let err = c.invoke("hello@9", "{}").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    // Rollback: to the version before the live one, or to a named one.
    let out = ok(&node.cli(&["functions", "rollback", "hello"]));
    assert_eq!(out.trim(), "hello: version 2 is live.");
    assert_eq!(answer(&c, "hello").await, json!("v2"));
    let live = c.rollback("hello", Some(1)).await.unwrap();
    assert_eq!(live.version, 1);
    assert_eq!(answer(&c, "hello").await, json!("v1"));
    let err = failed(&node.cli(&["functions", "rollback", "hello"]));
    assert!(err.contains("no version before version 1"), "{err}");
    ok(&node.cli(&["functions", "rollback", "hello", "2"]));
    assert_eq!(c.function("hello").await.unwrap().version, 2);

    // Aliases: set by CLI, moved by HTTP, refused when all digits.
    let out = ok(&node.cli(&["functions", "alias", "hello", "prod", "1"]));
    assert!(out.contains("hello@prod → version 1"), "{out}");
    let out = ok(&node.cli(&["invoke", "hello@prod"]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!("v1"));
    c.set_alias("hello", "prod", 3).await.unwrap();
    assert_eq!(answer(&c, "hello@prod").await, json!("v3"));
    c.set_alias("hello", "old", 1).await.unwrap();
    let err = failed(&node.cli(&["functions", "alias", "hello", "42", "1"]));
    assert!(err.contains("all digits"), "{err}");
    let err = c.set_alias("hello", "42", 1).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (
            Some(400),
            Some(shoal_client::protocol::ErrorCode::InvalidInput)
        ),
        "{err}"
    );
    let v = c.function_versions("hello").await.unwrap();
    assert_eq!(
        v.aliases,
        [("old".to_string(), 1), ("prod".to_string(), 3)].into()
    );
    assert_eq!(v.versions[2].aliases, ["prod"]);
    ok(&node.cli(&["functions", "unalias", "hello", "old"]));
    let err = c.invoke("hello@old", "{}").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    // The live pointer and the aliases are durable.
    node.kill9_and_restart();
    let c = node.client();
    assert_eq!(answer(&c, "hello").await, json!("v2"));
    assert_eq!(answer(&c, "hello@prod").await, json!("v3"));
    // A new deploy goes live, whatever was rolled back to.
    std::fs::write(dir.path().join("main.py"), code("v4")).unwrap();
    let out = ok(&node.cli(&["deploy", path]));
    assert!(out.contains("Deployed hello version 4"), "{out}");
    assert_eq!(answer(&c, "hello").await, json!("v4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_scaffolds_a_function_that_deploys_and_answers() {
    let node = TestNode::start();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("greeter");
    let dir = dir.to_str().unwrap();
    let out = ok(&node.cli(&["init", "greeter", dir]));
    assert!(out.contains("shoal deploy"), "{out}");
    let out = ok(&node.cli(&["deploy", dir]));
    assert!(out.contains("Deployed greeter version 1"), "{out}");
    let out = ok(&node.cli(&["invoke", "greeter", r#"{"name": "you"}"#]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"hello": "you"})
    );
    // It never writes over an existing function.
    let err = failed(&node.cli(&["init", "greeter", dir]));
    assert!(err.contains("exists already"), "{err}");
    let err = failed(&node.cli(&["init", "Bad_Name"]));
    assert!(err.contains("not a function name"), "{err}");
}
