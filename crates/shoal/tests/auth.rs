//! End to end: tokens are required, roles are enforced, revocation works, and
//! the admin token file is private.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{TestNode, deploy};
use shoal_client::protocol::ErrorCode;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles() {
    let node = TestNode::start();
    let mode = std::fs::metadata(node.data_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let admin = node.client();
    deploy(
        &admin,
        "name = \"f\"",
        "def handler(e, ctx):\n    return 1\n",
    )
    .await;

    // No token, a malformed header, an unknown token: 401.
    let anon = node.client_with(None);
    let e = anon.functions().await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(401), Some(ErrorCode::Unauthorized))
    );
    let e = node
        .client_with(Some("shoal_nope"))
        .functions()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    // /healthz needs none.
    assert!(anon.health().await.is_ok());

    let mk = |role: &'static str| {
        let admin = admin.clone();
        async move { admin.create_token(role, Some(role)).await.unwrap() }
    };
    let reader = node.client_with(Some(&mk("reader").await.token));
    let invoker = node.client_with(Some(&mk("invoker").await.token));
    let developer_tok = mk("developer").await;
    let developer = node.client_with(Some(&developer_tok.token));

    // reader reads, cannot invoke.
    assert!(reader.functions().await.is_ok());
    let e = reader.invoke("f", "{}").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some(ErrorCode::Forbidden))
    );
    // invoker invokes, cannot deploy.
    let id = invoker.invoke("f", "{}").await.unwrap().id;
    assert!(reader.invocation(&id).await.is_ok());
    let archive = shoal_client::pack_dir(
        common::function_dir("name = \"g\"", "def handler(e, c):\n    return 2\n").path(),
    )
    .unwrap();
    let e = invoker.deploy(archive.clone()).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    // developer deploys, cannot manage tokens.
    assert_eq!(developer.deploy(archive).await.unwrap().name, "g");
    let e = developer.create_token("admin", None).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(developer.tokens().await.unwrap_err().status(), Some(403));

    // Tokens are listed without secrets, and stored hashed.
    let list = admin.tokens().await.unwrap();
    assert_eq!(list.tokens.len(), 4);
    let raw = std::fs::read(node.data_dir.join("shoal.redb")).unwrap();
    let needle = developer_tok.token.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "a token secret is stored in clear"
    );

    // Revoked tokens stop working at once.
    admin.revoke_token(&developer_tok.id).await.unwrap();
    assert_eq!(developer.functions().await.unwrap_err().status(), Some(401));
    assert_eq!(
        admin
            .revoke_token(&developer_tok.id)
            .await
            .unwrap_err()
            .status(),
        Some(404)
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
