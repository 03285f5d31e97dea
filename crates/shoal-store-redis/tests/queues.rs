//! The queues port on a real `redis-server`: the conformance suite's queue
//! cases (delivery, stats, cleanup), one test each.

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

/// A backend whose catalog and queues are on Redis (the other ports in
/// memory; the queue cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(
        RedisStore::connect(&server.options())
            .await
            .expect("connect to the test's redis-server")
            .0,
    );
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: store.clone(),
        invocations: memory.clone(),
        queues: store,
        docs: memory.clone(),
        jobs: memory,
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
    queues::queue_lease_and_ack,
    queues::queue_due_order,
    queues::queue_visibility_and_extend,
    queues::queue_nack,
    queues::queue_started,
    queues::queue_dedup,
    queues::queue_isolation,
    queues::queue_bodies,
    queues::queue_dedup_keys,
    queues::queue_keys,
    queue_stats::queue_depth_fields,
    queue_stats::queue_counters,
    queue_stats::queue_samples,
    queue_cleanup::queue_dead_letters,
    queue_cleanup::queue_redrive_and_purge_dead,
    queue_cleanup::queue_purge,
);
