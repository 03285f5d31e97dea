//! Blobs on the embedded store, beyond the conformance cases: what is on
//! disk under `blobs/` (no file left by a cut upload, a crash's orphans
//! swept, replaced content unlinked), reopening, readers that keep the
//! content they opened, and concurrent operation batches sharing commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use shoal_store::{Applied, BitType, BlobMeta, BlobOp, BlobRead, Blobs, Created, Overflow};
use shoal_store_redb::RedbStore;

const T: u64 = 1_700_000_000_000;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

async fn upload(store: &RedbStore, key: &str, data: &[u8]) -> BlobMeta {
    let mut up = store.blob_upload(key).await.unwrap();
    for part in data.chunks(100_000) {
        up.write(Bytes::copy_from_slice(part)).await.unwrap();
    }
    up.commit(None, T).await.unwrap()
}

async fn collect(read: BlobRead) -> Vec<u8> {
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

async fn read_all(store: &RedbStore, key: &str) -> Option<Vec<u8>> {
    let read = store.blob_read(key, 0, u64::MAX).await.unwrap()?;
    Some(collect(read).await)
}

/// Every file (not directory) under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The content file of an uploaded blob.
async fn file_of(store: &RedbStore, key: &str) -> PathBuf {
    let files = store.blob_files(key, 0, u64::MAX).unwrap().await.unwrap();
    let pieces = files.expect("the blob exists").pieces.expect("in a file");
    assert_eq!(pieces.len(), 1);
    pieces[0].path.clone()
}

fn u(bits: u8) -> BitType {
    BitType {
        signed: false,
        bits,
    }
}

fn set(offset: u64, value: i64) -> BlobOp {
    BlobOp::Set {
        ty: u(8),
        offset,
        value,
        overflow: Overflow::Wrap,
    }
}

async fn apply(store: &RedbStore, key: &str, ops: Vec<BlobOp>) -> (Vec<Option<i64>>, BlobMeta) {
    match store.blob_apply(key, ops).await.unwrap() {
        Applied::Done { results, meta } => (results, meta),
        other => panic!("apply: {other:?}"),
    }
}

/// Uploaded and fixed-size blobs, their metadata and the version counter
/// survive a reopen.
#[tokio::test]
async fn blobs_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let store = RedbStore::open(&path).unwrap();
    let data = content(300_000, 9);
    let up = upload(&store, "files/a", &data).await;
    store
        .blob_create_fixed("board", 10_000, false, T)
        .await
        .unwrap();
    let (_, board) = apply(&store, "board", vec![set(0, 7), set(9_999 * 8, 9)]).await;
    store.close();
    drop(store);

    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.blob_meta("files/a").await.unwrap(), Some(up.clone()));
    assert_eq!(read_all(&store, "files/a").await.unwrap(), data);
    assert_eq!(store.blob_meta("board").await.unwrap(), Some(board.clone()));
    let bytes = read_all(&store, "board").await.unwrap();
    assert_eq!((bytes.len(), bytes[0], bytes[9_999]), (10_000, 7, 9));
    assert!(bytes[1..9_999].iter().all(|b| *b == 0));
    let page = store.blob_list("", None, 10).await.unwrap();
    assert_eq!(page.blobs, vec![board.clone(), up.clone()]);
    let again = upload(&store, "files/b", b"b").await;
    assert!(again.version > board.version && board.version > up.version);
}

/// A cut upload leaves no file under `blobs/`, and an upload in progress
/// is never swept.
#[tokio::test]
async fn dropped_upload_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    let blobs = dir.path().join("blobs");
    assert_eq!(store.blob_dir(), blobs);
    let mut up = store.blob_upload("cut").await.unwrap();
    for _ in 0..5 {
        up.write(Bytes::from(content(200_000, 1))).await.unwrap();
    }
    let tmp = files_under(&blobs);
    assert_eq!(tmp.len(), 1, "the upload's temporary file: {tmp:?}");
    assert!(tmp[0].starts_with(blobs.join("tmp")));
    // A sweep of everything leaves the live upload alone.
    assert_eq!(store.blob_sweep(u64::MAX).await.unwrap(), 0);
    assert_eq!(files_under(&blobs), tmp);
    drop(up);
    assert_eq!(files_under(&blobs), Vec::<PathBuf>::new());
    assert_eq!(store.blob_meta("cut").await.unwrap(), None);

    // Once committed, the same sweep keeps it.
    let mut up = store.blob_upload("kept").await.unwrap();
    up.write(Bytes::from_static(b"kept")).await.unwrap();
    store.blob_sweep(u64::MAX).await.unwrap();
    up.commit(None, T).await.unwrap();
    assert_eq!(store.blob_sweep(u64::MAX).await.unwrap(), 0);
    assert_eq!(read_all(&store, "kept").await.unwrap(), b"kept");
}

