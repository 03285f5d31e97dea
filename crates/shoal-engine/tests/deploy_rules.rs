//! Deploy rules hold under concurrency: the checks and the write of a
//! deploy (and of a limiter removal) happen under one lock, so racing
//! requests cannot both pass a check that only one of them may pass.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Node, archive};
use shoal_engine::{Conflict, Entity, Error, FunctionRecord, LimiterRecord, QueueRecord};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, Catalog, FunctionRefs, Pending, TokenRecord};

/// The in-memory catalog with the latency of a disk: each answer arrives a
/// millisecond after the (already issued) operation, so a racing request
/// runs in between — as it does on the real store.
struct DiskLikeCatalog(Arc<MemoryStore>);

fn later<T: Send + 'static>(p: Pending<T>) -> Pending<T> {
    Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        p.await
    })
}

impl Catalog for DiskLikeCatalog {
    fn deploy_function(&self, record: FunctionRecord) -> Pending<u64> {
        later(self.0.deploy_function(record))
    }
    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>> {
        later(self.0.function(name))
    }
    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>> {
        later(self.0.function_version(name, version))
    }
    fn functions(&self) -> Pending<Vec<FunctionRecord>> {
        later(self.0.functions())
    }
    fn remove_function(&self, name: &str) -> Pending<bool> {
        later(self.0.remove_function(name))
    }
    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>> {
        later(self.0.function_versions(name))
    }
    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()> {
        later(self.0.put_function_refs(refs))
    }
    fn function_refs(&self) -> Pending<Vec<FunctionRefs>> {
        later(self.0.function_refs())
    }
    fn put_token(&self, token: TokenRecord) -> Pending<()> {
        later(self.0.put_token(token))
    }
    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>> {
        later(self.0.token_by_secret_sha256(secret_sha256))
    }
    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        later(self.0.tokens())
    }
    fn revoke_token(&self, id: &str) -> Pending<bool> {
        later(self.0.revoke_token(id))
    }
    fn put_queue(&self, queue: QueueRecord) -> Pending<()> {
        later(self.0.put_queue(queue))
    }
    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>> {
        later(self.0.queue(name))
    }
    fn queues(&self) -> Pending<Vec<QueueRecord>> {
        later(self.0.queues())
    }
    fn remove_queue(&self, name: &str) -> Pending<bool> {
        later(self.0.remove_queue(name))
    }
    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()> {
        later(self.0.put_limiter(limiter))
    }
    fn limiters(&self) -> Pending<Vec<LimiterRecord>> {
        later(self.0.limiters())
    }
    fn remove_limiter(&self, name: &str) -> Pending<bool> {
        later(self.0.remove_limiter(name))
    }
}

async fn node() -> Node {
    let store = Arc::new(MemoryStore::new());
    let mut backend = Backend::from_adapter(store.clone());
    backend.catalog = Arc::new(DiskLikeCatalog(store));
    Node::with(None, backend).await
}

fn subscriber(name: &str) -> String {
    format!(
        "name = \"{name}\"\nruntime = \"python\"\nhandler = \"main:handler\"\n\n[subscribe]\nqueue = \"orders\"\n"
    )
}

#[tokio::test(start_paused = true)]
async fn two_deploys_racing_for_one_queue_leave_one_subscriber() {
    for _ in 0..20 {
        let node = node().await;
        let (a, b) = tokio::join!(
            node.engine.deploy(archive(&subscriber("first"))),
            node.engine.deploy(archive(&subscriber("second"))),
        );
        let won = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "exactly one deploy may subscribe: {a:?} / {b:?}");
        let lost = if a.is_err() { a } else { b };
        assert!(
            matches!(
                lost,
                Err(Error::Conflict {
                    kind: Conflict::QueueTaken,
                    ..
                })
            ),
            "{lost:?}"
        );
        let queue = node.engine.queue("orders").await.unwrap();
        assert!(queue.subscriber.is_some());
        node.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_limiter_cannot_be_removed_while_a_deploy_starts_using_it() {
    for _ in 0..20 {
        let node = node().await;
        node.engine.put_limiter("vendor", 5.0, 1).await.unwrap();
        let manifest = "name = \"caller\"\nruntime = \"python\"\nhandler = \"main:handler\"\nlimiter = \"vendor\"\n";
        let (deployed, removed) = tokio::join!(
            node.engine.deploy(archive(manifest)),
            node.engine.remove_limiter("vendor"),
        );
        // Either order is fine; both succeeding is not: a deployed
        // function would name a limiter that no longer exists.
        match (&deployed, &removed) {
            (Ok(_), Err(Error::Conflict { kind, .. })) => {
                assert_eq!(*kind, Conflict::LimiterInUse)
            }
            (Err(Error::InvalidFunction(_)), Ok(())) => {}
            other => panic!("deploy and removal both took effect or failed: {other:?}"),
        }
        assert!(matches!(
            node.engine.remove_limiter("nope").await,
            Err(Error::NotFound {
                entity: Entity::Limiter,
                ..
            })
        ));
        node.stop().await;
    }
}
