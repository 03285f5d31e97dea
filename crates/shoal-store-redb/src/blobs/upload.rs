//! An upload in progress: bytes go to `blobs/tmp/<id>` on the blocking
//! pool, through a buffer of at most `BUFFER` bytes, hashed as they go; the
//! commit makes the file durable, renames it into place, then commits the
//! metadata. Dropped before its commit, it removes its temporary file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use shoal_store::{BlobMeta, BlobUpload, Error, Pending, Result};

use super::files::{Files, Live, Sink};
use super::{BlobCmd, BlobDone, blocking, mismatched, submit, unlink};
use crate::writer::Msg;

/// An upload writes its buffer to its file once it holds this much.
const BUFFER: usize = 256 << 10;

pub(super) struct Upload {
    files: Arc<Files>,
    tx: Sender<Msg>,
    key: String,
    /// The content id, kept off the sweep until the commit resolves.
    live: Option<Live>,
    /// `None` while a write runs on the blocking pool, and for good if
    /// that write's future was dropped or failed.
    sink: Option<Sink>,
    buf: Vec<u8>,
    written: u64,
    /// The temporary file, until it is renamed into place.
    tmp: Option<PathBuf>,
}

impl Upload {
    /// Creates the temporary file of a new upload of `key`.
    pub(super) async fn start(files: Arc<Files>, tx: Sender<Msg>, key: String) -> Result<Upload> {
        let live = files.start();
        let tmp = files.tmp_path(&live.id);
        let mut upload = Upload {
            files,
            tx,
            key,
            live: Some(live),
            sink: None,
            buf: Vec::new(),
            written: 0,
            tmp: None,
        };
        let path = tmp.clone();
        // Set before the file exists, so a cancelled start removes it too
        // (a removal that finds nothing is fine).
        upload.tmp = Some(tmp);
        let sink = blocking(&upload.files, "start an upload", move || {
            Sink::create(&path)
        })
        .await?;
        upload.sink = Some(sink);
        upload.buf.reserve(BUFFER);
        Ok(upload)
    }

    /// Writes the buffer, then `more`, to the file (hashing them).
    async fn flush(&mut self, more: Option<Bytes>) -> Result<()> {
        let Some(mut sink) = self.sink.take() else {
            return Err(Error::Unavailable(
                "the upload was interrupted by an earlier failed or cancelled write".to_string(),
            ));
        };
        let mut buf = std::mem::take(&mut self.buf);
        let (sink, buf) = blocking(&self.files, "write an upload", move || {
            sink.put(&buf)?;
            if let Some(more) = &more {
                sink.put(more)?;
            }
            buf.clear();
            Ok((sink, buf))
        })
        .await?;
        self.sink = Some(sink);
        self.buf = buf;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take()
            && let Err(e) = std::fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %e, "redb: cannot remove a cut upload");
        }
    }
}

impl BlobUpload for Upload {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let len = data.len() as u64;
            if self.sink.is_some() && self.buf.len() + data.len() <= BUFFER {
                self.buf.extend_from_slice(&data);
            } else {
                self.flush(Some(data)).await?;
            }
            self.written += len;
            Ok(())
        })
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>, content_type: Option<String>, now_ms: u64) -> Pending<BlobMeta> {
        Box::pin(async move {
            self.flush(None).await?;
            let (Some(sink), Some(tmp), Some(live)) =
                (self.sink.take(), self.tmp.clone(), self.live.take())
            else {
                return Err(Error::Unavailable("the upload is incomplete".to_string()));
            };
            let id = live.id.clone();
            let files = self.files.clone();
            let sha256 = blocking(&self.files, "commit an upload", move || {
                let sha256 = sink.finish()?;
                files.place(&tmp, &id)?;
                Ok(sha256)
            })
            .await?;
            // In place: nothing to remove on drop. Until the metadata
            // commit resolves, `live` (held by the writer's reply) keeps
            // the sweep off the file.
            self.tmp = None;
            let cmd = BlobCmd::Commit {
                key: self.key.clone(),
                size: self.written,
                sha256,
                id: live.id.clone(),
                content_type,
                now_ms,
            };
            // On failure the file stays: if the commit landed after all
            // (an I/O error in its fsync), the blob needs it; if not, the
            // sweep removes it.
            match submit(&self.tx, cmd, Some(live)).await? {
                BlobDone::Committed { meta, old } => {
                    unlink(&self.files, old).await;
                    Ok(meta)
                }
                _ => mismatched(),
            }
        })
    }
}
