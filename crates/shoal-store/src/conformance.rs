//! The conformance suite every storage adapter runs (see `run_all`).
//!
//! A behaviour not checked here is not part of the storage contract. The
//! suite is plain async code with `assert!`s, so it runs under any executor
//! (adapters call it from their own `#[tokio::test]`). It never sleeps: the
//! store takes times from its callers, so the suite passes explicit `now_ms`
//! values to move time forward. Every function, token, invocation and queue
//! name is unique per run, so the suite can run against a shared backend
//! (a Redis used by other tests) and several times against one store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    Backend, CategoryRecord, ChildResult, DeadLetter, Delivery, DocWrite, Error, ErrorRecord,
    FunctionRecord, InvocationRecord, JobProgress, JobRecord, JobSlot, KeyLimit, Leased,
    LimiterRecord, NewMessage, QueueCounters, QueueDepth, QueueRecord, QueueSample, ShardStats,
    StoredDoc, ThenPlan, TokenRecord,
};

/// A base time for the queue tests. Queue names are unique, so a fixed clock is fine.
const T: u64 = 1_700_000_000_000;

/// Runs every area of the suite.
pub async fn run_all(backend: &Backend) {
    functions(backend).await;
    function_versions_after_remove(backend).await;
    tokens(backend).await;
    invocations(backend).await;
    logs(backend).await;
    write_order(backend).await;
    queue_lease_and_ack(backend).await;
    queue_due_order(backend).await;
    queue_visibility_and_extend(backend).await;
    queue_nack(backend).await;
    queue_dedup(backend).await;
    queue_isolation(backend).await;
    queue_bodies(backend).await;
    queue_depth_fields(backend).await;
    queue_counters(backend).await;
    queue_dedup_keys(backend).await;
    queue_dead_letters(backend).await;
    queue_redrive_and_purge_dead(backend).await;
    queue_purge(backend).await;
    queue_samples(backend).await;
    queue_and_limiter_records(backend).await;
    categories(backend).await;
    category_placement(backend).await;
    docs_put_get_replace_delete(backend).await;
    docs_versions(backend).await;
    docs_scan_order(backend).await;
    docs_atomicity(backend).await;
    docs_write_order(backend).await;
    delete_category_removes_everything(backend).await;
    docs_category_isolation(backend).await;
    queue_keys(backend).await;
    jobs_fan_in_once(backend).await;
    jobs_nested_and_cancel(backend).await;
}

/// A name no other run uses: `prefix-<pid>-<nanos>-<counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A function record with plausible fields; `version` is deliberately wrong
/// (the store must replace it).
pub fn sample_function(name: &str, handler: &str) -> FunctionRecord {
    FunctionRecord {
        name: name.to_string(),
        version: 999,
        runtime: "python3".to_string(),
        handler: handler.to_string(),
        timeout_ms: 30_000,
        memory_mb: 128,
        concurrency: 4,
        retries: 2,
        retry_delay_ms: 1000,
        code_dir: format!("code/{name}/{handler}"),
        env_dir: Some(format!("envs/{handler}")),
        code_sha256: "ab".repeat(32),
        deployed_at_ms: T,
        subscribe: None,
        limiter: None,
        concurrency_key: None,
    }
}

/// A queued invocation record.
pub fn sample_invocation(id: &str, function: &str) -> InvocationRecord {
    InvocationRecord {
        id: id.to_string(),
        function: function.to_string(),
        version: 1,
        mode: "async".to_string(),
        status: "queued".to_string(),
        input: r#"{"n":1,"s":"é\u0000\"x"}"#.to_string(),
        output: None,
        error: None,
        attempts: 0,
        max_attempts: 3,
        created_at_ms: T,
        started_at_ms: None,
        finished_at_ms: None,
        duration_ms: None,
        queued_ms: None,
        billed_gb_s: 0.0,
        cold_start: false,
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
    }
}

fn sample_token(id: &str, secret_sha256: &str) -> TokenRecord {
    TokenRecord {
        id: id.to_string(),
        secret_sha256: secret_sha256.to_string(),
        role: "admin".to_string(),
        name: format!("token {id}"),
        created_at_ms: T,
    }
}

fn msg(id: &str, body: &[u8], due_ms: u64) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: body.to_vec(),
        due_ms,
        sent_ms: due_ms,
        dedup: None,
        key: None,
    }
}

async fn lease(backend: &Backend, queue: &str, now_ms: u64, max: usize, vis: u64) -> Leased {
    backend
        .queues
        .lease(queue, now_ms, max, vis)
        .await
        .expect("lease")
}

/// Deliveries by id, asserting no id is delivered twice in one lease.
fn by_id(leased: &Leased) -> BTreeMap<String, Delivery> {
    let mut out = BTreeMap::new();
    for d in &leased.deliveries {
        let dup = out.insert(d.id.clone(), d.clone());
        assert!(
            dup.is_none(),
            "message {} delivered twice in one lease",
            d.id
        );
    }
    out
}

fn ids(leased: &Leased) -> Vec<String> {
    by_id(leased).into_keys().collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The waiting and in-flight counts of a queue.
async fn depth(backend: &Backend, queue: &str) -> QueueDepth {
    let d = backend.queues.depth(queue).await.expect("depth");
    depth_of(d.waiting, d.in_flight)
}

fn depth_of(waiting: u64, in_flight: u64) -> QueueDepth {
    QueueDepth {
        waiting,
        in_flight,
        ..QueueDepth::default()
    }
}

/// Deploys assign 1, 2, ...; latest vs specific versions; listing is sorted
/// and shows latest versions; removal removes every version.
pub async fn functions(backend: &Backend) {
    let c = &backend.catalog;
    let base = unique("conf-fn");
    let name = format!("{base}-m");

    assert_eq!(c.function(&name).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 1).await.unwrap(), None);

    let v1 = sample_function(&name, "main.one");
    assert_eq!(c.deploy_function(v1.clone()).await.unwrap(), 1);
    let v2 = sample_function(&name, "main.two");
    assert_eq!(c.deploy_function(v2.clone()).await.unwrap(), 2);

    let latest = c.function(&name).await.unwrap().expect("latest version");
    assert_eq!(latest.version, 2, "latest version");
    assert_eq!(
        latest,
        FunctionRecord {
            version: 2,
            ..v2.clone()
        }
    );
    let first = c.function_version(&name, 1).await.unwrap().expect("v1");
    assert_eq!(first, FunctionRecord { version: 1, ..v1 });
    assert_eq!(
        c.function_version(&name, 2).await.unwrap().unwrap().handler,
        "main.two"
    );
    assert_eq!(c.function_version(&name, 3).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 0).await.unwrap(), None);

    // Listing: latest version of each, sorted by name. Deploy out of order.
    let z = format!("{base}-z");
    let a = format!("{base}-a");
    assert_eq!(
        c.deploy_function(sample_function(&z, "z.h")).await.unwrap(),
        1
    );
    assert_eq!(
        c.deploy_function(sample_function(&a, "a.h")).await.unwrap(),
        1
    );
    assert_eq!(
        c.deploy_function(sample_function(&a, "a.h2"))
            .await
            .unwrap(),
        2
    );
    let all = c.functions().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "functions() must be sorted by name with one entry per function"
    );
    let ours: Vec<(String, u64, String)> = all
        .iter()
        .filter(|f| f.name.starts_with(&base))
        .map(|f| (f.name.clone(), f.version, f.handler.clone()))
        .collect();
    assert_eq!(
        ours,
        vec![
            (a.clone(), 2, "a.h2".to_string()),
            (name.clone(), 2, "main.two".to_string()),
            (z.clone(), 1, "z.h".to_string()),
        ]
    );

    // Versions of one name do not leak into a name it prefixes.
    let longer = format!("{name}x");
    assert_eq!(c.function(&longer).await.unwrap(), None);

    for n in [&name, &a, &z] {
        assert!(c.remove_function(n).await.unwrap(), "remove {n}");
    }
    assert!(!c.remove_function(&name).await.unwrap(), "second remove");
    assert!(!c.remove_function(&unique("conf-fn-never")).await.unwrap());
    assert_eq!(c.function(&name).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 1).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 2).await.unwrap(), None);
    let all = c.functions().await.unwrap();
    assert!(
        !all.iter().any(|f| f.name.starts_with(&base)),
        "removed functions listed"
    );
}

