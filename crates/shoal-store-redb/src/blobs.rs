//! Blobs (`shoal_store::Blobs`): uploaded blobs in files next to the redb
//! file (see `files`), fixed-size blobs in redb pages; the metadata of
//! both in redb, written through the writer thread (group commit).
//!
//! | table | key | value |
//! |---|---|---|
//! | `blobs` | key | `[1] ++ u8 kind ++ u64 LE size ++ u64 LE version ++ u64 LE created_at_ms ++` (kind 0, uploaded: `[u8; 32] sha256 ++ u8 id length ++ content id`; kind 1, fixed-size: `u64 LE pages id`) `++ u8 has content type ++ u32 LE length ++ content type` |
//! | `blob_contents` | content id | key: the content files metadata references (what the sweep keeps) |
//! | `blob_pages` | (pages id, page index) | the page's bytes (`pages::PAGE` = 4000 bytes, so a row fits one 4 KiB redb page; the last page of a blob may be shorter); an absent page is zeros |
//! | `meta` | `"blob_version"` | u64, the last version given out (store-wide) |
//!
//! The tables are created when missing at open (like `kv`): no layout change.
//!
//! An upload writes `blobs/tmp/<id>` as bytes arrive, hashing them; its
//! commit fsyncs the file, renames it to `blobs/<2 hex>/<id>`, fsyncs that
//! directory, *then* commits the metadata (durable when it resolves), then
//! unlinks the file of the content it replaced. A kill between the rename
//! and the metadata commit leaves a file nothing references: `blob_sweep`
//! (and every open) removes it.
//!
//! A fixed-size blob's operation batch is one writer operation: it reads
//! the pages the batch touches, validates and applies the batch, writes the
//! changed pages and the new version, in the batch's transaction (atomic,
//! and durable with the group's one fsync). Its pages id is the version it
//! was created with; replacing or deleting it deletes its pages in the same
//! transaction.
//!
//! A read of an uploaded blob opens the content file when called, so a
//! replace or delete after that keeps serving the old content through the
//! open file; a read of a fixed-size blob takes its pages from one read
//! transaction (a snapshot: it never mixes two versions), copied at once up
//! to 1 MiB, lazily beyond (see `pages`).

mod files;
mod pages;
mod upload;

use std::ops::Bound;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use shoal_store::blobs::{apply_ops, validate_ops};
use shoal_store::{
    Applied, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, BlobUpload, Blobs, Created, Error,
    FilePiece, Pending, Result,
};
use tokio::sync::oneshot;

use crate::codec::FORMAT_V1;
use crate::writer::{self, Command, Effect, Msg, Reply, Tables, Value, ok};
use crate::{RedbStore, Shared, unavailable};

pub(crate) use files::Files;
use files::Live;
use pages::Window;
use upload::Upload;

pub(crate) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
pub(crate) const BLOB_CONTENTS: TableDefinition<&str, &str> = TableDefinition::new("blob_contents");
pub(crate) const BLOB_PAGES: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("blob_pages");

/// The `meta` key of the version counter.
const VERSION: &str = "blob_version";

/// How often a read retries when the content file it found was replaced
/// and removed before it could open it.
const OPEN_ATTEMPTS: usize = 4;

const KIND_FILE: u8 = 0;
const KIND_PAGES: u8 = 1;

/// A stored blob: its metadata and where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    size: u64,
    version: u64,
    created_at_ms: u64,
    content_type: Option<String>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// An uploaded blob: its content file and hash.
    File { id: String, sha256: [u8; 32] },
    /// A fixed-size blob: the first key part of its pages.
    Pages(u64),
}

