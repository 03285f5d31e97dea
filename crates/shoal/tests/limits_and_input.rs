//! Through a real node (issue 9, item 8): the node's files are its user's
//! alone, and `/metrics` needs a token unless `--metrics-public`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{TestNode, deploy};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every directory and file under `dir` (itself included) with its mode
/// when that is not `dirs` (directories) or `files` (files).
fn wider_than(dir: &Path, dirs: u32, files: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let m = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if m != dirs {
                wrong.push(format!("{} {m:o}", path.display()));
            }
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() && m & !files != 0 {
            wrong.push(format!("{} {m:o}", path.display()));
        }
    }
    wrong
}

#[tokio::test]
async fn the_data_directory_is_0700_and_its_files_0600_also_after_an_older_node() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"m\"", "def handler(e, ctx):\n    return 1\n").await;
    assert_eq!(
        c.invoke("m", "{}").await.unwrap().result.unwrap(),
        serde_json::json!(1)
    );
    let data = node.data_dir.clone();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("shoal.redb")), 0o600);
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    let functions = data.join("functions");
    assert_eq!(wider_than(&functions, 0o700, 0o600), Vec::<String>::new());
    let code = std::fs::read_dir(functions.join("m")).unwrap().count();
    assert!(code >= 1, "the function's code is on disk");

    // A data directory left wider by an older node is narrowed at start.
    node.kill9();
    let open =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    open(&data, 0o755);
    open(&data.join("shoal.redb"), 0o644);
    open(&functions, 0o755);
    open(&functions.join("m"), 0o755);
    node.kill9_and_restart();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("shoal.redb")), 0o600);
    assert_eq!(mode(&functions), 0o700);
    assert_eq!(mode(&functions.join("m")), 0o700);
    let c = node.client();
    assert_eq!(
        c.invoke("m", "{}").await.unwrap().result.unwrap(),
        serde_json::json!(1)
    );
}

#[tokio::test]
async fn metrics_need_a_token_unless_the_node_is_started_with_metrics_public() {
    let node = TestNode::start();
    let anonymous = node.client_with(None);
    let (status, body) = anonymous
        .raw("GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"unauthorized\""), "{body}");
    let (status, body) = node
        .client_with(Some("shoal_not-a-token"))
        .raw("GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    // A reader token is enough.
    let reader = node
        .client()
        .create_token("reader", Some("scraper"))
        .await
        .unwrap()
        .token;
    let (status, text) = node
        .client_with(Some(&reader))
        .raw("GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    // /healthz stays open.
    assert_eq!(anonymous.health().await.unwrap().status, "ok");

    let public = TestNode::start_with(&["--metrics-public"]);
    let (status, body) = public
        .client_with(None)
        .raw("GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}