/// Version numbers are never reused, even after the function is removed.
pub async fn function_versions_after_remove(backend: &Backend) {
    let c = &backend.catalog;
    let name = unique("conf-fn-mono");
    for expected in 1..=3 {
        let v = c
            .deploy_function(sample_function(&name, "h"))
            .await
            .unwrap();
        assert_eq!(v, expected);
    }
    assert!(c.remove_function(&name).await.unwrap());
    let v = c
        .deploy_function(sample_function(&name, "again"))
        .await
        .unwrap();
    assert_eq!(v, 4, "a version number was reused after remove");
    let latest = c.function(&name).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.handler.as_str()), (4, "again"));
    for old in 1..=3 {
        assert_eq!(c.function_version(&name, old).await.unwrap(), None);
    }
    assert!(c.remove_function(&name).await.unwrap());
}

/// Tokens are found by the hash of their secret, listed, replaced by id and revoked.
pub async fn tokens(backend: &Backend) {
    let c = &backend.catalog;
    let id = unique("conf-tok");
    let other = unique("conf-tok");
    let sha = format!("{:0>64}", unique("sha"));
    let sha2 = format!("{:0>64}", unique("sha"));
    let other_sha = format!("{:0>64}", unique("sha"));

    assert_eq!(c.token_by_secret_sha256(&sha).await.unwrap(), None);
    let t = sample_token(&id, &sha);
    c.put_token(t.clone()).await.unwrap();
    let o = sample_token(&other, &other_sha);
    c.put_token(o.clone()).await.unwrap();
    assert_eq!(
        c.token_by_secret_sha256(&sha).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        c.token_by_secret_sha256(&other_sha).await.unwrap(),
        Some(o.clone())
    );
    let listed = c.tokens().await.unwrap();
    assert!(
        listed.contains(&t) && listed.contains(&o),
        "tokens() lists both"
    );

    // Replacing a token by id (a new secret) moves the lookup to the new hash.
    let rotated = TokenRecord {
        secret_sha256: sha2.clone(),
        role: "read".to_string(),
        ..t.clone()
    };
    c.put_token(rotated.clone()).await.unwrap();
    assert_eq!(
        c.token_by_secret_sha256(&sha).await.unwrap(),
        None,
        "old secret still valid"
    );
    assert_eq!(
        c.token_by_secret_sha256(&sha2).await.unwrap(),
        Some(rotated.clone())
    );
    let listed = c.tokens().await.unwrap();
    assert_eq!(listed.iter().filter(|x| x.id == id).count(), 1);

    assert!(c.revoke_token(&id).await.unwrap());
    assert!(!c.revoke_token(&id).await.unwrap(), "second revoke");
    assert_eq!(
        c.token_by_secret_sha256(&sha2).await.unwrap(),
        None,
        "revoked token valid"
    );
    assert!(!c.tokens().await.unwrap().iter().any(|x| x.id == id));
    // The other token is untouched.
    assert_eq!(c.token_by_secret_sha256(&other_sha).await.unwrap(), Some(o));
    assert!(c.revoke_token(&other).await.unwrap());
    assert!(!c.revoke_token(&unique("conf-tok-never")).await.unwrap());
}

/// Invocation records are upserted and read back exactly.
pub async fn invocations(backend: &Backend) {
    let inv = &backend.invocations;
    let f = unique("conf-inv-fn");
    let a = unique("conf-inv");
    let b = unique("conf-inv");
    assert_eq!(inv.invocation(&a).await.unwrap(), None);
    inv.put_invocations(Vec::new()).await.unwrap();

    let ra = sample_invocation(&a, &f);
    let rb = InvocationRecord {
        mode: "sync".to_string(),
        ..sample_invocation(&b, &f)
    };
    inv.put_invocations(vec![ra.clone(), rb.clone()])
        .await
        .unwrap();
    assert_eq!(inv.invocation(&a).await.unwrap(), Some(ra.clone()));
    assert_eq!(inv.invocation(&b).await.unwrap(), Some(rb.clone()));

    let done = InvocationRecord {
        status: "failed".to_string(),
        output: Some("[1,2]".to_string()),
        error: Some(ErrorRecord {
            kind: "raised".to_string(),
            exception: Some("ValueError".to_string()),
            message: "bad ✓".to_string(),
            traceback: Some("Traceback\n  line 1\n".to_string()),
        }),
        attempts: 3,
        started_at_ms: Some(T + 1),
        finished_at_ms: Some(T + 20),
        duration_ms: Some(12.625),
        queued_ms: Some(0.5),
        billed_gb_s: 0.001_953_125,
        cold_start: true,
        next_attempt_at_ms: Some(T + 1_000),
        ..ra.clone()
    };
    inv.put_invocations(vec![done.clone()]).await.unwrap();
    assert_eq!(inv.invocation(&a).await.unwrap(), Some(done));
    assert_eq!(
        inv.invocation(&b).await.unwrap(),
        Some(rb),
        "upsert touched another record"
    );
}

