//! Blobs on a real `redis-server`: which chunk keys exist, ranged reads
//! that fetch only their chunks, the chunk cache on disk, cleanup of cut
//! and abandoned uploads, bit operations straddling chunks checked against
//! the reference semantics, and the conformance cases with the cache on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use shoal_store::blobs::{apply_ops, validate_ops};
use shoal_store::{
    Applied, Backend, BitType, BlobOp, Blobs, Created, Error, Overflow, conformance,
};
use shoal_store_redis::testing::RedisServer;
use shoal_store_redis::{Options, RedisStore};

const MIB: usize = 1 << 20;
const T: u64 = 1_700_000_000_000;
const NS: &str = "shoal-test";

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0
}

async fn cached_store(server: &RedisServer, dir: &Path, cap: u64) -> RedisStore {
    let options = Options {
        blob_cache_dir: Some(dir.to_path_buf()),
        blob_cache_bytes: cap,
        ..server.options()
    };
    RedisStore::connect(&options)
        .await
        .expect("connect to the test's redis-server")
        .0
}

/// A plain connection to look at (and tamper with) the keys.
fn redis(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("a client")
        .get_connection()
        .expect("a connection")
}

fn keys(con: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(con).unwrap();
    keys.sort();
    keys
}

fn cid(con: &mut redis::Connection, key: &str) -> String {
    redis::cmd("HGET")
        .arg(format!("{NS}:{{blobs}}:m:{key}"))
        .arg("cid")
        .query(con)
        .unwrap()
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

async fn upload(store: &RedisStore, key: &str, data: &[u8]) {
    let mut up = store.blob_upload(key).await.unwrap();
    for part in data.chunks(100_003) {
        up.write(Bytes::copy_from_slice(part)).await.unwrap();
    }
    up.commit(None, T).await.unwrap();
}

/// The bytes of a read, or the first error of its stream.
async fn read(store: &RedisStore, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let read = store
        .blob_read(key, offset, len)
        .await?
        .expect("the blob is there");
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
        .collect();
    files.sort();
    files
}

fn u(bits: u8) -> BitType {
    BitType {
        signed: false,
        bits,
    }
}

#[tokio::test]
async fn fixed_blobs_have_chunk_keys_only_where_written() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let mut con = redis(&server);
    let size = 3 * MIB as u64 + 1;
    let Created::Created(_) = store
        .blob_create_fixed("board", size, false, T)
        .await
        .unwrap()
    else {
        panic!("create");
    };
    let fixed = format!("{NS}:{{blobs}}:f:*");
    assert!(keys(&mut con, &fixed).is_empty(), "created without chunks");
    let id = cid(&mut con, "board");

    // A get reads zeros without creating anything.
    let get = BlobOp::Get {
        ty: u(8),
        offset: 2 * 8 * MIB as u64,
    };
    let Applied::Done { results, .. } = store.blob_apply("board", vec![get]).await.unwrap() else {
        panic!("apply");
    };
    assert_eq!(results, vec![Some(0)]);
    assert!(keys(&mut con, &fixed).is_empty());

    let last = BlobOp::Set {
        ty: u(4),
        offset: size * 8 - 4,
        value: 9,
        overflow: Overflow::Wrap,
    };
    store.blob_apply("board", vec![last]).await.unwrap();
    assert_eq!(
        keys(&mut con, &fixed),
        vec![format!("{NS}:{{blobs}}:f:{id}:3")]
    );
    // A field across the first edge creates both chunks, and nothing is
    // left in the scratch key.
    let straddle = BlobOp::Set {
        ty: u(16),
        offset: 8 * MIB as u64 - 4,
        value: 0xFFFF,
        overflow: Overflow::Wrap,
    };
    store.blob_apply("board", vec![straddle]).await.unwrap();
    assert_eq!(
        keys(&mut con, &fixed),
        vec![
            format!("{NS}:{{blobs}}:f:{id}:0"),
            format!("{NS}:{{blobs}}:f:{id}:1"),
            format!("{NS}:{{blobs}}:f:{id}:3"),
        ]
    );
    assert!(keys(&mut con, &format!("{NS}:{{blobs}}:scratch")).is_empty());
    let edge = read(&store, "board", MIB as u64 - 1, 3).await.unwrap();
    assert_eq!(edge, vec![0x0F, 0xFF, 0xF0]);
    let all = read(&store, "board", 0, u64::MAX).await.unwrap();
    assert_eq!(all.len() as u64, size);
    assert_eq!(all[all.len() - 1], 0x09);
    assert_eq!(
        all.iter().map(|b| u64::from(b.count_ones())).sum::<u64>(),
        18
    );

    // Replacing the blob removes its chunks.
    upload(&store, "board", b"uploaded").await;
    assert!(keys(&mut con, &fixed).is_empty());
}