impl Stored {
    fn meta(&self, key: &str) -> BlobMeta {
        let (sha256, mutable) = match &self.body {
            Body::File { sha256, .. } => (Some(hex::encode(sha256)), false),
            Body::Pages(_) => (None, true),
        };
        BlobMeta {
            key: key.to_string(),
            size: self.size,
            sha256,
            content_type: self.content_type.clone(),
            version: self.version,
            mutable,
            created_at_ms: self.created_at_ms,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(FORMAT_V1);
        out.push(match self.body {
            Body::File { .. } => KIND_FILE,
            Body::Pages(_) => KIND_PAGES,
        });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        match &self.body {
            Body::File { id, sha256 } => {
                out.extend_from_slice(sha256);
                out.push(id.len() as u8);
                out.extend_from_slice(id.as_bytes());
            }
            Body::Pages(id) => out.extend_from_slice(&id.to_le_bytes()),
        }
        match &self.content_type {
            None => out.push(0),
            Some(ct) => {
                out.push(1);
                out.extend_from_slice(&(ct.len() as u32).to_le_bytes());
                out.extend_from_slice(ct.as_bytes());
            }
        }
        out
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Stored> {
        let corrupt = |why: &str| Error::Corrupt(format!("blob {key:?}: {why}"));
        let mut r = Reader(bytes);
        let truncated = || corrupt("truncated");
        let format = r.u8().ok_or_else(truncated)?;
        if format != FORMAT_V1 {
            return Err(corrupt(&format!("unknown format {format}")));
        }
        let kind = r.u8().ok_or_else(truncated)?;
        let size = r.u64().ok_or_else(truncated)?;
        let version = r.u64().ok_or_else(truncated)?;
        let created_at_ms = r.u64().ok_or_else(truncated)?;
        let body = match kind {
            KIND_FILE => {
                let sha: [u8; 32] = r
                    .take(32)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(truncated)?;
                let len = r.u8().ok_or_else(truncated)?;
                let id = r.take(usize::from(len)).ok_or_else(truncated)?;
                let id = std::str::from_utf8(id).map_err(|_| corrupt("content id"))?;
                if id.len() < 2 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(corrupt("content id"));
                }
                Body::File {
                    id: id.to_string(),
                    sha256: sha,
                }
            }
            KIND_PAGES => Body::Pages(r.u64().ok_or_else(truncated)?),
            other => return Err(corrupt(&format!("unknown kind {other}"))),
        };
        let content_type = match r.u8().ok_or_else(truncated)? {
            0 => None,
            _ => {
                let len = r.u32().ok_or_else(truncated)?;
                let ct = r.take(len as usize).ok_or_else(truncated)?;
                let ct = std::str::from_utf8(ct).map_err(|_| corrupt("content type"))?;
                Some(ct.to_string())
            }
        };
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Stored {
            size,
            version,
            created_at_ms,
            content_type,
            body,
        })
    }
}

/// Reads the fixed binary headers of stored values (blobs, channels).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Creates the tables (at open, when missing).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(BLOBS).map_err(unavailable)?;
    txn.open_table(BLOB_CONTENTS).map_err(unavailable)?;
    txn.open_table(BLOB_PAGES).map_err(unavailable)?;
    Ok(())
}

/// Which of the content ids metadata references, in one read transaction.
pub(crate) fn referenced(txn: &ReadTransaction, ids: &[String]) -> Result<Vec<bool>> {
    let table = txn.open_table(BLOB_CONTENTS).map_err(unavailable)?;
    ids.iter()
        .map(|id| Ok(table.get(id.as_str()).map_err(unavailable)?.is_some()))
        .collect()
}

/// The blob tables, opened by the first blob write of a batch.
pub(crate) struct BlobTables<'txn> {
    blobs: Table<'txn, &'static str, &'static [u8]>,
    contents: Table<'txn, &'static str, &'static str>,
    pages: Table<'txn, (u64, u64), &'static [u8]>,
}

impl<'txn> BlobTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(BlobTables {
            blobs: txn.open_table(BLOBS)?,
            contents: txn.open_table(BLOB_CONTENTS)?,
            pages: txn.open_table(BLOB_PAGES)?,
        })
    }
}

/// A blob write, done by the writer thread.
pub(crate) enum BlobCmd {
    /// An upload's content file is in place: make it the key's content.
    Commit {
        key: String,
        size: u64,
        sha256: [u8; 32],
        id: String,
        content_type: Option<String>,
        now_ms: u64,
    },
    Delete(String),
    CreateFixed {
        key: String,
        size: u64,
        replace: bool,
        now_ms: u64,
    },
    Apply {
        key: String,
        ops: Vec<BlobOp>,
    },
}

impl BlobCmd {
    /// About how many bytes it writes.
    pub(crate) fn weight(&self) -> usize {
        match self {
            BlobCmd::Apply { ops, .. } => ops
                .iter()
                .map(|op| {
                    let (start, end) = op.byte_span();
                    64 + (end.saturating_sub(start) as usize).min(1 << 30)
                })
                .sum(),
            _ => 64,
        }
    }
}

