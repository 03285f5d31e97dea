//! The whole conformance suite, one test per case, with every port on one
//! real `redis-server` (the test's own), and the whole suite run twice
//! against one store (cases use unique names, so they share a Redis).

use std::borrow::Borrow;
use std::sync::Arc;

use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

/// A backend on a server of its own, which lives as long as the fixture.
struct Fixture {
    backend: Backend,
    _server: RedisServer,
}

impl Borrow<Backend> for Fixture {
    fn borrow(&self) -> &Backend {
        &self.backend
    }
}

async fn fresh() -> Fixture {
    let server = RedisServer::start(&[]);
    let (store, _) = RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server");
    Fixture {
        backend: Backend::from_adapter(Arc::new(store)),
        _server: server,
    }
}

shoal_store::conformance_suite!(fresh);

#[tokio::test]
async fn the_whole_suite_twice_on_one_store() {
    let fixture = fresh().await;
    conformance::run_all(&fixture.backend).await;
    conformance::run_all(&fixture.backend).await;
}