/// Files a crash leaves (a content file whose metadata never committed, an
/// abandoned temporary file) are removed by the sweep and by reopening;
/// referenced files stay.
#[tokio::test]
async fn orphaned_files_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let blobs = dir.path().join("blobs");
    let store = RedbStore::open(&path).unwrap();
    upload(&store, "kept", b"kept").await;
    let kept = file_of(&store, "kept").await;

    let orphan = |id: &str| {
        let dir = blobs.join(&id[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(id), b"a crash's leftover").unwrap();
        dir.join(id)
    };
    let first = orphan("ab0123456789abcdef0123456789abcd");
    let tmp = blobs.join("tmp/cd0123456789abcdef0123456789abcd");
    std::fs::write(&tmp, b"half an upload").unwrap();
    // Temporary files go only once older than asked; orphans at once.
    assert_eq!(store.blob_sweep(0).await.unwrap(), 1);
    assert!(!first.exists() && tmp.exists() && kept.exists());
    assert_eq!(store.blob_sweep(u64::MAX).await.unwrap(), 1);
    assert!(!tmp.exists());
    assert_eq!(files_under(&blobs), vec![kept.clone()]);

    // Reopening sweeps too.
    let second = orphan("ef0123456789abcdef0123456789abcd");
    std::fs::write(&tmp, b"half an upload").unwrap();
    store.close();
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert!(!second.exists() && !tmp.exists());
    assert_eq!(files_under(&blobs), vec![kept]);
    assert_eq!(read_all(&store, "kept").await.unwrap(), b"kept");
}

/// Replacing or deleting an uploaded blob removes its old file.
#[tokio::test]
async fn replaced_content_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    let blobs = dir.path().join("blobs");
    upload(&store, "k", b"one").await;
    let one = file_of(&store, "k").await;
    upload(&store, "k", b"two").await;
    let two = file_of(&store, "k").await;
    assert_ne!(one, two);
    assert!(!one.exists());
    assert_eq!(std::fs::read(&two).unwrap(), b"two");
    assert_eq!(files_under(&blobs), vec![two.clone()]);

    // Replaced by a fixed-size blob: its file goes; its pages stay in redb.
    let created = store.blob_create_fixed("k", 8, true, T).await.unwrap();
    assert!(matches!(created, Created::Created(_)));
    assert!(!two.exists());
    let files = store.blob_files("k", 0, 8).unwrap().await.unwrap().unwrap();
    assert_eq!(files.pieces, None);

    upload(&store, "k", b"three").await;
    let three = file_of(&store, "k").await;
    assert!(store.blob_delete("k").await.unwrap());
    assert!(!three.exists());
    assert_eq!(files_under(&blobs), Vec::<PathBuf>::new());
}

/// A read keeps the content it opened: an uploaded blob's through its open
/// file, a fixed-size blob's through its read transaction.
#[tokio::test]
async fn readers_keep_the_content_they_opened() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    let old = content(700_000, 3);
    upload(&store, "k", &old).await;
    let reader = store.blob_read("k", 1, u64::MAX).await.unwrap().unwrap();
    let ranged = store.blob_read("k", 500_000, 10).await.unwrap().unwrap();
    upload(&store, "k", b"new").await;
    assert_eq!(collect(reader).await, old[1..]);
    let deleted = store.blob_read("k", 0, u64::MAX).await.unwrap().unwrap();
    assert!(store.blob_delete("k").await.unwrap());
    assert_eq!(collect(ranged).await, old[500_000..500_010]);
    assert_eq!(collect(deleted).await, b"new");

    // Small boards are copied when the read starts, large ones read
    // lazily from the read's snapshot: both keep what they started with.
    for size in [200_000u64, 3_000_000] {
        let last = size - 1;
        store
            .blob_create_fixed("board", size, true, T)
            .await
            .unwrap();
        apply(&store, "board", vec![set(0, 1), set(last * 8, 1)]).await;
        let before = store
            .blob_read("board", 0, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(before.meta.size, size);
        apply(&store, "board", vec![set(0, 2), set(last * 8, 2)]).await;
        let bytes = collect(before).await;
        assert_eq!(bytes.len() as u64, size);
        assert_eq!((bytes[0], bytes[last as usize]), (1, 1), "one snapshot");
        let after = read_all(&store, "board").await.unwrap();
        assert_eq!((after[0], after[last as usize]), (2, 2));
    }
}

