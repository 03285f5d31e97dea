//! An upload in progress: bytes go to `blobs/tmp/<id>` on the blocking
//! pool, hashed as they go, through two buffers of `BUFFER` bytes: one
//! filling while the other is written (so receiving, hashing and writing
//! overlap, and an upload holds at most two buffers and the write in hand).
//! The commit makes the file durable, renames it into place, then commits
//! the metadata. Dropped before its commit, it removes its temporary file.

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

/// A buffer being written: gives back the file and the buffer, emptied.
type Flushing = tokio::task::JoinHandle<std::io::Result<(Sink, Vec<u8>)>>;

pub(super) struct Upload {
    files: Arc<Files>,
    tx: Sender<Msg>,
    key: String,
    /// The content id, kept off the sweep until the commit resolves.
    live: Option<Live>,
    /// The file, while no write is in flight; `None` for good once a
    /// write failed or its future was dropped mid-way.
    sink: Option<Sink>,
    /// The write in flight, which holds the file.
    flushing: Option<Flushing>,
    /// The buffer filling, and the one given back by the last write.
    buf: Vec<u8>,
    spare: Vec<u8>,
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
            flushing: None,
            buf: Vec::new(),
            spare: Vec::new(),
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

    /// Waits for the write in flight, if any: the file is then in `sink`.
    async fn settle(&mut self) -> Result<()> {
        let Some(flushing) = self.flushing.take() else {
            return Ok(());
        };
        match flushing.await {
            Ok(Ok((sink, spare))) => {
                self.sink = Some(sink);
                self.spare = spare;
                Ok(())
            }
            Ok(Err(e)) => Err(self.files.io_error("write an upload", e)),
            Err(e) => Err(Error::Unavailable(format!("write an upload: {e}"))),
        }
    }

    /// Hands the buffer, then `more`, to the blocking pool to be hashed and
    /// written, once the write before it is done.
    async fn flush(&mut self, more: Option<Bytes>) -> Result<()> {
        self.settle().await?;
        let Some(mut sink) = self.sink.take() else {
            return Err(Error::Unavailable(
                "the upload was interrupted by an earlier failed or cancelled write".to_string(),
            ));
        };
        let spare = std::mem::take(&mut self.spare);
        let mut buf = std::mem::replace(&mut self.buf, spare);
        self.flushing = Some(tokio::task::spawn_blocking(move || {
            sink.put(&buf)?;
            if let Some(more) = &more {
                sink.put(more)?;
            }
            buf.clear();
            Ok((sink, buf))
        }));
        Ok(())
    }

    fn usable(&self) -> bool {
        self.sink.is_some() || self.flushing.is_some()
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
            if self.usable() && self.buf.len() + data.len() <= BUFFER {
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
            self.settle().await?;
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
