//! Uploaded blobs' content files: `blobs/<2 hex>/<content id>` next to the
//! redb file, each written once under `blobs/tmp/<content id>` and renamed
//! into place whole. A content id is 128 random bits in hex, never reused,
//! so a file is never written again once in place.
//!
//! Files that nothing references (a crash between the rename and the
//! metadata commit, an old content whose unlink was cut short) are removed
//! by `Files::sweep`. An upload or commit in progress holds its id in the
//! `live` set, and the sweep leaves live ids alone: a commit unregisters
//! only after its metadata commit has resolved, so any content file the
//! sweep sees as not live is either referenced by a commit it can read or
//! garbage.

use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use shoal_store::{BlobStream, Error, Result};

use crate::writer;

/// Bytes a read of a content file hands out at a time.
const FILE_PIECE: u64 = 512 << 10;
/// Pieces read ahead of the one being sent (each on the blocking pool), so
/// the disk and the socket work at the same time.
const READ_AHEAD: usize = 2;

/// The directory of uploads in progress, under the blobs root.
const TMP: &str = "tmp";

/// The blobs directory and the content ids in use by uploads and commits.
pub(crate) struct Files {
    root: PathBuf,
    live: Mutex<HashSet<String>>,
}

/// A content id registered as live; unregistered on drop.
pub(crate) struct Live {
    files: Arc<Files>,
    pub(crate) id: String,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.files.live_set().remove(&self.id);
    }
}

impl Files {
    /// Creates `blobs/` and `blobs/tmp/` next to the database file, and
    /// removes what a crash left there: every temporary file, and every
    /// content file `referenced` does not know.
    pub(crate) fn open(
        db_path: &Path,
        referenced: &dyn Fn(&[String]) -> Result<Vec<bool>>,
    ) -> Result<Arc<Files>> {
        let dir = db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let root = dir.join("blobs");
        let files = Arc::new(Files {
            root,
            live: Mutex::new(HashSet::new()),
        });
        std::fs::create_dir_all(files.root.join(TMP))
            .map_err(|e| files.io_error("create the blobs directory", e))?;
        let removed = files.sweep(u64::MAX, referenced)?;
        if removed > 0 {
            tracing::info!(removed, "redb: removed blob files left by an earlier run");
        }
        Ok(files)
    }

    fn live_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh content id, registered as live.
    pub(crate) fn start(self: &Arc<Self>) -> Live {
        loop {
            let id = format!("{:032x}", rand::random::<u128>());
            if self.live_set().insert(id.clone()) {
                return Live {
                    files: self.clone(),
                    id,
                };
            }
        }
    }

    /// Where the content `id` lives once committed.
    pub(crate) fn content_path(&self, id: &str) -> PathBuf {
        self.root.join(shard_of(id)).join(id)
    }

    pub(crate) fn tmp_path(&self, id: &str) -> PathBuf {
        self.root.join(TMP).join(id)
    }