/// What a blob write answers; `old` is the content file the write
/// replaced or deleted, for the caller to unlink.
pub(crate) enum BlobDone {
    Committed {
        meta: BlobMeta,
        old: Option<String>,
    },
    Deleted {
        existed: bool,
        old: Option<String>,
    },
    Created {
        created: Created,
        old: Option<String>,
    },
    Applied(Applied),
}

/// Where a blob write's answer goes (`Reply::Blob`), holding the content
/// id of a commit live until the commit has resolved (see `files`).
pub(crate) struct BlobReply {
    tx: oneshot::Sender<Result<BlobDone>>,
    _hold: Option<Live>,
}

impl BlobReply {
    pub(crate) fn send(self, outcome: Result<BlobDone>) {
        // A caller that dropped its future does not want the answer.
        let _ = self.tx.send(outcome);
    }
}

type Storage<T> = std::result::Result<T, redb::Error>;

/// The stored blob of `key`: `Err` inside when it does not decode.
fn stored(t: &mut Tables<'_>, key: &str) -> Storage<Result<Option<Stored>>> {
    let tables = t.blobs()?;
    Ok(match tables.blobs.get(key)? {
        None => Ok(None),
        Some(v) => Stored::decode(key, v.value()).map(Some),
    })
}

fn next_version(t: &mut Tables<'_>) -> Storage<u64> {
    let version = t.meta.get(VERSION)?.map_or(0, |g| g.value()) + 1;
    t.meta.insert(VERSION, version)?;
    Ok(version)
}

/// Removes what an old content leaves in redb (its pages, or its file's
/// reference); answers the file to unlink.
fn release(t: &mut Tables<'_>, old: Option<Stored>) -> Storage<Option<String>> {
    let tables = t.blobs()?;
    Ok(match old.map(|o| o.body) {
        None => None,
        Some(Body::Pages(id)) => {
            pages::delete(&mut tables.pages, id)?;
            None
        }
        Some(Body::File { id, .. }) => {
            tables.contents.remove(id.as_str())?;
            Some(id)
        }
    })
}

fn put(t: &mut Tables<'_>, key: &str, s: &Stored) -> Storage<()> {
    let tables = t.blobs()?;
    tables.blobs.insert(key, s.encode().as_slice())?;
    if let Body::File { id, .. } = &s.body {
        tables.contents.insert(id.as_str(), key)?;
    }
    Ok(())
}

/// Applies a blob write inside the batch's transaction.
pub(crate) fn apply(t: &mut Tables<'_>, cmd: BlobCmd) -> writer::Applied {
    let done = match cmd {
        BlobCmd::Commit {
            key,
            size,
            sha256,
            id,
            content_type,
            now_ms,
        } => {
            // A corrupt old entry is replaced all the same.
            let old = stored(t, &key)?.ok().flatten();
            let old = release(t, old)?;
            let s = Stored {
                size,
                version: next_version(t)?,
                created_at_ms: now_ms,
                content_type,
                body: Body::File { id, sha256 },
            };
            put(t, &key, &s)?;
            BlobDone::Committed {
                meta: s.meta(&key),
                old,
            }
        }
        BlobCmd::Delete(key) => {
            let old = stored(t, &key)?.ok().flatten();
            let existed = t.blobs()?.blobs.remove(key.as_str())?.is_some();
            let old = release(t, old)?;
            BlobDone::Deleted { existed, old }
        }
        BlobCmd::CreateFixed {
            key,
            size,
            replace,
            now_ms,
        } => {
            let old = match stored(t, &key)? {
                Ok(old) => old,
                Err(_) if replace => None,
                Err(e) => return Ok(Err(e)),
            };
            if let (false, Some(old)) = (replace, &old) {
                let created = Created::Exists(old.meta(&key));
                return ok(
                    Value::Blob(BlobDone::Created { created, old: None }),
                    Effect::None,
                );
            }
            let old = release(t, old)?;
            let version = next_version(t)?;
            let s = Stored {
                size,
                version,
                created_at_ms: now_ms,
                content_type: None,
                body: Body::Pages(version),
            };
            put(t, &key, &s)?;
            BlobDone::Created {
                created: Created::Created(s.meta(&key)),
                old,
            }
        }
        BlobCmd::Apply { key, ops } => BlobDone::Applied(match apply_batch(t, &key, &ops)? {
            Ok(applied) => applied,
            Err(e) => return Ok(Err(e)),
        }),
    };
    ok(Value::Blob(done), Effect::None)
}

