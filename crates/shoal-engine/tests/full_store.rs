//! A synchronous invocation's record is written behind its answer
//! (invariant 4), so with the store known to be full the answer would
//! carry a result whose record is lost. The engine checks the store's
//! health instead: a full store refuses the invocation before it runs, and
//! one that ran while the disk filled answers `StorageFull`, not its result.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Latch, Node, Script, archive, within};
use serde_json::json;
use shoal_engine::{Error, InvocationRecord};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, Error as StoreError, Invocations, Pending, Purged, StoreHealth};

/// The in-memory records, with a disk that can be full: then health says
/// so and record writes fail as the real store's do.
struct FillableDisk {
    store: Arc<MemoryStore>,
    full: Arc<AtomicBool>,
}

impl FillableDisk {
    fn refuse<T: Send + 'static>(&self, write: impl FnOnce() -> Pending<T>) -> Pending<T> {
        if self.full.load(Ordering::SeqCst) {
            Box::pin(std::future::ready(Err(StoreError::Full("no space".into()))))
        } else {
            write()
        }
    }
}

impl Invocations for FillableDisk {
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()> {
        self.refuse(|| self.store.put_invocations(records))
    }
    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>> {
        self.store.invocation(id)
    }
    fn list_invocations(
        &self,
        filter: &shoal_store::InvocationFilter,
        after: Option<&shoal_store::InvocationCursor>,
        limit: usize,
    ) -> Pending<shoal_store::InvocationPage> {
        self.store.list_invocations(filter, after, limit)
    }
    fn count_invocations(&self) -> Pending<u64> {
        self.store.count_invocations()
    }
    fn purge_invocations(
        &self,
        before_ms: u64,
        after: Option<&str>,
        scan: usize,
    ) -> Pending<Purged> {
        self.store.purge_invocations(before_ms, after, scan)
    }
    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()> {
        self.refuse(|| self.store.put_logs(id, logs))
    }
    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>> {
        self.store.logs(id)
    }
    fn health(&self) -> StoreHealth {
        if self.full.load(Ordering::SeqCst) {
            StoreHealth::Full("the disk holding the store is full; free space".into())
        } else {
            StoreHealth::Ok
        }
    }
}

async fn node() -> (Node, Arc<AtomicBool>) {
    let store = Arc::new(MemoryStore::new());
    let full = Arc::new(AtomicBool::new(false));
    let mut backend = Backend::from_adapter(store.clone());
    backend.invocations = Arc::new(FillableDisk {
        store,
        full: full.clone(),
    });
    let node = Node::with(None, backend).await;
    node.engine
        .deploy(archive("name = \"f\"\nconcurrency = 2"))
        .await
        .unwrap();
    (node, full)
}

#[tokio::test(start_paused = true)]
async fn a_full_store_refuses_a_sync_invocation_before_it_runs() {
    let (node, full) = node().await;
    node.fake.script("f", Script::ok(json!("done")));
    full.store(true, Ordering::SeqCst);
    let refused = node.engine.invoke("f", "{}".into()).await;
    match refused {
        Err(Error::StorageFull(message)) => assert!(message.contains("free space"), "{message}"),
        other => panic!("expected StorageFull, got {other:?}"),
    }
    assert!(node.fake.calls_of("f").is_empty(), "it must not run");

    // Space freed: it runs and its record is stored.
    full.store(false, Ordering::SeqCst);
    let done = node.engine.invoke("f", "{}".into()).await.unwrap();
    within("the record to be stored", async {
        while node.engine.invocation(&done.id).await.is_err() {
            tokio::time::sleep(common::ms(1)).await;
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_sync_invocation_that_ran_while_the_disk_filled_answers_the_error() {
    let (node, full) = node().await;
    let latch = Latch::new();
    node.fake
        .script("f", Script::ok(json!("done")).wait(&latch));
    let fill = async {
        node.started("f", 1).await;
        full.store(true, Ordering::SeqCst);
        latch.open();
    };
    let call = within("the answer", node.engine.invoke("f", "{}".into()));
    let (answer, ()) = tokio::join!(call, fill);
    assert!(
        matches!(answer, Err(Error::StorageFull(_))),
        "a result whose record cannot be stored: {answer:?}"
    );
    node.stop().await;
}
