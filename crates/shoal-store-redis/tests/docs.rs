//! The docs port on a real `redis-server`: the conformance suite's docs
//! cases, one test each, with the catalog and the docs on Redis (the other
//! ports in memory; the docs cases do not use them).

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;

use shoal_store_redis::testing::RedisServer;

/// A backend whose catalog and docs are on `server`.
async fn backend(server: &RedisServer) -> Backend {
    let store = RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0;
    let store = Arc::new(store);
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: store.clone(),
        invocations: memory.clone(),
        queues: memory.clone(),
        docs: store,
        jobs: memory,
    }
}

macro_rules! docs_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::docs::$case(&backend(&server).await).await;
            }
        )*
    };
}

docs_cases!(
    categories,
    category_placement,
    docs_put_get_replace_delete,
    docs_versions,
    docs_scan_order,
    docs_atomicity,
    docs_write_order,
    delete_category_removes_everything,
    delete_category_if_empty,
    docs_category_isolation,
);
