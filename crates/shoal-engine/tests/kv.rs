//! The key-value service: its rules on keys, values and ttls, conditions
//! and compare-and-set, incr, delete by version, list paging, expiry
//! exactly on time (paused time) and the sweep that removes expired
//! entries from the store.

mod common;

use std::sync::Arc;

use common::{BASE_MS, Node, ms, secs};

use shoal_engine::{Conflict, Entity, Error, KvWhen};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, Kv as _};

fn conflict(e: Error) -> (Conflict, String) {
    match e {
        Error::Conflict { kind, message } => (kind, message),
        other => panic!("want a conflict, got {other:?}"),
    }
}

fn invalid(e: Error) -> String {
    match e {
        Error::Invalid(inv) => inv.to_string(),
        other => panic!("want invalid input, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn set_get_and_a_ttl_that_expires_exactly_on_time() {
    let node = Node::start().await;
    let kv = &node.engine;
    let e = kv
        .kv_set("cooldown:alice", b"true", Some(ms(1500)), KvWhen::Absent)
        .await
        .unwrap();
    assert_eq!(e.value, b"true");
    assert_eq!(e.updated_at_ms, BASE_MS);
    assert_eq!(e.expires_at_ms, Some(BASE_MS + 1500));
    // A second nx within the ttl is refused with the current version.
    let (kind, msg) = conflict(
        kv.kv_set("cooldown:alice", b"true", Some(ms(1500)), KvWhen::Absent)
            .await
            .unwrap_err(),
    );
    assert_eq!(kind, Conflict::KeyVersion);
    assert!(msg.contains(&format!("version {}", e.version)), "{msg}");

    node.pass(ms(1499)).await;
    assert_eq!(
        kv.kv_get("cooldown:alice").await.unwrap().version,
        e.version
    );
    node.pass(ms(1)).await;
    match kv.kv_get("cooldown:alice").await.unwrap_err() {
        Error::NotFound { entity, name } => {
            assert_eq!(entity, Entity::Key);
            assert_eq!(name, "cooldown:alice");
        }
        other => panic!("want not found, got {other:?}"),
    }
    // Expired: nx writes again, with a newer version.
    let again = kv
        .kv_set("cooldown:alice", b"true", Some(ms(1500)), KvWhen::Absent)
        .await
        .unwrap();
    assert!(again.version > e.version);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn compare_and_set_and_xx() {
    let node = Node::start().await;
    let kv = &node.engine;
    let (_, msg) = conflict(
        kv.kv_set("k", b"1", None, KvWhen::Present)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("absent"), "{msg}");
    let (_, msg) = conflict(
        kv.kv_set("k", b"1", None, KvWhen::Version(1))
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("absent"), "{msg}");

    let v1 = kv
        .kv_set("k", b" {\"a\": 1}\n", None, KvWhen::Always)
        .await
        .unwrap();
    assert_eq!(
        v1.value, b"{\"a\": 1}",
        "surrounding whitespace is not kept"
    );
    assert_eq!(v1.expires_at_ms, None);
    let v2 = kv
        .kv_set("k", b"2", None, KvWhen::Version(v1.version))
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    // The old version no longer matches: the message names the current one.
    let (kind, msg) = conflict(
        kv.kv_set("k", b"3", None, KvWhen::Version(v1.version))
            .await
            .unwrap_err(),
    );
    assert_eq!(kind, Conflict::KeyVersion);
    assert!(msg.contains(&format!("version {}", v2.version)), "{msg}");
    let v3 = kv.kv_set("k", b"3", None, KvWhen::Present).await.unwrap();
    assert_eq!(kv.kv_get("k").await.unwrap(), v3);

    // Delete by version: another version is a conflict, the right one
    // deletes, then the key is not found.
    let (kind, msg) = conflict(kv.kv_delete("k", Some(v1.version)).await.unwrap_err());
    assert_eq!(kind, Conflict::KeyVersion);
    assert!(msg.contains(&format!("version {}", v3.version)), "{msg}");
    kv.kv_delete("k", Some(v3.version)).await.unwrap();
    assert!(matches!(
        kv.kv_delete("k", None).await.unwrap_err(),
        Error::NotFound {
            entity: Entity::Key,
            ..
        }
    ));
    assert!(matches!(
        kv.kv_delete("k", Some(v3.version)).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn incr_counts_from_zero_keeps_the_ttl_and_refuses_non_integers() {
    let node = Node::start().await;
    let kv = &node.engine;
    let e = kv.kv_incr("hits", 1).await.unwrap();
    assert_eq!(e.value, b"1");
    assert_eq!(e.expires_at_ms, None);
    assert_eq!(kv.kv_incr("hits", -5).await.unwrap().value, b"-4");

    kv.kv_set("window", b"10", Some(secs(60)), KvWhen::Always)
        .await
        .unwrap();
    let w = kv.kv_incr("window", 2).await.unwrap();
    assert_eq!(w.value, b"12");
    assert_eq!(w.expires_at_ms, Some(BASE_MS + 60_000));

    kv.kv_set("name", b"\"bob\"", None, KvWhen::Always)
        .await
        .unwrap();
    let (kind, msg) = conflict(kv.kv_incr("name", 1).await.unwrap_err());
    assert_eq!(kind, Conflict::NotAnInteger);
    assert!(msg.contains("not an integer"), "{msg}");
    kv.kv_set("big", i64::MAX.to_string().as_bytes(), None, KvWhen::Always)
        .await
        .unwrap();
    let (kind, msg) = conflict(kv.kv_incr("big", 1).await.unwrap_err());
    assert_eq!(kind, Conflict::NotAnInteger);
    assert!(msg.contains("64-bit"), "{msg}");
    // Nothing was written by the refused calls.
    assert_eq!(kv.kv_get("name").await.unwrap().value, b"\"bob\"");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn keys_values_and_ttls_are_checked() {
    let node = Node::start().await;
    let kv = &node.engine;
    let msg = invalid(kv.kv_get("").await.unwrap_err());
    assert!(msg.contains("empty"), "{msg}");
    let long = "k".repeat(513);
    let msg = invalid(kv.kv_get(&long).await.unwrap_err());
    assert!(msg.contains("at most 512"), "{msg}");
    assert!(
        kv.kv_get(&"k".repeat(512))
            .await
            .is_err_and(|e| matches!(e, Error::NotFound { .. }))
    );
    let msg = invalid(
        kv.kv_set("a\nb", b"1", None, KvWhen::Always)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("control character U+000A"), "{msg}");
    // Slashes and any other printable text are fine.
    kv.kv_set("a/b c:ü", b"1", None, KvWhen::Always)
        .await
        .unwrap();

    for bad in [&b""[..], b"  ", b"{", b"1 2", b"nope", b"\xff"] {
        let msg = invalid(kv.kv_set("v", bad, None, KvWhen::Always).await.unwrap_err());
        assert!(msg.starts_with("invalid value"), "{msg}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let msg = invalid(
        kv.kv_set("v", deep.as_bytes(), None, KvWhen::Always)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("levels deep"), "{msg}");
    let big = format!("\"{}\"", "x".repeat(1024 * 1024));
    assert!(matches!(
        kv.kv_set("v", big.as_bytes(), None, KvWhen::Always)
            .await
            .unwrap_err(),
        Error::TooLarge(_)
    ));
    let fits = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    kv.kv_set("v", fits.as_bytes(), None, KvWhen::Always)
        .await
        .unwrap();

    let msg = invalid(
        kv.kv_set("t", b"1", Some(ms(0)), KvWhen::Always)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("1 ms"), "{msg}");
    let msg = invalid(
        kv.kv_set("t", b"1", Some(secs(11 * 365 * 86400)), KvWhen::Always)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("10 years"), "{msg}");
    kv.kv_set("t", b"1", Some(shoal_engine::MAX_TTL), KvWhen::Always)
        .await
        .unwrap();

    assert!(invalid(kv.kv_list("", None, 0).await.unwrap_err()).contains("limit"));
    assert!(invalid(kv.kv_list("", None, 1001).await.unwrap_err()).contains("limit"));
    assert!(invalid(kv.kv_list("", Some(""), 10).await.unwrap_err()).contains("cursor"));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn list_pages_by_prefix_and_leaves_out_expired_entries() {
    let node = Node::start().await;
    let kv = &node.engine;
    for i in 0..7 {
        kv.kv_set(&format!("user:{i}"), b"1", None, KvWhen::Always)
            .await
            .unwrap();
    }
    kv.kv_set("user:3", b"1", Some(ms(10)), KvWhen::Always)
        .await
        .unwrap();
    kv.kv_set("other", b"1", None, KvWhen::Always)
        .await
        .unwrap();
    node.pass(ms(10)).await;
    let (mut keys, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = kv.kv_list("user:", cursor.as_deref(), 3).await.unwrap();
        assert!(page.entries.len() <= 3);
        keys.extend(page.entries.into_iter().map(|e| e.key));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(
        keys,
        ["user:0", "user:1", "user:2", "user:4", "user:5", "user:6"]
    );
    node.stop().await;
}

/// The engine's sweep removes expired entries from the store within a
/// second of their expiry: the raw store, asked as of a time before the
/// expiry, no longer has them.
#[tokio::test(start_paused = true)]
async fn the_sweep_removes_expired_entries_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let node = Node::with(None, Backend::from_adapter(store.clone())).await;
    node.engine
        .kv_set("gone", b"1", Some(ms(100)), KvWhen::Always)
        .await
        .unwrap();
    node.engine
        .kv_set("kept", b"1", None, KvWhen::Always)
        .await
        .unwrap();
    node.pass(ms(150)).await;
    // Expired for the engine, still stored until the sweep.
    assert!(node.engine.kv_get("gone").await.is_err());
    assert!(store.kv_get("gone", BASE_MS).await.unwrap().is_some());
    node.pass(secs(2)).await;
    assert!(store.kv_get("gone", BASE_MS).await.unwrap().is_none());
    assert!(store.kv_get("kept", BASE_MS).await.unwrap().is_some());
    node.stop().await;
}
