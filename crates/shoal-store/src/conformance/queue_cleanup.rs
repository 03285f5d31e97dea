//! Messages taken out of the flow: dead letters, redrive, purges.

use crate::{Backend, DeadLetter, QueueDepth};

use super::queues::{counters, counters_of, dead_ids, dead_letters, full_depth, sent_at};
use super::{T, depth, depth_of, ids, lease, msg, strings, unique};

/// `dead_letter` moves a leased or waiting message, with its body, failures
/// and send time, to the queue's dead letters; they are listed by id.
pub async fn queue_dead_letters(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-dead");
    let q2 = format!("{q}-2");
    let binary: Vec<u8> = (0..=255u8).collect();
    qs.send(
        &q,
        vec![
            sent_at("a", b"A", T, T - 5),
            sent_at("b", b"", T, T - 4),
            sent_at("c", &binary, T, T - 3),
            sent_at("d", b"D", T, T - 2),
        ],
    )
    .await
    .unwrap();
    assert_eq!(lease(backend, &q, T, 10, 60_000).await.deliveries.len(), 4);
    qs.nack(&q, "a", T).await.unwrap();
    assert_eq!(
        lease(backend, &q, T, 10, 60_000).await.deliveries[0].failures,
        1
    );
    assert!(dead_letters(backend, &q).await.is_empty());

    let reason = "ValueError: bad ✓\nTraceback".to_string();
    qs.dead_letter(&q, "a", reason.clone(), T + 10)
        .await
        .unwrap();
    qs.dead_letter(&q, "nope", "x".to_string(), T + 10)
        .await
        .unwrap();
    assert_eq!(
        dead_letters(backend, &q).await,
        vec![DeadLetter {
            id: "a".to_string(),
            body: b"A".to_vec(),
            failures: 1,
            sent_ms: T - 5,
            dead_at_ms: T + 10,
            reason,
        }]
    );
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 0,
            in_flight: 3,
            dead: 1,
            oldest_sent_ms: Some(T - 4),
        }
    );
    // Never delivered again, even once its lease would have ended.
    let later = lease(backend, &q, T + 1_000_000, 10, 60_000).await;
    assert_eq!(ids(&later), strings(&["b", "c", "d"]));

    // A waiting message can be dead-lettered too; two issued together both land.
    qs.nack(&q, "b", T + 10_000_000).await.unwrap();
    let c = qs.dead_letter(&q, "c", "c failed".to_string(), T + 20);
    let b = qs.dead_letter(&q, "b", "b failed".to_string(), T + 21);
    c.await.unwrap();
    b.await.unwrap();
    qs.dead_letter(&q, "d", "d failed".to_string(), T + 22)
        .await
        .unwrap();
    let all = dead_letters(backend, &q).await;
    assert_eq!(dead_ids(&all), strings(&["a", "b", "c", "d"]));
    assert_eq!(
        (all[1].body.clone(), all[1].failures, all[1].sent_ms),
        (Vec::new(), 1, T - 4)
    );
    assert_eq!(all[2].body, binary);
    assert_eq!(
        (all[2].reason.as_str(), all[2].dead_at_ms, all[2].failures),
        ("c failed", T + 20, 0)
    );
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            dead: 4,
            ..QueueDepth::default()
        }
    );
    assert!(
        lease(backend, &q, T + 100_000_000, 10, 60_000)
            .await
            .deliveries
            .is_empty()
    );

    // Pages by id, strictly after `after` (which need not exist).
    let page = |after: Option<&'static str>, limit: usize| {
        let q = q.clone();
        async move { dead_ids(&backend.queues.dead_letters(&q, after, limit).await.unwrap()) }
    };
    assert_eq!(page(None, 2).await, strings(&["a", "b"]));
    assert_eq!(page(Some("b"), 2).await, strings(&["c", "d"]));
    assert_eq!(page(Some("bb"), 10).await, strings(&["c", "d"]));
    assert_eq!(page(Some("d"), 10).await, Vec::<String>::new());
    assert_eq!(page(None, 0).await, Vec::<String>::new());

    // Queues do not share dead letters, even when one name prefixes another.
    qs.send(&q2, vec![msg("a", b"other", T)]).await.unwrap();
    qs.dead_letter(&q2, "a", "q2".to_string(), T).await.unwrap();
    assert_eq!(dead_letters(backend, &q).await.len(), 4);
    let theirs = dead_letters(backend, &q2).await;
    assert_eq!(
        (dead_ids(&theirs), theirs[0].body.clone()),
        (strings(&["a"]), b"other".to_vec())
    );
    assert_eq!(full_depth(backend, &q2).await.dead, 1);
    assert_eq!(qs.purge_dead(&q2, None).await.unwrap(), 1);
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 4);
}

