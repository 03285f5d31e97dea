//! Key-value cases: versions, conditions, expiry at the caller's time,
//! `incr`, deletes, listing by prefix and the sweep. Keys are unique per
//! run; ttls are long (a minute) because the Redis store also lets Redis
//! expire entries on its own clock.

use crate::{Backend, KvCondition, KvEntry, KvIncr, KvSet};

use super::{T, unique};

const TTL: u64 = 60_000;

async fn set(
    b: &Backend,
    key: &str,
    value: &str,
    ttl_ms: Option<u64>,
    cond: KvCondition,
    now_ms: u64,
) -> KvSet {
    b.kv.kv_set(key, value.as_bytes().to_vec(), ttl_ms, cond, now_ms)
        .await
        .expect("kv_set")
}

/// A set that must be written.
async fn put(b: &Backend, key: &str, value: &str, ttl_ms: Option<u64>, now_ms: u64) -> KvEntry {
    match set(b, key, value, ttl_ms, KvCondition::Always, now_ms).await {
        KvSet::Written(e) => e,
        other => panic!("set {key}: {other:?}"),
    }
}

async fn get(b: &Backend, key: &str, now_ms: u64) -> Option<KvEntry> {
    b.kv.kv_get(key, now_ms).await.expect("kv_get")
}

