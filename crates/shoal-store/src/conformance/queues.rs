//! Queue delivery: send, lease (due order, visibility, concurrency keys),
//! extend, ack, nack, duplicate ids and deduplication keys; and the helpers
//! the other queue areas share.

use crate::{Backend, DeadLetter, KeyLimit, Leased, NewMessage, QueueCounters, QueueDepth};

use super::{T, by_id, depth, depth_of, ids, lease, msg, strings, unique};

/// Sending, leasing with due times and visibility, acking, depth.
pub async fn queue_lease_and_ack(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q");

    let empty = lease(backend, &q, T, 10, 1_000).await;
    assert_eq!(empty, Leased::default(), "empty queue");
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));

    qs.send(
        &q,
        vec![
            msg("a", b"A", T),
            msg("b", b"B", T),
            msg("c", b"C", T + 5_000),
        ],
    )
    .await
    .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(3, 0));

    let got = lease(backend, &q, T, 10, 1_000).await;
    let got_by_id = by_id(&got);
    assert_eq!(
        got_by_id.keys().cloned().collect::<Vec<_>>(),
        strings(&["a", "b"])
    );
    for (id, body) in [("a", b"A"), ("b", b"B")] {
        let d = &got_by_id[id];
        assert_eq!(d.body, body.to_vec());
        assert_eq!(d.failures, 0);
        assert_eq!(d.lease_until_ms, T + 1_000);
    }
    assert_eq!(got.next_due_ms, Some(T + 1_000), "earliest lease expiry");
    assert_eq!(depth(backend, &q).await, depth_of(1, 2));

    // Leased messages are invisible until their lease ends.
    let again = lease(backend, &q, T + 500, 10, 1_000).await;
    assert!(
        again.deliveries.is_empty(),
        "leased message delivered twice"
    );
    assert_eq!(again.next_due_ms, Some(T + 1_000));

    // max is respected.
    qs.send(&q, vec![msg("d", b"D", T), msg("e", b"E", T)])
        .await
        .unwrap();
    let one = lease(backend, &q, T + 500, 1, 1_000).await;
    assert_eq!(one.deliveries.len(), 1);
    let zero = lease(backend, &q, T + 500, 0, 1_000).await;
    assert!(zero.deliveries.is_empty(), "max 0 leased something");
    let other = lease(backend, &q, T + 500, 10, 1_000).await;
    assert_eq!(other.deliveries.len(), 1);
    assert_ne!(one.deliveries[0].id, other.deliveries[0].id);

    qs.ack(&q, strings(&["a", "b", "d", "e"])).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(1, 0));
    // Acked messages never come back, even after their lease would have ended.
    let later = lease(backend, &q, T + 2_000, 10, 1_000).await;
    assert!(later.deliveries.is_empty(), "acked message redelivered");
    assert_eq!(later.next_due_ms, Some(T + 5_000), "next due message");

    let c = lease(backend, &q, T + 5_000, 10, 1_000).await;
    assert_eq!(ids(&c), strings(&["c"]));
    assert_eq!(c.deliveries[0].body, b"C".to_vec());
    qs.ack(&q, strings(&["c", "never-sent"])).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));
    assert_eq!(
        lease(backend, &q, T + 1_000_000, 10, 1_000).await,
        Leased::default()
    );
    qs.ack(&q, Vec::new()).await.unwrap();
    qs.send(&q, Vec::new()).await.unwrap();
}

/// Earlier due times are delivered first; nothing is delivered before it is due.
pub async fn queue_due_order(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-due");
    qs.send(
        &q,
        vec![
            msg("x", b"", T + 20),
            msg("y", b"", T + 10),
            msg("z", b"", T),
        ],
    )
    .await
    .unwrap();
    let early = lease(backend, &q, T - 1, 10, 1_000).await;
    assert!(early.deliveries.is_empty(), "delivered before due");
    assert_eq!(early.next_due_ms, Some(T));

    let mut order = Vec::new();
    for _ in 0..3 {
        let l = lease(backend, &q, T + 30, 1, 1_000).await;
        assert_eq!(l.deliveries.len(), 1);
        order.push(l.deliveries[0].id.clone());
    }
    assert_eq!(order, strings(&["z", "y", "x"]), "due order");

    qs.send(&q, vec![msg("w", b"", T + 100)]).await.unwrap();
    let before = lease(backend, &q, T + 99, 10, 1_000).await;
    assert!(before.deliveries.is_empty());
    assert_eq!(before.next_due_ms, Some(T + 100));
    let at = lease(backend, &q, T + 100, 10, 1_000).await;
    assert_eq!(
        ids(&at),
        strings(&["w"]),
        "a message is due at its due time"
    );
    qs.ack(&q, strings(&["w", "x", "y", "z"])).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));
}

