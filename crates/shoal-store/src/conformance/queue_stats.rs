//! What a queue reports: its depth, its counters and its samples.

use crate::{Backend, QueueCounters, QueueDepth, QueueSample};

use super::queues::{counters, counters_of, full_depth, keyed, sent_at};
use super::{T, ids, lease, msg, strings, unique};

/// `depth` counts dead letters and reports the `sent_ms` of the oldest
/// message waiting or in flight (not its due time, not its lease).
pub async fn queue_depth_fields(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-depth");
    assert_eq!(full_depth(backend, &q).await, QueueDepth::default());

    qs.send(
        &q,
        vec![
            sent_at("a", b"A", T, T - 30),
            sent_at("b", b"B", T + 100, T - 50),
            sent_at("c", b"C", T, T - 40),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 3,
            in_flight: 0,
            dead: 0,
            oldest_sent_ms: Some(T - 50),
        }
    );
    // Leased messages still count for the oldest age.
    assert_eq!(
        ids(&lease(backend, &q, T + 100, 10, 60_000).await),
        strings(&["a", "b", "c"])
    );
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 0,
            in_flight: 3,
            dead: 0,
            oldest_sent_ms: Some(T - 50),
        }
    );
    qs.ack(&q, strings(&["b"])).await.unwrap();
    assert_eq!(full_depth(backend, &q).await.oldest_sent_ms, Some(T - 40));
    // A nack keeps the send time.
    qs.nack(&q, "c", T + 1_000).await.unwrap();
    // A dead letter counts as dead, no longer for the age.
    qs.dead_letter(&q, "c", "boom".to_string(), T + 200)
        .await
        .unwrap();
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            waiting: 0,
            in_flight: 1,
            dead: 1,
            oldest_sent_ms: Some(T - 30),
        }
    );
    qs.ack(&q, strings(&["a"])).await.unwrap();
    assert_eq!(
        full_depth(backend, &q).await,
        QueueDepth {
            dead: 1,
            ..QueueDepth::default()
        }
    );
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 1);
    assert_eq!(full_depth(backend, &q).await, QueueDepth::default());
}

/// Counters count what happened, once, per queue, and never go down.
pub async fn queue_counters(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-count");
    let other = format!("{q}-other");
    assert_eq!(counters(backend, &q).await, QueueCounters::default());

    qs.send(
        &q,
        vec![msg("a", b"A", T), msg("b", b"B", T), msg("c", b"C", T)],
    )
    .await
    .unwrap();
    // Neither a queued id nor a deduplicated message counts as sent.
    qs.send(&q, vec![msg("a", b"again", T)]).await.unwrap();
    qs.send(&q, vec![keyed("d", "k", T + 10_000, T)])
        .await
        .unwrap();
    qs.send(&q, vec![keyed("e", "k", T + 10_000, T + 1)])
        .await
        .unwrap();
    assert_eq!(counters(backend, &q).await, counters_of(4, 0, 0, 0));

    assert_eq!(
        lease(backend, &q, T + 1, 10, 60_000).await.deliveries.len(),
        4
    );
    qs.ack(&q, strings(&["a", "a", "never-sent"]))
        .await
        .unwrap();
    qs.ack(&q, strings(&["a"])).await.unwrap();
    qs.nack(&q, "b", T + 5).await.unwrap();
    qs.nack(&q, "never-sent", T + 5).await.unwrap();
    qs.dead_letter(&q, "c", "failed".to_string(), T + 2)
        .await
        .unwrap();
    qs.dead_letter(&q, "never-sent", "failed".to_string(), T + 2)
        .await
        .unwrap();
    // A dead letter is not acked by a late ack.
    qs.ack(&q, strings(&["c"])).await.unwrap();
    assert_eq!(counters(backend, &q).await, counters_of(4, 1, 1, 1));
    assert_eq!(counters(backend, &other).await, QueueCounters::default());

    // Redrive, purges: the counters stay.
    assert_eq!(qs.redrive(&q, None, T + 10).await.unwrap(), 1);
    assert_eq!(qs.purge(&q).await.unwrap(), 2, "b and c are waiting");
    assert_eq!(qs.purge_dead(&q, None).await.unwrap(), 0);
    assert_eq!(counters(backend, &q).await, counters_of(4, 1, 1, 1));

    // Counted in call order with the writes: one not awaited, then one awaited.
    drop(qs.send(&q, vec![msg("f", b"F", T)]));
    let _ = lease(backend, &q, T + 20, 10, 60_000).await;
    qs.send(&q, vec![msg("g", b"G", T)]).await.unwrap();
    assert_eq!(counters(backend, &q).await.sent, 6);
    qs.ack(&q, strings(&["d", "f", "g"])).await.unwrap();
    assert_eq!(counters(backend, &q).await, counters_of(6, 4, 1, 1));
    assert_eq!(full_depth(backend, &q).await, QueueDepth::default());
}