/// Logs are stored as raw bytes and replaced.
pub async fn logs(backend: &Backend) {
    let inv = &backend.invocations;
    let id = unique("conf-logs");
    assert_eq!(inv.logs(&id).await.unwrap(), None);
    inv.put_logs(&id, b"first\n".to_vec()).await.unwrap();
    assert_eq!(
        inv.logs(&id).await.unwrap().as_deref(),
        Some(&b"first\n"[..])
    );
    let binary: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    inv.put_logs(&id, binary.clone()).await.unwrap();
    assert_eq!(inv.logs(&id).await.unwrap(), Some(binary));
    inv.put_logs(&id, Vec::new()).await.unwrap();
    assert_eq!(inv.logs(&id).await.unwrap(), Some(Vec::new()));
    // Logs are independent of the invocation record.
    assert_eq!(inv.invocation(&id).await.unwrap(), None);
}

/// Writes are issued in call order at call time; a dropped future still writes.
pub async fn write_order(backend: &Backend) {
    let inv = &backend.invocations;
    let f = unique("conf-order-fn");

    // Two writes of one id, the first not awaited: the second wins.
    let id = unique("conf-order");
    let first = inv.put_invocations(vec![sample_invocation(&id, &f)]);
    let second = inv.put_invocations(vec![InvocationRecord {
        status: "running".to_string(),
        ..sample_invocation(&id, &f)
    }]);
    second.await.unwrap();
    assert_eq!(
        inv.invocation(&id).await.unwrap().unwrap().status,
        "running"
    );
    first.await.unwrap();
    assert_eq!(
        inv.invocation(&id).await.unwrap().unwrap().status,
        "running"
    );

    // Many interleaved writes of one id: the last one issued wins.
    let id = unique("conf-order");
    let pending: Vec<_> = (0..50)
        .map(|i| {
            inv.put_invocations(vec![InvocationRecord {
                attempts: i,
                ..sample_invocation(&id, &f)
            }])
        })
        .collect();
    for p in pending.into_iter().rev() {
        p.await.unwrap();
    }
    assert_eq!(inv.invocation(&id).await.unwrap().unwrap().attempts, 49);

    // A dropped future does not cancel its write.
    let dropped = unique("conf-order-dropped");
    drop(inv.put_logs(&dropped, b"kept".to_vec()));
    let after = unique("conf-order-after");
    inv.put_logs(&after, b"x".to_vec()).await.unwrap();
    assert_eq!(
        inv.logs(&dropped).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );

    // Deploys issued together get versions in call order.
    let c = &backend.catalog;
    let name = unique("conf-order-fn");
    let d1 = c.deploy_function(sample_function(&name, "one"));
    let d2 = c.deploy_function(sample_function(&name, "two"));
    assert_eq!(d2.await.unwrap(), 2);
    assert_eq!(d1.await.unwrap(), 1);
    assert_eq!(c.function(&name).await.unwrap().unwrap().handler, "two");
    assert!(c.remove_function(&name).await.unwrap());

    // Queue writes too: nack then ack issued together leaves nothing queued.
    let q = unique("conf-order-q");
    backend
        .queues
        .send(&q, vec![msg("m", b"b", T)])
        .await
        .unwrap();
    assert_eq!(
        ids(&lease(backend, &q, T, 10, 1_000).await),
        strings(&["m"])
    );
    let nack = backend.queues.nack(&q, "m", T);
    backend.queues.ack(&q, strings(&["m"])).await.unwrap();
    nack.await.unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(0, 0));
    assert!(
        lease(backend, &q, T + 100_000, 10, 1_000)
            .await
            .deliveries
            .is_empty()
    );

    // A send that is dropped still happens, before a later write.
    let q = unique("conf-order-q");
    drop(backend.queues.send(&q, vec![msg("d", b"dropped", T)]));
    backend
        .queues
        .send(&q, vec![msg("e", b"awaited", T)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(2, 0));
    backend.queues.ack(&q, strings(&["d", "e"])).await.unwrap();
}

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

fn doc(shard: u32, id: &str, body: &str) -> DocWrite {
    DocWrite {
        shard,
        id: id.to_string(),
        body: body.as_bytes().to_vec(),
    }
}

fn sent_at(id: &str, body: &[u8], due_ms: u64, sent_ms: u64) -> NewMessage {
    NewMessage {
        sent_ms,
        ..msg(id, body, due_ms)
    }
}

/// A message with a deduplication key, due when sent.
fn keyed(id: &str, key: &str, until_ms: u64, sent_ms: u64) -> NewMessage {
    NewMessage {
        dedup: Some((key.to_string(), until_ms)),
        key: None,
        ..msg(id, id.as_bytes(), sent_ms)
    }
}

/// Every field of a queue's depth.
async fn full_depth(backend: &Backend, queue: &str) -> QueueDepth {
    backend.queues.depth(queue).await.expect("depth")
}

async fn counters(backend: &Backend, queue: &str) -> QueueCounters {
    backend.queues.counters(queue).await.expect("counters")
}

fn counters_of(sent: u64, acked: u64, nacked: u64, dead_lettered: u64) -> QueueCounters {
    QueueCounters {
        sent,
        acked,
        nacked,
        dead_lettered,
    }
}

async fn dead_letters(backend: &Backend, queue: &str) -> Vec<DeadLetter> {
    backend
        .queues
        .dead_letters(queue, None, usize::MAX)
        .await
        .expect("dead_letters")
}

fn dead_ids(dead: &[DeadLetter]) -> Vec<String> {
    dead.iter().map(|d| d.id.clone()).collect()
}

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