/// An expired lease makes a message deliverable again; `extend` pushes the lease.
pub async fn queue_visibility_and_extend(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-vis");
    qs.send(&q, vec![msg("a", b"A", T)]).await.unwrap();

    let first = lease(backend, &q, T, 10, 1_000).await;
    assert_eq!(ids(&first), strings(&["a"]));
    assert!(
        lease(backend, &q, T + 999, 10, 1_000)
            .await
            .deliveries
            .is_empty()
    );

    // The lease ends at lease_until_ms: redelivered, with no failure counted.
    let second = lease(backend, &q, T + 1_000, 10, 1_000).await;
    assert_eq!(
        ids(&second),
        strings(&["a"]),
        "expired lease not redelivered"
    );
    assert_eq!(second.deliveries[0].failures, 0);
    assert_eq!(second.deliveries[0].lease_until_ms, T + 2_000);
    assert_eq!(second.deliveries[0].body, b"A".to_vec());
    assert_eq!(depth(backend, &q).await, depth_of(0, 1));

    qs.extend(&q, "a", T + 5_000).await.unwrap();
    let held = lease(backend, &q, T + 3_000, 10, 1_000).await;
    assert!(held.deliveries.is_empty(), "extended lease ignored");
    assert_eq!(held.next_due_ms, Some(T + 5_000));
    let third = lease(backend, &q, T + 5_000, 10, 500).await;
    assert_eq!(ids(&third), strings(&["a"]));
    assert_eq!(third.deliveries[0].lease_until_ms, T + 5_500);

    // Extending an unknown message is not an error.
    qs.extend(&q, "nope", T + 9_000).await.unwrap();
    qs.ack(&q, strings(&["a"])).await.unwrap();
    qs.extend(&q, "a", T + 9_000).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));
    assert!(
        lease(backend, &q, T + 10_000, 10, 1_000)
            .await
            .deliveries
            .is_empty()
    );
}

/// `nack` counts a failure and makes the message due again at the given time.
pub async fn queue_nack(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-nack");
    qs.send(&q, vec![msg("a", b"A", T)]).await.unwrap();
    assert_eq!(
        lease(backend, &q, T, 10, 60_000).await.deliveries[0].failures,
        0
    );

    qs.nack(&q, "a", T + 100).await.unwrap();
    assert_eq!(
        depth(backend, &q).await,
        depth_of(1, 0),
        "nacked message is waiting"
    );
    let early = lease(backend, &q, T + 50, 10, 60_000).await;
    assert!(
        early.deliveries.is_empty(),
        "nacked message delivered before its new due time"
    );
    assert_eq!(early.next_due_ms, Some(T + 100));

    let second = lease(backend, &q, T + 100, 10, 60_000).await;
    assert_eq!(ids(&second), strings(&["a"]));
    assert_eq!(second.deliveries[0].failures, 1);
    assert_eq!(second.deliveries[0].body, b"A".to_vec());

    // A nack can make a message due immediately.
    qs.nack(&q, "a", T + 100).await.unwrap();
    let third = lease(backend, &q, T + 100, 10, 60_000).await;
    assert_eq!(third.deliveries[0].failures, 2);
    // Extend keeps the failure count.
    qs.extend(&q, "a", T + 200_000).await.unwrap();
    qs.nack(&q, "a", T).await.unwrap();
    assert_eq!(
        lease(backend, &q, T, 10, 60_000).await.deliveries[0].failures,
        3
    );

    // Nacking an unknown message is not an error.
    qs.nack(&q, "nope", T).await.unwrap();
    qs.ack(&q, strings(&["a"])).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));
}