fn refused(outcome: KvSet) -> Option<KvEntry> {
    match outcome {
        KvSet::Refused { current } => current,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn written(outcome: KvSet) -> KvEntry {
    match outcome {
        KvSet::Written(e) => e,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Get and set: the entry's fields, a new version per write.
pub async fn kv_get_set_versions(backend: &Backend) {
    let key = unique("kv/basic");
    assert_eq!(get(backend, &key, T).await, None);
    let value = r#"{"n":1,"s":"é\u0000\"x"}"#;
    let first = put(backend, &key, value, None, T).await;
    assert_eq!(first.key, key);
    assert_eq!(first.value, value.as_bytes());
    assert!(first.version >= 1);
    assert_eq!(first.expires_at_ms, None);
    assert_eq!(first.updated_at_ms, T);
    assert_eq!(get(backend, &key, T + 1).await, Some(first.clone()));

    let second = put(backend, &key, "2", None, T + 5).await;
    assert!(
        second.version > first.version,
        "a write gives a higher version"
    );
    assert_eq!(second.updated_at_ms, T + 5);
    assert_eq!(get(backend, &key, T + 6).await, Some(second));

    // Keys are separate.
    let other = format!("{key}-other");
    assert_eq!(get(backend, &other, T).await, None);
}

/// `nx` writes only when absent, `xx` only when present; a refusal answers
/// the current entry and writes nothing.
pub async fn kv_set_conditions(backend: &Backend) {
    let key = unique("kv/cond");
    assert_eq!(
        refused(set(backend, &key, "1", None, KvCondition::Present, T).await),
        None,
        "xx on an absent key"
    );
    assert_eq!(get(backend, &key, T).await, None);
    let first = written(set(backend, &key, "1", None, KvCondition::Absent, T).await);
    let current = refused(set(backend, &key, "2", None, KvCondition::Absent, T + 1).await);
    assert_eq!(current, Some(first.clone()), "nx on a present key");
    assert_eq!(get(backend, &key, T + 1).await, Some(first.clone()));
    let second = written(set(backend, &key, "3", None, KvCondition::Present, T + 2).await);
    assert_eq!(second.value, b"3");
    assert!(second.version > first.version);
}

/// Compare-and-set on the version: a stale version is refused with the
/// entry as it stands.
pub async fn kv_compare_and_set(backend: &Backend) {
    let key = unique("kv/cas");
    assert_eq!(
        refused(set(backend, &key, "1", None, KvCondition::Version(1), T).await),
        None,
        "a version of an absent key"
    );
    let v1 = put(backend, &key, "1", None, T).await;
    let v2 = written(
        set(
            backend,
            &key,
            "2",
            None,
            KvCondition::Version(v1.version),
            T + 1,
        )
        .await,
    );
    assert!(v2.version > v1.version);
    let current = refused(
        set(
            backend,
            &key,
            "3",
            None,
            KvCondition::Version(v1.version),
            T + 2,
        )
        .await,
    );
    assert_eq!(
        current,
        Some(v2.clone()),
        "a stale version answers the current entry"
    );
    assert_eq!(get(backend, &key, T + 3).await, Some(v2));
}

/// An entry is absent from its expiry on, at the caller's time, for reads,
/// conditions and deletes.
pub async fn kv_ttl_expiry(backend: &Backend) {
    let key = unique("kv/ttl");
    let e = put(backend, &key, "1", Some(TTL), T).await;
    assert_eq!(e.expires_at_ms, Some(T + TTL));
    assert_eq!(get(backend, &key, T + TTL - 1).await, Some(e.clone()));
    assert_eq!(
        get(backend, &key, T + TTL).await,
        None,
        "expired at its time"
    );
    assert_eq!(get(backend, &key, T + TTL + 1).await, None);
    assert_eq!(
        refused(set(backend, &key, "2", None, KvCondition::Present, T + TTL).await),
        None,
        "xx on an expired key"
    );
    assert_eq!(
        refused(
            set(
                backend,
                &key,
                "2",
                None,
                KvCondition::Version(e.version),
                T + TTL
            )
            .await
        ),
        None,
        "compare-and-set on an expired key"
    );
    assert!(
        !backend.kv.kv_delete(&key, None, T + TTL).await.unwrap(),
        "deleting an expired key deletes nothing"
    );

    let key = unique("kv/ttl-nx");
    put(backend, &key, "1", Some(TTL), T).await;
    let again = written(set(backend, &key, "2", Some(TTL), KvCondition::Absent, T + TTL).await);
    assert_eq!(
        again.expires_at_ms,
        Some(T + 2 * TTL),
        "nx on an expired key writes"
    );
    assert_eq!(get(backend, &key, T + TTL + 1).await, Some(again));
}

/// A set without a ttl clears the ttl; a set with one replaces it.
pub async fn kv_set_without_ttl_clears_ttl(backend: &Backend) {
    let key = unique("kv/persist");
    put(backend, &key, "1", Some(TTL), T).await;
    let e = put(backend, &key, "2", None, T + 1).await;
    assert_eq!(e.expires_at_ms, None);
    assert_eq!(get(backend, &key, T + 10 * TTL).await, Some(e));
    let e = put(backend, &key, "3", Some(2 * TTL), T + 2).await;
    assert_eq!(e.expires_at_ms, Some(T + 2 + 2 * TTL));
    let e = put(backend, &key, "4", Some(TTL), T + 3).await;
    assert_eq!(
        e.expires_at_ms,
        Some(T + 3 + TTL),
        "a shorter ttl replaces a longer one"
    );
    assert_eq!(get(backend, &key, T + 3 + TTL).await, None);
}

/// `incr`: an absent key counts as 0; the value must be a JSON integer;
/// overflow is refused; the ttl is kept.
pub async fn kv_incr(backend: &Backend) {
    let kv = &backend.kv;
    let key = unique("kv/incr");
    let KvIncr::Written(a) = kv.kv_incr(&key, 5, T).await.unwrap() else {
        panic!("incr of an absent key");
    };
    assert_eq!((a.value.as_slice(), a.expires_at_ms), (&b"5"[..], None));
    assert_eq!(a.updated_at_ms, T);
    let KvIncr::Written(b) = kv.kv_incr(&key, -7, T + 1).await.unwrap() else {
        panic!("incr");
    };
    assert_eq!(b.value, b"-2");
    assert!(b.version > a.version);
    assert_eq!(get(backend, &key, T + 2).await, Some(b));

    // The ttl is kept.
    let key = unique("kv/incr-ttl");
    let e = put(backend, &key, "10", Some(TTL), T).await;
    let KvIncr::Written(n) = kv.kv_incr(&key, 1, T + 10).await.unwrap() else {
        panic!("incr of a key with a ttl");
    };
    assert_eq!(n.value, b"11");
    assert_eq!(n.expires_at_ms, e.expires_at_ms);
    assert_eq!(get(backend, &key, T + TTL).await, None);
    // Past its expiry the key counts as absent: a fresh entry, no ttl.
    let KvIncr::Written(fresh) = kv.kv_incr(&key, 3, T + TTL).await.unwrap() else {
        panic!("incr of an expired key");
    };
    assert_eq!(
        (fresh.value.as_slice(), fresh.expires_at_ms),
        (&b"3"[..], None)
    );

    // Not integers: nothing written.
    for value in [
        r#""7""#,
        "1.5",
        "1e3",
        "007",
        "-0",
        " 1",
        "[]",
        "99999999999999999999",
    ] {
        let key = unique("kv/incr-nan");
        let e = put(backend, &key, value, None, T).await;
        match kv.kv_incr(&key, 1, T + 1).await.unwrap() {
            KvIncr::NotInteger { current } => assert_eq!(current, e, "{value}"),
            other => panic!("incr of {value}: {other:?}"),
        }
        assert_eq!(get(backend, &key, T + 2).await, Some(e));
    }

    // Overflow, both ways; the edges themselves are fine.
    let key = unique("kv/incr-max");
    let e = put(backend, &key, &(i64::MAX - 1).to_string(), None, T).await;
    let KvIncr::Written(max) = kv.kv_incr(&key, 1, T + 1).await.unwrap() else {
        panic!("incr up to i64::MAX");
    };
    assert_eq!(max.value, i64::MAX.to_string().as_bytes());
    assert!(max.version > e.version);
    match kv.kv_incr(&key, 1, T + 2).await.unwrap() {
        KvIncr::Overflow { current } => assert_eq!(current, max),
        other => panic!("overflow: {other:?}"),
    }
    let key = unique("kv/incr-min");
    let e = put(backend, &key, &i64::MIN.to_string(), None, T).await;
    match kv.kv_incr(&key, -1, T + 1).await.unwrap() {
        KvIncr::Overflow { current } => assert_eq!(current, e),
        other => panic!("underflow: {other:?}"),
    }
    assert_eq!(get(backend, &key, T + 2).await, Some(e));
}

/// Delete, with and without a version.
pub async fn kv_delete(backend: &Backend) {
    let kv = &backend.kv;
    let key = unique("kv/del");
    assert!(!kv.kv_delete(&key, None, T).await.unwrap(), "absent");
    let e = put(backend, &key, "1", None, T).await;
    assert!(
        !kv.kv_delete(&key, Some(e.version + 1), T).await.unwrap(),
        "another version"
    );
    assert_eq!(get(backend, &key, T).await, Some(e.clone()));
    assert!(kv.kv_delete(&key, Some(e.version), T).await.unwrap());
    assert_eq!(get(backend, &key, T).await, None);
    assert!(
        !kv.kv_delete(&key, None, T).await.unwrap(),
        "deleted already"
    );

    put(backend, &key, "2", Some(TTL), T).await;
    assert!(kv.kv_delete(&key, None, T + 1).await.unwrap());
    assert_eq!(get(backend, &key, T + 1).await, None);
}

/// A key deleted (or expired) and written again gets a higher version
/// than any it had: versions are never reused.
pub async fn kv_versions_never_reused(backend: &Backend) {
    let kv = &backend.kv;
    let key = unique("kv/reuse");
    let a = put(backend, &key, "1", None, T).await;
    assert!(kv.kv_delete(&key, None, T).await.unwrap());
    let b = put(backend, &key, "1", Some(TTL), T).await;
    assert!(b.version > a.version, "after a delete");
    let c = written(set(backend, &key, "1", None, KvCondition::Absent, T + TTL).await);
    assert!(c.version > b.version, "after an expiry");
    // Another key's write moves the counter too; this key still grows.
    put(backend, &format!("{key}-x"), "1", None, T).await;
    assert!(kv.kv_delete(&key, Some(c.version), T + TTL).await.unwrap());
    let KvIncr::Written(d) = kv.kv_incr(&key, 1, T + TTL).await.unwrap() else {
        panic!("incr");
    };
    assert!(d.version > c.version, "incr after a delete");
    // A stale compare-and-set from before the delete is refused.
    assert_eq!(
        refused(
            set(
                backend,
                &key,
                "9",
                None,
                KvCondition::Version(a.version),
                T + TTL
            )
            .await
        ),
        Some(d)
    );
}

/// Listing by prefix: key (byte) order, pages bounded by `limit`, expired
/// entries left out, keys outside the prefix never listed.
pub async fn kv_list(backend: &Backend) {
    let kv = &backend.kv;
    let base = unique("kv/list");
    let prefix = format!("{base}/");
    // Written out of order; `{base}/` sorts before `{base}0` and after `{base}-`.
    let names = ["b", "a", "é", "c/1", "c", "d", "z"];
    let mut live = Vec::new();
    for name in names {
        let key = format!("{prefix}{name}");
        let ttl = (name == "c" || name == "z").then_some(TTL);
        let e = put(backend, &key, &format!("\"{name}\""), ttl, T).await;
        if ttl.is_none() {
            live.push(e);
        }
    }
    put(backend, &format!("{base}0"), "0", None, T).await;
    put(backend, &format!("{base}-"), "0", None, T).await;
    put(backend, &base, "0", None, T).await;
    live.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    let now = T + TTL; // "c" and "z" have expired

    // One page holding everything.
    let page = kv.kv_list(&prefix, None, 100, now).await.unwrap();
    assert_eq!(page.entries, live);
    assert_eq!(page.next, None);

    // Pages of 2.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let page = kv.kv_list(&prefix, after.as_deref(), 2, now).await.unwrap();
        assert!(
            page.entries.len() <= 2,
            "a page holds at most limit entries"
        );
        got.extend(page.entries);
        match page.next {
            Some(next) => {
                assert!(after.as_ref().is_none_or(|a| next > *a), "the cursor moves");
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(got, live, "paging lists every live entry once, in order");

    // `after` inside the prefix; before it expired, "c" is there.
    let page = kv
        .kv_list(&prefix, Some(&format!("{prefix}b")), 100, T)
        .await
        .unwrap();
    let keys: Vec<String> = page.entries.iter().map(|e| e.key.clone()).collect();
    let expect: Vec<String> = ["c", "c/1", "d", "z", "é"]
        .iter()
        .map(|n| format!("{prefix}{n}"))
        .collect();
    assert_eq!(keys, expect);

    // An empty prefix range.
    let page = kv
        .kv_list(&format!("{prefix}q"), None, 10, now)
        .await
        .unwrap();
    assert_eq!(page, crate::KvPage::default());
    // `after` past the prefix: nothing.
    let page = kv
        .kv_list(&prefix, Some(&format!("{base}0")), 10, now)
        .await
        .unwrap();
    assert_eq!(page.entries, vec![]);
}

/// The sweep removes expired entries (at most `max` a call, oldest expiry
/// first) and leaves live ones.
pub async fn kv_sweep(backend: &Backend) {
    let kv = &backend.kv;
    let base = unique("kv/sweep");
    let short = [format!("{base}/a"), format!("{base}/b")];
    for key in &short {
        put(backend, key, "1", Some(1_000), T).await;
    }
    let long = put(backend, &format!("{base}/long"), "1", Some(TTL), T).await;
    let forever = put(backend, &format!("{base}/forever"), "1", None, T).await;

    let now = T + 1_000;
    let mut removed = 0;
    for _ in 0..10_000 {
        let n = kv.kv_sweep(now, 1).await.unwrap();
        assert!(n <= 1, "at most max a call");
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert!(removed >= 2, "both expired entries swept ({removed})");
    // Swept for good: gone even for a reader whose clock is earlier.
    for key in &short {
        assert_eq!(get(backend, key, T).await, None, "{key} swept");
    }
    assert_eq!(get(backend, &long.key, now).await, Some(long));
    assert_eq!(get(backend, &forever.key, now).await, Some(forever));
    let page = kv.kv_list(&format!("{base}/"), None, 10, T).await.unwrap();
    assert_eq!(page.entries.len(), 2, "the swept keys are not listed");
}
