//! Blobs (`/v1/blobs/{key}`, `ctx.blob`): checks keys, sizes and operation
//! batches, streams uploads into the store's [`Blobs`](shoal_store::Blobs)
//! port and maps its outcomes to typed results; sweeps abandoned uploads on
//! a timer the engine's tasks own.
//!
//! Rules, said in the errors:
//! - a key is 1 to [`MAX_BLOB_KEY_BYTES`] bytes of UTF-8 with no control
//!   characters (`/` is allowed; in a URL path it is sent as `%2F`);
//! - an upload has no size ceiling (the disk is the limit); a body that
//!   ends early (the client went away) stores nothing;
//! - a fixed-size blob has 1 byte to
//!   [`MAX_FIXED_BLOB_BYTES`](shoal_store::blobs::MAX_FIXED_BLOB_BYTES);
//! - an operation batch has 1 to [`MAX_BLOB_OPS`] operations and applies
//!   all or nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tracing::warn;

use shoal_store::blobs::MAX_FIXED_BLOB_BYTES;
use shoal_store::{Applied, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, Created};

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Result};

/// The longest key, in bytes.
pub const MAX_BLOB_KEY_BYTES: usize = 1024;
/// The most operations in one batch.
pub const MAX_BLOB_OPS: usize = 100_000;
/// The most blobs one list call answers.
pub const MAX_BLOB_LIST: usize = 1_000;
/// Uploads running longer than this may be swept as abandoned.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often abandoned uploads are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The answer of a batch: one value per operation, and the blob after it.
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub results: Vec<Option<i64>>,
    pub meta: BlobMeta,
}

/// The blob service.
pub(crate) struct Blobs {
    env: Arc<Env>,
}

impl Blobs {
    pub(crate) fn new(env: Arc<Env>) -> Blobs {
        Blobs { env }
    }

