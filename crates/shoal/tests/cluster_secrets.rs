//! Secrets on several real `shoal serve` nodes sharing one real
//! `redis-server`: the store keeps their ciphertext, every node started with
//! the same `--secrets-key-file` opens it, and a node with another key
//! refuses clearly instead of running functions without their secrets.

mod common;

use std::time::Duration;

use common::{TestNode, deploy};
use serde_json::json;
use shoal_store_redis::testing::RedisServer;

const VALUE: &str = "sk-live-5eCr3t-9f8e7d";
const ROTATED: &str = "sk-live-rotated-0a1b2c3d4e";

const USES_IT: &str = r#"
import os

def handler(event, ctx):
    key = os.environ.get("API_KEY")
    return {"key": key, "length": len(key or "")}
"#;

fn node_on(redis: &RedisServer, key_file: Option<&std::path::Path>) -> TestNode {
    let mut args = vec![
        "--store".to_string(),
        redis.url(),
        "--redis-namespace".into(),
        "e2e".into(),
    ];
    if let Some(k) = key_file {
        args.push("--secrets-key-file".into());
        args.push(k.to_str().unwrap().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestNode::start_with(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_one_key_share_secrets_and_a_node_with_another_refuses() {
    let redis = RedisServer::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let nodes = [
        node_on(&redis, Some(&key)),
        node_on(&redis, Some(&key)),
        // Its own key (DATA_DIR/secrets.key): not the cluster's.
        node_on(&redis, None),
    ];
    let c: Vec<_> = nodes.iter().map(|n| n.client()).collect();

    // Set on node 0 (which creates the key file), deployed on node 0: a
    // call on node 1 runs with the value.
    c[0].set_secret("API_KEY", VALUE).await.unwrap();
    assert!(key.is_file());
    deploy(&c[0], "name = \"vendor\"\nsecrets = [\"API_KEY\"]", USES_IT).await;
    let result = c[1].invoke("vendor", "{}").await.unwrap().result.unwrap();
    assert_eq!(result["length"], json!(VALUE.len()), "{result}");
    assert_eq!(result["key"], json!("***"), "{result}");
    let listed = c[1].secrets().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "API_KEY");

    // A new value set on node 1 reaches node 0's workers within a poll.
    c[1].set_secret("API_KEY", ROTATED).await.unwrap();
    common::until(
        "node 0 runs with the new value",
        Duration::from_secs(10),
        async || {
            let r = c[0].invoke("vendor", "{}").await.unwrap().result.unwrap();
            r["length"] == json!(ROTATED.len())
        },
    )
    .await;

    // Nothing about secrets in the nodes' data directories: the
    // ciphertext is in Redis, the key where the operator put it.
    for n in &nodes[..2] {
        assert!(!n.data_dir.join("secrets.enc").exists());
        assert!(!n.data_dir.join("secrets.key").exists());
    }

    // Node 2's key does not open them: it says so on the secrets
    // endpoints and refuses to run the function, instead of running it
    // without its secret.
    let wrong = |e: String| {
        assert!(
            e.contains("does not match the cluster's") && e.contains("--secrets-key-file"),
            "{e}"
        );
    };
    wrong(c[2].secrets().await.unwrap_err().to_string());
    wrong(
        c[2].set_secret("OTHER", "value-2")
            .await
            .unwrap_err()
            .to_string(),
    );
    wrong(c[2].invoke("vendor", "{}").await.unwrap_err().to_string());
    let out = nodes[2].cli(&["secrets"]);
    assert!(!out.status.success());
    wrong(String::from_utf8_lossy(&out.stderr).into_owned());
    // Functions without secrets run there as usual.
    deploy(&c[2], "name = \"plain\"", USES_IT).await;
    let plain = c[0].invoke("plain", "{}").await.unwrap().result.unwrap();
    assert_eq!(plain["key"], json!(null), "{plain}");
    // And the cluster's secrets are unharmed by the refused write.
    let r = c[1].invoke("vendor", "{}").await.unwrap().result.unwrap();
    assert_eq!(r["length"], json!(ROTATED.len()), "{r}");
}

/// The Redis adapter's half: one binary-safe blob, written only by a
/// compare-and-set on its version, each write moving the catalog
/// generation.
#[tokio::test]
async fn redis_keeps_the_sealed_secrets_by_compare_and_set() {
    use shoal_store::{Catalog, SealedSecrets};
    let redis = RedisServer::start(&[]);
    let (store, _) = shoal_store_redis::RedisStore::connect(&redis.options())
        .await
        .unwrap();
    assert_eq!(
        store.secrets().await.unwrap(),
        Some(SealedSecrets::default())
    );
    let sealed = vec![1u8, 0, 255, 13, 10, 0x80, b'x'];
    let before = store.catalog_generation().await.unwrap();
    assert_eq!(store.put_secrets(0, sealed.clone()).await.unwrap(), Some(1));
    assert!(store.catalog_generation().await.unwrap() > before);
    // A write based on a stale read is refused and changes nothing.
    let after = store.catalog_generation().await.unwrap();
    assert_eq!(store.put_secrets(0, b"stale".to_vec()).await.unwrap(), None);
    assert_eq!(store.catalog_generation().await.unwrap(), after);
    assert_eq!(
        store.secrets().await.unwrap(),
        Some(SealedSecrets { version: 1, sealed })
    );
    assert_eq!(
        store.put_secrets(1, b"next".to_vec()).await.unwrap(),
        Some(2)
    );
}