/// Deduplication keys: a message whose key is held (sent before with an
/// `until` after this message's `sent_ms`) is dropped; keys are per queue
/// and outlive acks and purges. Times only move forward here: an adapter
/// may prune a key once some later send time has passed its window.
pub async fn queue_dedup_keys(backend: &Backend) {
    let qs = &backend.queues;
    let q = unique("conf-q-dkey");
    let other = format!("{q}-other");

    qs.send(&q, vec![keyed("m1", "k", T + 1_000, T)])
        .await
        .unwrap();
    // Held: dropped, and the held window is not moved by the dropped message.
    qs.send(&q, vec![keyed("m2", "k", T + 5_000, T + 500)])
        .await
        .unwrap();
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
    qs.send(&q, vec![keyed("m5", "k", T + 3_000, T + 1_000)])
        .await
        .unwrap();
    qs.send(&q, vec![keyed("m6", "k", T + 9_000, T + 2_999)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(2, 0));
    qs.send(&q, vec![keyed("m7", "k", T + 9_000, T + 3_000)])
        .await
        .unwrap();
    assert_eq!(depth(backend, &q).await, depth_of(3, 0));

    // Within one call, the first message with a key wins.
    qs.send(
        &q,
        vec![
            keyed("n1", "k2", T + 9_000, T + 3_000),
            keyed("n2", "k2", T + 9_000, T + 3_000),
            msg("n3", b"no key", T + 3_000),
        ],
    )
    .await
    .unwrap();
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

fn sample_queue(name: &str, max_attempts: u32) -> QueueRecord {
    QueueRecord {
        name: name.to_string(),
        max_attempts,
        visibility_ms: 30_000,
        retry_delay_ms: 1_000,
        dedup_window_ms: 300_000,
        created_at_ms: T,
    }
}

fn sample_limiter(name: &str, per_second: f64) -> LimiterRecord {
    LimiterRecord {
        name: name.to_string(),
        per_second,
        burst: 10,
        updated_at_ms: T,
    }
}

/// Queue and limiter records: put (create or replace), read, list sorted, remove.
pub async fn queue_and_limiter_records(backend: &Backend) {
    let c = &backend.catalog;
    let base = unique("conf-rec");
    let (a, b) = (format!("{base}-a"), format!("{base}-b"));

    assert_eq!(c.queue(&a).await.unwrap(), None);
    c.put_queue(sample_queue(&b, 3)).await.unwrap();
    c.put_queue(sample_queue(&a, 5)).await.unwrap();
    assert_eq!(c.queue(&a).await.unwrap(), Some(sample_queue(&a, 5)));
    c.put_queue(sample_queue(&a, 1)).await.unwrap();
    assert_eq!(c.queue(&a).await.unwrap(), Some(sample_queue(&a, 1)));
    let all = c.queues().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "queues() must be sorted by name, one entry per queue"
    );
    let ours: Vec<QueueRecord> = all
        .into_iter()
        .filter(|q| q.name.starts_with(&base))
        .collect();
    assert_eq!(ours, vec![sample_queue(&a, 1), sample_queue(&b, 3)]);
    assert_eq!(c.queue(&format!("{a}x")).await.unwrap(), None);

    // Issued together: the remove comes after the put.
    let put = c.put_queue(sample_queue(&a, 9));
    let removed = c.remove_queue(&a);
    put.await.unwrap();
    assert!(removed.await.unwrap());
    assert!(!c.remove_queue(&a).await.unwrap());
    assert_eq!(c.queue(&a).await.unwrap(), None);
    assert_eq!(c.queue(&b).await.unwrap(), Some(sample_queue(&b, 3)));
    assert!(c.remove_queue(&b).await.unwrap());
    assert!(
        !c.queues()
            .await
            .unwrap()
            .iter()
            .any(|q| q.name.starts_with(&base))
    );

    let ours = |all: Vec<LimiterRecord>| -> Vec<LimiterRecord> {
        all.into_iter()
            .filter(|l| l.name.starts_with(&base))
            .collect()
    };
    c.put_limiter(sample_limiter(&b, 0.5)).await.unwrap();
    c.put_limiter(sample_limiter(&a, 100.0)).await.unwrap();
    c.put_limiter(sample_limiter(&a, 2.25)).await.unwrap();
    let all = c.limiters().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "limiters() must be sorted by name, one entry per limiter"
    );
    assert_eq!(
        ours(all),
        vec![sample_limiter(&a, 2.25), sample_limiter(&b, 0.5)]
    );
    assert!(c.remove_limiter(&a).await.unwrap());
    assert!(!c.remove_limiter(&a).await.unwrap());
    assert_eq!(
        ours(c.limiters().await.unwrap()),
        vec![sample_limiter(&b, 0.5)]
    );
    assert!(c.remove_limiter(&b).await.unwrap());
    assert!(ours(c.limiters().await.unwrap()).is_empty());
}

async fn create(backend: &Backend, name: &str, shards: u32) -> CategoryRecord {
    let (record, created) = backend
        .docs
        .create_category(name, shards, 16, T)
        .await
        .expect("create_category");
    assert!(created, "category {name} existed before");
    record
}

async fn stats(backend: &Backend, category: &str) -> Vec<ShardStats> {
    backend
        .docs
        .shard_stats(category)
        .await
        .expect("shard_stats")
}

async fn get(backend: &Backend, category: &str, shard: u32, id: &str) -> Option<String> {
    backend
        .docs
        .get_doc(category, shard, id)
        .await
        .expect("get_doc")
        .map(|b| String::from_utf8(b).expect("utf-8 body"))
}

async fn scan_all(backend: &Backend, category: &str, shard: u32) -> Vec<StoredDoc> {
    backend
        .docs
        .scan_shard(category, shard, None, usize::MAX)
        .await
        .expect("scan_shard")
}

fn counts(stats: &[ShardStats]) -> Vec<(u64, u64)> {
    stats.iter().map(|s| (s.docs, s.bytes)).collect()
}

/// `NotFound` naming the category.
fn is_not_found<T: std::fmt::Debug>(result: crate::Result<T>, category: &str) -> bool {
    matches!(result, Err(Error::NotFound(name)) if name == category)
}

/// Create returns the record; a second create returns the stored one
/// unchanged; listing is sorted by name.
pub async fn categories(backend: &Backend) {
    let d = &backend.docs;
    let base = unique("conf-cat");
    let (m, z, a) = (
        format!("{base}-m"),
        format!("{base}-z"),
        format!("{base}-a"),
    );
    assert_eq!(d.category(&m).await.unwrap(), None);

    let (record, created) = d.create_category(&m, 3, 8, T + 1).await.unwrap();
    assert!(created);
    assert_eq!(
        (record.name.as_str(), record.shards, record.slots.len()),
        (m.as_str(), 3, 3)
    );
    assert_eq!(record.created_at_ms, T + 1);
    assert!(record.slots.iter().all(|s| *s < 8), "slot out of range");
    assert_eq!(d.category(&m).await.unwrap(), Some(record.clone()));

    // Idempotent: the stored record wins, whatever the second call asks.
    let (again, created) = d.create_category(&m, 5, 2, T + 2).await.unwrap();
    assert!(!created, "second create reported created");
    assert_eq!(again, record);
    assert_eq!(stats(backend, &m).await.len(), 3);

    create(backend, &z, 1).await;
    create(backend, &a, 2).await;
    let all = d.categories().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "categories() must be sorted by name"
    );
    let ours: Vec<&str> = all
        .iter()
        .filter(|c| c.name.starts_with(&base))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ours, [a.as_str(), m.as_str(), z.as_str()]);
    assert_eq!(all.iter().find(|c| c.name == m), Some(&record));

    for n in [&m, &z, &a] {
        assert!(d.delete_category(n).await.unwrap(), "delete {n}");
    }
    assert!(!d.delete_category(&m).await.unwrap(), "second delete");
    assert!(!d.delete_category(&unique("conf-cat-never")).await.unwrap());
    assert!(
        !d.categories()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name.starts_with(&base)),
        "deleted categories listed"
    );
}