/// `started` counts attempts begun: a delivery whose lease lapses without
/// an ack or nack (the node died) comes back with one more start; a nack
/// keeps the starts; unknown ids are ignored.
pub async fn queue_started(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-started");
    qs.send(&q, vec![msg("a", b"A", T), msg("b", b"B", T)])
        .await
        .unwrap();
    let first = lease(backend, &q, T, 10, 1_000).await;
    let first = by_id(&first);
    assert_eq!((first["a"].starts, first["a"].failures), (0, 0));
    qs.started(&q, strings(&["a", "nope"])).await.unwrap();

    // The leases lapse: only `a` was started.
    let again = lease(backend, &q, T + 1_000, 10, 1_000).await;
    let again = by_id(&again);
    assert_eq!((again["a"].starts, again["a"].failures), (1, 0));
    assert_eq!((again["b"].starts, again["b"].failures), (0, 0));

    qs.started(&q, strings(&["a"])).await.unwrap();
    qs.nack(&q, "a", T + 1_000).await.unwrap();
    let third = lease(backend, &q, T + 1_000, 10, 1_000).await;
    let a = &by_id(&third)["a"];
    assert_eq!((a.starts, a.failures), (2, 1));

    // An unknown queue is not an error either.
    qs.started(&unique("conf-q-none"), strings(&["a"]))
        .await
        .unwrap();
    qs.ack(&q, strings(&["a", "b"])).await.unwrap();
}

/// Sending an id that is queued (waiting or leased) is a no-op; after ack it can be sent again.
pub async fn queue_dedup(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-dedup");
    qs.send(&q, vec![msg("a", b"one", T)]).await.unwrap();
    qs.send(&q, vec![msg("a", b"two", T)]).await.unwrap();
    qs.send(&q, vec![msg("b", b"b1", T), msg("b", b"b2", T)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(2, 0));

    let got = lease(backend, &q, T, 10, 1_000).await;
    let got = by_id(&got);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got["a"].body,
        b"one".to_vec(),
        "a duplicate send replaced the body"
    );
    assert_eq!(got["b"].body, b"b1".to_vec());

    // While leased, a duplicate send does not requeue it.
    qs.send(&q, vec![msg("a", b"three", T)]).await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 2));
    assert!(
        lease(backend, &q, T + 1, 10, 1_000)
            .await
            .deliveries
            .is_empty()
    );

    qs.ack(&q, strings(&["a", "b"])).await.unwrap();
    qs.send(&q, vec![msg("a", b"four", T)]).await.unwrap();
    let again = lease(backend, &q, T + 1, 10, 1_000).await;
    assert_eq!(
        ids(&again),
        strings(&["a"]),
        "an acked id can be sent again"
    );
    assert_eq!(again.deliveries[0].body, b"four".to_vec());
    assert_eq!(again.deliveries[0].failures, 0);
    qs.ack(&q, strings(&["a"])).await.unwrap();
}

/// Queues are independent, even for equal message ids.
pub async fn queue_isolation(backend: &Backend) {
    let qs = &backend.queues;
    let q1 = unique("conf-q-iso");
    let q2 = format!("{q1}-2");
    qs.send(&q1, vec![msg("m", b"one", T)]).await.unwrap();
    qs.send(&q2, vec![msg("m", b"two", T + 10)]).await.unwrap();
    assert_eq!(depth(backend, &q1).await, depth_of(1, 0));
    assert_eq!(depth(backend, &q2).await, depth_of(1, 0));

    let l1 = lease(backend, &q1, T + 10, 10, 1_000).await;
    assert_eq!(ids(&l1), strings(&["m"]));
    assert_eq!(l1.deliveries[0].body, b"one".to_vec());
    assert_eq!(
        depth(backend, &q2).await,
        depth_of(1, 0),
        "lease leaked across queues"
    );

    qs.ack(&q1, strings(&["m"])).await.unwrap();
    assert_eq!(
        depth(backend, &q2).await,
        depth_of(1, 0),
        "ack leaked across queues"
    );
    qs.nack(&q1, "m", T).await.unwrap();
    let l2 = lease(backend, &q2, T + 10, 10, 1_000).await;
    assert_eq!(ids(&l2), strings(&["m"]));
    assert_eq!(l2.deliveries[0].body, b"two".to_vec());
    assert_eq!(l2.deliveries[0].failures, 0, "nack leaked across queues");
    qs.ack(&q2, strings(&["m"])).await.unwrap();
    assert_eq!(depth(backend, &q1).await, depth_of(0, 0));
    assert_eq!(depth(backend, &q2).await, depth_of(0, 0));
}

