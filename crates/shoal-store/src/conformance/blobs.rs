//! Blob cases: uploads committed whole or not at all, ranged reads across
//! the pieces a store keeps (the Redis store's 1 MiB chunks), listing by
//! prefix, deletes, files on disk where a store has them, and fixed-size
//! blobs changed by operation batches that apply all or nothing.

use bytes::Bytes;
use futures_util::StreamExt;

use crate::Backend;
use crate::{Applied, BitType, BlobMeta, BlobOp, Created, Overflow};

use super::{T, unique};

const MIB: usize = 1 << 20;

/// Content that differs at every offset modulo a large prime, so a range
/// read from the wrong place shows.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

/// Uploads `data` in pieces of `piece` bytes and commits.
async fn upload(b: &Backend, key: &str, data: &[u8], piece: usize) -> BlobMeta {
    let mut up = b.blobs.blob_upload(key).await.expect("blob_upload");
    for part in data.chunks(piece.max(1)) {
        up.write(Bytes::copy_from_slice(part)).await.expect("write");
    }
    assert_eq!(up.written(), data.len() as u64);
    up.commit(Some("application/octet-stream".into()), T)
        .await
        .expect("commit")
}

async fn read(b: &Backend, key: &str, offset: u64, len: u64) -> Option<(BlobMeta, Vec<u8>)> {
    let read = b
        .blobs
        .blob_read(key, offset, len)
        .await
        .expect("blob_read")?;
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece.expect("a piece of the body"));
    }
    Some((read.meta, out))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An upload committed in pieces reads back whole and by range, with its
/// size, hash, content type and a version.
pub async fn blob_upload_and_read(backend: &Backend) {
    let key = unique("blobs/basic");
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), None);
    assert!(read(backend, &key, 0, 10).await.is_none());
    let data = content(100_000, 7);
    let meta = upload(backend, &key, &data, 4096).await;
    assert_eq!(meta.key, key);
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(meta.etag(), sha256_hex(&data));
    assert_eq!(
        meta.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert!(meta.version >= 1 && !meta.mutable);
    assert_eq!(meta.created_at_ms, T);
    assert_eq!(
        backend.blobs.blob_meta(&key).await.unwrap(),
        Some(meta.clone())
    );

    let (m, all) = read(backend, &key, 0, u64::MAX).await.unwrap();
    assert_eq!((m, all.as_slice()), (meta.clone(), data.as_slice()));
    let (_, mid) = read(backend, &key, 12_345, 777).await.unwrap();
    assert_eq!(mid, &data[12_345..13_122]);
    // Clamped to the end; at or past the end: empty.
    let (_, tail) = read(backend, &key, 99_990, 100).await.unwrap();
    assert_eq!(tail, &data[99_990..]);
    assert_eq!(read(backend, &key, 100_000, 5).await.unwrap().1, b"");
    assert_eq!(read(backend, &key, 500_000, 5).await.unwrap().1, b"");
    assert_eq!(read(backend, &key, 5, 0).await.unwrap().1, b"");

    // The empty blob.
    let empty = unique("blobs/empty");
    let meta = upload(backend, &empty, b"", 1).await;
    assert_eq!(meta.size, 0);
    assert_eq!(meta.sha256.as_deref(), Some(sha256_hex(b"").as_str()));
    assert_eq!(read(backend, &empty, 0, 10).await.unwrap().1, b"");
}

