//! The queues port on a real `redis-server`: the conformance suite's queue
//! cases (delivery, stats, cleanup), one test each.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, conformance};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

/// A backend whose catalog and queues are on Redis (the other ports in
/// memory; the queue cases do not use them).
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(
        RedisStore::connect(&server.options())
            .await
            .expect("connect to the test's redis-server")
            .0,
    );
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: store.clone(),
        invocations: memory.clone(),
        queues: store,
        docs: memory.clone(),
        jobs: memory.clone(),
        kv: memory.clone(),
        blobs: memory.clone(),
        channels: memory.clone(),
        usage: memory,
    }
}

macro_rules! cases {
    ($($area:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::$area::$case(&backend(&server).await).await;
            }
        )*
    };
}

cases!(
    queues::queue_lease_and_ack,
    queues::queue_due_order,
    queues::queue_visibility_and_extend,
    queues::queue_nack,
    queues::queue_started,
    queues::queue_dedup,
    queues::queue_isolation,
    queues::queue_bodies,
    queues::queue_dedup_keys,
    queues::queue_keys,
    queue_stats::queue_depth_fields,
    queue_stats::queue_counters,
    queue_stats::queue_samples,
    queue_cleanup::queue_dead_letters,
    queue_cleanup::queue_redrive_and_purge_dead,
    queue_cleanup::queue_purge,
);

