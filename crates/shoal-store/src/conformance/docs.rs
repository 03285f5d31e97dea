//! Categories and their documents: placement, reads and writes, shard
//! stats and versions, scans, atomic writes and write order.

use crate::{Backend, CategoryRecord, DocWrite, Error, ShardStats, StoredDoc};

use super::{T, unique};

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
/// `delete_category_if_empty` deletes only an empty category, answering
/// how many documents it holds; a missing one is `NotFound`.
pub async fn delete_category_if_empty(backend: &Backend) {
    let d = &backend.docs;
    let cat = unique("conf-delcat-empty");
    create(backend, &cat, 2).await;
    d.put_docs(&cat, vec![doc(0, "a", "{}"), doc(1, "b", "{}")])
        .await
        .unwrap();
    assert_eq!(d.delete_category_if_empty(&cat).await.unwrap(), 2);
    assert!(
        d.category(&cat).await.unwrap().is_some(),
        "deleted while holding documents"
    );
    assert_eq!(get(backend, &cat, 0, "a").await.as_deref(), Some("{}"));

    d.delete_docs(&cat, vec![(0, "a".into()), (1, "b".into())])
        .await
        .unwrap();
    assert_eq!(d.delete_category_if_empty(&cat).await.unwrap(), 0);
    assert_eq!(d.category(&cat).await.unwrap(), None);
    assert!(is_not_found(d.delete_category_if_empty(&cat).await, &cat));
}

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

fn doc(shard: u32, id: &str, body: &str) -> DocWrite {
    DocWrite {
        shard,
        id: id.to_string(),
        body: body.as_bytes().to_vec(),
    }
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
