//! Reopening the database: acknowledged writes survive, queue messages come
//! back deliverable (leases are forgotten, failure counts and send times are
//! kept), dead letters, counters, deduplication keys, samples and queue and
//! limiter records survive, and closing commits everything issued before it.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::join_all;
use shoal_store::conformance::{sample_function, sample_invocation};
use shoal_store::{
    Catalog, DeadLetter, DocWrite, Docs, Error, Invocations, LimiterRecord, NewMessage,
    QueueCounters, QueueDepth, QueueRecord, QueueSample, Queues, TokenRecord,
};
use shoal_store_redb::RedbStore;

const T: u64 = 1_700_000_000_000;

fn msg(id: &str, body: &[u8], due_ms: u64) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: body.to_vec(),
        due_ms,
        sent_ms: due_ms - 1,
        dedup: None,
        key: None,
    }
}

fn keyed(id: &str, key: &str, until_ms: u64, sent_ms: u64) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: id.as_bytes().to_vec(),
        due_ms: sent_ms,
        sent_ms,
        dedup: Some((key.to_string(), until_ms)),
        key: None,
    }
}

fn token() -> TokenRecord {
    TokenRecord {
        id: "tok".to_string(),
        secret_sha256: "s".repeat(64),
        role: shoal_types::Role::Admin,
        name: "ci".to_string(),
        created_at_ms: T,
        channels: Vec::new(),
        user: None,
        scopes: Vec::new(),
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
                in_flight: 1,
                dead: 0,
                oldest_sent_ms: Some(T - 1),
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
            in_flight: 0,
            dead: 0,
            oldest_sent_ms: Some(T - 1),
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

fn sample(at_ms: u64, waiting: u64) -> QueueSample {
    QueueSample {
        at_ms,
        depth: QueueDepth {
            waiting,
            in_flight: 1,
            dead: 2,
            oldest_sent_ms: Some(at_ms - 5),
        },
        counters: QueueCounters {
            sent: 10,
            acked: 7,
            nacked: 2,
            dead_lettered: 1,
        },
    }
}

fn queue_record(name: &str) -> QueueRecord {
    QueueRecord {
        name: name.to_string(),
        max_attempts: 4,
        visibility_ms: 30_000,
        retry_delay_ms: 500,
        dedup_window_ms: 60_000,
        created_at_ms: T,
    }
}

fn limiter(name: &str) -> LimiterRecord {
    LimiterRecord {
        name: name.to_string(),
        per_second: 12.5,
        burst: 3,
        updated_at_ms: T,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_dead_letters_counters_dedup_keys_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let dead_a = DeadLetter {
        id: "a".to_string(),
        body: b"A".to_vec(),
        failures: 1,
        sent_ms: T - 1,
        dead_at_ms: T + 5,
        reason: "boom".to_string(),
    };
    let counters = QueueCounters {
        sent: 3,
        acked: 1,
        nacked: 1,
        dead_lettered: 1,
    };
    {
        let s = open(&path);
        s.send("q", vec![msg("a", b"A", T), msg("b", b"B", T + 1)])
            .await
            .unwrap();
        s.send("q", vec![keyed("c", "k", T + 10_000, T + 2)])
            .await
            .unwrap();
        s.send("q", vec![keyed("d", "k", T + 10_000, T + 3)])
            .await
            .unwrap();
        assert_eq!(
            s.lease("q", T + 3, 10, 60_000)
                .await
                .unwrap()
                .deliveries
                .len(),
            3
        );
        s.nack("q", "a", T + 3).await.unwrap();
        s.lease("q", T + 3, 10, 60_000).await.unwrap();
        s.dead_letter("q", "a", "boom".to_string(), T + 5)
            .await
            .unwrap();
        s.ack("q", vec!["b".to_string()]).await.unwrap();
        assert_eq!(s.counters("q").await.unwrap(), counters);
        s.record_samples(
            vec![
                ("q".to_string(), sample(T + 10, 1)),
                ("q".to_string(), sample(T + 20, 2)),
                ("other".to_string(), sample(T + 20, 3)),
            ],
            0,
        )
        .await
        .unwrap();
        s.put_queue(queue_record("q")).await.unwrap();
        s.put_limiter(limiter("l")).await.unwrap();
        assert_eq!(
            s.depth("q").await.unwrap(),
            QueueDepth {
                waiting: 0,
                in_flight: 1,
                dead: 1,
                oldest_sent_ms: Some(T + 2),
            }
        );
    }

    let s = open(&path);
    assert_eq!(s.counters("q").await.unwrap(), counters);
    assert_eq!(
        s.depth("q").await.unwrap(),
        QueueDepth {
            waiting: 1,
            in_flight: 0,
            dead: 1,
            oldest_sent_ms: Some(T + 2),
        }
    );
    assert_eq!(
        s.dead_letters("q", None, 10).await.unwrap(),
        vec![dead_a.clone()]
    );
    // The deduplication key is still held.
    s.send("q", vec![keyed("e", "k", T + 20_000, T + 9_999)])
        .await
        .unwrap();
    assert_eq!(s.counters("q").await.unwrap().sent, 3);
    assert_eq!(
        s.samples("q", 0).await.unwrap(),
        vec![sample(T + 10, 1), sample(T + 20, 2)]
    );
    assert_eq!(
        s.samples("other", T + 15).await.unwrap(),
        vec![sample(T + 20, 3)]
    );
    assert_eq!(s.queues().await.unwrap(), vec![queue_record("q")]);
    assert_eq!(s.limiters().await.unwrap(), vec![limiter("l")]);

    // Changes made after a reopen build on the stored totals.
    assert_eq!(s.redrive("q", None, T + 100).await.unwrap(), 1);
    let leased = s.lease("q", T + 100, 10, 60_000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 2);
    s.ack("q", vec!["a".to_string(), "c".to_string()])
        .await
        .unwrap();
    s.send("q", vec![keyed("f", "k", T + 20_000, T + 10_000)])
        .await
        .unwrap();
    s.record_samples(vec![("q".to_string(), sample(T + 30, 4))], T + 15)
        .await
        .unwrap();
    drop(s);

    let s = open(&path);
    assert_eq!(
        s.counters("q").await.unwrap(),
        QueueCounters {
            sent: 4,
            acked: 3,
            nacked: 1,
            dead_lettered: 1,
        }
    );
    assert_eq!(
        s.depth("q").await.unwrap(),
        QueueDepth {
            waiting: 1,
            in_flight: 0,
            dead: 0,
            oldest_sent_ms: Some(T + 10_000),
        }
    );
    assert_eq!(s.dead_letters("q", None, 10).await.unwrap(), Vec::new());
    assert_eq!(
        s.samples("q", 0).await.unwrap(),
        vec![sample(T + 20, 2), sample(T + 30, 4)]
    );
    assert_eq!(
        s.samples("other", 0).await.unwrap(),
        vec![sample(T + 20, 3)]
    );
    // The key taken by f holds until T + 20,000.
    s.send("q", vec![keyed("g", "k", T + 30_000, T + 19_999)])
        .await
        .unwrap();
    s.send("q", vec![keyed("h", "k", T + 30_000, T + 20_000)])
        .await
        .unwrap();
    let ids: Vec<String> = s
        .lease("q", T + 20_000, 10, 1_000)
        .await
        .unwrap()
        .deliveries
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["f", "h"]);
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

fn doc(shard: u32, id: &str, body: &str) -> DocWrite {
    DocWrite {
        shard,
        id: id.to_string(),
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_docs_stats_and_placement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let (a, before_stats) = {
        let s = open(&path);
        let (a, _) = s.create_category("a", 3, 8, T).await.unwrap();
        assert_eq!(a.slots, [0, 1, 2]);
        let (b, _) = s.create_category("b", 2, 8, T).await.unwrap();
        assert_eq!(b.slots, [3, 4]);
        let docs: Vec<DocWrite> = (0..3_000)
            .map(|i| doc(i % 3, &format!("d{i}"), &format!("{{\"i\":{i}}}")))
            .collect();
        s.put_docs("a", docs).await.unwrap();
        s.put_docs("a", vec![doc(0, "d0", "{}")]).await.unwrap();
        assert_eq!(
            s.delete_docs("a", vec![(1, "d1".to_string())])
                .await
                .unwrap(),
            1
        );
        s.put_docs("b", vec![doc(1, "x", "[1]")]).await.unwrap();
        // Deleted before the close: must stay deleted.
        s.create_category("c", 1, 8, T).await.unwrap();
        s.put_docs("c", vec![doc(0, "gone", "0")]).await.unwrap();
        assert!(s.delete_category("c").await.unwrap());
        (a, s.shard_stats("a").await.unwrap())
    };

    let s = open(&path);
    assert_eq!(s.category("a").await.unwrap(), Some(a));
    let names: Vec<String> = s
        .categories()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.shard_stats("a").await.unwrap(), before_stats);
    assert_eq!(
        before_stats.iter().map(|x| x.docs).collect::<Vec<_>>(),
        [1_000, 999, 1_000]
    );
    assert_eq!(s.get_doc("a", 0, "d0").await.unwrap().unwrap(), b"{}");
    assert_eq!(s.get_doc("a", 1, "d1").await.unwrap(), None);
    assert_eq!(
        s.get_doc("a", 2, "d2").await.unwrap().unwrap(),
        b"{\"i\":2}"
    );
    let scanned: usize = {
        let mut n = 0;
        for shard in 0..3 {
            n += s
                .scan_shard("a", shard, None, usize::MAX)
                .await
                .unwrap()
                .len();
        }
        n
    };
    assert_eq!(scanned, 2_999);
    assert_eq!(s.get_doc("b", 1, "x").await.unwrap().unwrap(), b"[1]");
    assert_eq!(s.category("c").await.unwrap(), None);

    // The round-robin counter survives: a (3) + b (2) + c (1) slots taken.
    let (d, created) = s.create_category("d", 3, 8, T).await.unwrap();
    assert!(created);
    assert_eq!(d.slots, [6, 7, 0]);
    // So does the version counter.
    s.put_docs("b", vec![doc(0, "y", "0")]).await.unwrap();
    let b_stats = s.shard_stats("b").await.unwrap();
    let newest = before_stats.iter().map(|x| x.version).max().unwrap();
    assert!(
        b_stats[0].version > newest,
        "versions restarted after reopen"
    );
    // A category created again under a deleted name is empty.
    s.create_category("c", 1, 8, T).await.unwrap();
    assert_eq!(s.get_doc("c", 0, "gone").await.unwrap(), None);
    assert_eq!(s.shard_stats("c").await.unwrap()[0].docs, 0);
}
