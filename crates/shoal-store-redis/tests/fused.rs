//! The one-step pairs of writes (`Backend::put_and_send`, `put_and_ack`)
//! answer and store exactly as their separate calls do: on Redis (one
//! script each) and on the in-memory store (the separate calls).

use std::sync::Arc;

use shoal_store::conformance::{sample_invocation, unique};
use shoal_store::memory::MemoryStore;
use shoal_store::{Admitted, Backend, NewMessage};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;
use shoal_types::InvocationStatus;

fn message(id: &str) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: vec![0, 159, 146, 150],
        due_ms: 0,
        sent_ms: 1,
        dedup: None,
        key: None,
    }
}

async fn check(backend: &Backend) {
    let queue = unique("fused");
    let a = sample_invocation(&unique("inv"), "f");
    let b = sample_invocation(&unique("inv"), "f");

    // Sent: the record is stored and the message is on the queue.
    let sent = backend
        .put_and_send(vec![a.clone()], &queue, vec![message(&a.id)], 2)
        .await
        .unwrap();
    assert_eq!(sent, Admitted::Sent(vec![None]));
    assert_eq!(
        backend.invocations.invocation(&a.id).await.unwrap(),
        Some(a.clone())
    );
    let depth = backend.queues.depth(&queue).await.unwrap();
    assert_eq!(depth.waiting, 1);

    // Two more would pass the cap of 2: nothing is written.
    let full = backend
        .put_and_send(
            vec![b.clone()],
            &queue,
            vec![message(&b.id), message("x")],
            2,
        )
        .await
        .unwrap();
    assert_eq!(full, Admitted::Full { held: 1 });
    assert_eq!(backend.invocations.invocation(&b.id).await.unwrap(), None);
    assert_eq!(backend.queues.depth(&queue).await.unwrap().waiting, 1);

    // Leased, then the final record and the ack in one step.
    let leased = backend.queues.lease(&queue, 10, 10, 1000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 1);
    assert_eq!(leased.deliveries[0].body, vec![0, 159, 146, 150]);
    let mut done = a.clone();
    done.status = InvocationStatus::Succeeded;
    done.output = Some("1".into());
    done.finished_at_ms = Some(20);
    backend
        .put_and_ack(vec![done.clone()], &queue, vec![a.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        backend.invocations.invocation(&a.id).await.unwrap(),
        Some(done)
    );
    let depth = backend.queues.depth(&queue).await.unwrap();
    assert_eq!((depth.waiting, depth.in_flight), (0, 0));
    assert_eq!(backend.queues.counters(&queue).await.unwrap().acked, 1);
    assert_eq!(backend.queues.counters(&queue).await.unwrap().sent, 1);
}

#[tokio::test]
async fn on_redis_in_one_script_each() {
    let server = RedisServer::start(&[]);
    let (store, _) = RedisStore::connect(&server.options()).await.unwrap();
    check(&Backend::from_adapter(Arc::new(store))).await;
}

#[tokio::test]
async fn on_the_memory_store_as_separate_calls() {
    check(&Backend::from_adapter(Arc::new(MemoryStore::new()))).await;
}

/// A lease of asynchronous invocations' messages brings their records
/// along (in delivery order; `None` for a message without one).
#[tokio::test]
async fn a_lease_brings_the_records_along_on_redis() {
    use shoal_store::Queues;
    let server = RedisServer::start(&[]);
    let (store, _) = RedisStore::connect(&server.options()).await.unwrap();
    let backend = Backend::from_adapter(Arc::new(store.clone()));
    let queue = unique("fused");
    let a = sample_invocation(&unique("inv"), "f");
    let sent = backend
        .put_and_send(
            vec![a.clone()],
            &queue,
            vec![message(&a.id), message("no-record")],
            10,
        )
        .await
        .unwrap();
    assert_eq!(sent, Admitted::Sent(vec![None, None]));
    let (leased, records) = store
        .lease_with_records(&queue, 10, 10, 1000, None)
        .expect("Redis leases with records")
        .await
        .unwrap();
    let ids: Vec<&str> = leased.deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str(), "no-record"]);
    assert_eq!(records, vec![Some(a), None]);
    // The in-memory store has no such step.
    let memory = MemoryStore::new();
    assert!(
        memory
            .lease_with_records(&queue, 10, 10, 1000, None)
            .is_none()
    );
}
