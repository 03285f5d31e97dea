//! Secrets: set through the CLI from stdin, stored encrypted, given only to
//! the functions that name them, and never shown in results, errors, logs
//! or listings.

mod common;

use common::{TestNode, deploy};
use serde_json::json;

const VALUE: &str = "sk-live-5eCr3t-9f8e7d";

const USES_IT: &str = r#"
import os

def handler(event, ctx):
    key = os.environ.get("API_KEY")
    print("calling the vendor with", key)
    if event.get("fail"):
        raise RuntimeError("vendor refused key " + key)
    return {"key": key, "length": len(key or "")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_functions_and_never_come_back_out() {
    let node = TestNode::start();
    let c = node.client();

    let out = node.cli_with_stdin(&["secrets", "set", "API_KEY"], Some(&format!("{VALUE}\n")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Secret API_KEY set."
    );
    let listed = node.cli(&["secrets", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("API_KEY") && !listed.contains(VALUE),
        "{listed}"
    );

    // Naming a secret that does not exist is refused at deploy.
    let dir = common::function_dir("name = \"nokey\"\nsecrets = [\"MISSING\"]", USES_IT);
    let err = c
        .deploy(shoal_client::pack_dir(dir.path()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("shoal secrets set MISSING"), "{err}");

    deploy(&c, "name = \"vendor\"\nsecrets = [\"API_KEY\"]", USES_IT).await;
    deploy(&c, "name = \"other\"", USES_IT).await;
    let got = c.invoke("vendor", "{}").await.unwrap();
    let result = got.result.unwrap();
    // The function had it (its length), but the answer does not carry it.
    assert_eq!(result["length"], json!(VALUE.len()), "{result}");
    assert_eq!(result["key"], json!("***"), "{result}");
    let logs = c.logs(&got.id).await.unwrap();
    assert!(logs.contains("calling the vendor with ***"), "{logs}");
    assert!(!logs.contains(VALUE), "{logs}");
    let record = c.invocation(&got.id).await.unwrap();
    assert!(!serde_json::to_string(&record).unwrap().contains(VALUE));
    // Errors are redacted too.
    let failed = c.invoke("vendor", r#"{"fail": true}"#).await.unwrap();
    let error = failed.result.unwrap_err().error;
    assert!(
        error.message.contains("refused key ***") && !error.message.contains(VALUE),
        "{error:?}"
    );
    // A function that does not name it does not get it.
    let other = c.invoke("other", "{}").await.unwrap().result.unwrap();
    assert_eq!(other["key"], json!(null), "{other}");

    // At rest: encrypted, not in the store, the key file private.
    let enc = std::fs::read(node.data_dir.join("secrets.enc")).unwrap();
    assert!(!contains(&enc, VALUE.as_bytes()));
    let store = std::fs::read(node.data_dir.join("shoal.redb")).unwrap();
    assert!(!contains(&store, VALUE.as_bytes()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.data_dir.join("secrets.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // In use: cannot be removed. A new value reaches the function.
    let (status, body) = c
        .raw("DELETE", "/v1/secrets/API_KEY", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("secret_in_use"), "{body}");
    c.set_secret("API_KEY", "another-value-123").await.unwrap();
    let again = c.invoke("vendor", "{}").await.unwrap().result.unwrap();
    assert_eq!(again["length"], json!("another-value-123".len()), "{again}");

    // Only admins handle secrets.
    let (_, reader) = c
        .create_token("reader", Some("r"))
        .await
        .map(|t| ((), t))
        .unwrap();
    let rc = node.client_with(Some(&reader.token));
    let (status, _) = rc
        .raw("GET", "/v1/secrets", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 403);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