    /// Streams `body` into the blob `key` and commits it whole; a body
    /// that fails midway stores nothing.
    pub(crate) async fn upload<S, E>(
        &self,
        key: &str,
        content_type: Option<String>,
        body: S,
    ) -> Result<BlobMeta>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        check_key(key)?;
        if let Some(ct) = &content_type {
            check_content_type(ct)?;
        }
        self.env.accepting()?;
        let mut upload = self.env.backend.blobs.blob_upload(key).await?;
        let mut body = std::pin::pin!(body);
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| {
                Error::invalid(
                    "body",
                    format!(
                        "the upload was cut after {} bytes ({e}); nothing was stored, send it again",
                        upload.written()
                    ),
                )
            })?;
            if !piece.is_empty() {
                upload.write(piece).await?;
            }
        }
        let now = self.env.now_ms();
        let meta = upload.commit(content_type, now).await?;
        self.created(&meta).await;
        Ok(meta)
    }

    /// Runs the `blob` triggers of a blob just created (queued before the
    /// upload is answered).
    async fn created(&self, meta: &BlobMeta) {
        if let Some(t) = self.env.triggers() {
            t.blob_event(true, &meta.key, Some(meta.size)).await;
        }
    }

    /// The blob's metadata.
    pub(crate) async fn meta(&self, key: &str) -> Result<BlobMeta> {
        check_key(key)?;
        self.env
            .backend
            .blobs
            .blob_meta(key)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Blob, key))
    }

    /// `len` bytes from `offset` (clamped to the end).
    pub(crate) async fn read(&self, key: &str, offset: u64, len: u64) -> Result<BlobRead> {
        check_key(key)?;
        self.env
            .backend
            .blobs
            .blob_read(key, offset, len)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Blob, key))
    }

    /// Where this node's disk holds the range (`None` from a store without
    /// files: read it with [`Blobs::read`]).
    pub(crate) async fn files(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<BlobFiles>> {
        check_key(key)?;
        match self.env.backend.blobs.blob_files(key, offset, len) {
            None => Ok(None),
            Some(files) => Ok(Some(
                files
                    .await?
                    .ok_or_else(|| Error::not_found(Entity::Blob, key))?,
            )),
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.env.accepting()?;
        if self.env.backend.blobs.blob_delete(key).await? {
            if let Some(t) = self.env.triggers() {
                t.blob_event(false, key, None).await;
            }
            Ok(())
        } else {
            Err(Error::not_found(Entity::Blob, key))
        }
    }

    pub(crate) async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BlobPage> {
        crate::kv::check_listing(prefix, cursor, limit, MAX_BLOB_KEY_BYTES, MAX_BLOB_LIST)?;
        let mut page = self
            .env
            .backend
            .blobs
            .blob_list(prefix, crate::user_cursor(prefix, cursor), limit)
            .await?;
        page.blobs.retain(|e| !crate::is_internal_key(&e.key));
        Ok(page)
    }

    /// Creates a zero-filled fixed-size blob; with `replace` false, a blob
    /// already under the key is kept and answered as `Ok(Err(meta))`.
    pub(crate) async fn create_fixed(
        &self,
        key: &str,
        size: u64,
        replace: bool,
    ) -> Result<std::result::Result<BlobMeta, BlobMeta>> {
        check_key(key)?;
        if size == 0 || size > MAX_FIXED_BLOB_BYTES {
            return Err(Error::invalid(
                "fixed_size",
                format!("is {size}; a fixed-size blob has 1 to {MAX_FIXED_BLOB_BYTES} bytes"),
            ));
        }
        self.env.accepting()?;
        let now = self.env.now_ms();
        Ok(
            match self
                .env
                .backend
                .blobs
                .blob_create_fixed(key, size, replace, now)
                .await?
            {
                Created::Created(meta) => {
                    self.created(&meta).await;
                    Ok(meta)
                }
                Created::Exists(meta) => Err(meta),
            },
        )
    }

    /// Applies a batch of operations to a fixed-size blob, all or nothing.
    pub(crate) async fn apply(&self, key: &str, ops: Vec<BlobOp>) -> Result<BatchResult> {
        check_batch(key, &ops)?;
        self.env.accepting()?;
        match self.env.backend.blobs.blob_apply(key, ops).await? {
            Applied::Done { results, meta } => Ok(BatchResult { results, meta }),
            refusal => Err(refused(key, refusal)),
        }
    }

    /// Starts the sweep of abandoned uploads on the engine's tasks: once
    /// at start, then every [`SWEEP_EVERY`].
    pub(crate) fn start_sweep(env: Arc<Env>) {
        let tasks = env.tasks.clone();
        tasks.spawn(async move {
            loop {
                let older_than = env
                    .now_ms()
                    .saturating_sub(ABANDONED_AFTER.as_millis() as u64);
                if let Err(e) = env.backend.blobs.blob_sweep(older_than).await {
                    warn!(error = %e, "Removing abandoned blob uploads failed; the next sweep tries again.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                    _ = env.tasks.stopping() => return,
                }
            }
        });
    }
}

/// Checks a blob key (see the module docs): the key-value store's rule,
/// with longer keys.
/// Checks an operation batch's key and size (its ops are checked against
/// the blob by the store).
pub(crate) fn check_batch(key: &str, ops: &[BlobOp]) -> Result<()> {
    check_key(key)?;
    if ops.is_empty() || ops.len() > MAX_BLOB_OPS {
        return Err(Error::invalid(
            "ops",
            format!("has {} operations; send 1 to {MAX_BLOB_OPS}", ops.len()),
        ));
    }
    Ok(())
}

/// The error of a batch the store refused (any [`Applied`] but `Done`).
pub(crate) fn refused(key: &str, refusal: Applied) -> Error {
    match refusal {
        Applied::NotFound => Error::not_found(Entity::Blob, key),
        Applied::NotMutable => Error::conflict(
            Conflict::NotFixedSize,
            format!(
                "blob `{key}` was uploaded; bit and byte operations apply to blobs created with a fixed size (PUT /v1/blobs/{{key}}?fixed_size=N)"
            ),
        ),
        Applied::Invalid(bad) => Error::invalid(
            "ops",
            format!(
                "operation {} {}; nothing was changed",
                bad.index, bad.reason
            ),
        ),
        Applied::Done { .. } => {
            Error::unavailable("the store answered a refusal that applied the batch".to_string())
        }
    }
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    crate::kv::check_key_within(key, MAX_BLOB_KEY_BYTES)
}

fn check_content_type(ct: &str) -> Result<()> {
    if ct.is_empty() || ct.len() > 255 || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::invalid(
            "content_type",
            "must be 1 to 255 printable ASCII characters, e.g. application/octet-stream"
                .to_string(),
        ));
    }
    Ok(())
}
