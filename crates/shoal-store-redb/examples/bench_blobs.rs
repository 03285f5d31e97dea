//! A quick throughput check of the redb adapter's blobs (no criterion):
//! single-pixel `set` batches from many concurrent callers, each durable
//! when it resolves (group commit), and an upload and a read of
//! `UPLOAD_MIB`. Prints, does not assert. Run with
//! `cargo run -p shoal-store-redb --release --example bench_blobs [DIR]`
//! (DIR defaults to a temp dir; put it on the disk the node will use, since
//! the numbers are bound by fsync).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use shoal_store::{BitType, BlobOp, Blobs, Overflow};
use shoal_store_redb::RedbStore;

/// Concurrent callers, each awaiting its batch before sending the next.
const CALLERS: u64 = 256;
const PER_CALLER: u64 = 200;
/// A 1000×1000 board of 4-bit pixels.
const BOARD_BYTES: u64 = 500_000;
/// The uploaded blob, written 64 KiB at a time (an HTTP body's frames).
const UPLOAD_MIB: usize = 256;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let path = dir.join(format!("bench-blobs-{}.redb", std::process::id()));
    rt.block_on(run(&path));
    let _ = std::fs::remove_file(&path);
}

async fn run(path: &std::path::Path) {
    let store = RedbStore::open(path).unwrap();
    store
        .blob_create_fixed("board", BOARD_BYTES, true, 1)
        .await
        .unwrap();
    let pixels = BOARD_BYTES * 2;
    let before = store.stats();
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let store: Arc<RedbStore> = store.clone();
        callers.spawn(async move {
            for i in 0..PER_CALLER {
                // Spread over the board, as users clicking around would.
                let pixel = (caller * 7919 + i * 104_729) % pixels;
                let op = BlobOp::Set {
                    ty: BitType {
                        signed: false,
                        bits: 4,
                    },
                    offset: pixel * 4,
                    value: (i % 16) as i64,
                    overflow: Overflow::Wrap,
                };
                store.blob_apply("board", vec![op]).await.unwrap();
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let took = started.elapsed();
    let after = store.stats();
    let n = CALLERS * PER_CALLER;
    let commits = after.commits - before.commits;
    println!(
        "single-pixel sets, {CALLERS} callers: {:>8.0} ops/s ({n} in {:.0} ms, {commits} commits, {:.0} per commit)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e3,
        n as f64 / commits.max(1) as f64,
    );

    // An upload, then a read of it whole.
    let piece = Bytes::from(vec![0x5Au8; 64 << 10]);
    let started = Instant::now();
    let mut up = store.blob_upload("upload").await.unwrap();
    for _ in 0..UPLOAD_MIB * 16 {
        up.write(piece.clone()).await.unwrap();
    }
    up.commit(None, 1).await.unwrap();
    let took = started.elapsed();
    println!(
        "upload: {:>6.0} MB/s ({UPLOAD_MIB} MiB, hashed, fsynced)",
        (UPLOAD_MIB << 20) as f64 / took.as_secs_f64() / 1e6
    );
    let started = Instant::now();
    let read = store
        .blob_read("upload", 0, u64::MAX)
        .await
        .unwrap()
        .unwrap();
    let mut body = read.body;
    let mut n = 0;
    while let Some(piece) = body.next().await {
        n += piece.unwrap().len();
    }
    let took = started.elapsed();
    println!(
        "read:   {:>6.0} MB/s ({} MiB)",
        n as f64 / took.as_secs_f64() / 1e6,
        n >> 20
    );
}
