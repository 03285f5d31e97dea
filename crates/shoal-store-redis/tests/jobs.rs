//! The jobs port on a real `redis-server`: the conformance suite's job
//! cases, and listing the invocations jobs write, one test each, with
//! invocations, queues and jobs on Redis.

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

/// A backend whose work ports (invocations, queues, jobs) and catalog are
/// on Redis; documents in memory (the job cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(
        RedisStore::connect(&server.options())
            .await
            .expect("connect to the test's redis-server")
            .0,
    );
    Backend {
        catalog: store.clone(),
        invocations: store.clone(),
        queues: store.clone(),
        docs: Arc::new(MemoryStore::new()),
        jobs: store,
    }
}

macro_rules! cases {
    ($($area:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::$area::$case(&backend(&server).await).await;
            }
        )*
    };
}

cases!(
    jobs::jobs_fan_in_once,
    jobs::jobs_nested_and_cancel,
    invocation_lists::list_invocations_of_jobs,
);