/// Batches issued at once from many tasks all land, and share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_all_land_in_shared_commits() {
    const TASKS: u64 = 32;
    const BATCHES: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    // A shared counter in the first 4 bytes, then one u16 per task (on
    // several pages).
    let size = 4 + TASKS * 2 * 1000;
    store
        .blob_create_fixed("counts", size, false, T)
        .await
        .unwrap();
    let before = store.stats();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store: Arc<RedbStore> = store.clone();
        tasks.spawn(async move {
            let incr = |ty, offset| BlobOp::IncrBy {
                ty,
                offset,
                by: 1,
                overflow: Overflow::Wrap,
            };
            let own = (4 + task * 2000) * 8;
            // Issued all at once: each call is queued when made.
            let batches: Vec<_> = (0..BATCHES)
                .map(|_| store.blob_apply("counts", vec![incr(u(32), 0), incr(u(16), own)]))
                .collect();
            let mut versions = Vec::new();
            for done in join_all(batches).await {
                match done.unwrap() {
                    Applied::Done { meta, .. } => versions.push(meta.version),
                    other => panic!("{other:?}"),
                }
            }
            versions
        });
    }
    let mut versions: Vec<u64> = Vec::new();
    while let Some(task) = tasks.join_next().await {
        versions.extend(task.unwrap());
    }
    let total = TASKS * BATCHES;
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len() as u64, total, "every batch has its version");

    let bytes = read_all(&store, "counts").await.unwrap();
    let counter = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    assert_eq!(u64::from(counter), total);
    for task in 0..TASKS {
        let at = (4 + task * 2000) as usize;
        let own = u16::from_be_bytes(bytes[at..at + 2].try_into().unwrap());
        assert_eq!(u64::from(own), BATCHES, "task {task}");
    }
    let after = store.stats();
    let (commits, writes) = (after.commits - before.commits, after.writes - before.writes);
    assert_eq!(writes, total);
    assert!(
        commits * 4 <= total,
        "{commits} commits for {total} batches"
    );
}

const FULL_DISK_ENV: &str = "SHOAL_REDB_BLOBS_FULL_DISK_DIR";

/// The child of `a_full_disk_fails_uploads_with_full`: does nothing unless
/// started by it, inside its namespace with a 16 MiB tmpfs at the dir.
#[test]
fn full_disk_child() {
    let Ok(dir) = std::env::var(FULL_DISK_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(full_disk(Path::new(&dir)));
}

async fn full_disk(dir: &Path) {
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![7u8; 4 << 20]).unwrap();
    let store = RedbStore::open(&dir.join("data/shoal.redb")).unwrap();
    let blobs = dir.join("data/blobs");
    upload(&store, "small", b"small").await;
    let small = file_of(&store, "small").await;

    // An upload that fills the disk fails with `Full`, not `Unavailable`.
    let mut up = store.blob_upload("big").await.unwrap();
    let mut written = 0;
    let message = loop {
        match up.write(Bytes::from(vec![1u8; 1 << 20])).await {
            Ok(()) => written += 1,
            Err(shoal_store::Error::Full(message)) => break message,
            Err(other) => panic!("after {written} MiB: expected Error::Full, got {other}"),
        }
        assert!(written < 32, "the 16 MiB disk never filled");
    };
    assert!(message.contains("free space"), "{message}");
    // Dropping it frees its space: another upload fits again.
    drop(up);
    assert_eq!(files_under(&blobs), vec![small]);
    let data = content(2 << 20, 5);
    upload(&store, "after", &data).await;
    assert_eq!(read_all(&store, "after").await.unwrap(), data);
    assert_eq!(read_all(&store, "small").await.unwrap(), b"small");
    assert_eq!(store.blob_meta("big").await.unwrap(), None);
    println!("BLOBS_FULL_DISK_CHILD_OK");
}