#[tokio::test]
async fn ranged_reads_fetch_only_their_chunks() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let mut con = redis(&server);
    let data = content(3 * MIB + 5, 9);
    upload(&store, "big", &data).await;
    let id = cid(&mut con, "big");
    assert_eq!(keys(&mut con, &format!("{NS}:{{bc:*")).len(), 4);
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{NS}:{{bc:{id}}}:0"))
        .arg(format!("{NS}:{{bc:{id}}}:2"))
        .query(&mut con)
        .unwrap();
    let got = read(&store, "big", MIB as u64 + 3, 100).await.unwrap();
    assert!(got == data[MIB + 3..MIB + 103]);
    let got = read(&store, "big", 3 * MIB as u64, 100).await.unwrap();
    assert!(got == data[3 * MIB..]);
    assert!(
        read(&store, "big", MIB as u64 - 1, 2).await.is_err(),
        "a missing chunk is an error, never other bytes"
    );
}

#[tokio::test]
async fn a_reader_of_deleted_content_ends_with_an_error() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let data = content(4 * MIB, 1);
    upload(&store, "doomed", &data).await;
    let mut body = store
        .blob_read("doomed", 0, u64::MAX)
        .await
        .unwrap()
        .unwrap()
        .body;
    let first = body.next().await.unwrap().unwrap();
    assert!(first[..] == data[..first.len()]);
    assert!(store.blob_delete("doomed").await.unwrap());
    let mut got = first.to_vec();
    let mut failed = false;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(_) => failed = true,
        }
    }
    assert!(failed, "the stream ends with an error");
    assert!(got[..] == data[..got.len()], "and never other bytes");

    // A fixed-size blob read in several windows: a batch landing in the
    // middle ends it with an error too.
    store
        .blob_create_fixed("board", 9 * MIB as u64, false, T)
        .await
        .unwrap();
    let mut body = store
        .blob_read("board", 0, u64::MAX)
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(body.next().await.unwrap().unwrap().len(), 4 * MIB);
    let set = BlobOp::Set {
        ty: u(8),
        offset: 8 * 8 * MIB as u64,
        value: 1,
        overflow: Overflow::Wrap,
    };
    store.blob_apply("board", vec![set]).await.unwrap();
    assert!(body.next().await.unwrap().is_err());
    // Without one, it reads whole.
    assert_eq!(
        read(&store, "board", 0, u64::MAX).await.unwrap().len(),
        9 * MIB
    );
}

#[tokio::test]
async fn the_chunk_cache_fills_serves_and_evicts() {
    let server = RedisServer::start(&[]);
    let dir = server.dir().join("blob-cache");
    // Left by an earlier run: deleted at open; other files are kept.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("1-1-0.chunk"), b"stale").unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let store = cached_store(&server, &dir, 2 * MIB as u64).await;
    assert!(chunk_files(&dir).is_empty());
    assert!(dir.join("notes.txt").exists());
    let mut con = redis(&server);

    let data = content(4 * MIB + 10, 5);
    upload(&store, "cached", &data).await;
    assert!(
        chunk_files(&dir).is_empty(),
        "uploads do not fill the cache"
    );
    let id = cid(&mut con, "cached");
    let chunk_key = |i: u64| format!("{NS}:{{bc:{id}}}:{i}");

    let got = read(&store, "cached", 10, 20).await.unwrap();
    assert!(got == data[10..30]);
    assert_eq!(chunk_files(&dir), vec![dir.join(format!("{id}-0.chunk"))]);
    // Immutable content: served from the cache once Redis lost it.
    let _: i64 = redis::cmd("DEL").arg(chunk_key(0)).query(&mut con).unwrap();
    let got = read(&store, "cached", 100, 1000).await.unwrap();
    assert!(got == data[100..1100]);
    let files = store
        .blob_files("cached", 5, 10)
        .expect("a store with a cache has files")
        .await
        .unwrap()
        .unwrap();
    let pieces = files.pieces.expect("pieces of an uploaded blob");
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].path, dir.join(format!("{id}-0.chunk")));
    assert_eq!((pieces[0].file_offset, pieces[0].len), (5, 10));

    // Two more chunks: over the 2 MiB cap, the least recently used goes.
    let got = read(&store, "cached", MIB as u64, 2 * MIB as u64)
        .await
        .unwrap();
    assert!(got == data[MIB..3 * MIB]);
    assert_eq!(
        chunk_files(&dir),
        vec![
            dir.join(format!("{id}-1.chunk")),
            dir.join(format!("{id}-2.chunk")),
        ]
    );
    assert!(
        read(&store, "cached", 0, 10).await.is_err(),
        "chunk 0 left the cache, and Redis had lost it"
    );
    // blob_files brings chunks in; a range over half the cap is not given
    // as files.
    let files = store
        .blob_files("cached", 4 * MIB as u64 + 3, 100)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let pieces = files.pieces.unwrap();
    let mut got = Vec::new();
    for p in &pieces {
        let bytes = std::fs::read(&p.path).unwrap();
        got.extend_from_slice(&bytes[p.file_offset as usize..(p.file_offset + p.len) as usize]);
    }
    assert!(got == data[4 * MIB + 3..]);
    assert!(chunk_files(&dir).len() <= 2);
    let far = store
        .blob_files("cached", MIB as u64, 2 * MIB as u64)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(far.pieces, None);

    // Deleting the blob drops its cached chunks; fixed-size blobs are never
    // cached.
    assert!(store.blob_delete("cached").await.unwrap());
    assert!(chunk_files(&dir).is_empty());
    store
        .blob_create_fixed("board", 100, false, T)
        .await
        .unwrap();
    assert_eq!(read(&store, "board", 0, 100).await.unwrap(), vec![0; 100]);
    let files = store
        .blob_files("board", 0, 10)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(files.pieces, None);
    assert!(chunk_files(&dir).is_empty());

    // Without a cache directory, the store has no files.
    let plain = self::store(&server).await;
    assert!(plain.blob_files("board", 0, 10).is_none());
}

