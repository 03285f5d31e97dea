//! A real full disk: this test binary re-runs itself inside a user and
//! mount namespace (`unshare -rm`) on a 16 MiB tmpfs, beside a filler file.
//! Documents are written until the disk is full; then every write fails
//! with `Error::Full` (fast, without touching the disk), the store reports
//! itself full, every acknowledged document is still there, and what the
//! store keeps in memory (queue depth and totals) matches the disk. Once the
//! filler is deleted, the store says it is healthy again (while idle),
//! writes succeed again in the same process, and a re-open finds exactly
//! what was acknowledged.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_store::{DocWrite, Docs, Error, NewMessage, Queues, StoreHealth};
use shoal_store::{Invocations, QueueDepth};
use shoal_store_redb::RedbStore;

const CHILD_ENV: &str = "SHOAL_REDB_FULL_DISK_DIR";
const T: u64 = 1_700_000_000_000;
const FILLER_BYTES: usize = 4 << 20;

fn batch(n: u64) -> Vec<DocWrite> {
    (0..16)
        .map(|j| DocWrite {
            shard: (j % 2) as u32,
            id: format!("b{n:05}-{j:02}"),
            body: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(4_000)).into_bytes(),
        })
        .collect()
}

fn msg(id: &str) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: b"{}".to_vec(),
        due_ms: 0,
        sent_ms: T,
        dedup: None,
        key: None,
    }
}

async fn all_there(store: &RedbStore, batches: u64) {
    for n in 0..batches {
        for d in batch(n) {
            let got = store.get_doc("c", d.shard, &d.id).await.unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&d.body[..]),
                "acknowledged {} lost",
                d.id
            );
        }
    }
}

/// The child: does nothing unless started by `a_full_disk_fails_writes_and_recovers`.
#[test]
fn full_disk_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child(Path::new(&dir)));
}

async fn child(dir: &Path) {
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![7u8; FILLER_BYTES]).unwrap();
    let path = dir.join("data").join("shoal.redb");
    let store = RedbStore::open(&path).unwrap();
    store.create_category("c", 2, 4, T).await.unwrap();
    store.send("q", vec![msg("before")]).await.unwrap();

    // Fill the disk.
    let mut acked = 0u64;
    let first_full = loop {
        match store.put_docs("c", batch(acked)).await {
            Ok(()) => acked += 1,
            Err(Error::Full(message)) => break message,
            Err(other) => panic!("after {acked} batches: expected Error::Full, got {other}"),
        }
        assert!(acked < 10_000, "the 16 MiB disk never filled");
    };
    assert!(acked > 10, "only {acked} batches fitted");
    println!("full after {acked} batches: {first_full}");
    assert!(matches!(store.health(), StoreHealth::Full(_)));

    // While full: writes fail fast with the typed error, reads work, and
    // nothing of a failed write shows in memory.
    let depth = store.depth("q").await.unwrap();
    let counters = store.counters("q").await.unwrap();
    for i in 0..20 {
        let started = Instant::now();
        let sent = store.send("q", vec![msg(&format!("while-full-{i}"))]).await;
        assert!(matches!(sent, Err(Error::Full(_))), "{sent:?}");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "a write while full took {:?}",
            started.elapsed()
        );
        let put = store.put_docs("c", batch(50_000 + i)).await;
        assert!(
            matches!(put, Err(Error::Full(ref m)) if m.contains("free space")),
            "{put:?}"
        );
    }
    assert_eq!(store.depth("q").await.unwrap(), depth);
    assert_eq!(store.counters("q").await.unwrap(), counters);
    all_there(&store, acked).await;
    assert!(matches!(store.health(), StoreHealth::Full(_)));

    // Free space: the store sees it while idle (no write needed to say
    // so), and writes succeed again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health() != StoreHealth::Ok {
        assert!(Instant::now() < deadline, "still full after freeing space");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        match store.put_docs("c", batch(acked)).await {
            Ok(()) => break,
            Err(Error::Full(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("writes did not resume after freeing space: {other}"),
        }
    }
    acked += 1;
    assert_eq!(store.health(), StoreHealth::Ok);
    store.send("q", vec![msg("after")]).await.unwrap();
    let depth = store.depth("q").await.unwrap();
    assert_eq!(depth.waiting, 2);
    let counters = store.counters("q").await.unwrap();
    assert_eq!(counters.sent, 2);
    all_there(&store, acked).await;
    drop(store);

    // The disk holds exactly what memory said.
    let store = RedbStore::open(&path).unwrap();
    all_there(&store, acked).await;
    assert_eq!(store.get_doc("c", 0, "b50000-00").await.unwrap(), None);
    assert_eq!(
        store.depth("q").await.unwrap(),
        QueueDepth {
            in_flight: 0,
            ..depth
        }
    );
    assert_eq!(store.counters("q").await.unwrap(), counters);
    let leased = store.lease("q", T, 10, 1_000).await.unwrap();
    let ids: Vec<_> = leased.deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["before", "after"]);
    println!("FULL_DISK_CHILD_OK");
}

#[test]
fn a_full_disk_fails_writes_and_recovers() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // The tmpfs lives only in the child's mount namespace.
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$1" --exact full_disk_child --nocapture --test-threads 1"#)
        .arg(dir.path())
        .arg(&exe)
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `unshare` (util-linux) for the full-disk test: {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("FULL_DISK_CHILD_OK"),
        "the full-disk child failed ({}). If unshare or mount failed, this machine does not \
         allow unprivileged user and mount namespaces, which this test needs.\n\
         stdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}
