//! Reopening the database: acknowledged writes survive, queue messages come
//! back deliverable (leases are forgotten, failure counts are kept), and
//! closing commits everything issued before it.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::join_all;
use shoal_store::conformance::{sample_function, sample_invocation};
use shoal_store::{Catalog, Error, Invocations, NewMessage, QueueDepth, Queues, TokenRecord};
use shoal_store_redb::RedbStore;

const T: u64 = 1_700_000_000_000;

fn msg(id: &str, body: &[u8], due_ms: u64) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: body.to_vec(),
        due_ms,
    }
}

fn token() -> TokenRecord {
    TokenRecord {
        id: "tok".to_string(),
        secret_sha256: "s".repeat(64),
        role: "admin".to_string(),
        name: "ci".to_string(),
        created_at_ms: T,
    }
}

fn open(path: &Path) -> Arc<RedbStore> {
    RedbStore::open(path).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    {
        let s = open(&path);
        assert_eq!(
            s.deploy_function(sample_function("f", "v1")).await.unwrap(),
            1
        );
        assert_eq!(
            s.deploy_function(sample_function("f", "v2")).await.unwrap(),
            2
        );
        for _ in 0..3 {
            s.deploy_function(sample_function("g", "h")).await.unwrap();
        }
        assert!(s.remove_function("g").await.unwrap());
        s.put_token(token()).await.unwrap();
        let puts =
            (0..300).map(|i| s.put_invocations(vec![sample_invocation(&format!("inv-{i}"), "f")]));
        for r in join_all(puts).await {
            r.unwrap();
        }
        s.put_logs("inv-1", b"log line\n".to_vec()).await.unwrap();

        s.send(
            "q",
            vec![
                msg("a", b"A", T),
                msg("b", b"B", T),
                msg("c", b"C", T + 10_000),
                msg("d", b"D", T),
            ],
        )
        .await
        .unwrap();
        let leased = s.lease("q", T, 10, 60_000).await.unwrap();
        assert_eq!(leased.deliveries.len(), 3);
        s.nack("q", "b", T + 5).await.unwrap();
        let b = s.lease("q", T + 5, 10, 60_000).await.unwrap();
        assert_eq!(b.deliveries[0].id, "b");
        s.nack("q", "b", T + 5).await.unwrap();
        s.extend("q", "a", T + 1_000_000).await.unwrap();
        s.ack("q", vec!["d".to_string()]).await.unwrap();
        assert_eq!(
            s.depth("q").await.unwrap(),
            QueueDepth {
                waiting: 2,
                in_flight: 1
            }
        );
    }

    let s = open(&path);
    let f = s.function("f").await.unwrap().unwrap();
    assert_eq!((f.version, f.handler.as_str()), (2, "v2"));
    assert_eq!(
        s.function_version("f", 1).await.unwrap().unwrap().handler,
        "v1"
    );
    assert_eq!(s.function("g").await.unwrap(), None);
    assert_eq!(
        s.deploy_function(sample_function("g", "h")).await.unwrap(),
        4,
        "the version counter survives removal and reopen"
    );
    assert_eq!(
        s.token_by_secret_sha256(&"s".repeat(64)).await.unwrap(),
        Some(token())
    );
    for i in 0..300 {
        let id = format!("inv-{i}");
        assert_eq!(
            s.invocation(&id).await.unwrap(),
            Some(sample_invocation(&id, "f"))
        );
    }
    assert_eq!(s.logs("inv-1").await.unwrap().unwrap(), b"log line\n");

    // Leases are forgotten: a (leased until far away) is deliverable again.
    assert_eq!(
        s.depth("q").await.unwrap(),
        QueueDepth {
            waiting: 3,
            in_flight: 0
        }
    );
    let leased = s.lease("q", T + 5, 10, 1_000).await.unwrap();
    let mut got: Vec<(String, Vec<u8>, u32)> = leased
        .deliveries
        .into_iter()
        .map(|d| (d.id, d.body, d.failures))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), b"A".to_vec(), 0),
            ("b".to_string(), b"B".to_vec(), 2),
        ]
    );
    assert_eq!(leased.next_due_ms, Some(T + 1_005));
    // Sequence numbers continue after the recovered ones: a message sent now
    // with c's due time comes after c.
    s.ack("q", vec!["a".into(), "b".into()]).await.unwrap();
    s.send("q", vec![msg("e", b"E", T + 10_000)]).await.unwrap();
    let c = s.lease("q", T + 10_000, 1, 1_000).await.unwrap();
    assert_eq!(c.deliveries[0].id, "c");
    let e = s.lease("q", T + 10_000, 1, 1_000).await.unwrap();
    assert_eq!(e.deliveries[0].id, "e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_queued_writes_then_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/shoal.redb");
    let s = open(&path);
    assert_eq!(s.path(), path);
    // Issued, not awaited, then closed: all of them are committed.
    let pending: Vec<_> = (0..2_000)
        .map(|i| s.put_invocations(vec![sample_invocation(&format!("i{i}"), "f")]))
        .collect();
    drop(s.put_logs("dropped", b"still written".to_vec()));
    s.close();
    for r in join_all(pending).await {
        r.unwrap();
    }
    assert!(matches!(
        s.put_logs("late", Vec::new()).await,
        Err(Error::Unavailable(_))
    ));
    // Reads keep working on a closed store; closing twice is fine.
    assert!(s.invocation("i1999").await.unwrap().is_some());
    s.close();

    // The file is locked while a handle is open.
    assert!(matches!(RedbStore::open(&path), Err(Error::Unavailable(_))));
    drop(s);

    let s = open(&path);
    for i in 0..2_000 {
        assert!(
            s.invocation(&format!("i{i}")).await.unwrap().is_some(),
            "i{i} lost"
        );
    }
    assert_eq!(s.logs("dropped").await.unwrap().unwrap(), b"still written");
    assert_eq!(s.logs("late").await.unwrap(), None);
}