/// Slots come round-robin from one counter shared by all categories, wrap
/// around `slot_count`, and an idempotent create does not advance it.
///
/// Assumes no other client creates categories on the backend meanwhile.
pub async fn category_placement(backend: &Backend) {
    let d = &backend.docs;
    let base = unique("conf-place");
    let names: Vec<String> = (0..4).map(|i| format!("{base}-{i}")).collect();
    let sc = 4;
    let (a, _) = d.create_category(&names[0], 3, sc, T).await.unwrap();
    // Existing: returned as is, counter unchanged.
    let (again, created) = d.create_category(&names[0], 3, sc, T).await.unwrap();
    assert!(!created);
    assert_eq!(again.slots, a.slots);
    let (b, _) = d.create_category(&names[1], 3, sc, T).await.unwrap();
    // More shards than slots: wraps around within one category.
    let (c, _) = d.create_category(&names[2], 6, sc, T).await.unwrap();
    let (e, _) = d.create_category(&names[3], 1, sc, T).await.unwrap();

    let start = a.slots[0];
    assert!(start < sc);
    let expect = |from: u32, n: u32| (from..from + n).map(|i| i % sc).collect::<Vec<u32>>();
    assert_eq!(a.slots, expect(start, 3), "consecutive slots");
    assert_eq!(
        b.slots,
        expect(start + 3, 3),
        "continues after the previous category"
    );
    assert_eq!(c.slots, expect(start + 6, 6));
    assert_eq!(e.slots, expect(start + 12, 1));
    assert!(
        b.slots.contains(&0) || a.slots.contains(&0),
        "some category wrapped"
    );
    for n in &names {
        assert!(d.delete_category(n).await.unwrap());
    }
}