/// A full disk fails an upload with `Error::Full`, and the cut upload's
/// space comes back when it is dropped (see `full_disk.rs` for the setup).
#[test]
fn a_full_disk_fails_uploads_with_full() {
    if std::env::var(FULL_DISK_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$1" --exact full_disk_child --nocapture --test-threads 1"#)
        .arg(dir.path())
        .arg(&exe)
        .env(FULL_DISK_ENV, dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `unshare` (util-linux): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("BLOBS_FULL_DISK_CHILD_OK"),
        "the full-disk child failed ({}); it needs unprivileged user and mount namespaces.\n\
         stdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}

const CRASH_ENV: &str = "SHOAL_REDB_BLOBS_CRASH_DIR";
const CRASH_ROUND_ENV: &str = "SHOAL_REDB_BLOBS_CRASH_ROUND";
const UPLOADERS: u64 = 4;

/// An uploaded key names its content: `up/<round>-<task>-<n>/<size>/<seed>`.
fn crash_key(round: &str, task: u64, n: u64) -> (String, Vec<u8>) {
    let size = 50_000 + ((task * 7 + n * 13) % 10) * 60_000;
    let seed = (task * 31 + n) as u8;
    (
        format!("up/{round}-{task}-{n}/{size}/{seed}"),
        content(size as usize, seed),
    )
}

/// The child of `sigkill_mid_upload_leaves_no_partial_blob`: uploads and
/// applies batches until killed, printing every acknowledged write.
#[test]
fn blob_crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let round = std::env::var(CRASH_ROUND_ENV).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(&Path::new(&dir).join("shoal.redb")).unwrap();
        store
            .blob_create_fixed("board", 64, false, T)
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..UPLOADERS {
            let (store, round) = (store.clone(), round.clone());
            tasks.spawn(async move {
                for n in 0.. {
                    let (key, data) = crash_key(&round, task, n);
                    let mut up = store.blob_upload(&key).await.unwrap();
                    for part in data.chunks(64 << 10) {
                        up.write(Bytes::copy_from_slice(part)).await.unwrap();
                    }
                    up.commit(None, T).await.unwrap();
                    println!("ACK upload {key}");
                    // A key replaced over and over: its old files go.
                    let same = upload(&store, "same", &data[..1000]).await;
                    println!("ACK same {}", same.version);
                }
            });
        }
        tasks.spawn(async move {
            loop {
                let incr = BlobOp::IncrBy {
                    ty: u(32),
                    offset: 0,
                    by: 1,
                    overflow: Overflow::Wrap,
                };
                let (results, _) = apply(&store, "board", vec![incr]).await;
                println!("ACK board {}", results[0].unwrap());
            }
        });
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
}

#[test]
fn sigkill_mid_upload_leaves_no_partial_blob() {
    if std::env::var(CRASH_ENV).is_ok() {
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut board = 0u64;
    // Files the reopens removed: temporary files of cut uploads, content
    // files renamed into place whose metadata never committed, replaced
    // files not unlinked yet.
    let mut cut = 0;
    for round in 0..3 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "blob_crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CRASH_ENV, dir.path())
            .env(CRASH_ROUND_ENV, round.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut uploads = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("ACK"), Some("upload"), Some(key)) => {
                    acked.push(key.to_string());
                    uploads += 1;
                }
                (Some("ACK"), Some("board"), Some(n)) => board = n.parse().unwrap(),
                _ => {}
            }
            // Killed while uploads are in flight (4 tasks, each mid-way
            // through its next one).
            if uploads == 6 + round * 3 {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let left = files_under(&dir.path().join("blobs")).len();

        rt.block_on(async {
            let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
            let mut listed = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.blob_list("", after.as_deref(), 100).await.unwrap();
                listed.extend(page.blobs);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            // Every listed upload is whole (acknowledged or not).
            let mut files = Vec::new();
            for meta in listed.iter().filter(|m| !m.mutable) {
                let data = read_all(&store, &meta.key).await.unwrap();
                if let Some(rest) = meta.key.strip_prefix("up/") {
                    let mut parts = rest.split('/').skip(1);
                    let size: usize = parts.next().unwrap().parse().unwrap();
                    let seed: u8 = parts.next().unwrap().parse().unwrap();
                    assert!(data == content(size, seed), "{} is not whole", meta.key);
                }
                assert_eq!(data.len() as u64, meta.size);
                files.push(file_of(&store, &meta.key).await);
            }
            let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
            for key in &acked {
                assert!(keys.contains(&key.as_str()), "acknowledged {key} lost");
            }
            // The counter holds every acknowledged batch (and perhaps one
            // committed but not yet printed).
            let counts = read_all(&store, "board").await.unwrap();
            let count = u32::from_be_bytes(counts[..4].try_into().unwrap());
            assert!(u64::from(count) >= board, "{count} < {board}");
            // On disk: exactly the referenced files (the open swept the
            // temporary files of cut uploads and any unreferenced file).
            files.sort();
            assert_eq!(files_under(&dir.path().join("blobs")), files);
            println!(
                "round {round}: {left} files before the reopen, {} after",
                files.len()
            );
            cut += left - files.len();
            store.close();
        });
    }
    assert!(acked.len() >= 6 + 9 + 12);
    assert!(cut > 0, "no kill left a file to clean up");
}