    /// An I/O error as the store reports it: a full disk is `Full`.
    pub(crate) fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        if writer::is_full(&e) {
            Error::Full(format!(
                "{what}: {} ({e})",
                writer::full_message(&self.root)
            ))
        } else {
            Error::Unavailable(format!("{what} in {}: {e}", self.root.display()))
        }
    }

    /// Moves a complete, fsynced temporary file into place under `id` and
    /// makes the rename durable (fsync of the directory).
    pub(crate) fn place(&self, tmp: &Path, id: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join(shard_of(id));
        match std::fs::create_dir(&dir) {
            Ok(()) => File::open(&self.root)?.sync_all()?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let dest = dir.join(id);
        std::fs::rename(tmp, &dest)?;
        File::open(&dir)?.sync_all()?;
        Ok(dest)
    }

    /// Removes a content file nothing references anymore (best effort: the
    /// sweep removes what this misses).
    pub(crate) fn unlink(&self, id: &str) {
        let path = self.content_path(id);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "redb: cannot remove a replaced blob file");
        }
    }

    /// Removes temporary files last modified before `older_than_ms` and
    /// content files `referenced` does not know, leaving live ids alone.
    /// Blocking; answers how many files it removed.
    pub(crate) fn sweep(
        &self,
        older_than_ms: u64,
        referenced: &dyn Fn(&[String]) -> Result<Vec<bool>>,
    ) -> Result<u64> {
        let mut removed = 0;
        let tmp = self.root.join(TMP);
        for entry in self.list(&tmp)? {
            let (path, name) = entry;
            if self.live_set().contains(&name) {
                continue;
            }
            if modified_ms(&path) < older_than_ms && self.remove(&path) {
                removed += 1;
            }
        }
        for (dir, name) in self.list(&self.root)? {
            if name == TMP || !dir.is_dir() {
                continue;
            }
            // Live ids are left out before `referenced` opens its read
            // transaction: a commit unregisters only once its metadata
            // is committed, so that transaction sees it.
            let names: Vec<String> = {
                let entries = self.list(&dir)?;
                let live = self.live_set();
                entries
                    .into_iter()
                    .map(|(_, n)| n)
                    .filter(|n| !live.contains(n))
                    .collect()
            };
            if names.is_empty() {
                continue;
            }
            let known = referenced(&names)?;
            for (name, known) in names.iter().zip(known) {
                if !known && self.remove(&dir.join(name)) {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The entries of a directory: (path, file name); names that are not
    /// UTF-8 are skipped (no content id is).
    fn list(&self, dir: &Path) -> Result<Vec<(PathBuf, String)>> {
        let what = || format!("list {}", dir.display());
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error(&what(), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(&what(), e))?;
            if let Ok(name) = entry.file_name().into_string() {
                out.push((entry.path(), name));
            }
        }
        Ok(out)
    }

    fn remove(&self, path: &Path) -> bool {
        match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "redb: cannot remove an unused blob file");
                false
            }
        }
    }
}

/// The subdirectory of a content id: its first two hex digits.
fn shard_of(id: &str) -> &str {
    id.get(..2).unwrap_or("00")
}

fn modified_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// An upload's open temporary file and the hash of what it holds.
pub(crate) struct Sink {
    file: File,
    hash: Sha256,
}

impl Sink {
    pub(crate) fn create(path: &Path) -> std::io::Result<Sink> {
        Ok(Sink {
            file: File::create_new(path)?,
            hash: Sha256::new(),
        })
    }

    pub(crate) fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hash.update(data);
        self.file.write_all(data)
    }

    /// Makes the bytes durable and closes the file; answers the hash.
    pub(crate) fn finish(self) -> std::io::Result<[u8; 32]> {
        self.file.sync_all()?;
        Ok(self.hash.finalize().into())
    }
}

/// Streams `start..end` of an open content file, a piece at a time, each
/// read on the blocking pool.
pub(crate) fn file_stream(files: Arc<Files>, file: Arc<File>, start: u64, end: u64) -> BlobStream {
    let pieces = (start < end).then(|| (start..end).step_by(FILE_PIECE as usize));
    futures_util::stream::iter(pieces.into_iter().flatten())
        .map(move |at| {
            let (files, file) = (files.clone(), file.clone());
            async move {
                let len = (end - at).min(FILE_PIECE);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await;
                match read {
                    Ok(Ok(buf)) => Ok(Bytes::from(buf)),
                    Ok(Err(e)) => Err(files.io_error("read a blob file", e)),
                    Err(e) => Err(Error::Unavailable(format!("read a blob file: {e}"))),
                }
            }
        })
        .buffered(READ_AHEAD)
        // The first error ends the stream.
        .scan(false, |failed, piece| {
            if *failed {
                return std::future::ready(None);
            }
            *failed = piece.is_err();
            std::future::ready(Some(piece))
        })
        .boxed()
}