/// Bodies are arbitrary bytes: empty, binary, and large.
pub async fn queue_bodies(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-body");
    let binary: Vec<u8> = (0..=255u8).cycle().take(256 * 1024 + 7).collect();
    qs.send(&q, vec![msg("empty", b"", T), msg("bin", &binary, T)])
        .await
        .unwrap();
    let got = lease(backend, &q, T, 10, 1_000).await;
    let got = by_id(&got);
    assert_eq!(got["empty"].body, Vec::<u8>::new());
    assert_eq!(got["bin"].body, binary);
    qs.ack(&q, strings(&["empty", "bin"])).await.unwrap();
}

/// Deduplication keys: a message whose key is held (sent before with an
/// `until` after this message's `sent_ms`) is dropped; keys are per queue
/// and outlive acks and purges. Times only move forward here: an adapter
/// may prune a key once some later send time has passed its window.
pub async fn queue_dedup_keys(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-dkey");
    let other = format!("{q}-other");

    let first = qs
        .send(&q, vec![keyed("m1", "k", T + 1_000, T)])
        .await
        .unwrap();
    assert_eq!(first, vec![None], "a new key is no duplicate");
    // Held: dropped (reported as a duplicate of the message holding the
    // key), and the held window is not moved by the dropped message.
    let dropped = qs
        .send(&q, vec![keyed("m2", "k", T + 5_000, T + 500)])
        .await
        .unwrap();
    assert_eq!(dropped, vec![Some("m1".to_string())]);
    assert_eq!(depth(backend, &q).await, depth_of(1, 0));
    let got = lease(backend, &q, T + 500, 10, 60_000).await;
    assert_eq!(ids(&got), strings(&["m1"]));
    // The same key on another queue is another key.
    qs.send(&other, vec![keyed("m1", "k", T + 1_000, T + 500)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &other).await, depth_of(1, 0));

    // Acked and purged: the key is still held.
    qs.ack(&q, strings(&["m1"])).await.unwrap();
    qs.send(&q, vec![keyed("m3", "k", T + 5_000, T + 600)])
        .await
        .unwrap();
    assert_eq!(qs.purge(&q).await.unwrap(), 0);
    qs.send(&q, vec![keyed("m4", "k", T + 5_000, T + 999)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));

    // A dropped message leaves its id free.
    qs.send(&q, vec![msg("m2", b"plain", T + 999)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(1, 0));

    // The window ends at `until`: a message sent then is accepted and holds
    // the key for its own window.
    assert_eq!(
        qs.send(&q, vec![keyed("m5", "k", T + 3_000, T + 1_000)])
            .await
            .unwrap(),
        vec![None],
        "a key past its window is free again"
    );
    assert_eq!(
        qs.send(&q, vec![keyed("m6", "k", T + 9_000, T + 2_999)])
            .await
            .unwrap(),
        vec![Some("m5".to_string())],
        "the key now names the message that took it again"
    );
    assert_eq!(depth(backend, &q).await, depth_of(2, 0));
    qs.send(&q, vec![keyed("m7", "k", T + 9_000, T + 3_000)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(3, 0));

    // Within one call, the first message with a key wins.
    let batch = qs
        .send(
            &q,
            vec![
                keyed("n1", "k2", T + 9_000, T + 3_000),
                keyed("n2", "k2", T + 9_000, T + 3_000),
                msg("n3", b"no key", T + 3_000),
            ],
        )
        .await
        .unwrap();
    assert_eq!(batch, vec![None, Some("n1".to_string()), None]);
    // An id already queued is a no-op: its key is not taken.
    qs.send(&q, vec![keyed("n3", "k3", T + 9_000, T + 3_000)])
        .await
        .unwrap();
    qs.send(&q, vec![keyed("n4", "k3", T + 9_000, T + 3_000)])
        .await
        .unwrap();
    let got = lease(backend, &q, T + 3_000, 100, 60_000).await;
    assert_eq!(
        ids(&got),
        strings(&["m2", "m5", "m7", "n1", "n3", "n4"]),
        "deduplicated sends"
    );
    assert_eq!(by_id(&got)["n3"].body, b"no key".to_vec());
    assert_eq!(counters(backend, &q).await.sent, 7);
    qs.ack(&q, ids(&got)).await.unwrap();
    qs.ack(&other, strings(&["m1"])).await.unwrap();
}

/// Keyed leases pass over keys at their limit without reordering them, and
/// keys survive retries, dead letters and redrives.
pub async fn queue_keys(b: &Backend) {
    let q = unique("keys");
    let mut messages: Vec<NewMessage> = (0..50)
        .map(|i| keyed_msg(&format!("a{i:02}"), Some("tenant-a"), T + i))
        .collect();
    messages.push(keyed_msg("b0", Some("tenant-b"), T + 60));
    messages.push(keyed_msg("b1", Some("tenant-b"), T + 61));
    messages.push(keyed_msg("n0", None, T + 62));
    messages.push(keyed_msg("n1", None, T + 63));
    b.queues.send(&q, messages).await.unwrap();

    let mut limit = KeyLimit {
        per_key: 2,
        running: Default::default(),
    };
    let now = T + 100;
    let first = b
        .queues
        .lease_keyed(&q, now, 10, 1000, Some(&limit))
        .await
        .unwrap();
    // Two of a, two of b, and the keyless ones are not limited.
    assert_eq!(ids_of(&first), ["a00", "a01", "b0", "b1", "n0", "n1"]);
    assert_eq!(first.deliveries[0].key.as_deref(), Some("tenant-a"));
    assert_eq!(first.deliveries[4].key, None);
    // With those still running, nothing more of a or b.
    limit.running.insert("tenant-a".into(), 2);
    limit.running.insert("tenant-b".into(), 2);
    let none = b
        .queues
        .lease_keyed(&q, now, 10, 1000, Some(&limit))
        .await
        .unwrap();
    assert!(none.deliveries.is_empty());
    // One a finished: exactly the next a, in order.
    b.queues.ack(&q, vec!["a00".into()]).await.unwrap();
    limit.running.insert("tenant-a".into(), 1);
    let next = b
        .queues
        .lease_keyed(&q, now, 10, 1000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&next), ["a02"]);
    // A plain lease ignores keys.
    let plain = lease(b, &q, now, 3, 1000).await;
    assert_eq!(ids_of(&plain), ["a03", "a04", "a05"]);

    // The key stays through a nack, a dead letter and a redrive.
    b.queues.nack(&q, "b0", now).await.unwrap();
    limit.running.clear();
    limit.running.insert("tenant-a".into(), 2);
    let again = b
        .queues
        .lease_keyed(&q, now + 1, 1, 1000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&again), ["b0"]);
    assert_eq!(again.deliveries[0].key.as_deref(), Some("tenant-b"));
    b.queues
        .dead_letter(&q, "b0", "boom".into(), now + 2)
        .await
        .unwrap();
    assert_eq!(
        b.queues
            .redrive(&q, Some(vec!["b0".into()]), now + 3)
            .await
            .unwrap(),
        1
    );
    limit.running.insert("tenant-a".into(), 2);
    let redriven = b
        .queues
        .lease_keyed(&q, now + 3, 5, 1000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&redriven), ["b0"]);
    assert_eq!(redriven.deliveries[0].key.as_deref(), Some("tenant-b"));
    // Expired leases come back first, still within their key's limit.
    limit.running.clear();
    limit.per_key = 1;
    let expired = b
        .queues
        .lease_keyed(&q, now + 5_000, 10, 1000, Some(&limit))
        .await
        .unwrap();
    // One per key (a01 before the other a's, b1 before b0 whose lease ends
    // later); keyless ones are not limited.
    assert_eq!(ids_of(&expired), ["a01", "b1", "n0", "n1"]);
}