/// A keyed lease passes over a key at its limit in one step, however many
/// messages the key holds: the other keys' messages behind them are taken.
#[tokio::test]
async fn a_busy_key_never_holds_back_the_others() {
    use shoal_store::{KeyLimit, NewMessage};
    let server = RedisServer::start(&[]);
    let b = backend(&server).await;
    let q = conformance::unique("busy");
    let message = |id: String, key: &str, due_ms: u64| NewMessage {
        id,
        body: Vec::new(),
        due_ms,
        sent_ms: due_ms,
        dedup: None,
        key: Some(key.to_string()),
    };
    let busy: Vec<NewMessage> = (0..5_000)
        .map(|i| message(format!("a{i:05}"), "busy", 1_000 + i))
        .collect();
    b.queues.send(&q, busy).await.unwrap();
    b.queues
        .send(&q, vec![message("b".into(), "calm", 10_000)])
        .await
        .unwrap();
    let limit = KeyLimit {
        per_key: 2,
        running: [("busy".to_string(), 2)].into(),
    };
    let leased = b
        .queues
        .lease_keyed(&q, 20_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    let ids: Vec<&str> = leased.deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b"]);
    // Their leases lapse; the busy key has room for one: the oldest.
    let limit = KeyLimit {
        per_key: 1,
        running: Default::default(),
    };
    let leased = b
        .queues
        .lease_keyed(&q, 21_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    let ids: Vec<&str> = leased.deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b", "a00000"]);
}

/// Once every message is gone (acked, dead-lettered and purged), the queue
/// leaves only its counters and deduplication keys behind: the per-key
/// groups and heads are emptied with the messages.
#[tokio::test]
async fn an_emptied_queue_leaves_only_its_counters_and_dedup_keys() {
    use shoal_store::NewMessage;
    let server = RedisServer::start(&[]);
    let b = backend(&server).await;
    let q = conformance::unique("empty");
    let message = |id: &str, key: Option<&str>, due_ms: u64| NewMessage {
        id: id.to_string(),
        body: id.as_bytes().to_vec(),
        due_ms,
        sent_ms: due_ms,
        dedup: Some((format!("d-{id}"), 1_000_000)),
        key: key.map(str::to_string),
    };
    let sent = vec![
        message("a", Some("t1"), 10),
        message("b", Some("t1"), 20),
        message("c", Some("t2"), 30),
        message("d", None, 40),
        message("e", None, 5_000),
        message("f", Some("t2"), 5_000),
    ];
    b.queues.send(&q, sent).await.unwrap();
    let leased = b.queues.lease(&q, 100, 3, 1_000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 3);
    b.queues.nack(&q, "a", 50).await.unwrap();
    b.queues.ack(&q, vec!["b".into()]).await.unwrap();
    b.queues
        .dead_letter(&q, "c", "x".into(), 100)
        .await
        .unwrap();
    b.queues
        .dead_letter(&q, "d", "x".into(), 100)
        .await
        .unwrap();
    assert_eq!(b.queues.redrive(&q, None, 200).await.unwrap(), 2);
    assert_eq!(b.queues.purge(&q).await.unwrap(), 5);
    assert_eq!(b.queues.purge_dead(&q, None).await.unwrap(), 0);

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*:q:{q}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let suffixes: Vec<&str> = keys
        .iter()
        .map(|k| k.rsplit(':').next().unwrap_or(""))
        .collect();
    assert_eq!(suffixes, ["counters", "dedup"], "{keys:?}");
}

/// `record_samples` forgets deduplication keys whose window ended by the
/// latest time it saw (they could not hold back any later send), and only
/// those.
#[tokio::test]
async fn samples_forget_ended_dedup_keys() {
    use shoal_store::NewMessage;
    let server = RedisServer::start(&[]);
    let b = backend(&server).await;
    let q = conformance::unique("prune");
    let message = |id: &str, key: &str, until_ms: u64| NewMessage {
        id: id.to_string(),
        body: Vec::new(),
        due_ms: 0,
        sent_ms: 0,
        dedup: Some((key.to_string(), until_ms)),
        key: None,
    };
    b.queues
        .send(
            &q,
            vec![message("a", "ends", 100), message("b", "stays", 300)],
        )
        .await
        .unwrap();
    b.queues.record_samples(Vec::new(), 200).await.unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut held: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("shoal-test:{{w}}:q:{q}:dedup"))
        .query_async(&mut conn)
        .await
        .unwrap();
    held.sort();
    assert_eq!(held, ["stays"]);
    let indexed: u64 = redis::cmd("ZCARD")
        .arg("shoal-test:{w}:q-dedup")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(indexed, 1);
}

/// Random operations on one queue, applied to Redis and to the in-memory
/// reference store, answer the same (leases in order, depths, counters,
/// dead letters), with ids and keys that hold `:` and non-ASCII text.
#[tokio::test]
async fn random_operations_answer_as_the_reference_store() {
    use shoal_store::{KeyLimit, NewMessage, Queues};
    let server = RedisServer::start(&[]);
    let redis = backend(&server).await.queues;
    let memory = MemoryStore::new();
    let q = conformance::unique("random");
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let ids = ["a", "b:1", "c", "d:é", "e", "f", "g", "h"];
    let keys = [None, Some("k:1"), Some("k2"), Some("")];
    let mut now = 1_000u64;
    let mut delivered = 0;
    // The leased messages (also after their lease ended) and their keys:
    // what the store counts per key, so the walk's `running` counts at
    // least that, as a node's would (on one node the two agree).
    let mut leased: HashMap<String, Option<String>> = HashMap::new();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let counted = format!("shoal-test:{{w}}:q:{q}:kleased");
    for step in 0..1_500 {
        now += next(30);
        let id = ids[next(ids.len() as u64) as usize].to_string();
        match next(11) {
            0..=2 => {
                let m = NewMessage {
                    id: id.clone(),
                    body: vec![next(256) as u8, 0, 255],
                    due_ms: now + next(50),
                    sent_ms: now,
                    dedup: (next(4) == 0).then(|| (format!("d{}", next(3)), now + next(100))),
                    key: keys[next(keys.len() as u64) as usize].map(str::to_string),
                };
                let a = redis.send(&q, vec![m.clone()]).await.unwrap();
                let b = memory.send(&q, vec![m]).await.unwrap();
                assert_eq!(a, b, "send at step {step}");
            }
            3..=4 => {
                let limit = (next(2) == 0).then(|| {
                    let mut running = in_flight(&leased);
                    *running.entry("k:1".to_string()).or_default() += next(2) as u32;
                    KeyLimit {
                        per_key: next(3) as u32,
                        running,
                    }
                });
                let max = next(5) as usize;
                let vis = 1 + next(100);
                let a = redis
                    .lease_keyed(&q, now, max, vis, limit.as_ref())
                    .await
                    .unwrap();
                let b = memory
                    .lease_keyed(&q, now, max, vis, limit.as_ref())
                    .await
                    .unwrap();
                assert_eq!(a, b, "lease at step {step}");
                delivered += a.deliveries.len();
                for d in a.deliveries {
                    leased.insert(d.id, d.key);
                }
            }
            5 => {
                redis.ack(&q, vec![id.clone()]).await.unwrap();
                memory.ack(&q, vec![id.clone()]).await.unwrap();
                leased.remove(&id);
            }
            6 => {
                let due = now + next(40);
                redis.nack(&q, &id, due).await.unwrap();
                memory.nack(&q, &id, due).await.unwrap();
                leased.remove(&id);
            }
            7 => {
                redis.started(&q, vec![id.clone()]).await.unwrap();
                memory.started(&q, vec![id.clone()]).await.unwrap();
                let until = now + next(60);
                redis.extend(&q, &id, until).await.unwrap();
                memory.extend(&q, &id, until).await.unwrap();
            }
            8 => {
                redis.dead_letter(&q, &id, "r".into(), now).await.unwrap();
                memory.dead_letter(&q, &id, "r".into(), now).await.unwrap();
                leased.remove(&id);
            }
            9 => {
                let which = (next(2) == 0).then(|| vec![id.clone()]);
                let a = redis.redrive(&q, which.clone(), now).await.unwrap();
                let b = memory.redrive(&q, which, now).await.unwrap();
                assert_eq!(a, b, "redrive at step {step}");
            }
            _ => {
                if next(8) == 0 {
                    assert_eq!(
                        redis.purge(&q).await.unwrap(),
                        memory.purge(&q).await.unwrap(),
                        "purge at step {step}"
                    );
                } else if next(4) == 0 {
                    let which = (next(2) == 0).then(|| vec![id.clone()]);
                    assert_eq!(
                        redis.purge_dead(&q, which.clone()).await.unwrap(),
                        memory.purge_dead(&q, which).await.unwrap(),
                        "purge_dead at step {step}"
                    );
                }
            }
        }
        assert_eq!(
            redis.depth(&q).await.unwrap(),
            memory.depth(&q).await.unwrap(),
            "depth at step {step}"
        );
        assert_eq!(
            redis.counters(&q).await.unwrap(),
            memory.counters(&q).await.unwrap(),
            "counters at step {step}"
        );
        assert_eq!(
            redis.dead_letters(&q, None, 100).await.unwrap(),
            memory.dead_letters(&q, None, 100).await.unwrap(),
            "dead letters at step {step}"
        );
        let stored: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(&counted)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, in_flight(&leased), "leased per key at step {step}");
    }
    assert!(
        delivered > 200,
        "only {delivered} deliveries: the walk is too thin"
    );
}

