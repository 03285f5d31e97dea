//! End to end: a user with two tokens made with the CLI (`shoal users add`,
//! `shoal tokens create --user --scope`); the scoped one invokes
//! `resize-*` but not `billing`, and lists show it only its functions; who
//! deployed each version and who started each invocation is recorded and
//! shown; removing the user revokes both tokens.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, function_dir, wait_final};
use serde_json::Value;
use shoal_client::protocol::ErrorCode;

const ECHO: &str = "def handler(event, ctx):\n    return event\n";
const SPAWNS: &str =
    "def handler(event, ctx):\n    return ctx.spawn('resize-thumb', {'from': 'png'})\n";

fn ok_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn secret_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(s.starts_with("shoal_"), "{s}");
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_scoped_token_acts_on_its_functions_only_and_every_action_is_attributed() {
    let node = TestNode::start();
    let admin = node.client();

    // The user and its two tokens, with the CLI.
    let added = ok_json(&node.cli(&["--json", "users", "add", "ana", "--role", "developer"]));
    assert_eq!(added["role"], "developer");
    let dev_secret = secret_of(&node.cli(&[
        "tokens",
        "create",
        "--role",
        "developer",
        "--name",
        "laptop",
        "--user",
        "ana",
    ]));
    let scoped_secret = secret_of(&node.cli(&[
        "tokens",
        "create",
        "--role",
        "developer",
        "--name",
        "resizer",
        "--user",
        "ana",
        "--scope",
        "function:resize-*",
    ]));
    // Not above the user's role.
    let out = node.cli(&["tokens", "create", "--role", "admin", "--user", "ana"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = ok_json(&node.cli(&["--json", "users", "show", "ana"]));
    let tokens = shown["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    let id_of = |name: &str| {
        tokens.iter().find(|t| t["name"] == name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (dev_id, scoped_id) = (id_of("laptop"), id_of("resizer"));
    let table = node.cli(&["users", "ls"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("ana") && table.contains("developer"),
        "{table}"
    );

    // The developer token deploys billing; the scoped one resize-png and
    // resize-thumb, and not billing.
    let dev = node.client_with(Some(&dev_secret));
    let scoped = node.client_with(Some(&scoped_secret));
    deploy(&dev, "name = \"billing\"", ECHO).await;
    deploy(&scoped, "name = \"resize-png\"", SPAWNS).await;
    deploy(&scoped, "name = \"resize-thumb\"", ECHO).await;
    let dir = function_dir("name = \"billing\"", ECHO);
    let refused = scoped
        .deploy(shoal_client::pack_dir(dir.path()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    assert!(
        refused.to_string().contains("function:billing"),
        "{refused}"
    );

    // Who deployed each version.
    let v = admin.function_versions("billing").await.unwrap();
    let by = v.versions[0].deployed_by.clone().unwrap();
    assert_eq!(
        (by.token_id.as_str(), by.user.as_deref()),
        (dev_id.as_str(), Some("ana"))
    );
    let v = admin.function_versions("resize-png").await.unwrap();
    let by = v.versions[0].deployed_by.clone().unwrap();
    assert_eq!(
        (
            by.token_id.as_str(),
            by.token_name.as_str(),
            by.user.as_deref()
        ),
        (scoped_id.as_str(), "resizer", Some("ana"))
    );

    // The scoped token invokes resize-* but not billing.
    let call = scoped.invoke("resize-png", "{}").await.unwrap();
    let spawned: Value = call.result.clone().expect("resize-png succeeded");
    let err = scoped.invoke("billing", "{}").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("function:billing"), "{err}");
    let err = scoped.invoke_async("billing", "{}").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    // Nor anything naming no function (kv, tokens, users).
    let err = scoped.tokens().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    // Lists show it only its functions and their invocations.
    let billing_call = admin.invoke("billing", "{}").await.unwrap();
    let names: Vec<String> = scoped
        .functions()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["resize-png", "resize-thumb"]);
    let listed = scoped.list_invocations(&[]).await.unwrap();
    assert!(
        listed
            .invocations
            .iter()
            .all(|i| i.function.starts_with("resize-")),
        "{:?}",
        listed.invocations
    );
    let err = scoped.invocation(&billing_call.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    // Who started each invocation: the call and the invocation it spawned
    // name the scoped token and the user; the admin's names no user.
    let own = admin.invocation(&call.id).await.unwrap();
    assert_eq!(
        (own.token.as_deref(), own.user.as_deref()),
        (Some(scoped_id.as_str()), Some("ana"))
    );
    let child_id = spawned["id"].as_str().expect("ctx.spawn answered an id");
    let child = wait_final(&admin, child_id, Duration::from_secs(30)).await;
    assert_eq!(child.status, "succeeded");
    assert_eq!(
        (child.token.as_deref(), child.user.as_deref()),
        (Some(scoped_id.as_str()), Some("ana"))
    );
    let by_admin = admin.invocation(&billing_call.id).await.unwrap();
    assert!(by_admin.token.is_some());
    assert_eq!(by_admin.user, None);
    let out = ok_json(&node.cli(&["--json", "invocations", "show", &call.id]));
    assert_eq!(out["user"], "ana");

    // Removing the user revokes both tokens.
    let removed = ok_json(&node.cli(&["--json", "users", "rm", "ana"]));
    assert_eq!(removed["revoked_tokens"].as_array().unwrap().len(), 2);
    for c in [&dev, &scoped] {
        let err = c.functions().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    }
    let out = ok_json(&node.cli(&["--json", "users", "ls"]));
    assert_eq!(out["users"], serde_json::json!([]));
}