/// Ranges that start, end and straddle the stores' piece boundaries (1 MiB
/// chunks in Redis) read exactly the bytes asked for.
pub async fn blob_ranges_across_chunks(backend: &Backend) {
    let key = unique("blobs/chunks");
    let data = content(3 * MIB + 5, 3);
    // Odd write sizes, so chunk edges fall inside writes.
    upload(backend, &key, &data, 300_007).await;
    let cases: &[(usize, usize)] = &[
        (0, MIB),
        (MIB - 1, 2),
        (MIB, MIB),
        (MIB - 10, MIB + 20),
        (2 * MIB + 1, MIB + 4),
        (3 * MIB, 5),
        (3 * MIB + 4, 1),
        (17, 3 * MIB),
    ];
    for &(offset, len) in cases {
        let (_, got) = read(backend, &key, offset as u64, len as u64)
            .await
            .unwrap();
        let end = (offset + len).min(data.len());
        assert!(got == data[offset..end], "range {offset}+{len}");
    }
    let (_, all) = read(backend, &key, 0, u64::MAX).await.unwrap();
    assert!(all == data);
    if let Some(files) = backend
        .blobs
        .blob_files(&key, MIB as u64 - 10, MIB as u64 + 20)
    {
        let files = files.await.unwrap().expect("the blob is there");
        let pieces = files.pieces.expect("an uploaded blob is in files");
        let mut got = Vec::new();
        for p in &pieces {
            let bytes = std::fs::read(&p.path).expect("a piece's file");
            got.extend_from_slice(&bytes[p.file_offset as usize..(p.file_offset + p.len) as usize]);
        }
        assert!(got == data[MIB - 10..2 * MIB + 10]);
    }
}

/// An upload dropped before its commit leaves nothing: no new blob, and
/// the blob it would have replaced is unchanged.
pub async fn blob_dropped_upload_leaves_nothing(backend: &Backend) {
    let key = unique("blobs/cut");
    let mut up = backend.blobs.blob_upload(&key).await.unwrap();
    up.write(Bytes::from(content(2 * MIB, 1))).await.unwrap();
    drop(up);
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), None);
    assert!(read(backend, &key, 0, 10).await.is_none());

    let old = upload(backend, &key, b"the old content", 4).await;
    let mut up = backend.blobs.blob_upload(&key).await.unwrap();
    up.write(Bytes::from_static(b"half of a new"))
        .await
        .unwrap();
    drop(up);
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), Some(old));
    assert_eq!(
        read(backend, &key, 0, 100).await.unwrap().1,
        b"the old content"
    );
    // The sweep never removes a committed blob.
    backend.blobs.blob_sweep(u64::MAX).await.unwrap();
    assert_eq!(
        read(backend, &key, 0, 100).await.unwrap().1,
        b"the old content"
    );
}

/// A second upload replaces the first whole, with a greater version; a
/// delete removes it.
pub async fn blob_replace_and_delete(backend: &Backend) {
    let key = unique("blobs/replace");
    let first = upload(backend, &key, &content(5000, 1), 1000).await;
    let second = upload(backend, &key, b"short", 2).await;
    assert!(second.version > first.version);
    assert_eq!(second.size, 5);
    assert_eq!(read(backend, &key, 0, 100).await.unwrap().1, b"short");
    // The same bytes again: the same tag, a new version.
    let third = upload(backend, &key, b"short", 5).await;
    assert_eq!(third.etag(), second.etag());
    assert!(third.version > second.version);
    assert!(backend.blobs.blob_delete(&key).await.unwrap());
    assert!(!backend.blobs.blob_delete(&key).await.unwrap());
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), None);
    assert!(read(backend, &key, 0, 1).await.is_none());
    let again = upload(backend, &key, b"again", 5).await;
    assert!(
        again.version > third.version,
        "versions are never given twice"
    );
}