pub(super) fn sent_at(id: &str, body: &[u8], due_ms: u64, sent_ms: u64) -> NewMessage {
    NewMessage {
        sent_ms,
        ..msg(id, body, due_ms)
    }
}

/// A message with a deduplication key, due when sent.
pub(super) fn keyed(id: &str, key: &str, until_ms: u64, sent_ms: u64) -> NewMessage {
    NewMessage {
        dedup: Some((key.to_string(), until_ms)),
        key: None,
        ..msg(id, id.as_bytes(), sent_ms)
    }
}

/// Every field of a queue's depth.
pub(super) async fn full_depth(backend: &Backend, queue: &str) -> QueueDepth {
    backend.queues.depth(queue).await.expect("depth")
}

pub(super) async fn counters(backend: &Backend, queue: &str) -> QueueCounters {
    backend.queues.counters(queue).await.expect("counters")
}

pub(super) fn counters_of(sent: u64, acked: u64, nacked: u64, dead_lettered: u64) -> QueueCounters {
    QueueCounters {
        sent,
        acked,
        nacked,
        dead_lettered,
    }
}

pub(super) async fn dead_letters(backend: &Backend, queue: &str) -> Vec<DeadLetter> {
    backend
        .queues
        .dead_letters(queue, None, usize::MAX)
        .await
        .expect("dead_letters")
}

