//! Blobs in memory: each content one shared byte vector, so a reader keeps
//! the content it started with when the key is replaced. An upload buffers
//! its bytes and swaps them in at commit.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::blobs::{apply_ops, validate_ops};
use crate::{
    Applied, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, BlobUpload, Blobs, Created, Pending,
    Result,
};

use super::{MemoryStore, State};

/// Pieces a read hands out at a time.
const PIECE: usize = 64 << 10;

#[derive(Default)]
pub(super) struct BlobState {
    blobs: BTreeMap<String, (BlobMeta, Arc<Vec<u8>>)>,
    /// The last version given out (store-wide).
    version: u64,
}

impl BlobState {
    /// Validates and applies a batch to a fixed-size blob, all or nothing.
    pub(super) fn apply(&mut self, key: &str, ops: &[BlobOp]) -> Applied {
        let version = self.version + 1;
        let Some((meta, data)) = self.blobs.get_mut(key) else {
            return Applied::NotFound;
        };
        if !meta.mutable {
            return Applied::NotMutable;
        }
        if let Err(bad) = validate_ops(ops, meta.size) {
            return Applied::Invalid(bad);
        }
        // Copy on write: a reader of the old content keeps it.
        let results = apply_ops(Arc::make_mut(data), ops);
        meta.version = version;
        let meta = meta.clone();
        self.version = version;
        Applied::Done { results, meta }
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

struct MemoryUpload {
    state: Arc<Mutex<State>>,
    key: String,
    data: Vec<u8>,
    hash: Sha256,
}

impl BlobUpload for MemoryUpload {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        self.hash.update(&data);
        self.data.extend_from_slice(&data);
        Box::pin(std::future::ready(Ok(())))
    }

    fn written(&self) -> u64 {
        self.data.len() as u64
    }

    fn commit(self: Box<Self>, content_type: Option<String>, now_ms: u64) -> Pending<BlobMeta> {
        let MemoryUpload {
            state,
            key,
            data,
            hash,
        } = *self;
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = BlobMeta {
            key: key.clone(),
            size: data.len() as u64,
            sha256: Some(hex::encode(hash.finalize())),
            content_type,
            version: s.blobs.next_version(),
            mutable: false,
            created_at_ms: now_ms,
        };
        s.blobs.blobs.insert(key, (meta.clone(), Arc::new(data)));
        Box::pin(std::future::ready(Ok(meta)))
    }
}

impl Blobs for MemoryStore {
    fn blob_upload(&self, key: &str) -> Pending<Box<dyn BlobUpload>> {
        let upload = MemoryUpload {
            state: self.state.clone(),
            key: key.to_string(),
            data: Vec::new(),
            hash: Sha256::new(),
        };
        Box::pin(std::future::ready(Ok(
            Box::new(upload) as Box<dyn BlobUpload>
        )))
    }

    fn blob_meta(&self, key: &str) -> Pending<Option<BlobMeta>> {
        self.run(|s| Ok(s.blobs.blobs.get(key).map(|(m, _)| m.clone())))
    }

    fn blob_read(&self, key: &str, offset: u64, len: u64) -> Pending<Option<BlobRead>> {
        self.run(|s| {
            let Some((meta, data)) = s.blobs.blobs.get(key) else {
                return Ok(None);
            };
            let start = offset.min(meta.size) as usize;
            let end = offset.saturating_add(len).min(meta.size) as usize;
            let data = data.clone();
            let pieces = (start..end)
                .step_by(PIECE)
                .map(move |at| Ok(Bytes::copy_from_slice(&data[at..(at + PIECE).min(end)])));
            let body = Box::pin(futures_util::stream::iter(pieces));
            Ok(Some(BlobRead {
                meta: meta.clone(),
                body,
            }))
        })
    }

    fn blob_files(&self, _: &str, _: u64, _: u64) -> Option<Pending<Option<BlobFiles>>> {
        None
    }

    fn blob_delete(&self, key: &str) -> Pending<bool> {
        self.run(|s| Ok(s.blobs.blobs.remove(key).is_some()))
    }

    fn blob_list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Pending<BlobPage> {
        self.run(|s| {
            let from = match after {
                Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
                _ => Bound::Included(prefix.to_string()),
            };
            let limit = limit.max(1);
            let mut blobs: Vec<BlobMeta> = s
                .blobs
                .blobs
                .range((from, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit + 1)
                .map(|(_, (m, _))| m.clone())
                .collect();
            let more = blobs.len() > limit;
            blobs.truncate(limit);
            let next = more.then(|| blobs.last().map(|m| m.key.clone())).flatten();
            Ok(BlobPage { blobs, next })
        })
    }

    fn blob_create_fixed(
        &self,
        key: &str,
        size: u64,
        replace: bool,
        now_ms: u64,
    ) -> Pending<Created> {
        self.run(|s| {
            if let (false, Some((meta, _))) = (replace, s.blobs.blobs.get(key)) {
                return Ok(Created::Exists(meta.clone()));
            }
            let meta = BlobMeta {
                key: key.to_string(),
                size,
                sha256: None,
                content_type: None,
                version: s.blobs.next_version(),
                mutable: true,
                created_at_ms: now_ms,
            };
            let data = Arc::new(vec![0u8; size as usize]);
            s.blobs.blobs.insert(key.to_string(), (meta.clone(), data));
            Ok(Created::Created(meta))
        })
    }

    fn blob_apply(&self, key: &str, ops: Vec<BlobOp>) -> Pending<Applied> {
        self.run(|s| Ok(s.blobs.apply(key, &ops)))
    }

    fn blob_sweep(&self, _older_than_ms: u64) -> Pending<u64> {
        // Nothing outlives its upload or content here.
        Box::pin(std::future::ready(Ok(0)))
    }
}
