//! The catalog port on a real `redis-server` (Debian's package; `scripts/test`
//! installs it): the conformance suite's catalog cases, one test each, and
//! the server checks a node makes before it trusts a Redis with its data.

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, Error, conformance};
use shoal_store_redis::{ConnectError, Options, RedisStore};

use shoal_store_redis::testing::{RedisServer, free_port};

/// A store on `server`, connected and checked.
async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0
}

/// A backend whose catalog is on Redis (the other ports are not there yet;
/// the catalog cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let store = store(server).await;
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: Arc::new(store),
        invocations: memory.clone(),
        queues: memory.clone(),
        docs: memory.clone(),
        jobs: memory.clone(),
        kv: memory.clone(),
        blobs: memory.clone(),
        channels: memory.clone(),
        usage: memory,
    }
}

macro_rules! catalog_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::catalog::$case(&backend(&server).await).await;
            }
        )*
    };
}

catalog_cases!(
    functions,
    function_versions_after_remove,
    function_refs,
    tokens,
    queue_and_limiter_records,
);

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_refused() {
    let server = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let Err(ConnectError::Rejected(message)) = RedisStore::connect(&server.options()).await else {
        panic!("a Redis that evicts keys was accepted");
    };
    assert!(
        message.contains("maxmemory-policy allkeys-lru") && message.contains("noeviction"),
        "{message}"
    );
}

#[tokio::test]
async fn the_append_only_file_is_reported() {
    let with = RedisServer::start(&[]);
    let (_, notes) = RedisStore::connect(&with.options()).await.unwrap();
    assert!(notes.append_only);
    let without = RedisServer::start(&["--appendonly", "no"]);
    let (_, notes) = RedisStore::connect(&without.options()).await.unwrap();
    assert!(!notes.append_only);
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let port = free_port();
    let options = Options {
        url: format!("redis://127.0.0.1:{port}/0"),
        namespace: "shoal-test".into(),
        ca_file: None,
        blob_cache_dir: None,
        blob_cache_bytes: shoal_store_redis::DEFAULT_BLOB_CACHE_BYTES,
    };
    assert!(matches!(
        RedisStore::connect(&options).await,
        Err(ConnectError::Unreachable(_))
    ));
}

/// The ports' contract: a write is issued when its method is called, in
/// call order, even when its future is dropped unpolled.
#[tokio::test]
async fn a_dropped_write_still_happens_in_call_order() {
    use shoal_store::Catalog;
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let mut record = conformance::sample_function(&conformance::unique("f"), "main:one");
    drop(store.deploy_function(record.clone()));
    record.handler = "main:two".into();
    drop(store.deploy_function(record.clone()));
    let versions = store.function_versions(record.name.as_str()).await.unwrap();
    let handlers: Vec<&str> = versions.iter().map(|v| v.handler.as_str()).collect();
    assert_eq!(handlers, ["main:one", "main:two"]);
}

/// Redis restarted (with its append-only file): calls made while it is down
/// fail as unavailable; the store reconnects by itself, and what was
/// acknowledged before is there.
#[tokio::test]
async fn the_store_reconnects_after_redis_restarts() {
    use shoal_store::Catalog;
    let mut server = RedisServer::start(&["--appendfsync", "always"]);
    let store = store(&server).await;
    let record = conformance::sample_function(&conformance::unique("f"), "main:run");
    store.deploy_function(record.clone()).await.unwrap();
    server.kill();
    assert!(matches!(
        store.function(record.name.as_str()).await,
        Err(Error::Unavailable(_))
    ));
    server.restart();
    let found = store.function(record.name.as_str()).await.unwrap();
    assert_eq!(found.map(|r| r.version), Some(1));
}