/// Listing by prefix pages in key order and never strays outside the
/// prefix.
pub async fn blob_list(backend: &Backend) {
    let prefix = unique("blobs/list") + "/";
    let keys: Vec<String> = (0..7).map(|i| format!("{prefix}{i:02}")).collect();
    for key in keys.iter().rev() {
        upload(backend, key, key.as_bytes(), 100).await;
    }
    // Neighbours outside the prefix.
    upload(backend, &prefix[..prefix.len() - 1], b"x", 1).await;
    upload(backend, &prefix, b"the prefix itself", 100).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .blobs
            .blob_list(&prefix, after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.blobs.len() <= 3);
        seen.extend(page.blobs.iter().map(|m| m.key.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut want = vec![prefix.clone()];
    want.extend(keys.iter().cloned());
    assert_eq!(seen, want);
    let page = backend
        .blobs
        .blob_list(&prefix, Some(&keys[5]), 10)
        .await
        .unwrap();
    assert_eq!(
        page.blobs
            .iter()
            .map(|m| m.key.as_str())
            .collect::<Vec<_>>(),
        vec![keys[6].as_str()]
    );
    assert_eq!(page.next, None);
    assert_eq!(page.blobs[0].size, keys[6].len() as u64);
    let none = backend
        .blobs
        .blob_list(&(prefix.clone() + "zz"), None, 10)
        .await
        .unwrap();
    assert!(none.blobs.is_empty() && none.next.is_none());
}

fn u(bits: u8) -> BitType {
    BitType {
        signed: false,
        bits,
    }
}

/// A fixed-size blob starts zero-filled, takes batches of bit and byte
/// operations in order, and reads back what they wrote.
pub async fn blob_fixed_operations(backend: &Backend) {
    let key = unique("blobs/board");
    let created = match backend
        .blobs
        .blob_create_fixed(&key, 3 * MIB as u64 + 1, false, T)
        .await
    {
        Ok(Created::Created(meta)) => meta,
        other => panic!("create: {other:?}"),
    };
    assert!(created.mutable && created.sha256.is_none());
    assert_eq!(created.size, 3 * MIB as u64 + 1);
    assert_eq!(created.etag(), format!("v{}", created.version));
    let again = backend
        .blobs
        .blob_create_fixed(&key, 10, false, T + 1)
        .await
        .unwrap();
    assert_eq!(again, Created::Exists(created.clone()));

    let last_pixel = (3 * MIB as u64 + 1) * 2 - 1;
    let ops = vec![
        BlobOp::Set {
            ty: u(4),
            offset: 4,
            value: 0xA,
            overflow: Overflow::Wrap,
        },
        BlobOp::Set {
            ty: u(4),
            offset: 4,
            value: 0x3,
            overflow: Overflow::Wrap,
        },
        // Across the first 1 MiB edge.
        BlobOp::Set {
            ty: u(16),
            offset: (MIB as u64) * 8 - 8,
            value: 0xBEEF,
            overflow: Overflow::Wrap,
        },
        BlobOp::IncrBy {
            ty: u(4),
            offset: last_pixel * 4,
            by: 20,
            overflow: Overflow::Sat,
        },
        BlobOp::IncrBy {
            ty: BitType {
                signed: true,
                bits: 8,
            },
            offset: 16,
            by: -3,
            overflow: Overflow::Wrap,
        },
        BlobOp::IncrBy {
            ty: u(4),
            offset: last_pixel * 4,
            by: 1,
            overflow: Overflow::Fail,
        },
        BlobOp::WriteAt {
            offset: 2 * MIB as u64 - 2,
            data: b"edge".to_vec(),
        },
        BlobOp::Get {
            ty: u(32),
            offset: (2 * MIB as u64 - 2) * 8,
        },
        BlobOp::Get {
            ty: u(8),
            offset: 0,
        },
    ];
    let (results, meta) = match backend.blobs.blob_apply(&key, ops).await.unwrap() {
        Applied::Done { results, meta } => (results, meta),
        other => panic!("apply: {other:?}"),
    };
    assert_eq!(
        results,
        vec![
            Some(0),
            Some(0xA),
            Some(0),
            Some(15),
            Some(-3),
            None,
            None,
            Some(u32::from_be_bytes(*b"edge") as i64),
            Some(0x03),
        ]
    );
    assert!(meta.version > created.version);
    assert_eq!(meta.etag(), format!("v{}", meta.version));
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), Some(meta));
    let (_, head) = read(backend, &key, 0, 4).await.unwrap();
    assert_eq!(head, vec![0x03, 0x00, 0xFD, 0x00]);
    let (_, edge) = read(backend, &key, MIB as u64 - 1, 2).await.unwrap();
    assert_eq!(edge, vec![0xBE, 0xEF]);
    let (_, edge) = read(backend, &key, 2 * MIB as u64 - 3, 6).await.unwrap();
    assert_eq!(edge, b"\0edge\0");
    let (_, tail) = read(backend, &key, 3 * MIB as u64, 10).await.unwrap();
    assert_eq!(tail, vec![0x0F]);
    if let Some(files) = backend.blobs.blob_files(&key, 0, 4) {
        let files = files.await.unwrap().expect("the blob is there");
        if let Some(pieces) = files.pieces {
            let mut got = Vec::new();
            for p in &pieces {
                let bytes = std::fs::read(&p.path).unwrap();
                got.extend_from_slice(
                    &bytes[p.file_offset as usize..(p.file_offset + p.len) as usize],
                );
            }
            assert_eq!(got, vec![0x03, 0x00, 0xFD, 0x00]);
        }
    }
}