/// Validates a batch against the stored size and applies it to the pages
/// it touches, all in the caller's transaction (a blob write's, or a
/// channel publish's: see `channels`). A refusal writes nothing.
pub(crate) fn apply_batch(
    t: &mut Tables<'_>,
    key: &str,
    ops: &[BlobOp],
) -> Storage<Result<Applied>> {
    let mut s = match stored(t, key)? {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Ok(Applied::NotFound)),
        Err(e) => return Ok(Err(e)),
    };
    let Body::Pages(id) = s.body else {
        return Ok(Ok(Applied::NotMutable));
    };
    if let Err(bad) = validate_ops(ops, s.size) {
        return Ok(Ok(Applied::Invalid(bad)));
    }
    let tables = t.blobs()?;
    let mut window = Window::load(&tables.pages, id, s.size, ops)?;
    let results = apply_ops(&mut window, ops);
    window.store(&mut tables.pages, id)?;
    s.version = next_version(t)?;
    t.blobs()?.blobs.insert(key, s.encode().as_slice())?;
    Ok(Ok(Applied::Done {
        results,
        meta: s.meta(key),
    }))
}

/// Issues a blob write (in call order), holding `hold` live until it has
/// resolved.
fn submit(tx: &Sender<Msg>, cmd: BlobCmd, hold: Option<Live>) -> Pending<BlobDone> {
    crate::submit_to(tx, Command::Blob(cmd), |tx| {
        Reply::Blob(BlobReply { tx, _hold: hold })
    })
}

fn mismatched<T>() -> Result<T> {
    Err(Error::Unavailable(
        "internal: mismatched blob reply".to_string(),
    ))
}

/// Unlinks a replaced content file on the blocking pool, after its
/// metadata is gone.
async fn unlink(files: &Arc<Files>, old: Option<String>) {
    if let Some(id) = old {
        let files = files.clone();
        // Best effort: the sweep removes what this misses.
        let _ = tokio::task::spawn_blocking(move || files.unlink(&id)).await;
    }
}

async fn blocking<T: Send + 'static>(
    files: &Arc<Files>,
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(files.io_error(what, e)),
        Err(e) => Err(Error::Unavailable(format!("{what}: {e}"))),
    }
}

impl RedbStore {
    /// The stored blob of `key` in `txn`.
    fn stored_in(txn: &ReadTransaction, key: &str) -> Result<Option<Stored>> {
        let table = txn.open_table(BLOBS).map_err(unavailable)?;
        match table.get(key).map_err(unavailable)? {
            None => Ok(None),
            Some(v) => Stored::decode(key, v.value()).map(Some),
        }
    }

    fn blob_write<T: Send + 'static>(
        &self,
        cmd: BlobCmd,
        pick: fn(BlobDone) -> Option<(T, Option<String>)>,
    ) -> Pending<T> {
        let done = submit(&self.tx, cmd, None);
        let files = self.files.clone();
        Box::pin(async move {
            let Some((value, old)) = pick(done.await?) else {
                return mismatched();
            };
            unlink(&files, old).await;
            Ok(value)
        })
    }
}

/// The byte range `[start, end)` of a read, clamped to the blob's size.
fn clamp(size: u64, offset: u64, len: u64) -> (u64, u64) {
    (offset.min(size), offset.saturating_add(len).min(size))
}

impl Blobs for RedbStore {
    fn blob_upload(&self, key: &str) -> Pending<Box<dyn BlobUpload>> {
        let start = Upload::start(self.files.clone(), self.tx.clone(), key.to_string());
        Box::pin(async move { Ok(Box::new(start.await?) as Box<dyn BlobUpload>) })
    }

    fn blob_meta(&self, key: &str) -> Pending<Option<BlobMeta>> {
        self.read(|txn| Ok(RedbStore::stored_in(txn, key)?.map(|s| s.meta(key))))
    }

