//! Invocation records, logs, and the order writes are issued in.

use shoal_types::{FailureKind, InvocationMode, InvocationStatus};

use crate::{Backend, ErrorRecord, InvocationRecord, StoreHealth};

use super::{
    T, depth, depth_of, ids, lease, msg, sample_function, sample_invocation, strings, unique,
};

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
        mode: InvocationMode::Sync,
        ..sample_invocation(&b, &f)
    };
    inv.put_invocations(vec![ra.clone(), rb.clone()])
        .await
        .unwrap();
    assert_eq!(inv.invocation(&a).await.unwrap(), Some(ra.clone()));
    assert_eq!(inv.invocation(&b).await.unwrap(), Some(rb.clone()));

    let done = InvocationRecord {
        status: InvocationStatus::Failed,
        output: Some("[1,2]".to_string()),
        error: Some(ErrorRecord {
            kind: FailureKind::Raised,
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

/// A store with room takes writes and says so: `health` is `Ok` before and
/// after writing (only a full disk may make it say otherwise).
pub async fn healthy(backend: &Backend) {
    assert_eq!(backend.health(), StoreHealth::Ok);
    let id = unique("conf-healthy");
    backend
        .invocations
        .put_invocations(vec![sample_invocation(&id, "f")])
        .await
        .unwrap();
    backend
        .invocations
        .put_logs(&id, b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(backend.invocations.health(), StoreHealth::Ok);
}

/// Writes are issued in call order at call time; a dropped future still writes.
pub async fn write_order(backend: &Backend) {
    let inv = &backend.invocations;
    let f = unique("conf-order-fn");

    // Two writes of one id, the first not awaited: the second wins.
    let id = unique("conf-order");
    let first = inv.put_invocations(vec![sample_invocation(&id, &f)]);
    let second = inv.put_invocations(vec![InvocationRecord {
        status: InvocationStatus::Running,
        ..sample_invocation(&id, &f)
    }]);
    second.await.unwrap();
    assert_eq!(
        inv.invocation(&id).await.unwrap().unwrap().status,
        InvocationStatus::Running
    );
    first.await.unwrap();
    assert_eq!(
        inv.invocation(&id).await.unwrap().unwrap().status,
        InvocationStatus::Running
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

/// The retention sweep's step: final records that finished before the
/// cutoff go, with their logs; newer ones, and ones not final however old,
/// stay. Walked in small steps with the cursor, as the sweep does.
pub async fn purge_invocations(backend: &Backend) {
    let inv = &backend.invocations;
    let f = unique("conf-purge-fn");
    // Times far below every other case's, so a shared store loses nothing
    // of theirs.
    let (created, cutoff) = (1_000, 5_000);
    let record = |status: InvocationStatus, finished: Option<u64>| {
        let id = unique("conf-purge");
        InvocationRecord {
            status,
            created_at_ms: created,
            finished_at_ms: finished,
            ..sample_invocation(&id, &f)
        }
    };
    let old_ok = record(InvocationStatus::Succeeded, Some(2_000));
    let old_failed = record(InvocationStatus::Failed, Some(cutoff - 1));
    let at_cutoff = record(InvocationStatus::TimedOut, Some(cutoff));
    let newer = record(InvocationStatus::Succeeded, Some(9_000));
    let still_queued = record(InvocationStatus::Queued, None);
    let still_running = record(InvocationStatus::Running, None);
    let all = [
        &old_ok,
        &old_failed,
        &at_cutoff,
        &newer,
        &still_queued,
        &still_running,
    ];
    inv.put_invocations(all.iter().map(|r| (*r).clone()).collect())
        .await
        .unwrap();
    for r in all {
        inv.put_logs(&r.id, format!("logs of {}", r.id).into_bytes())
            .await
            .unwrap();
    }

    let mut deleted = 0;
    let mut after: Option<String> = None;
    let mut steps = 0;
    loop {
        let step = inv
            .purge_invocations(cutoff, after.as_deref(), 2)
            .await
            .unwrap();
        deleted += step.deleted;
        steps += 1;
        assert!(step.deleted <= 2, "a step looks at `scan` records at most");
        if let Some(next) = &step.next {
            assert!(
                after.as_ref().is_none_or(|a| next > a),
                "the cursor moves on"
            );
        }
        after = step.next;
        if after.is_none() {
            break;
        }
    }
    assert!(steps >= 3, "6 records in steps of 2 take 3 steps or more");
    assert_eq!(deleted, 2);
    for gone in [&old_ok, &old_failed] {
        assert_eq!(inv.invocation(&gone.id).await.unwrap(), None);
        assert_eq!(inv.logs(&gone.id).await.unwrap(), None);
    }
    for kept in [&at_cutoff, &newer, &still_queued, &still_running] {
        assert_eq!(inv.invocation(&kept.id).await.unwrap().as_ref(), Some(kept));
        assert!(inv.logs(&kept.id).await.unwrap().is_some());
    }
    // Nothing more to delete: a second sweep deletes nothing.
    let again = inv
        .purge_invocations(cutoff, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        again,
        crate::Purged {
            deleted: 0,
            next: None
        }
    );
}
