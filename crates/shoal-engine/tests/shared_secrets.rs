//! Secrets on several nodes sharing one store: the store keeps their
//! ciphertext, every node opens it with the same key file, and a node whose
//! key does not open it says so instead of running functions without them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use common::{BASE_MS, archive, ms};
use shoal_engine::{Handle, Options, OutMessage, Parts, QueueSettings, TokioClock};
use shoal_runtime::fake::FakeRuntime;
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::{InvocationStatus, Outcome};

const VALUE: &str = "sk-live-0123456789";

/// An engine on `backend` with its own data directory and the secrets key
/// `key` (`None`: its own, `DATA_DIR/secrets.key`).
struct Node {
    engine: Handle,
    fake: FakeRuntime,
    _data: tempfile::TempDir,
}

async fn node(backend: Backend, key: Option<PathBuf>) -> Node {
    let data = tempfile::tempdir().unwrap();
    let mut opts = Options::new(data.path().to_path_buf());
    opts.secrets_key_file = key;
    let fake = FakeRuntime::new();
    let engine = shoal_engine::start_with(Parts {
        opts,
        backend,
        runtime: Arc::new(fake.clone()),
        clock: Arc::new(TokioClock::starting_at(BASE_MS)),
        random: None,
        shutdown: CancellationToken::new(),
        webhook: None,
    })
    .await
    .expect("the engine starts");
    Node {
        engine,
        fake,
        _data: data,
    }
}

async fn two_nodes(key_a: Option<&Path>, key_b: Option<&Path>) -> (Node, Node) {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = node(backend.clone(), key_a.map(Path::to_path_buf)).await;
    let b = node(backend, key_b.map(Path::to_path_buf)).await;
    (a, b)
}

const MANIFEST: &str = "name = \"pay\"\nhandler = \"main:handler\"\nsecrets = [\"API_KEY\"]\n";

/// What a call of `pay` answered when its event held the secret's value
/// (the fake runtime echoes the event): `***` when the node knows the value
/// (it redacts it), the value itself when it does not.
async fn echoed(node: &Node) -> String {
    let event = format!("{{\"key\":\"{VALUE}\"}}");
    let done = node.engine.invoke("pay", event).await.unwrap();
    match done.outcome {
        Outcome::Succeeded(v) => v.to_string(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_secret_set_on_one_node_reaches_functions_on_another() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let (a, b) = two_nodes(Some(&key), Some(&key)).await;
    a.engine.set_secret("API_KEY", VALUE).await.unwrap();
    // No poll has passed: B reads the secrets as the deploy needs them.
    b.engine.deploy(archive(MANIFEST)).await.unwrap();
    let out = echoed(&b).await;
    assert!(out.contains("***") && !out.contains(VALUE), "{out}");
    // A runs it too (found on the miss), with the value.
    let out = echoed(&a).await;
    assert!(out.contains("***") && !out.contains(VALUE), "{out}");
    let names: Vec<String> = b
        .engine
        .secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["API_KEY"]);

    // A new value set on B: A's function has it within a poll (its old
    // value is no longer what it redacts).
    b.engine
        .set_secret("API_KEY", "sk-live-rotated-42")
        .await
        .unwrap();
    tokio::time::sleep(ms(300)).await;
    let out = echoed(&a).await;
    assert!(out.contains(VALUE), "A still has the old value: {out}");

    // Removal through B is refused while A's function names it.
    assert!(b.engine.remove_secret("API_KEY").await.is_err());
    // Nothing in the data directories: the store holds the ciphertext.
    for n in [&a, &b] {
        assert!(!n._data.path().join("secrets.enc").exists());
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_with_another_key_refuses_clearly() {
    let (a, b) = two_nodes(None, None).await;
    a.engine.set_secret("API_KEY", VALUE).await.unwrap();
    a.engine.deploy(archive(MANIFEST)).await.unwrap();
    tokio::time::sleep(ms(300)).await;
    let wrong_key = |e: shoal_engine::Error| {
        let text = e.to_string();
        assert!(
            text.contains("does not match the cluster's") && text.contains("--secrets-key-file"),
            "{text}"
        );
    };
    wrong_key(b.engine.secrets().await.unwrap_err());
    wrong_key(b.engine.set_secret("OTHER", "value-2").await.unwrap_err());
    // The function A deployed is not run on B without its secret.
    wrong_key(b.engine.invoke("pay", "{}".into()).await.unwrap_err());
    wrong_key(b.engine.invoke_async("pay", "{}".into()).await.unwrap_err());
    // Nor is a function naming a secret deployed there.
    let other = MANIFEST.replace("\"pay\"", "\"pay2\"");
    wrong_key(b.engine.deploy(archive(&other)).await.unwrap_err());
    // A is untouched.
    let out = echoed(&a).await;
    assert!(out.contains("***"), "{out}");
    // Asynchronous invocations and queue messages for functions naming a
    // secret all run on A, none on B.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(a.engine.invoke_async("pay", "{}".into()).await.unwrap());
    }
    a.engine
        .put_queue("orders", QueueSettings::default())
        .await
        .unwrap();
    let worker = "name = \"worker\"\nhandler = \"main:handler\"\nsecrets = [\"API_KEY\"]\n[subscribe]\nqueue = \"orders\"\n";
    a.engine.deploy(archive(worker)).await.unwrap();
    tokio::time::sleep(ms(300)).await;
    let messages = (0..6)
        .map(|i| OutMessage {
            body: format!("{{\"i\":{i}}}"),
            delay: ms(0),
            dedup_id: None,
        })
        .collect();
    b.engine.send("orders", messages).await.unwrap();
    tokio::time::sleep(ms(5_000)).await;
    for id in &ids {
        let record = a.engine.invocation(id).await.unwrap();
        assert_eq!(record.status, InvocationStatus::Succeeded, "{record:?}");
    }
    assert_eq!(a.fake.calls_of("worker").len(), 6);
    assert!(b.fake.calls_of("pay").is_empty());
    assert!(b.fake.calls_of("worker").is_empty());
}