/// Nodes sharing a Redis notice each other's catalog writes by its
/// generation; code archives and node heartbeats round-trip.
#[tokio::test]
async fn the_generation_moves_with_every_catalog_write() {
    use shoal_store::{Catalog, LimiterRecord, NodeRecord};
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let mut last = store.catalog_generation().await.unwrap();
    let mut moved = |now: u64, what: &str| {
        assert!(now > last, "{what} did not move the generation");
        last = now;
    };
    let record = conformance::sample_function(&conformance::unique("f"), "main:run");
    store.deploy_function(record.clone()).await.unwrap();
    moved(store.catalog_generation().await.unwrap(), "a deploy");
    let limiter = LimiterRecord {
        name: conformance::unique("l"),
        per_second: 1.0,
        burst: 1,
        updated_at_ms: 1,
    };
    store.put_limiter(limiter.clone()).await.unwrap();
    moved(store.catalog_generation().await.unwrap(), "a limiter");
    assert!(store.remove_limiter(&limiter.name).await.unwrap());
    moved(
        store.catalog_generation().await.unwrap(),
        "a limiter removal",
    );
    assert!(store.remove_function(record.name.as_str()).await.unwrap());
    moved(store.catalog_generation().await.unwrap(), "a removal");

    let archive = vec![0u8, 255, 1, 2, 3];
    store.put_code("abc", archive.clone()).await.unwrap();
    assert_eq!(store.code("abc").await.unwrap(), Some(archive));
    assert_eq!(store.code("other").await.unwrap(), None);

    let node = NodeRecord {
        id: "n1".into(),
        address: "127.0.0.1:7700".into(),
        version: "0.1.0".into(),
        started_at_ms: 1,
        last_seen_ms: 2,
        running: 3,
        workers: 4,
        load: Some(0.5),
    };
    store.put_node(node.clone()).await.unwrap();
    assert_eq!(store.nodes().await.unwrap(), vec![node]);
    assert!(store.remove_node("n1").await.unwrap());
    assert!(store.nodes().await.unwrap().is_empty());
}

/// Wrong credentials are refused with a message that says so (waiting
/// would not help), unlike an unreachable server.
#[tokio::test]
async fn wrong_credentials_are_rejected() {
    let server = RedisServer::start(&["--requirepass", "right"]);
    for url in [
        format!("redis://:wrong@127.0.0.1:{}/0", server.port()),
        format!("redis://127.0.0.1:{}/0", server.port()),
    ] {
        let options = Options {
            url,
            namespace: "shoal-test".into(),
            ca_file: None,
            blob_cache_dir: None,
            blob_cache_bytes: shoal_store_redis::DEFAULT_BLOB_CACHE_BYTES,
        };
        match RedisStore::connect(&options).await {
            Err(ConnectError::Rejected(message)) => {
                assert!(message.contains("credentials"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("connected with wrong credentials"),
        }
    }
    let options = Options {
        url: format!("redis://:right@127.0.0.1:{}/0", server.port()),
        namespace: "shoal-test".into(),
        ca_file: None,
        blob_cache_dir: None,
        blob_cache_bytes: shoal_store_redis::DEFAULT_BLOB_CACHE_BYTES,
    };
    assert!(RedisStore::connect(&options).await.is_ok());
}

/// Two stores (two nodes) drawing from one limiter together never get more
/// than its rate plus its burst: the state is one key, on Redis's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_holds_across_nodes() {
    use shoal_store::{Catalog, TokenRate};
    let server = RedisServer::start(&[]);
    // 20 per second, bursts of 3.
    let rate = TokenRate {
        interval_ms: 50.0,
        window_ms: 100.0,
    };
    let name = conformance::unique("vendor");
    let peek = store(&server)
        .await
        .take_tokens(&name, rate, 10, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peek.granted, 3, "a fresh limiter offers its burst");
    let started = std::time::Instant::now();
    let node = async |store: RedisStore| {
        let mut granted = 0u32;
        while started.elapsed() < std::time::Duration::from_millis(1000) {
            let t = store
                .take_tokens(&name, rate, 2, false)
                .await
                .unwrap()
                .unwrap();
            granted += t.granted;
            if t.granted == 0 {
                assert!(t.wait_ms <= 50, "{t:?}");
                tokio::time::sleep(std::time::Duration::from_millis(t.wait_ms)).await;
            }
        }
        granted
    };
    let (a, b) = tokio::join!(node(store(&server).await), node(store(&server).await));
    let total = a + b;
    let elapsed_ms = started.elapsed().as_millis() as u32;
    // At most the burst plus one token per interval elapsed; and the
    // limiter did not starve them either.
    assert!(
        total <= 3 + elapsed_ms / 50 + 1,
        "{total} in {elapsed_ms} ms"
    );
    assert!(total >= 15, "{total} in {elapsed_ms} ms");
}

/// `rediss://`: TLS to a server whose certificate a given authority
/// signed; without that authority the server is refused as untrusted
/// (waiting would not help).
#[tokio::test]
async fn tls_with_a_certificate_authority() {
    use shoal_store::Catalog;
    let server = RedisServer::start_tls(&[]);
    assert!(server.url().starts_with("rediss://"));
    let store = store(&server).await;
    let record = conformance::sample_function(&conformance::unique("f"), "main:run");
    assert_eq!(store.deploy_function(record).await.unwrap(), 1);

    let untrusted = Options {
        ca_file: None,
        ..server.options()
    };
    match RedisStore::connect(&untrusted).await {
        Err(ConnectError::Rejected(message)) => {
            assert!(message.contains("--redis-ca-file"), "{message}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a certificate no trusted authority signed was accepted"),
    }
}
