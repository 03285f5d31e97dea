//! Runs the shared storage conformance suite against a fresh redb file.

use shoal_store::{Backend, conformance};
use shoal_store_redb::RedbStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("data/shoal.redb")).unwrap();
    let backend = Backend::from_adapter(store);
    conformance::run_all(&backend).await;
    // Names are unique per run: a second run on the same store passes too.
    conformance::run_all(&backend).await;
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_single_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    conformance::run_all(&Backend::from_adapter(store)).await;
}