/// `blob_files` over chunks some of which are cached already.
#[tokio::test]
async fn files_over_cached_and_fetched_chunks() {
    let server = RedisServer::start(&[]);
    let dir = server.dir().join("blob-cache");
    let store = cached_store(&server, &dir, 8 * MIB as u64).await;
    let data = content(5 * MIB, 6);
    upload(&store, "five", &data).await;
    read(&store, "five", MIB as u64 + 5, 10).await.unwrap();
    assert_eq!(chunk_files(&dir).len(), 1);
    let files = store
        .blob_files("five", 7, 4 * MIB as u64 - 7)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let pieces = files.pieces.expect("four chunks fit half the cap");
    assert_eq!(pieces.len(), 4);
    let mut got = Vec::new();
    for p in &pieces {
        let bytes = std::fs::read(&p.path).unwrap();
        got.extend_from_slice(&bytes[p.file_offset as usize..(p.file_offset + p.len) as usize]);
    }
    assert!(got == data[7..4 * MIB]);
    assert_eq!(chunk_files(&dir).len(), 4);
    let all = store
        .blob_files("five", 0, u64::MAX)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.pieces, None, "five chunks are more than half the cap");
}

#[tokio::test]
async fn cut_and_abandoned_uploads_leave_no_chunks() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let mut con = redis(&server);
    let chunks = format!("{NS}:{{bc:*");
    let garbage = format!("{NS}:{{blobs}}:garbage");
    let zcard = |con: &mut redis::Connection, k: &str| -> i64 {
        redis::cmd("ZCARD").arg(k).query(con).unwrap()
    };

    // Dropped: its chunks go at once; the garbage entry is the sweep's.
    let mut up = store.blob_upload("cut").await.unwrap();
    up.write(Bytes::from(content(5 * MIB / 2, 1)))
        .await
        .unwrap();
    drop(up);
    assert_eq!(store.blob_meta("cut").await.unwrap(), None);
    assert!(keys(&mut con, &chunks).is_empty());
    assert_eq!(zcard(&mut con, &garbage), 1);
    assert_eq!(store.blob_sweep(0).await.unwrap(), 1);
    assert_eq!(zcard(&mut con, &garbage), 0);

    // Abandoned (the node died: no drop): the sweep reclaims it once it is
    // older than its time, not before.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut up = store.blob_upload("killed").await.unwrap();
    up.write(Bytes::from(content(5 * MIB / 2, 2)))
        .await
        .unwrap();
    up.write(Bytes::new()).await.unwrap();
    std::mem::forget(up);
    assert_eq!(store.blob_meta("killed").await.unwrap(), None);
    assert_eq!(keys(&mut con, &chunks).len(), 2);
    assert_eq!(store.blob_sweep(started - 1000).await.unwrap(), 0);
    assert_eq!(keys(&mut con, &chunks).len(), 2);
    assert_eq!(store.blob_sweep(started + 60_000).await.unwrap(), 1);
    assert!(keys(&mut con, &chunks).is_empty());
    assert_eq!(zcard(&mut con, &format!("{NS}:{{blobs}}:pending")), 0);

    // Swept while still going: its commit fails and nothing is left.
    let mut up = store.blob_upload("slow").await.unwrap();
    up.write(Bytes::from(content(MIB + 7, 3))).await.unwrap();
    store.blob_sweep(u64::MAX).await.unwrap();
    assert!(up.commit(None, T).await.is_err());
    assert_eq!(store.blob_meta("slow").await.unwrap(), None);
    store.blob_sweep(0).await.unwrap();
    assert!(keys(&mut con, &chunks).is_empty());

    // Replaced and deleted content goes at once; committed blobs survive
    // every sweep.
    upload(&store, "kept", &content(2 * MIB + 1, 4)).await;
    upload(&store, "kept", &content(MIB + 1, 5)).await;
    assert_eq!(keys(&mut con, &chunks).len(), 2);
    assert_eq!(zcard(&mut con, &garbage), 0);
    store.blob_sweep(u64::MAX).await.unwrap();
    assert!(read(&store, "kept", 0, u64::MAX).await.unwrap() == content(MIB + 1, 5));
    assert!(store.blob_delete("kept").await.unwrap());
    assert!(keys(&mut con, &chunks).is_empty());
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random batches around the chunk edges (fields straddling them, every
/// width, signedness and overflow mode, arguments up to the limit) give
/// exactly what `apply_ops` gives on a plain byte vector.
#[tokio::test]
async fn bit_operations_match_the_reference_across_chunk_edges() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let size = 2 * MIB as u64 + 3;
    store
        .blob_create_fixed("bits", size, false, T)
        .await
        .unwrap();
    let mut reference = vec![0u8; size as usize];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let spots = [0u64, MIB as u64 * 8, 2 * MIB as u64 * 8, size * 8 - 40];
    let mut version = 0;
    for batch in 0..60 {
        let mut ops = Vec::new();
        for _ in 0..(1 + rng.below(12)) {
            let ty = BitType {
                signed: rng.below(2) == 1,
                bits: 1 + rng.below(32) as u8,
            };
            let spot = spots[rng.below(spots.len() as u64) as usize];
            let offset = (spot + rng.below(48))
                .saturating_sub(24)
                .min(size * 8 - u64::from(ty.bits));
            let overflow = [Overflow::Wrap, Overflow::Sat, Overflow::Fail][rng.below(3) as usize];
            let arg = match rng.below(4) {
                0 => rng.below(16) as i64 - 8,
                1 => rng.below(1 << 33) as i64 - (1 << 32),
                2 => (rng.below(1 << 41) as i64) - (1 << 40),
                _ => rng.below(1 << 20) as i64,
            };
            ops.push(match rng.below(4) {
                0 => BlobOp::Get { ty, offset },
                1 => BlobOp::Set {
                    ty,
                    offset,
                    value: arg,
                    overflow,
                },
                2 => BlobOp::IncrBy {
                    ty,
                    offset,
                    by: arg,
                    overflow,
                },
                _ => {
                    let len = rng.below(9) as usize;
                    let at = (offset / 8).min(size - len as u64);
                    BlobOp::WriteAt {
                        offset: at,
                        data: (0..len).map(|_| rng.below(256) as u8).collect(),
                    }
                }
            });
        }
        // Every fifth batch ends with an operation out of bounds.
        if batch % 5 == 4 {
            ops.push(BlobOp::Get {
                ty: u(8),
                offset: size * 8 - 7,
            });
        }
        let applied = store.blob_apply("bits", ops.clone()).await.unwrap();
        match validate_ops(&ops, size) {
            Err(bad) => assert_eq!(applied, Applied::Invalid(bad), "batch {batch}"),
            Ok(()) => {
                let want = apply_ops(&mut reference, &ops);
                let Applied::Done { results, meta } = applied else {
                    panic!("batch {batch}: {applied:?}");
                };
                assert_eq!(results, want, "batch {batch}: {ops:?}");
                assert!(meta.version > version);
                version = meta.version;
            }
        }
    }
    let all = read(&store, "bits", 0, u64::MAX).await.unwrap();
    assert!(all == reference, "the bytes match the reference");
}