/// Leased messages per concurrency key.
fn in_flight(leased: &HashMap<String, Option<String>>) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for key in leased.values().flatten() {
        *counts.entry(key.clone()).or_default() += 1;
    }
    counts
}

/// Two nodes on one Redis, each leasing with its own empty `running`:
/// together they never hold more than `per_key` messages of one key in
/// flight; acks make room for the rest, in order; a lease that ended is
/// taken over by the other node without growing the count; and every
/// message is delivered once.
#[tokio::test]
async fn a_key_limit_holds_across_nodes() {
    use shoal_store::{KeyLimit, Leased, NewMessage, Queues};
    let server = RedisServer::start(&[]);
    let node = || async {
        RedisStore::connect(&server.options())
            .await
            .expect("connect to the test's redis-server")
            .0
    };
    let nodes = [node().await, node().await];
    let q = conformance::unique("nodes");
    let message = |id: String, key: Option<&str>, due_ms: u64| NewMessage {
        id,
        body: Vec::new(),
        due_ms,
        sent_ms: due_ms,
        dedup: None,
        key: key.map(str::to_string),
    };
    let mut sent: Vec<NewMessage> = (0..12)
        .map(|i| message(format!("t{i:02}"), Some("tenant"), 100 + i))
        .collect();
    sent.extend((0..3).map(|i| message(format!("o{i}"), Some("other"), 200 + i)));
    sent.push(message("free".into(), None, 300));
    nodes[0].send(&q, sent).await.unwrap();
    let limit = KeyLimit {
        per_key: 3,
        running: HashMap::new(),
    };
    let ids = |l: &Leased| -> Vec<String> { l.deliveries.iter().map(|d| d.id.clone()).collect() };

    // Both nodes lease at once: three of each key between them.
    let (a, b) = tokio::join!(
        nodes[0].lease_keyed(&q, 1_000, 10, 10_000, Some(&limit)),
        nodes[1].lease_keyed(&q, 1_000, 10, 10_000, Some(&limit)),
    );
    let (a, b) = (ids(&a.unwrap()), ids(&b.unwrap()));
    let mut both: Vec<String> = a.iter().chain(&b).cloned().collect();
    both.sort();
    assert_eq!(
        both,
        ["free", "o0", "o1", "o2", "t00", "t01", "t02"],
        "node 0 took {a:?}, node 1 {b:?}"
    );
    // Neither takes more, whichever asks.
    for n in &nodes {
        let more = n.lease_keyed(&q, 1_000, 10, 10_000, Some(&limit)).await;
        assert_eq!(ids(&more.unwrap()), Vec::<String>::new());
    }

    // Acks make room, on either node, for the next messages in order; the
    // two never hold more than three of the tenant together.
    let mut holding: Vec<String> = both.into_iter().filter(|id| id.starts_with('t')).collect();
    let mut delivered = holding.clone();
    let mut turn = 0;
    while !holding.is_empty() {
        let done = holding.remove(0);
        nodes[turn % 2].ack(&q, vec![done]).await.unwrap();
        let got = nodes[(turn + 1) % 2]
            .lease_keyed(&q, 1_000, 10, 10_000, Some(&limit))
            .await
            .unwrap();
        let got = ids(&got);
        assert!(got.len() <= 1, "one ack, one more: {got:?}");
        holding.extend(got.iter().cloned());
        delivered.extend(got);
        assert!(holding.len() <= 3, "{holding:?} in flight at once");
        turn += 1;
    }
    let expected: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    assert_eq!(delivered, expected, "each once, in order");

    // A node leases three and dies: the other, with nothing running, takes
    // no new message of the key while those leases run, then takes over
    // the three when they end, and still no fourth.
    let later: Vec<NewMessage> = (0..4)
        .map(|i| message(format!("u{i}"), Some("tenant"), 2_000 + i))
        .collect();
    nodes[0].send(&q, later).await.unwrap();
    let dead = nodes[0]
        .lease_keyed(&q, 3_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids(&dead), ["u0", "u1", "u2"]);
    let blocked = nodes[1]
        .lease_keyed(&q, 3_500, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids(&blocked), Vec::<String>::new());
    let over = nodes[1]
        .lease_keyed(&q, 4_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids(&over), ["u0", "u1", "u2"]);
    let running = KeyLimit {
        per_key: 3,
        running: [("tenant".to_string(), 3)].into(),
    };
    let full = nodes[1]
        .lease_keyed(&q, 4_000, 10, 1_000, Some(&running))
        .await
        .unwrap();
    assert_eq!(ids(&full), Vec::<String>::new());
    // Other node, nothing running: the store's count holds it back.
    let full = nodes[0]
        .lease_keyed(&q, 4_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    assert_eq!(ids(&full), Vec::<String>::new());
    nodes[1].nack(&q, "u0", 4_000).await.unwrap();
    nodes[1]
        .dead_letter(&q, "u1", "x".into(), 4_000)
        .await
        .unwrap();
    let rest = nodes[0]
        .lease_keyed(&q, 4_000, 10, 1_000, Some(&limit))
        .await
        .unwrap();
    // Room for two again: the older due first.
    assert_eq!(ids(&rest), ["u3", "u0"]);
}
