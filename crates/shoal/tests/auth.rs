//! End to end: the admin token file is private, tokens are stored hashed,
//! and the CLI manages tokens. Which caller each route admits (401, 403,
//! revocation) is checked without a node, in the router tier
//! (`crates/shoal-server/tests/router`).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestNode;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles() {
    let node = TestNode::start();
    let mode = std::fs::metadata(node.data_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let admin = node.client();
    let mk = |role: &'static str| {
        let admin = admin.clone();
        async move { admin.create_token(role, Some(role)).await.unwrap() }
    };
    mk("reader").await;
    mk("invoker").await;
    let developer_tok = mk("developer").await;

    // Tokens are listed without secrets, and stored hashed.
    let list = admin.tokens().await.unwrap();
    assert_eq!(list.tokens.len(), 4);
    let raw = std::fs::read(node.data_dir.join("shoal.redb")).unwrap();
    let needle = developer_tok.token.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "a token secret is stored in clear"
    );

    // The CLI does the same.
    let out = node.cli(&["tokens", "create", "--role", "invoker", "--name", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(secret.starts_with("shoal_"));
    let out = node.cli(&["--json", "tokens", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = node.cli(&["tokens", "revoke", &id]);
    assert!(out.status.success());
    let out = node.cli(&["tokens", "create", "--role", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a role"));
}