/// Documents are written, read, replaced and deleted; shard stats follow.
pub async fn docs_put_get_replace_delete(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-docs");
    create(backend, &cat, 3).await;
    assert_eq!(stats(backend, &cat).await, vec![ShardStats::default(); 3]);
    assert_eq!(get(backend, &cat, 0, "a").await, None);

    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(100_000));
    d.put_docs(
        &cat,
        vec![
            doc(0, "a", r#"{"n":1}"#),
            doc(0, "b", r#"{"s":"é\u0000"}"#),
            doc(2, "c", &big),
            // Duplicate in one call: the last one wins.
            doc(1, "d", r#"{"v":1}"#),
            doc(1, "d", r#"{"v":22}"#),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        get(backend, &cat, 0, "a").await.as_deref(),
        Some(r#"{"n":1}"#)
    );
    assert_eq!(
        get(backend, &cat, 0, "b").await.as_deref(),
        Some(r#"{"s":"é\u0000"}"#)
    );
    assert_eq!(get(backend, &cat, 2, "c").await, Some(big.clone()));
    assert_eq!(
        get(backend, &cat, 1, "d").await.as_deref(),
        Some(r#"{"v":22}"#)
    );
    // Documents are found in their shard only.
    assert_eq!(get(backend, &cat, 1, "a").await, None);
    let big_len = big.len() as u64;
    let b_len = r#"{"s":"é\u0000"}"#.len() as u64;
    assert_eq!(
        counts(&stats(backend, &cat).await),
        [(2, 7 + b_len), (1, 8), (1, big_len)]
    );

    // Replacing adjusts bytes, not counts.
    d.put_docs(&cat, vec![doc(0, "a", r#"{"n":12345}"#), doc(2, "c", "{}")])
        .await
        .unwrap();
    assert_eq!(
        get(backend, &cat, 0, "a").await.as_deref(),
        Some(r#"{"n":12345}"#)
    );
    assert_eq!(get(backend, &cat, 2, "c").await.as_deref(), Some("{}"));
    assert_eq!(
        counts(&stats(backend, &cat).await),
        [(2, 11 + b_len), (1, 8), (1, 2)]
    );

    // Deleting counts what existed, in any shard; ids missing or in another
    // shard do not count.
    let removed = d
        .delete_docs(
            &cat,
            vec![
                (0, "a".to_string()),
                (0, "nope".to_string()),
                (2, "d".to_string()),
                (2, "c".to_string()),
                (2, "c".to_string()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(get(backend, &cat, 0, "a").await, None);
    assert_eq!(get(backend, &cat, 2, "c").await, None);
    assert_eq!(
        get(backend, &cat, 1, "d").await.as_deref(),
        Some(r#"{"v":22}"#)
    );
    assert_eq!(
        counts(&stats(backend, &cat).await),
        [(1, b_len), (1, 8), (0, 0)]
    );
    assert_eq!(d.delete_docs(&cat, Vec::new()).await.unwrap(), 0);
    d.put_docs(&cat, Vec::new()).await.unwrap();

    // A deleted id can be written again.
    d.put_docs(&cat, vec![doc(0, "a", "[]")]).await.unwrap();
    assert_eq!(get(backend, &cat, 0, "a").await.as_deref(), Some("[]"));
    assert_eq!(
        counts(&stats(backend, &cat).await),
        [(2, 2 + b_len), (1, 8), (0, 0)]
    );
    assert!(d.delete_category(&cat).await.unwrap());
}

/// A shard's version strictly increases with every write that changes it and
/// stays put otherwise.
pub async fn docs_versions(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-ver");
    create(backend, &cat, 2).await;
    let versions = |s: Vec<ShardStats>| s.iter().map(|x| x.version).collect::<Vec<u64>>();
    let v0 = versions(stats(backend, &cat).await);

    d.put_docs(&cat, vec![doc(0, "a", "1")]).await.unwrap();
    let v1 = versions(stats(backend, &cat).await);
    assert!(v1[0] > v0[0], "put did not bump the version");
    assert_eq!(v1[1], v0[1], "an untouched shard's version moved");

    // Replacing, even with the same body, is a write.
    d.put_docs(&cat, vec![doc(0, "a", "1")]).await.unwrap();
    let v2 = versions(stats(backend, &cat).await);
    assert!(v2[0] > v1[0], "replace did not bump the version");

    // Deleting nothing changes nothing.
    let n = d
        .delete_docs(&cat, vec![(0, "nope".to_string()), (1, "a".to_string())])
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        versions(stats(backend, &cat).await),
        v2,
        "a no-op delete bumped"
    );

    d.put_docs(&cat, vec![doc(1, "b", "2"), doc(0, "c", "3")])
        .await
        .unwrap();
    let v3 = versions(stats(backend, &cat).await);
    assert!(v3[0] > v2[0] && v3[1] > v2[1], "both shards changed");

    assert_eq!(
        d.delete_docs(&cat, vec![(0, "a".to_string())])
            .await
            .unwrap(),
        1
    );
    let v4 = versions(stats(backend, &cat).await);
    assert!(v4[0] > v3[0], "delete did not bump the version");
    assert_eq!(v4[1], v3[1]);

    // Many writes issued together: each one bumps.
    let pending: Vec<_> = (0..20)
        .map(|i| d.put_docs(&cat, vec![doc(1, &format!("m{i}"), "0")]))
        .collect();
    for p in pending {
        p.await.unwrap();
    }
    let v5 = versions(stats(backend, &cat).await);
    assert!(v5[1] > v4[1]);
    assert_eq!(v5[0], v4[0]);

    // A category created again under the same name never reuses a version,
    // so a cache keyed by (name, shard, version) cannot serve old documents.
    assert!(d.delete_category(&cat).await.unwrap());
    create(backend, &cat, 2).await;
    d.put_docs(&cat, vec![doc(0, "x", "0"), doc(1, "x", "0")])
        .await
        .unwrap();
    let fresh = versions(stats(backend, &cat).await);
    assert!(
        fresh[0] > v5[0] && fresh[1] > v5[1],
        "a recreated category reused versions: {fresh:?} after {v5:?}"
    );
    assert!(d.delete_category(&cat).await.unwrap());
}

/// A shard scans in byte order of ids, strictly after `after`, `limit` at a time.
pub async fn docs_scan_order(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-scan");
    create(backend, &cat, 2).await;
    let ids = [
        "b", "a", "B", "a0", "é", "10", "9", "a/b", "a-b", "~", " ", "z", "ab", "aa",
    ];
    d.put_docs(
        &cat,
        ids.iter()
            .map(|id| doc(1, id, &format!("\"{id}\"")))
            .chain([doc(0, "other", "0")])
            .collect(),
    )
    .await
    .unwrap();
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let all = scan_all(backend, &cat, 1).await;
    let got: Vec<&str> = all.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(got, sorted, "scan order");
    for x in &all {
        assert_eq!(x.body, format!("\"{}\"", x.id).into_bytes());
    }

    // Pages of 3, each strictly after the last id of the previous page.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = d.scan_shard(&cat, 1, after.as_deref(), 3).await.unwrap();
        assert!(page.len() <= 3, "limit exceeded");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page.into_iter().map(|x| x.id));
    }
    assert_eq!(paged, sorted, "paged scan");

    // `after` need not exist.
    let from_a1 = d.scan_shard(&cat, 1, Some("a1"), 2).await.unwrap();
    let expected: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|id| *id > "a1")
        .take(2)
        .collect();
    let got: Vec<&str> = from_a1.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(got, expected);
    assert!(
        d.scan_shard(&cat, 1, None, 0).await.unwrap().is_empty(),
        "limit 0"
    );
    assert!(
        d.scan_shard(&cat, 1, sorted.last().copied(), 10)
            .await
            .unwrap()
            .is_empty(),
        "after the last id"
    );
    // Shards do not mix; a shard with nothing is empty.
    let zero = scan_all(backend, &cat, 0).await;
    assert_eq!(
        zero.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["other"]
    );
    assert!(d.delete_category(&cat).await.unwrap());
    create(backend, &cat, 3).await;
    assert!(scan_all(backend, &cat, 2).await.is_empty());
    assert!(d.delete_category(&cat).await.unwrap());
}

/// A put to a missing category fails with `NotFound` and writes nothing; a
/// put with one bad document (a shard out of range) writes none of them.
/// Operations on a missing category fail with `NotFound`.
pub async fn docs_atomicity(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-atom");
    assert!(is_not_found(
        d.put_docs(&cat, vec![doc(0, "a", "1")]).await,
        &cat
    ));
    assert!(is_not_found(d.put_docs(&cat, Vec::new()).await, &cat));
    assert!(is_not_found(d.get_doc(&cat, 0, "a").await, &cat));
    assert!(is_not_found(d.scan_shard(&cat, 0, None, 10).await, &cat));
    assert!(is_not_found(d.shard_stats(&cat).await, &cat));
    assert!(is_not_found(
        d.delete_docs(&cat, vec![(0, "a".to_string())]).await,
        &cat
    ));

    create(backend, &cat, 2).await;
    assert_eq!(get(backend, &cat, 0, "a").await, None, "a failed put wrote");
    let bad = d
        .put_docs(
            &cat,
            vec![doc(0, "a", "1"), doc(1, "b", "2"), doc(2, "c", "3")],
        )
        .await;
    assert!(is_not_found(bad, &cat), "a shard out of range was accepted");
    assert_eq!(
        get(backend, &cat, 0, "a").await,
        None,
        "a failed put wrote a doc"
    );
    assert_eq!(
        get(backend, &cat, 1, "b").await,
        None,
        "a failed put wrote b doc"
    );
    let s = stats(backend, &cat).await;
    assert_eq!(
        s,
        vec![ShardStats::default(); 2],
        "a failed put changed stats"
    );

    // A failing call does not affect the calls batched around it.
    let before = d.put_docs(&cat, vec![doc(0, "x", "1")]);
    let failing = d.put_docs(&cat, vec![doc(1, "y", "2"), doc(9, "z", "3")]);
    let after = d.put_docs(&cat, vec![doc(1, "w", "4")]);
    before.await.unwrap();
    assert!(is_not_found(failing.await, &cat));
    after.await.unwrap();
    assert_eq!(get(backend, &cat, 0, "x").await.as_deref(), Some("1"));
    assert_eq!(get(backend, &cat, 1, "y").await, None);
    assert_eq!(get(backend, &cat, 1, "w").await.as_deref(), Some("4"));
    assert_eq!(counts(&stats(backend, &cat).await), [(1, 1), (1, 1)]);
    assert!(d.delete_category(&cat).await.unwrap());
}

/// Document writes are issued in call order, together with category changes.
pub async fn docs_write_order(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-docorder");
    // Create then put, not awaited in between.
    let created = d.create_category(&cat, 1, 4, T);
    let put = d.put_docs(&cat, vec![doc(0, "a", "1")]);
    let replaced = d.put_docs(&cat, vec![doc(0, "a", "2")]);
    let deleted = d.delete_docs(&cat, vec![(0, "a".to_string())]);
    let put_again = d.put_docs(&cat, vec![doc(0, "a", "3")]);
    put_again.await.unwrap();
    assert_eq!(deleted.await.unwrap(), 1);
    replaced.await.unwrap();
    put.await.unwrap();
    assert!(created.await.unwrap().1);
    assert_eq!(get(backend, &cat, 0, "a").await.as_deref(), Some("3"));

    // A dropped put still happens.
    drop(d.put_docs(&cat, vec![doc(0, "dropped", "0")]));
    // Delete then create: the create makes a new, empty category.
    let del = d.delete_category(&cat);
    let again = d.create_category(&cat, 2, 4, T + 5);
    let late = d.put_docs(&cat, vec![doc(1, "late", "0")]);
    assert!(del.await.unwrap());
    let (record, created) = again.await.unwrap();
    assert!(created, "create after delete did not create");
    assert_eq!((record.shards, record.created_at_ms), (2, T + 5));
    late.await.unwrap();
    assert_eq!(get(backend, &cat, 0, "a").await, None);
    assert_eq!(get(backend, &cat, 0, "dropped").await, None);
    assert_eq!(get(backend, &cat, 1, "late").await.as_deref(), Some("0"));

    // Delete then put: the put finds no category.
    let del = d.delete_category(&cat);
    let put = d.put_docs(&cat, vec![doc(0, "b", "0")]);
    assert!(del.await.unwrap());
    assert!(is_not_found(put.await, &cat));
    assert_eq!(d.category(&cat).await.unwrap(), None);
}

/// Deleting a category removes its documents and stats; a category created
/// again under its name starts empty.
pub async fn delete_category_removes_everything(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-delcat");
    create(backend, &cat, 4).await;
    let docs: Vec<DocWrite> = (0..500)
        .map(|i| doc(i % 4, &format!("doc-{i:04}"), &format!("{{\"i\":{i}}}")))
        .collect();
    d.put_docs(&cat, docs).await.unwrap();
    assert_eq!(
        stats(backend, &cat)
            .await
            .iter()
            .map(|s| s.docs)
            .sum::<u64>(),
        500
    );

    assert!(d.delete_category(&cat).await.unwrap());
    assert_eq!(d.category(&cat).await.unwrap(), None);
    assert!(is_not_found(d.get_doc(&cat, 0, "doc-0000").await, &cat));
    assert!(is_not_found(d.shard_stats(&cat).await, &cat));
    assert!(is_not_found(d.scan_shard(&cat, 1, None, 10).await, &cat));

    let record = create(backend, &cat, 4).await;
    assert_eq!(record.shards, 4);
    assert_eq!(counts(&stats(backend, &cat).await), [(0, 0); 4]);
    for shard in 0..4 {
        assert!(
            scan_all(backend, &cat, shard).await.is_empty(),
            "shard {shard} of a recreated category is not empty"
        );
    }
    assert_eq!(get(backend, &cat, 0, "doc-0000").await, None);
    d.put_docs(&cat, vec![doc(0, "doc-0000", "{}")])
        .await
        .unwrap();
    assert_eq!(counts(&stats(backend, &cat).await)[0], (1, 2));
    assert!(d.delete_category(&cat).await.unwrap());
}

/// Categories are independent, also when one name is a prefix of another
/// and they hold the same ids in the same shards.
pub async fn docs_category_isolation(backend: &Backend) {
    let d = &backend.docs;
    let a = unique("conf-iso");
    let ab = format!("{a}b");
    let a_dash = format!("{a}-");
    create(backend, &a, 2).await;
    create(backend, &ab, 2).await;
    create(backend, &a_dash, 2).await;

    d.put_docs(&a, vec![doc(0, "x", "\"a\""), doc(1, "bx", "\"a\"")])
        .await
        .unwrap();
    d.put_docs(&ab, vec![doc(0, "x", "\"ab\"")]).await.unwrap();
    d.put_docs(&a_dash, vec![doc(0, "y", "\"a-\"")])
        .await
        .unwrap();
    assert_eq!(get(backend, &a, 0, "x").await.as_deref(), Some("\"a\""));
    assert_eq!(get(backend, &ab, 0, "x").await.as_deref(), Some("\"ab\""));
    assert_eq!(get(backend, &ab, 1, "bx").await, None);
    assert_eq!(get(backend, &a, 0, "y").await, None);
    let ids = |v: Vec<StoredDoc>| v.into_iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(scan_all(backend, &a, 0).await), ["x"]);
    assert_eq!(ids(scan_all(backend, &ab, 0).await), ["x"]);
    assert_eq!(ids(scan_all(backend, &a_dash, 0).await), ["y"]);
    assert!(scan_all(backend, &ab, 1).await.is_empty());
    assert_eq!(counts(&stats(backend, &a).await), [(1, 3), (1, 3)]);
    assert_eq!(counts(&stats(backend, &ab).await), [(1, 4), (0, 0)]);

    assert_eq!(
        d.delete_docs(&ab, vec![(0, "x".to_string()), (1, "bx".to_string())])
            .await
            .unwrap(),
        1
    );
    assert_eq!(get(backend, &a, 0, "x").await.as_deref(), Some("\"a\""));
    assert!(d.delete_category(&a).await.unwrap());
    assert_eq!(
        get(backend, &a_dash, 0, "y").await.as_deref(),
        Some("\"a-\"")
    );
    assert_eq!(counts(&stats(backend, &ab).await), [(0, 0), (0, 0)]);
    assert!(d.delete_category(&ab).await.unwrap());
    assert!(d.delete_category(&a_dash).await.unwrap());
}

fn job(id: &str, total: u64, then: Option<ThenPlan>) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        function: "child".into(),
        then: then.as_ref().map(|p| p.record.function.clone()),
        total,
        invocation: None,
        parent: None,
        continues: None,
        created_at_ms: T,
        then_plan: then,
    }
}

/// A job without a fan-in, created under `parent` and filling its slot 0.
fn job_under(id: &str, total: u64, parent: &str) -> JobRecord {
    JobRecord {
        parent: Some(parent.to_string()),
        continues: Some(JobSlot {
            job: parent.to_string(),
            index: 0,
        }),
        ..job(id, total, None)
    }
}

fn plan(queue: &str, id: &str) -> ThenPlan {
    ThenPlan {
        record: sample_invocation(id, "fan-in"),
        queue: queue.to_string(),
        body: format!(r#"{{"id":"{id}"}}"#),
    }
}

fn child_result(index: u64, status: &str) -> ChildResult {
    ChildResult {
        index,
        invocation: format!("inv-{index}"),
        status: status.into(),
        output: (status == "succeeded").then(|| format!("{{\"n\":{index}}}")),
        error: (status == "failed").then(|| ErrorRecord {
            kind: "raised".into(),
            exception: Some("ValueError".into()),
            message: format!("child {index}"),
            traceback: None,
        }),
        finished_at_ms: T + index,
    }
}

/// A job is created with its children atomically; each index counts once;
/// the last result writes the fan-in's record and message exactly once.
async fn jobs_fan_in_once(b: &Backend) {
    let id = unique("job");
    let queue = unique("jobq");
    let then_q = unique("thenq");
    let then_id = unique("then-inv");
    let children: Vec<InvocationRecord> = (0..3)
        .map(|i| sample_invocation(&format!("{id}-c{i}"), "child"))
        .collect();
    let messages = children
        .iter()
        .map(|c| msg(&c.id, c.id.as_bytes(), T))
        .collect();
    b.jobs
        .create_job(
            job(&id, 3, Some(plan(&then_q, &then_id))),
            children,
            &queue,
            messages,
        )
        .await
        .unwrap();
    let (record, progress) = b.jobs.job(&id).await.unwrap().expect("job stored");
    assert_eq!(record.total, 3);
    assert_eq!(progress, JobProgress::default());
    assert_eq!(b.queues.depth(&queue).await.unwrap().waiting, 3);
    assert!(
        b.invocations
            .invocation(&format!("{id}-c2"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(b.jobs.job(&unique("nojob")).await.unwrap().is_none());

    // Out of order, with a repeat: the repeat changes nothing.
    let f = b
        .jobs
        .finish_child(&id, child_result(2, "succeeded"), T + 1)
        .await
        .unwrap();
    assert!(f.recorded && f.completed.is_empty() && f.sent_to.is_empty());
    let f = b
        .jobs
        .finish_child(&id, child_result(2, "failed"), T + 2)
        .await
        .unwrap();
    assert!(!f.recorded);
    let f = b
        .jobs
        .finish_child(&id, child_result(0, "failed"), T + 3)
        .await
        .unwrap();
    assert!(f.recorded && f.completed.is_empty());
    assert!(b.invocations.invocation(&then_id).await.unwrap().is_none());
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 0);
    let f = b
        .jobs
        .finish_child(&id, child_result(1, "succeeded"), T + 4)
        .await
        .unwrap();
    assert!(f.recorded);
    assert_eq!(f.completed, vec![id.clone()]);
    assert_eq!(f.sent_to, vec![then_q.clone()]);
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 1);
    assert_eq!(
        b.invocations
            .invocation(&then_id)
            .await
            .unwrap()
            .unwrap()
            .function,
        "fan-in"
    );
    let leased = b.queues.lease(&then_q, T + 5, 10, 1000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 1);
    assert_eq!(leased.deliveries[0].id, then_id);
    b.queues.ack(&then_q, vec![then_id.clone()]).await.unwrap();
    // A redelivered last child never fires the fan-in again.
    let f = b
        .jobs
        .finish_child(&id, child_result(1, "succeeded"), T + 6)
        .await
        .unwrap();
    assert_eq!(f, Default::default());
    assert_eq!(b.queues.depth(&then_q).await.unwrap().waiting, 0);

    let (_, progress) = b.jobs.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (progress.succeeded, progress.failed, progress.cancelled),
        (2, 1, 0)
    );
    assert_eq!(progress.finished_at_ms, Some(T + 4));
    let results = b.jobs.child_results(&id, 0, 10).await.unwrap();
    let indexes: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert_eq!(results[2].output.as_deref(), Some("{\"n\":2}"));
    assert_eq!(results[0].error.as_ref().unwrap().message, "child 0");
    let page = b.jobs.child_results(&id, 1, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].index, 1);
    assert!(b.jobs.child_results(&id, 0, 0).await.unwrap().is_empty());
    let failures = b.jobs.child_failures(&id, None, 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].index, 0);
    assert!(
        b.jobs
            .child_failures(&id, Some(0), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Unknown jobs and indexes out of range are refused.
    assert!(matches!(
        b.jobs
            .finish_child(&id, child_result(3, "succeeded"), T)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        b.jobs
            .finish_child(&unique("nojob"), child_result(0, "succeeded"), T)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(!b.jobs.cancel_job(&unique("nojob"), T).await.unwrap());
    // Cancelling a finished job changes nothing.
    assert!(b.jobs.cancel_job(&id, T + 7).await.unwrap());
    let (_, after) = b.jobs.job(&id).await.unwrap().unwrap();
    assert_eq!(after, progress);

    // No children: complete as created, the fan-in queued at once.
    let empty = unique("job");
    let then_id = unique("then-inv");
    b.jobs
        .create_job(
            job(&empty, 0, Some(plan(&then_q, &then_id))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    let (_, progress) = b.jobs.job(&empty).await.unwrap().unwrap();
    assert_eq!(progress.finished_at_ms, Some(T));
    assert_eq!(progress.done(), 0);
    let leased = b.queues.lease(&then_q, T + 5, 10, 1000).await.unwrap();
    assert_eq!(leased.deliveries.len(), 1);
    assert_eq!(leased.deliveries[0].id, then_id);
}

/// A nested job without a fan-in fills its parent's slot when it completes;
/// cancelling reaches every job below; a cancelled job starts no fan-in.
async fn jobs_nested_and_cancel(b: &Backend) {
    let queue = unique("jobq");
    let then_q = unique("thenq");
    let top = unique("top");
    let top_then = unique("top-then");
    b.jobs
        .create_job(
            job(&top, 2, Some(plan(&then_q, &top_then))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    // Child 0 of `top` fans out again and hands its slot to `sub`.
    let sub = unique("sub");
    let mut sub_job = job_under(&sub, 2, &top);
    sub_job.invocation = Some("inv-0".into());
    b.jobs
        .create_job(sub_job, vec![], &queue, vec![])
        .await
        .unwrap();
    assert_eq!(b.jobs.sub_jobs(&top).await.unwrap(), vec![sub.clone()]);
    assert!(b.jobs.sub_jobs(&sub).await.unwrap().is_empty());

    b.jobs
        .finish_child(&top, child_result(1, "succeeded"), T)
        .await
        .unwrap();
    b.jobs
        .finish_child(&sub, child_result(0, "succeeded"), T)
        .await
        .unwrap();
    let f = b
        .jobs
        .finish_child(&sub, child_result(1, "succeeded"), T + 9)
        .await
        .unwrap();
    assert_eq!(f.completed, vec![sub.clone(), top.clone()]);
    assert_eq!(f.sent_to, vec![then_q.clone()]);
    let slot = &b.jobs.child_results(&top, 0, 1).await.unwrap()[0];
    assert_eq!(slot.status, "succeeded");
    assert_eq!(slot.invocation, "inv-0");
    let output: serde_json::Value = serde_json::from_str(slot.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"job": sub, "count": 2}));

    // Cancel: the whole tree is marked; the fan-in does not start; a
    // cancelled nested job fills its parent's slot as cancelled.
    let top = unique("top");
    let top_then = unique("top-then");
    b.jobs
        .create_job(
            job(&top, 1, Some(plan(&then_q, &top_then))),
            vec![],
            &queue,
            vec![],
        )
        .await
        .unwrap();
    let sub = unique("sub");
    b.jobs
        .create_job(job_under(&sub, 1, &top), vec![], &queue, vec![])
        .await
        .unwrap();
    assert!(b.jobs.cancel_job(&top, T + 1).await.unwrap());
    assert!(b.jobs.cancel_job(&top, T + 2).await.unwrap());
    let (_, p) = b.jobs.job(&top).await.unwrap().unwrap();
    assert_eq!(p.cancelled_at_ms, Some(T + 1));
    let (_, p) = b.jobs.job(&sub).await.unwrap().unwrap();
    assert_eq!(p.cancelled_at_ms, Some(T + 1));
    let f = b
        .jobs
        .finish_child(&sub, child_result(0, "cancelled"), T + 3)
        .await
        .unwrap();
    assert_eq!(f.completed, vec![sub.clone(), top.clone()]);
    assert!(f.sent_to.is_empty());
    assert!(b.invocations.invocation(&top_then).await.unwrap().is_none());
    let (_, p) = b.jobs.job(&top).await.unwrap().unwrap();
    assert_eq!(
        (p.succeeded, p.cancelled, p.finished_at_ms),
        (0, 1, Some(T + 3))
    );
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

/// Keyed leases pass over keys at their limit without reordering them, and
/// keys survive retries, dead letters and redrives.
async fn queue_keys(b: &Backend) {
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