    fn blob_read(&self, key: &str, offset: u64, len: u64) -> Pending<Option<BlobRead>> {
        let snapshot = snapshot_of(&self.shared, key);
        let (key, files, shared) = (key.to_string(), self.files.clone(), self.shared.clone());
        Box::pin(async move {
            let mut snapshot = snapshot?;
            for _ in 0..OPEN_ATTEMPTS {
                let (txn, stored) = snapshot;
                let Some(s) = stored else {
                    return Ok(None);
                };
                let meta = s.meta(&key);
                let (start, end) = clamp(s.size, offset, len);
                match s.body {
                    Body::Pages(id) => {
                        let table = txn.open_table(BLOB_PAGES).map_err(unavailable)?;
                        let body = pages::stream(table, id, start, end);
                        return Ok(Some(BlobRead { meta, body }));
                    }
                    Body::File { id, .. } => {
                        drop(txn);
                        let path = files.content_path(&id);
                        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path))
                            .await
                            .map_err(|e| Error::Unavailable(format!("open a blob file: {e}")))?;
                        match opened {
                            Ok(file) => {
                                let body = files::file_stream(files, Arc::new(file), start, end);
                                return Ok(Some(BlobRead { meta, body }));
                            }
                            // Replaced (or deleted) since: look again.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                snapshot = snapshot_of(&shared, &key)?;
                            }
                            Err(e) => return Err(files.io_error("open a blob file", e)),
                        }
                    }
                }
            }
            Err(Error::Unavailable(format!(
                "blob {key:?}: its content file keeps disappearing (replaced while being opened)"
            )))
        })
    }

    fn blob_files(&self, key: &str, offset: u64, len: u64) -> Option<Pending<Option<BlobFiles>>> {
        let found = self.read(|txn| {
            let Some(s) = RedbStore::stored_in(txn, key)? else {
                return Ok(None);
            };
            let (start, end) = clamp(s.size, offset, len);
            let pieces = match &s.body {
                Body::Pages(_) => None,
                Body::File { id, .. } if end > start => Some(vec![FilePiece {
                    path: self.files.content_path(id),
                    file_offset: start,
                    len: end - start,
                }]),
                Body::File { .. } => Some(Vec::new()),
            };
            Ok(Some(BlobFiles {
                meta: s.meta(key),
                pieces,
            }))
        });
        Some(found)
    }

    fn blob_delete(&self, key: &str) -> Pending<bool> {
        self.blob_write(BlobCmd::Delete(key.to_string()), |d| match d {
            BlobDone::Deleted { existed, old } => Some((existed, old)),
            _ => None,
        })
    }

    fn blob_list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Pending<BlobPage> {
        self.read(|txn| {
            let limit = limit.max(1);
            let table = txn.open_table(BLOBS).map_err(unavailable)?;
            let start = match after {
                Some(a) if a >= prefix => Bound::Excluded(a),
                _ => Bound::Included(prefix),
            };
            let mut page = BlobPage::default();
            let rows = table
                .range::<&str>((start, Bound::Unbounded))
                .map_err(unavailable)?;
            for row in rows {
                let (k, v) = row.map_err(unavailable)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if page.blobs.len() == limit {
                    page.next = page.blobs.last().map(|m| m.key.clone());
                    return Ok(page);
                }
                page.blobs.push(Stored::decode(key, v.value())?.meta(key));
            }
            Ok(page)
        })
    }

    fn blob_create_fixed(
        &self,
        key: &str,
        size: u64,
        replace: bool,
        now_ms: u64,
    ) -> Pending<Created> {
        let cmd = BlobCmd::CreateFixed {
            key: key.to_string(),
            size,
            replace,
            now_ms,
        };
        self.blob_write(cmd, |d| match d {
            BlobDone::Created { created, old } => Some((created, old)),
            _ => None,
        })
    }

    fn blob_apply(&self, key: &str, ops: Vec<BlobOp>) -> Pending<Applied> {
        let cmd = BlobCmd::Apply {
            key: key.to_string(),
            ops,
        };
        self.blob_write(cmd, |d| match d {
            BlobDone::Applied(a) => Some((a, None)),
            _ => None,
        })
    }

    fn blob_sweep(&self, older_than_ms: u64) -> Pending<u64> {
        let (files, shared) = (self.files.clone(), self.shared.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                files.sweep(older_than_ms, &|ids| referenced_now(&shared, ids))
            })
            .await
            .map_err(|e| Error::Unavailable(format!("blob sweep: {e}")))?
        })
    }
}

/// A read transaction and the stored blob of `key` in it.
fn snapshot_of(shared: &Shared, key: &str) -> Result<(ReadTransaction, Option<Stored>)> {
    let txn = shared.db()?.begin_read().map_err(unavailable)?;
    let stored = RedbStore::stored_in(&txn, key)?;
    Ok((txn, stored))
}

/// `referenced` in a read transaction begun now.
pub(crate) fn referenced_now(shared: &Shared, ids: &[String]) -> Result<Vec<bool>> {
    let txn = shared.db()?.begin_read().map_err(unavailable)?;
    referenced(&txn, ids)
}

#[cfg(test)]
mod tests;