/// A batch with one bad operation changes nothing, even operations before
/// it; batches on uploaded or absent blobs are refused.
pub async fn blob_fixed_batches_are_all_or_nothing(backend: &Backend) {
    let key = unique("blobs/atomic");
    backend
        .blobs
        .blob_create_fixed(&key, 16, true, T)
        .await
        .unwrap();
    let before = backend.blobs.blob_meta(&key).await.unwrap().unwrap();
    let ops = vec![
        BlobOp::WriteAt {
            offset: 0,
            data: b"changed".to_vec(),
        },
        BlobOp::Set {
            ty: u(8),
            offset: 8,
            value: 1,
            overflow: Overflow::Wrap,
        },
        BlobOp::Get {
            ty: u(8),
            offset: 16 * 8 - 4,
        },
    ];
    match backend.blobs.blob_apply(&key, ops).await.unwrap() {
        Applied::Invalid(bad) => assert_eq!(bad.index, 2),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let write_past = vec![BlobOp::WriteAt {
        offset: 10,
        data: vec![1; 7],
    }];
    assert!(matches!(
        backend.blobs.blob_apply(&key, write_past).await.unwrap(),
        Applied::Invalid(_)
    ));
    assert_eq!(read(backend, &key, 0, 100).await.unwrap().1, vec![0; 16]);
    assert_eq!(backend.blobs.blob_meta(&key).await.unwrap(), Some(before));

    let get = || {
        vec![BlobOp::Get {
            ty: u(8),
            offset: 0,
        }]
    };
    assert_eq!(
        backend
            .blobs
            .blob_apply(&unique("blobs/none"), get())
            .await
            .unwrap(),
        Applied::NotFound
    );
    let uploaded = unique("blobs/uploaded");
    upload(backend, &uploaded, b"immutable", 9).await;
    assert_eq!(
        backend.blobs.blob_apply(&uploaded, get()).await.unwrap(),
        Applied::NotMutable
    );

    // Creating with replace swaps an uploaded blob for a zeroed one, and an
    // upload replaces a fixed-size blob.
    match backend
        .blobs
        .blob_create_fixed(&uploaded, 4, true, T)
        .await
        .unwrap()
    {
        Created::Created(meta) => assert!(meta.mutable && meta.size == 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        read(backend, &uploaded, 0, 100).await.unwrap().1,
        vec![0; 4]
    );
    let meta = upload(backend, &key, b"now uploaded", 3).await;
    assert!(!meta.mutable);
    assert_eq!(
        backend.blobs.blob_apply(&key, get()).await.unwrap(),
        Applied::NotMutable
    );
    assert_eq!(
        read(backend, &key, 0, 100).await.unwrap().1,
        b"now uploaded"
    );
}
