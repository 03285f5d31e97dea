//! The shared storage conformance suite against redb: one test per case,
//! each on a fresh file in its own temporary directory. Run one case alone
//! with `cargo test -p shoal-store-redb --test conformance <case> -- --exact`.

use std::borrow::Borrow;
use std::sync::Arc;

use shoal_store::{Backend, conformance};
use shoal_store_redb::RedbStore;
use tempfile::TempDir;

/// A store and the directory holding its file, removed after the store.
struct Fixture {
    backend: Backend,
    _dir: TempDir,
}

impl Borrow<Backend> for Fixture {
    fn borrow(&self) -> &Backend {
        &self.backend
    }
}

async fn fresh() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<RedbStore> = RedbStore::open(&dir.path().join("data/shoal.redb")).unwrap();
    Fixture {
        backend: Backend::from_adapter(store),
        _dir: dir,
    }
}

shoal_store::conformance_suite!(fresh);

/// Every case twice on one store, on a multi-threaded runtime: names are
/// unique per run, so cases can share a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_twice_on_one_store() {
    let fixture = fresh().await;
    conformance::run_all(&fixture.backend).await;
    conformance::run_all(&fixture.backend).await;
}