/// A batch is checked against the blob as it is when the batch runs: one
/// issued right after a replace sees the new blob.
#[tokio::test]
async fn a_batch_after_a_replace_is_checked_against_the_new_blob() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    store.blob_create_fixed("b", 16, false, T).await.unwrap();
    let get = |offset| vec![BlobOp::Get { ty: u(8), offset }];
    // Both issued before either answers.
    let replace = store.blob_create_fixed("b", 4, true, T);
    let apply = store.blob_apply("b", get(8 * 8));
    assert!(matches!(replace.await.unwrap(), Created::Created(_)));
    match apply.await.unwrap() {
        Applied::Invalid(bad) => assert_eq!(bad.index, 0),
        other => panic!("{other:?}"),
    }
    let mut up = store.blob_upload("b").await.unwrap();
    up.write(Bytes::from_static(b"data")).await.unwrap();
    // A commit is issued once its chunk writes are acknowledged.
    up.commit(None, T).await.unwrap();
    assert_eq!(
        store.blob_apply("b", get(0)).await.unwrap(),
        Applied::NotMutable
    );
    let delete = store.blob_delete("b");
    let apply = store.blob_apply("b", get(0));
    assert!(delete.await.unwrap());
    assert_eq!(apply.await.unwrap(), Applied::NotFound);
}