/// Samples are stored per queue and time, read back oldest first, replaced
/// at an equal time, and dropped (for every queue) before `keep_after_ms`.
pub async fn queue_samples(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-samples");
    let q2 = format!("{q}-2");
    // Long before the other queue tests' times (the store may prune
    // deduplication keys by the samples' time).
    let s = T - 100_000_000;
    assert!(qs.samples(&q, 0).await.unwrap().is_empty());

    qs.record_samples(
        vec![
            (q.clone(), sample(s + 20, 2, Some(s - 1))),
            (q2.clone(), sample(s + 20, 7, None)),
            (q.clone(), sample(s + 10, 1, None)),
        ],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        qs.samples(&q, 0).await.unwrap(),
        vec![sample(s + 10, 1, None), sample(s + 20, 2, Some(s - 1))]
    );
    assert_eq!(
        qs.samples(&q, s + 11).await.unwrap(),
        vec![sample(s + 20, 2, Some(s - 1))]
    );
    assert_eq!(
        qs.samples(&q, s + 20).await.unwrap(),
        vec![sample(s + 20, 2, Some(s - 1))],
        "since is inclusive"
    );
    assert!(qs.samples(&q, s + 21).await.unwrap().is_empty());
    assert_eq!(
        qs.samples(&q2, 0).await.unwrap(),
        vec![sample(s + 20, 7, None)]
    );

    // An equal time replaces; older samples of every queue are dropped.
    qs.record_samples(vec![(q.clone(), sample(s + 20, 5, Some(s)))], s)
        .await
        .unwrap();
    assert_eq!(
        qs.samples(&q, 0).await.unwrap(),
        vec![sample(s + 10, 1, None), sample(s + 20, 5, Some(s))]
    );
    qs.record_samples(vec![(q.clone(), sample(s + 30, 6, None))], s + 20)
        .await
        .unwrap();
    assert_eq!(
        qs.samples(&q, 0).await.unwrap(),
        vec![sample(s + 20, 5, Some(s)), sample(s + 30, 6, None)]
    );
    assert_eq!(qs.samples(&q2, 0).await.unwrap().len(), 1);
    let tick = qs.record_samples(Vec::new(), s + 25);
    let q2_late = qs.record_samples(vec![(q2.clone(), sample(s + 40, 8, None))], s + 25);
    tick.await.unwrap();
    q2_late.await.unwrap();
    assert_eq!(
        qs.samples(&q, 0).await.unwrap(),
        vec![sample(s + 30, 6, None)]
    );
    assert_eq!(
        qs.samples(&q2, 0).await.unwrap(),
        vec![sample(s + 40, 8, None)]
    );
    qs.record_samples(Vec::new(), s + 1_000).await.unwrap();
    assert!(qs.samples(&q, 0).await.unwrap().is_empty());
    assert!(qs.samples(&q2, 0).await.unwrap().is_empty());
}

fn sample(at_ms: u64, n: u64, oldest_sent_ms: Option<u64>) -> QueueSample {
    QueueSample {
        at_ms,
        depth: QueueDepth {
            waiting: n,
            in_flight: n + 1,
            dead: n + 2,
            oldest_sent_ms,
        },
        counters: counters_of(n + 3, n + 4, n + 5, n + 6),
    }
}
