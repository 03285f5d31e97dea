//! The shared storage conformance suite against the in-memory store: one
//! test per case, each on a fresh store. Run one case alone with
//! `cargo test -p shoal-store --test memory_conformance <case> -- --exact`.

use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};

async fn fresh() -> Backend {
    Backend::from_adapter(Arc::new(MemoryStore::new()))
}

shoal_store::conformance_suite!(fresh);

/// Every case twice on one store, on a multi-threaded runtime: names are
/// unique per run, so cases can share a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_twice_on_one_store() {
    let backend = fresh().await;
    conformance::run_all(&backend).await;
    conformance::run_all(&backend).await;
}