macro_rules! cached_conformance {
    ($($case:ident),* $(,)?) => {
        mod with_a_cache {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let server = RedisServer::start(&[]);
                    let dir = server.dir().join("blob-cache");
                    let store = cached_store(&server, &dir, 64 * MIB as u64).await;
                    conformance::blobs::$case(&Backend::from_adapter(Arc::new(store))).await;
                }
            )*
        }
    };
}

cached_conformance!(
    blob_upload_and_read,
    blob_ranges_across_chunks,
    blob_dropped_upload_leaves_nothing,
    blob_replace_and_delete,
    blob_list,
    blob_fixed_operations,
    blob_fixed_batches_are_all_or_nothing,
);

/// Rough figures (run with `--run-ignored only`; a debug build's are
/// pessimistic): single-pixel batches issued many at a time, and a 64 MiB
/// upload and download.
#[tokio::test]
#[ignore]
async fn rough_throughput() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    store
        .blob_create_fixed("board", 500_000, false, T)
        .await
        .unwrap();
    let n = 20_000u64;
    let started = std::time::Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let op = BlobOp::Set {
            ty: u(4),
            offset: (i * 7919 % 1_000_000) * 4,
            value: (i % 16) as i64,
            overflow: Overflow::Wrap,
        };
        pending.push_back(store.blob_apply("board", vec![op]));
        if pending.len() >= 256 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("single-op batches: {:.0}/s", n as f64 / secs);
    let stats = store.info("commandstats").await.unwrap();
    for line in stats
        .lines()
        .filter(|l| l.contains("evalsha") || l.contains("cmdstat_eval:"))
    {
        eprintln!("{line}");
    }

    let data = content(64 * MIB, 3);
    let started = std::time::Instant::now();
    {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&data);
        let _ = h.finalize();
    }
    eprintln!(
        "sha256 alone: {:.0} MB/s",
        64.0 / started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let mut up = store.blob_upload("big").await.unwrap();
    for part in data.chunks(64 << 10) {
        up.write(Bytes::copy_from_slice(part)).await.unwrap();
    }
    up.commit(None, T).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("upload: {:.0} MB/s", 64.0 / secs);
    let started = std::time::Instant::now();
    let got = read(&store, "big", 0, u64::MAX).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(got == data);
    eprintln!("download: {:.0} MB/s", 64.0 / secs);
}

/// This process's resident memory, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// An upload holds a bounded amount of memory whatever its size (run with
/// `--run-ignored only`: 256 MiB through a debug build's SHA-256 is slow).
#[tokio::test]
#[ignore]
async fn upload_memory_is_bounded() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let piece = Bytes::from(content(64 << 10, 1));
    let mut up = store.blob_upload("big").await.unwrap();
    up.write(piece.clone()).await.unwrap();
    let baseline = rss();
    let mut peak = baseline;
    for i in 1..4096 {
        up.write(piece.clone()).await.unwrap();
        if i % 64 == 0 {
            peak = peak.max(rss());
        }
    }
    let meta = up.commit(None, T).await.unwrap();
    assert_eq!(meta.size, 256 * MIB as u64);
    eprintln!("peak growth: {} KiB", (peak - baseline) >> 10);
    assert!(
        peak - baseline < 32 * MIB as u64,
        "{} KiB",
        (peak - baseline) >> 10
    );
}