/// `redrive` puts dead letters back, due at `now_ms`, failures reset, send
/// time kept; `purge_dead` deletes them. Both count what they did.
pub async fn queue_redrive_and_purge_dead(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-redrive");
    qs.send(
        &q,
        vec![
            sent_at("a", b"A", T, T - 3),
            sent_at("b", b"B", T, T - 2),
            sent_at("c", b"C", T, T - 1),
        ],
    )
    .await
    .unwrap();
    let _ = lease(backend, &q, T, 10, 60_000).await;
    qs.nack(&q, "a", T).await.unwrap();
    let _ = lease(backend, &q, T, 10, 60_000).await;
    for id in ["a", "b", "c"] {
        qs.dead_letter(&q, id, format!("{id} failed"), T + 1)
            .await
            .unwrap();
    }

    assert_eq!(
        qs.redrive(&q, Some(strings(&["a", "nope", "a"])), T + 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        dead_ids(&dead_letters(backend, &q).await),
        strings(&["b", "c"])
    );
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 1,
            in_flight: 0,
            dead: 2,
            oldest_sent_ms: Some(T - 3),
        }
    );
    let early = lease(backend, &q, T + 99, 10, 60_000).await;
    assert!(early.deliveries.is_empty(), "redriven before now_ms");
    assert_eq!(early.next_due_ms, Some(T + 100));
    let a = lease(backend, &q, T + 100, 10, 60_000).await;
    assert_eq!(ids(&a), strings(&["a"]));
    assert_eq!(
        (a.deliveries[0].failures, a.deliveries[0].body.clone()),
        (0, b"A".to_vec())
    );

    // All of them; then there is nothing left to redrive.
    assert_eq!(qs.redrive(&q, None, T + 200).await.unwrap(), 2);
    assert_eq!(qs.redrive(&q, None, T + 200).await.unwrap(), 0);
    assert_eq!(full_depth(backend, &q).await.dead, 0);
    let bc = lease(backend, &q, T + 200, 10, 60_000).await;
    assert_eq!(ids(&bc), strings(&["b", "c"]));
    assert!(bc.deliveries.iter().all(|d| d.failures == 0));

    // Dead-lettered again, then sent again under the same id: the dead
    // letter cannot be redriven over the queued message, and stays.
    qs.dead_letter(&q, "b", "again".to_string(), T + 300)
        .await
        .unwrap();
    qs.send(&q, vec![msg("b", b"B2", T + 300)]).await.unwrap();
    assert_eq!(qs.redrive(&q, None, T + 300).await.unwrap(), 0);
    let dead = dead_letters(backend, &q).await;
    assert_eq!(
        (dead_ids(&dead), dead[0].body.clone()),
        (strings(&["b"]), b"B".to_vec())
    );
    let b2 = lease(backend, &q, T + 300, 10, 60_000).await;
    assert_eq!(b2.deliveries[0].body, b"B2".to_vec());

    // Redrive and ack issued together: the ack finds the redriven message.
    qs.dead_letter(&q, "c", "again".to_string(), T + 300)
        .await
        .unwrap();
    let redrive = qs.redrive(&q, Some(strings(&["c"])), T + 300);
    let ack = qs.ack(&q, strings(&["c"]));
    assert_eq!(redrive.await.unwrap(), 1);
    ack.await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 2));

    // purge_dead by id and all.
    qs.dead_letter(&q, "a", "x".to_string(), T + 400)
        .await
        .unwrap();
    assert_eq!(
        qs.purge_dead(&q, Some(strings(&["a", "nope", "a"])))
            .await
            .unwrap(),
        1
    );
    assert_eq!(dead_ids(&dead_letters(backend, &q).await), strings(&["b"]));
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 1);
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 0);
    assert_eq!(qs.redrive(&q, Some(strings(&["b"])), T).await.unwrap(), 0);
    assert_eq!(full_depth(backend, &q).await.dead, 0);
    assert_eq!(counters(backend, &q).await, counters_of(4, 1, 1, 6));
    qs.ack(&q, strings(&["b"])).await.unwrap();
    assert_eq!(full_depth(backend, &q).await, QueueDepth::default());
}

/// `purge` deletes the waiting messages (due or not), not the leased ones
/// nor the dead letters, and counts them.
pub async fn queue_purge(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-purge");
    let q2 = format!("{q}-2");
    assert_eq!(qs.purge(&q).await.unwrap(), 0);
    qs.send(
        &q,
        vec![
            sent_at("a", b"A", T, T - 9),
            sent_at("b", b"B", T, T - 8),
            sent_at("c", b"C", T, T - 7),
            sent_at("d", b"D", T, T - 6),
            sent_at("e", b"E", T + 1_000_000, T - 5),
        ],
    )
    .await
    .unwrap();
    qs.send(&q2, vec![msg("a", b"A", T)]).await.unwrap();
    assert_eq!(
        ids(&lease(backend, &q, T, 2, 60_000).await),
        strings(&["a", "b"])
    );
    qs.dead_letter(&q, "c", "dead".to_string(), T)
        .await
        .unwrap();

    assert_eq!(qs.purge(&q).await.unwrap(), 2, "d and e");
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 0,
            in_flight: 2,
            dead: 1,
            oldest_sent_ms: Some(T - 9),
        }
    );
    assert_eq!(depth(backend, &q2).await, depth_of(1, 0));
    // Purged messages are gone for good; leased ones come back after their lease.
    let later = lease(backend, &q, T + 2_000_000, 10, 60_000).await;
    assert_eq!(ids(&later), strings(&["a", "b"]));
    // A purged id can be sent again.
    qs.send(&q, vec![msg("d", b"D2", T)]).await.unwrap();
    // A send issued before a purge is purged.
    drop(qs.send(&q, vec![msg("f", b"F", T)]));
    assert_eq!(qs.purge(&q).await.unwrap(), 2);
    assert_eq!(depth(backend, &q).await, depth_of(0, 2));
    assert_eq!(dead_letters(backend, &q).await.len(), 1);
    // A nack issued before a purge: the released message is purged.
    let nack = qs.nack(&q, "a", T);
    let purged = qs.purge(&q);
    nack.await.unwrap();
    assert_eq!(purged.await.unwrap(), 1);
    assert_eq!(depth(backend, &q).await, depth_of(0, 1));

    qs.ack(&q, strings(&["a", "b"])).await.unwrap();
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 1);
    assert_eq!(full_depth(backend, &q).await, QueueDepth::default());
    assert_eq!(qs.purge(&q2).await.unwrap(), 1);
}
