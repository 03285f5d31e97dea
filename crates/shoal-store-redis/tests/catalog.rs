//! The catalog port on a real `redis-server` (Debian's package; `scripts/test`
//! installs it): the conformance suite's catalog cases, one test each, and
//! the server checks a node makes before it trusts a Redis with its data.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, Error, conformance};
use shoal_store_redis::{Options, RedisStore};

/// A `redis-server` of this test's own, on a free loopback port with its
/// own directory; stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--maxmemory-policy", "noeviction"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server (scripts/test installs Debian's redis-server): {e}"
                )
            });
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn options(&self) -> Options {
        Options {
            url: format!("redis://127.0.0.1:{}/0", self.port),
            namespace: "shoal-test".into(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend whose catalog is on Redis (the other ports are not there yet;
/// the catalog cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let (store, _) = RedisStore::connect(&server.options())
        .await
        .expect("connect");
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: Arc::new(store),
        invocations: memory.clone(),
        queues: memory.clone(),
        docs: memory.clone(),
        jobs: memory,
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
    let Err(Error::Unavailable(message)) = RedisStore::connect(&server.options()).await else {
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
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let options = Options {
        url: format!("redis://127.0.0.1:{port}/0"),
        namespace: "shoal-test".into(),
    };
    assert!(matches!(
        RedisStore::connect(&options).await,
        Err(Error::Unavailable(_))
    ));
}