pub(super) fn dead_ids(dead: &[DeadLetter]) -> Vec<String> {
    dead.iter().map(|d| d.id.clone()).collect()
}

fn keyed_msg(id: &str, key: Option<&str>, due_ms: u64) -> NewMessage {
    NewMessage {
        key: key.map(str::to_string),
        ..msg(id, id.as_bytes(), due_ms)
    }
}

fn ids_of(leased: &Leased) -> Vec<String> {
    leased.deliveries.iter().map(|d| d.id.clone()).collect()
}

/// A key that carries its own limit (`"\0K\0..."`, a job's children under
/// `max_in_flight`) is limited by it under any `per_key`, and other keys
/// keep `per_key`.
pub async fn queue_keys_with_own_limits(b: &Backend) {
    let q = unique("ownlimit");
    let job = "\u{0}3\u{0}job-1";
    let mut messages: Vec<NewMessage> = (0..6)
        .map(|i| keyed_msg(&format!("j{i}"), Some(job), T + i))
        .collect();
    messages.push(keyed_msg("t0", Some("tenant"), T + 10));
    messages.push(keyed_msg("t1", Some("tenant"), T + 11));
    // Not a limit: a zero, no closing NUL.
    messages.push(keyed_msg("z0", Some("\u{0}0\u{0}x"), T + 12));
    messages.push(keyed_msg("z1", Some("\u{0}0\u{0}x"), T + 13));
    b.queues.send(&q, messages).await.unwrap();
    let mut limit = KeyLimit {
        per_key: u32::MAX,
        running: Default::default(),
    };
    let now = T + 100;
    let first = b
        .queues
        .lease_keyed(&q, now, 20, 1000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&first), ["j0", "j1", "j2", "t0", "t1", "z0", "z1"]);
    assert_eq!(first.deliveries[0].key.as_deref(), Some(job));
    // Three of the job out: no more of it, whatever per_key says.
    limit.running.insert(job.into(), 3);
    let none = b
        .queues
        .lease_keyed(&q, now, 20, 1000, Some(&limit))
        .await
        .unwrap();
    assert!(none.deliveries.is_empty());
    b.queues
        .ack(&q, vec!["j0".into(), "j1".into()])
        .await
        .unwrap();
    limit.running.insert(job.into(), 1);
    limit.per_key = 1;
    let next = b
        .queues
        .lease_keyed(&q, now, 20, 1000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&next), ["j3", "j4"]);
}
