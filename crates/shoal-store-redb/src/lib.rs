//! The embedded storage adapter: every `shoal-store` port on one redb file.
//!
//! Writes go to one writer thread that commits them in groups (see
//! `writer`), so concurrent writes share one fsync. Reads run inline on the
//! caller's thread in a short read transaction: a point read from redb's
//! cache takes a few microseconds, less than handing it to
//! `spawn_blocking` (see `examples/bench.rs`). Queue leases are kept in
//! memory (see `queue`); the messages themselves are durable. Documents are
//! described in `docs`, the key-value store in `kv`, blobs in `blobs`
//! (uploaded ones are files in `blobs/` next to the database file),
//! channels in `channels`.
//!
//! Layout (private to this crate), every value starting with a format byte
//! (see `codec`) unless noted:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"format"` | u64 layout version (3) |
//! | `meta` | `"category_next_id"`, `"category_round_robin"`, `"doc_version"`, `"kv_version"`, `"blob_version"` | u64 counters |
//! | `meta` | `"commits"` | u64, commits so far (tells whether a commit that reported an I/O error landed) |
//! | `functions` | (name, version) | `FunctionRecord` |
//! | `function_last_version` | name | u64, kept after removal |
//! | `function_refs` | name | `FunctionRefs` (live pin, aliases; added without a layout change: created when missing) |
//! | `tokens` | id | `TokenRecord` |
//! | `token_by_secret_sha256` | secret sha256 | token id |
//! | `invocations` | id | `InvocationRecord` |
//! | `logs` | invocation id | bytes |
//! | `invocations_by_time` | (created_at_ms, id) | u8 mode, no format byte (see `invocations`) |
//! | `invocations_by_function` | (function, created_at_ms, id) | u8 mode |
//! | `invocations_by_status` | (u8 status, created_at_ms, id) | u8 mode |
//! | `invocations_by_function_status` | (function, u8 status, created_at_ms, id) | u8 mode |
//! | `invocation_keys` | id | (function, created_at_ms, u8 status, u8 mode): what it is indexed under |
//! | `queue_messages` | (queue, message id) | header {due_ms, failures, seq, sent_ms} + body |
//! | `queue_dead` | (queue, message id) | header {failures, sent_ms, dead_at_ms, reason} + body |
//! | `queue_dedup` | (queue, deduplication key) | u64 until_ms, no format byte |
//! | `queue_dedup_ids` | (queue, deduplication key) | the id of the message that took the key |
//! | `queue_dedup_expiry` | (until_ms, queue, deduplication key) | (), to prune expired keys |
//! | `queue_totals` | queue | (sent, acked, nacked, dead_lettered, dead), no format byte |
//! | `queue_samples` | (queue, at_ms) | `QueueSample` minus its time (JSON) |
//! | `queues` | name | `QueueRecord` |
//! | `limiters` | name | `LimiterRecord` |
//! | `categories` | name | internal id, shards, `CategoryRecord` |
//! | `docs` | u64 BE internal id ++ u32 BE shard ++ doc id bytes | raw JSON text |
//! | `doc_stats` | (internal id, shard) | (docs, bytes, version), no format byte |
//! | `doc_garbage` | internal id of a deleted category | its name (documents await the purge) |
//! | `jobs` | job id | `JobRecord` (written once) |
//! | `job_progress` | job id | `JobProgress` |
//! | `job_results` | (job id, child index) | `ChildResult` |
//! | `job_failures` | (job id, child index) | (), the failed children |
//! | `sub_jobs` | (parent job id, job id) | (), the job tree |
//! | `kv`, `kv_expiry` | key; (expires_at_ms, key) | key-value entries and their expiry index (see `kv`; added without a layout change: created when missing) |
//! | `blobs`, `blob_contents`, `blob_pages` | key; content id; (pages id, page index) | blob metadata, the content files it references, fixed-size blobs' pages of 4000 bytes (see `blobs`; added without a layout change: created when missing) |
//! | `channels`, `channel_messages` | name; (name, offset) | a channel's epoch, head and settings; its kept messages (see `channels`; added without a layout change: created when missing) |
//! | `usage_rollups`, `usage_backfill` | (grain, start, function, token); `"after"` | usage rollups, non-zero fields (see `invocations`; changed with the record that becomes final); where the backfill of an older database's records stands, done once `meta["usage_built"]` is set (added without a layout change: created when missing) |

mod blobs;
mod channels;
mod codec;
mod docs;
mod invocations;
mod jobs;
mod kv;
mod queue;
mod queue_ops;
mod writer;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_store::{
    Catalog, CategoryRecord, ChildFinished, ChildResult, DeadLetter, Delivery, DocWrite, Docs,
    Error, FunctionRecord, FunctionRefs, InvocationRecord, Invocations, JobProgress, JobRecord,
    Jobs, KeyLimit, Leased, LimiterRecord, NewMessage, Pending, QueueCounters, QueueDepth,
    QueueRecord, QueueSample, Queues, Result, ShardStats, StoreHealth, StoredDoc, TokenRecord,
    UserRecord,
};
use shoal_store::{InvocationCursor, InvocationFilter, InvocationPage};
use tokio::sync::oneshot;

use crate::codec::{CategoryHead, decode_bytes, decode_message, decode_record};
use crate::queue::{QueueIndex, Totals, TotalsRow};
use crate::queue_ops::queue_end;
use crate::writer::{Command, Msg, Named, Op, Reply, Writer};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FUNCTIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("functions");
const FUNCTION_VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("function_last_version");
const FUNCTION_REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("function_refs");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const TOKEN_SECRETS: TableDefinition<&str, &str> = TableDefinition::new("token_by_secret_sha256");
const INVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invocations");
const LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("logs");
const MESSAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("queue_messages");
const DEAD_LETTERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("queue_dead");
/// (queue, deduplication key) → until_ms.
const DEDUP: TableDefinition<(&str, &str), u64> = TableDefinition::new("queue_dedup");
/// (queue, deduplication key) → the id of the message that took the key
/// (kept and pruned with `queue_dedup`; absent for keys stored before).
const DEDUP_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("queue_dedup_ids");
/// (until_ms, queue, deduplication key): the keys in expiry order.
const DEDUP_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("queue_dedup_expiry");
/// queue → (sent, acked, nacked, dead_lettered, dead).
const QUEUE_TOTALS: TableDefinition<&str, TotalsRow> = TableDefinition::new("queue_totals");
const SAMPLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_samples");
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const LIMITERS: TableDefinition<&str, &[u8]> = TableDefinition::new("limiters");
/// name → user record. Created at start when missing (no layout change:
/// a file without it simply has no users).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const CATEGORIES: TableDefinition<&str, &[u8]> = TableDefinition::new("categories");
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
/// (category id, shard) → (docs, bytes, version).
const DOC_STATS: TableDefinition<(u64, u32), (u64, u64, u64)> = TableDefinition::new("doc_stats");
const DOC_GARBAGE: TableDefinition<u64, &str> = TableDefinition::new("doc_garbage");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const JOB_PROGRESS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_progress");
const JOB_RESULTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("job_results");
const JOB_FAILURES: TableDefinition<(&str, u64), ()> = TableDefinition::new("job_failures");
const SUB_JOBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("sub_jobs");
/// Key-value entries and their expiry index (see `kv`).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const KV_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("kv_expiry");

/// The layout version in `meta["format"]`.
///
/// - 1: the first release.
/// - 2: records carry typed fields (status, mode, role and failure kind are
///   enums, function names are checked `FunctionName`s). Their JSON is the
///   same text as in layout 1 (the enums keep the strings' names), so a layout-1 database is migrated by checking that
///   every record decodes into the typed schema — a value no enum knows
///   fails the open, loudly, instead of a later read — and stamping 2, in
///   one transaction. Nothing is rewritten, nothing is lost.
/// - 3: the invocation indexes (`invocations`). A layout-2 (or 1) database
///   is migrated by indexing every stored record, 50,000 per commit, then
///   (layout 1: checking every record, as above) stamping 3.
const LAYOUT_VERSION: u64 = 3;

fn unavailable(e: impl Display) -> Error {
    Error::Unavailable(e.to_string())
}

/// What the writer thread and the callers share.
pub(crate) struct Shared {
    /// `None` only while the writer re-opens the file after an I/O error
    /// and that open failed (see `writer`): reads and writes then fail
    /// until the next attempt succeeds.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Set while writes fail for lack of space (see `writer::Failing`).
    full: AtomicBool,
    index: QueueIndex,
    commits: AtomicU64,
    writes: AtomicU64,
    purged_docs: AtomicU64,
    purge_backlog: AtomicU64,
}

/// A read lock on the open database; never held across an await or a
/// write lock (the writer takes that to re-open the file).
pub(crate) struct DbRef<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbRef<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("DbRef is made only over an open database")
    }
}

impl Shared {
    /// The open database, or `Unavailable` while it is being re-opened.
    pub(crate) fn db(&self) -> Result<DbRef<'_>> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(Error::Unavailable(format!(
                "{} is closed after an I/O error; it is re-opened with the next write",
                self.path.display()
            )));
        }
        Ok(DbRef(guard))
    }
}

/// Group-commit counters since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Committed write transactions (one fsync each).
    pub commits: u64,
    /// Write operations committed (`writes / commits` is the mean batch size).
    pub writes: u64,
    /// Documents of deleted categories removed by the background purge.
    pub purged_docs: u64,
    /// Deleted categories whose documents are not all purged yet.
    pub purge_backlog: u64,
}

/// redb's page cache when not configured: small, because documents are read
/// in streaming scans and decoded copies live in the query workers.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The embedded store. Implements `Catalog`, `Invocations`, `Queues`, `Docs`, `Jobs`, `Kv`, `Blobs`
/// and `Channels`;
/// bundle it with `shoal_store::Backend::from_adapter`.
pub struct RedbStore {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    /// Uploaded blobs' files (see `blobs`).
    files: Arc<blobs::Files>,
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`, creating its parent
    /// directory if missing, recovers the queue index from the stored
    /// messages, and starts the writer thread.
    ///
    /// This blocks (file I/O, and a repair scan after a crash); from async
    /// code call it inside `spawn_blocking` if that matters.
    pub fn open(path: &Path) -> Result<Arc<RedbStore>> {
        RedbStore::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Like `open`, with redb's page cache limited to `cache_bytes`. The
    /// cache is part of the node's memory: queries stream whole categories
    /// through it, so it should not grow with the data.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Arc<RedbStore>> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| unavailable(format!("create {}: {e}", parent.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match writer::storage_fault(e) {
                (Error::Full(e), _) => Error::Full(format!("open {}: {e}", path.display())),
                (e, _) => unavailable(format!("open {}: {e}", path.display())),
            })?;
        init_layout(&db)?;
        // Removes what a crash left in `blobs/` (uploads in progress, files
        // whose metadata never committed).
        let files = blobs::Files::open(path, &|ids| {
            let txn = db.begin_read().map_err(unavailable)?;
            blobs::referenced(&txn, ids)
        })?;
        let index = QueueIndex::default();
        let next_seq = recover_queues(&db, &index)?;
        load_totals(&db, &index)?;
        let garbage = pending_purges(&db)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            cache_bytes,
            full: AtomicBool::new(false),
            index,
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            purged_docs: AtomicU64::new(0),
            purge_backlog: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), rx, next_seq, garbage);
        let handle = std::thread::Builder::new()
            .name("shoal-redb-writer".to_string())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(format!("spawn the writer thread: {e}")))?;
        Ok(Arc::new(RedbStore {
            shared,
            tx,
            writer: Mutex::new(Some(handle)),
            path: path.to_path_buf(),
            files,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of uploaded blobs' files (`blobs/` beside the database
    /// file; one store per directory, since the sweep removes files its
    /// metadata does not reference). Whoever reads the paths of
    /// `Blobs::blob_files` (a sandboxed worker) needs read access to it.
    pub fn blob_dir(&self) -> &Path {
        self.files.root()
    }

    /// Group-commit and purge counters, for metrics.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            purged_docs: self.shared.purged_docs.load(Ordering::Relaxed),
            purge_backlog: self.shared.purge_backlog.load(Ordering::Relaxed),
        }
    }

    /// Commits every write issued so far, then stops the writer thread.
    /// Later writes fail with `Error::Unavailable`; reads keep working. The
    /// file is released when the last handle is dropped. Blocks until the
    /// last batch is committed (one fsync). Dropping the store does the same.
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = self.tx.send(Msg::Shutdown);
            if handle.join().is_err() {
                tracing::error!("redb writer thread panicked");
            }
        }
    }

    /// Issues a write: it is queued now, in call order.
    fn submit<T: Send + 'static>(
        &self,
        command: Command,
        reply: impl FnOnce(oneshot::Sender<Result<T>>) -> Reply,
    ) -> Pending<T> {
        submit_to(&self.tx, command, reply)
    }

    /// Runs a read now, in its own read transaction.
    fn read<T: Send + 'static>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Pending<T> {
        let result = self
            .shared
            .db()
            .and_then(|db| db.begin_read().map_err(unavailable))
            .and_then(|txn| f(&txn));
        ready(result)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Issues a write on the writer's channel: it is queued now, in call order.
fn submit_to<T: Send + 'static>(
    writer: &Sender<Msg>,
    command: Command,
    reply: impl FnOnce(oneshot::Sender<Result<T>>) -> Reply,
) -> Pending<T> {
    let (tx, rx) = oneshot::channel();
    // If the writer has stopped, the op comes back inside the error and
    // is dropped with its reply sender, which the future reports.
    let _ = writer.send(Msg::Op(Op {
        command,
        reply: reply(tx),
    }));
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(Error::Unavailable("the store is closed".to_string())))
    })
}

fn ready<T: Send + 'static>(result: Result<T>) -> Pending<T> {
    Box::pin(std::future::ready(result))
}

/// Layout 1 → 2: every typed record must decode (see `LAYOUT_VERSION`).
fn migrate_from_v1(txn: &redb::WriteTransaction) -> Result<()> {
    use redb::TableHandle;
    fn check<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        txn: &redb::WriteTransaction,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<u64> {
        let what = format!("migrating {} from layout 1", table.name());
        let t = match txn.open_table(table) {
            Ok(t) => t,
            Err(e) => return Err(unavailable(e)),
        };
        let mut n = 0;
        for row in t.iter().map_err(unavailable)? {
            let (_, v) = row.map_err(unavailable)?;
            decode_record::<T>(&what, v.value())?;
            n += 1;
        }
        Ok(n)
    }
    check::<(&str, u64), FunctionRecord>(txn, FUNCTIONS)?;
    check::<&str, TokenRecord>(txn, TOKENS)?;
    check::<&str, InvocationRecord>(txn, INVOCATIONS)?;
    check::<&str, JobRecord>(txn, JOBS)?;
    check::<(&str, u64), ChildResult>(txn, JOB_RESULTS)?;
    Ok(())
}

/// Invocation records indexed per commit when migrating to layout 3.
const MIGRATION_CHUNK: usize = 50_000;

/// The layout version of an existing database; `None` for a new file.
fn layout_of(db: &Database) -> Result<Option<u64>> {
    let txn = db.begin_read().map_err(unavailable)?;
    match txn.open_table(META) {
        Ok(meta) => Ok(meta.get("format").map_err(unavailable)?.map(|g| g.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Creates every table and checks the layout version.
fn init_layout(db: &Database) -> Result<()> {
    // Before layout 3 the invocation indexes are built, in commits of their
    // own, before the layout is stamped below.
    let indexed = match layout_of(db)? {
        Some(from @ (1 | 2)) => {
            if from == 1 {
                // Every record must decode before anything is written.
                let check = writer::begin(db)?;
                migrate_from_v1(&check)?;
                check.abort().map_err(unavailable)?;
            }
            invocations::build(db, MIGRATION_CHUNK)?
        }
        _ => 0,
    };
    let txn = writer::begin(db)?;
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let stored = meta.get("format").map_err(unavailable)?.map(|g| g.value());
        match stored {
            None => {
                meta.insert("format", LAYOUT_VERSION).map_err(unavailable)?;
                // Nothing to add to the usage rollups.
                meta.insert(invocations::USAGE_BUILT, 1)
                    .map_err(unavailable)?;
            }
            Some(LAYOUT_VERSION) => {}
            Some(from @ (1 | 2)) => {
                meta.insert("format", LAYOUT_VERSION).map_err(unavailable)?;
                tracing::info!(
                    indexed,
                    "Database migrated from layout {from} to {LAYOUT_VERSION}."
                );
            }
            Some(other) => {
                return Err(Error::Corrupt(format!(
                    "database layout {other} is not supported by this build (expects {LAYOUT_VERSION})"
                )));
            }
        }
        txn.open_table(FUNCTIONS).map_err(unavailable)?;
        txn.open_table(FUNCTION_VERSIONS).map_err(unavailable)?;
        txn.open_table(FUNCTION_REFS).map_err(unavailable)?;
        txn.open_table(TOKENS).map_err(unavailable)?;
        txn.open_table(TOKEN_SECRETS).map_err(unavailable)?;
        txn.open_table(INVOCATIONS).map_err(unavailable)?;
        txn.open_table(LOGS).map_err(unavailable)?;
        invocations::create_tables(&txn)?;
        txn.open_table(MESSAGES).map_err(unavailable)?;
        txn.open_table(DEAD_LETTERS).map_err(unavailable)?;
        txn.open_table(DEDUP).map_err(unavailable)?;
        txn.open_table(DEDUP_EXPIRY).map_err(unavailable)?;
        txn.open_table(DEDUP_IDS).map_err(unavailable)?;
        txn.open_table(QUEUE_TOTALS).map_err(unavailable)?;
        txn.open_table(SAMPLES).map_err(unavailable)?;
        txn.open_table(QUEUES).map_err(unavailable)?;
        txn.open_table(LIMITERS).map_err(unavailable)?;
        txn.open_table(USERS).map_err(unavailable)?;
        txn.open_table(CATEGORIES).map_err(unavailable)?;
        txn.open_table(DOCS).map_err(unavailable)?;
        txn.open_table(DOC_STATS).map_err(unavailable)?;
        txn.open_table(DOC_GARBAGE).map_err(unavailable)?;
        txn.open_table(JOBS).map_err(unavailable)?;
        txn.open_table(JOB_PROGRESS).map_err(unavailable)?;
        txn.open_table(JOB_RESULTS).map_err(unavailable)?;
        txn.open_table(JOB_FAILURES).map_err(unavailable)?;
        txn.open_table(SUB_JOBS).map_err(unavailable)?;
        kv::create_tables(&txn)?;
        blobs::create_tables(&txn)?;
        channels::create_tables(&txn)?;
    }
    txn.commit().map_err(unavailable)?;
    // Records of an older build: into the usage rollups, once.
    invocations::build_usage(db, MIGRATION_CHUNK)?;
    Ok(())
}

/// Deleted categories whose documents the writer still has to purge.
pub(crate) fn pending_purges(db: &Database) -> Result<BTreeSet<u64>> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(DOC_GARBAGE).map_err(unavailable)?;
    let mut out = BTreeSet::new();
    for entry in table.iter().map_err(unavailable)? {
        out.insert(entry.map_err(unavailable)?.0.value());
    }
    Ok(out)
}

/// The head of a category in a read transaction; `NotFound` if missing.
fn category_head(txn: &ReadTransaction, name: &str) -> Result<CategoryHead> {
    let table = txn.open_table(CATEGORIES).map_err(unavailable)?;
    let stored = table
        .get(name)
        .map_err(unavailable)?
        .ok_or_else(|| Error::NotFound(name.to_string()))?;
    codec::decode_category_head(&format_args!("category {name}"), stored.value())
}

/// Indexes every stored message as waiting (leases do not survive a
/// restart). Returns the next sequence number.
fn recover_queues(db: &Database, index: &QueueIndex) -> Result<u64> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut next_seq = 0;
    for entry in table.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        let (queue, id) = key.value();
        let what = format_args!("queue {queue} message {id}");
        match decode_message(&what, value.value()) {
            Ok((mut header, _)) => {
                next_seq = next_seq.max(header.seq + 1);
                // Stored before `sent_ms` existed: its due time is the best
                // guess for the oldest message's age (not the epoch).
                if header.sent_ms == 0 {
                    header.sent_ms = header.due_ms;
                }
                index.insert(queue, id, header);
            }
            // Left in place, never delivered: one bad record must not stop the node.
            Err(e) => tracing::error!(error = %e, "redb: skipping a corrupt queue message"),
        }
    }
    Ok(next_seq)
}

/// Reads every queue's committed totals into the index.
fn load_totals(db: &Database, index: &QueueIndex) -> Result<()> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(QUEUE_TOTALS).map_err(unavailable)?;
    let mut totals = Vec::new();
    for entry in table.iter().map_err(unavailable)? {
        let (queue, row) = entry.map_err(unavailable)?;
        totals.push((queue.value().to_string(), Totals::from_row(row.value())));
    }
    index.publish_totals(totals);
    Ok(())
}

/// A named record (queue, limiter) by name.
fn named_record<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    kind: &str,
    name: &str,
) -> Result<Option<T>> {
    let table = txn.open_table(table).map_err(unavailable)?;
    let stored = table.get(name).map_err(unavailable)?;
    stored
        .map(|v| decode_record(&format_args!("{kind} {name}"), v.value()))
        .transpose()
}

/// Every named record of a table, sorted by name.
fn named_records<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    kind: &str,
) -> Result<Vec<T>> {
    let table = txn.open_table(table).map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(unavailable)? {
        let (name, value) = entry.map_err(unavailable)?;
        let what = format_args!("{kind} {}", name.value());
        out.push(decode_record(&what, value.value())?);
    }
    Ok(out)
}

impl RedbStore {
    fn put_named(&self, which: Named, name: String, value: Result<Vec<u8>>) -> Pending<()> {
        match value {
            Err(e) => ready(Err(e)),
            Ok(value) => self.submit(Command::PutNamed(which, name, value), Reply::Unit),
        }
    }
}

impl Catalog for RedbStore {
    fn deploy_function(&self, record: FunctionRecord) -> Pending<u64> {
        self.submit(Command::Deploy(Box::new(record)), Reply::Version)
    }

    fn function(&self, name: &str) -> Pending<Option<FunctionRecord>> {
        self.read(|txn| {
            let table = txn.open_table(FUNCTIONS).map_err(unavailable)?;
            let last = table
                .range((name, 0)..=(name, u64::MAX))
                .map_err(unavailable)?
                .next_back();
            match last {
                None => Ok(None),
                Some(entry) => {
                    let (key, value) = entry.map_err(unavailable)?;
                    let what = format_args!("function {name} v{}", key.value().1);
                    decode_record(&what, value.value()).map(Some)
                }
            }
        })
    }

    fn function_version(&self, name: &str, version: u64) -> Pending<Option<FunctionRecord>> {
        self.read(|txn| {
            let table = txn.open_table(FUNCTIONS).map_err(unavailable)?;
            let stored = table.get((name, version)).map_err(unavailable)?;
            let what = format_args!("function {name} v{version}");
            stored
                .map(|value| decode_record(&what, value.value()))
                .transpose()
        })
    }

    fn functions(&self) -> Pending<Vec<FunctionRecord>> {
        self.read(|txn| {
            let names = txn.open_table(FUNCTION_VERSIONS).map_err(unavailable)?;
            let table = txn.open_table(FUNCTIONS).map_err(unavailable)?;
            let mut out = Vec::new();
            // One lookup per name (sorted by name), not a scan of every version.
            for entry in names.iter().map_err(unavailable)? {
                let (name, _) = entry.map_err(unavailable)?;
                let name = name.value();
                let last = table
                    .range((name, 0)..=(name, u64::MAX))
                    .map_err(unavailable)?
                    .next_back();
                if let Some(entry) = last {
                    let (key, value) = entry.map_err(unavailable)?;
                    let what = format_args!("function {name} v{}", key.value().1);
                    out.push(decode_record(&what, value.value())?);
                }
            }
            Ok(out)
        })
    }

    fn remove_function(&self, name: &str) -> Pending<bool> {
        self.submit(Command::RemoveFunction(name.to_string()), Reply::Existed)
    }

    fn function_versions(&self, name: &str) -> Pending<Vec<FunctionRecord>> {
        self.read(|txn| {
            let table = txn.open_table(FUNCTIONS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in table
                .range((name, 0)..=(name, u64::MAX))
                .map_err(unavailable)?
            {
                let (key, value) = entry.map_err(unavailable)?;
                let what = format_args!("function {name} v{}", key.value().1);
                out.push(decode_record(&what, value.value())?);
            }
            Ok(out)
        })
    }

    fn put_function_refs(&self, refs: FunctionRefs) -> Pending<()> {
        let value = codec::encode_record(&format_args!("function refs {}", refs.name), &refs);
        self.put_named(Named::FunctionRefs, refs.name.to_string(), value)
    }

    fn function_refs(&self) -> Pending<Vec<FunctionRefs>> {
        self.read(|txn| named_records(txn, FUNCTION_REFS, "function refs"))
    }

    fn put_token(&self, token: TokenRecord) -> Pending<()> {
        let what = format_args!("token {}", token.id);
        match codec::encode_record(&what, &token) {
            Err(e) => ready(Err(e)),
            Ok(value) => self.submit(
                Command::PutToken {
                    id: token.id,
                    secret_sha256: token.secret_sha256,
                    value,
                },
                Reply::Unit,
            ),
        }
    }

    fn token_by_secret_sha256(&self, secret_sha256: &str) -> Pending<Option<TokenRecord>> {
        self.read(|txn| {
            let secrets = txn.open_table(TOKEN_SECRETS).map_err(unavailable)?;
            let Some(id) = secrets.get(secret_sha256).map_err(unavailable)? else {
                return Ok(None);
            };
            let id = id.value();
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let Some(value) = tokens.get(id).map_err(unavailable)? else {
                return Ok(None);
            };
            let token: TokenRecord = decode_record(&format_args!("token {id}"), value.value())?;
            // The index is only a hint: the token itself must carry this hash.
            Ok((token.secret_sha256 == secret_sha256).then_some(token))
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        self.read(|txn| {
            let table = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (id, value) = entry.map_err(unavailable)?;
                let what = format_args!("token {}", id.value());
                out.push(decode_record(&what, value.value())?);
            }
            Ok(out)
        })
    }

    fn revoke_token(&self, id: &str) -> Pending<bool> {
        self.submit(Command::RevokeToken(id.to_string()), Reply::Existed)
    }

    fn put_user(&self, user: UserRecord) -> Pending<()> {
        let value = codec::encode_record(&format_args!("user {}", user.name), &user);
        self.put_named(Named::User, user.name, value)
    }

    fn user(&self, name: &str) -> Pending<Option<UserRecord>> {
        self.read(|txn| named_record(txn, USERS, "user", name))
    }

    fn users(&self) -> Pending<Vec<UserRecord>> {
        self.read(|txn| named_records(txn, USERS, "user"))
    }

    fn delete_user(&self, name: &str) -> Pending<bool> {
        self.submit(
            Command::RemoveNamed(Named::User, name.to_string()),
            Reply::Existed,
        )
    }

    fn put_queue(&self, queue: QueueRecord) -> Pending<()> {
        let value = codec::encode_record(&format_args!("queue {}", queue.name), &queue);
        self.put_named(Named::Queue, queue.name, value)
    }

    fn queue(&self, name: &str) -> Pending<Option<QueueRecord>> {
        self.read(|txn| named_record(txn, QUEUES, "queue", name))
    }

    fn queues(&self) -> Pending<Vec<QueueRecord>> {
        self.read(|txn| named_records(txn, QUEUES, "queue"))
    }

    fn remove_queue(&self, name: &str) -> Pending<bool> {
        self.submit(
            Command::RemoveNamed(Named::Queue, name.to_string()),
            Reply::Existed,
        )
    }

    fn put_limiter(&self, limiter: LimiterRecord) -> Pending<()> {
        let value = codec::check_limiter(&limiter).and_then(|()| {
            codec::encode_record(&format_args!("limiter {}", limiter.name), &limiter)
        });
        self.put_named(Named::Limiter, limiter.name, value)
    }

    fn limiters(&self) -> Pending<Vec<LimiterRecord>> {
        self.read(|txn| named_records(txn, LIMITERS, "limiter"))
    }

    fn remove_limiter(&self, name: &str) -> Pending<bool> {
        self.submit(
            Command::RemoveNamed(Named::Limiter, name.to_string()),
            Reply::Existed,
        )
    }
}

fn encode_invocations(records: &[InvocationRecord]) -> Result<Vec<invocations::Encoded>> {
    records
        .iter()
        .map(|r| {
            codec::check_invocation(r)?;
            let value = codec::encode_record(&format_args!("invocation {}", r.id), r)?;
            Ok(invocations::Encoded::of(r, value))
        })
        .collect()
}

impl Jobs for RedbStore {
    fn create_job(
        &self,
        job: JobRecord,
        children: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Pending<()> {
        let encoded = (|| {
            if let Some(plan) = &job.then_plan {
                codec::check_invocation(&plan.record)?;
            }
            let encoded = codec::encode_record(&format_args!("job {}", job.id), &job)?;
            Ok(jobs::NewJob {
                encoded,
                children: encode_invocations(&children)?,
                queue: queue.to_string(),
                messages,
                job,
            })
        })();
        match encoded {
            Err(e) => ready(Err(e)),
            Ok(new) => self.submit(Command::CreateJob(Box::new(new)), Reply::Unit),
        }
    }

    fn job(&self, id: &str) -> Pending<Option<(JobRecord, JobProgress)>> {
        self.read(|txn| {
            let jobs = txn.open_table(JOBS).map_err(unavailable)?;
            let Some(stored) = jobs.get(id).map_err(unavailable)? else {
                return Ok(None);
            };
            let record: JobRecord = decode_record(&format_args!("job {id}"), stored.value())?;
            let progress = txn.open_table(JOB_PROGRESS).map_err(unavailable)?;
            let progress = match progress.get(id).map_err(unavailable)? {
                Some(v) => decode_record(&format_args!("job {id} progress"), v.value())?,
                None => JobProgress::default(),
            };
            Ok(Some((record, progress)))
        })
    }

    fn list_jobs(&self, after: Option<&str>, limit: usize) -> Pending<Vec<JobRecord>> {
        let after = after.map(str::to_string);
        self.read(move |txn| {
            let jobs = txn.open_table(JOBS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            if limit == 0 {
                return Ok(out);
            }
            let range = match after.as_deref() {
                Some(a) => jobs.range::<&str>(..a),
                None => jobs.range::<&str>(..),
            }
            .map_err(unavailable)?;
            for entry in range.rev() {
                let (key, value) = entry.map_err(unavailable)?;
                let what = format_args!("job {}", key.value());
                out.push(decode_record(&what, value.value())?);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn finish_child(&self, job: &str, result: ChildResult, now_ms: u64) -> Pending<ChildFinished> {
        self.submit(
            Command::FinishChild {
                job: job.to_string(),
                result: Box::new(result),
                now_ms,
            },
            Reply::Finished,
        )
    }

    fn child_results(&self, job: &str, from_index: u64, limit: usize) -> Pending<Vec<ChildResult>> {
        self.read(|txn| {
            let table = txn.open_table(JOB_RESULTS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            if limit == 0 {
                return Ok(out);
            }
            for entry in table
                .range((job, from_index)..=(job, u64::MAX))
                .map_err(unavailable)?
            {
                let (key, value) = entry.map_err(unavailable)?;
                let what = format_args!("job {job} result {}", key.value().1);
                out.push(decode_record(&what, value.value())?);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn child_failures(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Pending<Vec<ChildResult>> {
        self.read(|txn| {
            let failures = txn.open_table(JOB_FAILURES).map_err(unavailable)?;
            let results = txn.open_table(JOB_RESULTS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            if limit == 0 {
                return Ok(out);
            }
            let lower = match after {
                Some(after) => Bound::Excluded((job, after)),
                None => Bound::Included((job, 0)),
            };
            let upper = Bound::Included((job, u64::MAX));
            for entry in failures.range((lower, upper)).map_err(unavailable)? {
                let index = entry.map_err(unavailable)?.0.value().1;
                if let Some(value) = results.get((job, index)).map_err(unavailable)? {
                    let what = format_args!("job {job} result {index}");
                    out.push(decode_record(&what, value.value())?);
                }
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn sub_jobs(&self, job: &str) -> Pending<Vec<String>> {
        self.read(|txn| {
            let table = txn.open_table(SUB_JOBS).map_err(unavailable)?;
            let end = queue_end(job);
            let mut out = Vec::new();
            for entry in table
                .range((job, "")..(end.as_str(), ""))
                .map_err(unavailable)?
            {
                out.push(entry.map_err(unavailable)?.0.value().1.to_string());
            }
            Ok(out)
        })
    }

    fn cancel_job(&self, id: &str, now_ms: u64) -> Pending<bool> {
        self.submit(
            Command::CancelJob {
                id: id.to_string(),
                now_ms,
            },
            Reply::Existed,
        )
    }
}

/// Among up to `scan` invocation records after `after` (in id order), the
/// final ones that finished before `before_ms`, as (id, stored bytes); and
/// the last id looked at when more records follow. A record that does not
/// decode is left alone.
#[allow(clippy::type_complexity)]
fn old_invocations(
    txn: &ReadTransaction,
    before_ms: u64,
    after: Option<&str>,
    scan: usize,
) -> Result<(Vec<(String, Vec<u8>)>, Option<String>)> {
    let table = txn.open_table(INVOCATIONS).map_err(unavailable)?;
    let range = match after {
        Some(a) => table.range::<&str>((Bound::Excluded(a), Bound::Unbounded)),
        None => table.range::<&str>(..),
    }
    .map_err(unavailable)?;
    let (mut seen, mut last, mut looked) = (Vec::new(), None, 0);
    for entry in range {
        let (key, value) = entry.map_err(unavailable)?;
        if looked == scan {
            return Ok((seen, last));
        }
        looked += 1;
        let id = key.value().to_string();
        let record: Result<InvocationRecord> =
            decode_record(&format_args!("invocation {id}"), value.value());
        if let Ok(r) = record
            && r.status.is_final()
            && r.finished_at_ms.is_some_and(|f| f < before_ms)
        {
            seen.push((id.clone(), value.value().to_vec()));
        }
        last = Some(id);
    }
    Ok((seen, None))
}

impl Invocations for RedbStore {
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()> {
        let encoded = encode_invocations(&records);
        match encoded {
            Err(e) => ready(Err(e)),
            Ok(encoded) => self.submit(Command::PutInvocations(encoded), Reply::Unit),
        }
    }

    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>> {
        self.read(|txn| {
            let table = txn.open_table(INVOCATIONS).map_err(unavailable)?;
            let stored = table.get(id).map_err(unavailable)?;
            stored
                .map(|value| decode_record(&format_args!("invocation {id}"), value.value()))
                .transpose()
        })
    }

    fn list_invocations(
        &self,
        filter: &InvocationFilter,
        after: Option<&InvocationCursor>,
        limit: usize,
    ) -> Pending<InvocationPage> {
        self.read(|txn| invocations::list(txn, filter, after, limit))
    }

    fn count_invocations(&self) -> Pending<u64> {
        self.read(|txn| {
            use redb::ReadableTableMetadata;
            let table = txn.open_table(INVOCATIONS).map_err(unavailable)?;
            table.len().map_err(unavailable)
        })
    }

    fn purge_invocations(
        &self,
        before_ms: u64,
        after: Option<&str>,
        scan: usize,
    ) -> Pending<shoal_store::Purged> {
        let mut found = None;
        let read = self.read(|txn| {
            found = Some(old_invocations(txn, before_ms, after, scan));
            Ok(())
        });
        let (seen, next) = match found {
            Some(Ok(found)) => found,
            Some(Err(e)) => return ready(Err(e)),
            None => {
                return Box::pin(async move {
                    read.await?;
                    Err(Error::Unavailable("reading invocations failed".into()))
                });
            }
        };
        if seen.is_empty() {
            return ready(Ok(shoal_store::Purged { deleted: 0, next }));
        }
        let deleted = self.submit(Command::PurgeInvocations(seen), Reply::Count);
        Box::pin(async move {
            Ok(shoal_store::Purged {
                deleted: deleted.await?,
                next,
            })
        })
    }

    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()> {
        let value = codec::encode_bytes(&logs);
        self.submit(
            Command::PutLogs {
                id: id.to_string(),
                value,
            },
            Reply::Unit,
        )
    }

    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>> {
        self.read(|txn| {
            let table = txn.open_table(LOGS).map_err(unavailable)?;
            let stored = table.get(id).map_err(unavailable)?;
            stored
                .map(|value| decode_bytes(&format_args!("logs {id}"), value.value()))
                .transpose()
        })
    }

    fn health(&self) -> StoreHealth {
        if self.shared.full.load(Ordering::Acquire) {
            StoreHealth::Full(writer::full_message(&self.shared.path))
        } else {
            StoreHealth::Ok
        }
    }
}

impl Queues for RedbStore {
    fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Pending<Vec<Option<String>>> {
        self.submit(
            Command::Send {
                queue: queue.to_string(),
                messages,
            },
            Reply::Sent,
        )
    }

    /// Leases at call time, in memory (no fsync): a dropped future still
    /// holds its messages until the visibility timeout.
    fn lease_keyed(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Pending<Leased> {
        let (picked, next_due_ms) =
            self.shared
                .index
                .lease(queue, now_ms, max, visibility_ms, limit);
        if picked.is_empty() {
            return ready(Ok(Leased {
                deliveries: Vec::new(),
                next_due_ms,
            }));
        }
        let lease_until_ms = now_ms.saturating_add(visibility_ms);
        self.read(|txn| {
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let mut deliveries = Vec::with_capacity(picked.len());
            for p in picked {
                let Some(value) = table.get((queue, &*p.id)).map_err(unavailable)? else {
                    // Acked by an earlier holder since we picked it; the
                    // writer drops it from the index.
                    continue;
                };
                let what = format_args!("queue {queue} message {}", p.id);
                match decode_message(&what, value.value()) {
                    Ok((header, body)) => deliveries.push(Delivery {
                        id: p.id.to_string(),
                        body: body.to_vec(),
                        failures: p.failures,
                        starts: header.starts,
                        lease_until_ms,
                        key: (!p.key.is_empty()).then(|| p.key.to_string()),
                    }),
                    // Stays leased and comes back after its lease; the rest
                    // of the queue keeps flowing.
                    Err(e) => tracing::error!(error = %e, "redb: cannot deliver a corrupt message"),
                }
            }
            Ok(Leased {
                deliveries,
                next_due_ms,
            })
        })
    }

    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> Pending<()> {
        self.shared.index.extend(queue, id, lease_until_ms);
        ready(Ok(()))
    }

    fn ack(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        self.submit(
            Command::Ack {
                queue: queue.to_string(),
                ids,
            },
            Reply::Unit,
        )
    }

    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> Pending<()> {
        self.submit(
            Command::Nack {
                queue: queue.to_string(),
                id: id.to_string(),
                due_ms,
            },
            Reply::Unit,
        )
    }

    fn started(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        self.submit(
            Command::Started {
                queue: queue.to_string(),
                ids,
            },
            Reply::Unit,
        )
    }

    fn depth(&self, queue: &str) -> Pending<QueueDepth> {
        ready(Ok(self.shared.index.depth(queue)))
    }

    fn counters(&self, queue: &str) -> Pending<QueueCounters> {
        ready(Ok(self.shared.index.totals(queue).counters))
    }

    fn dead_letter(&self, queue: &str, id: &str, reason: String, now_ms: u64) -> Pending<()> {
        self.submit(
            Command::DeadLetter {
                queue: queue.to_string(),
                id: id.to_string(),
                reason,
                now_ms,
            },
            Reply::Unit,
        )
    }

    fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<DeadLetter>> {
        self.read(|txn| {
            let mut out = Vec::with_capacity(limit.min(1024));
            if limit == 0 {
                return Ok(out);
            }
            let table = txn.open_table(DEAD_LETTERS).map_err(unavailable)?;
            let end = queue_end(queue);
            let lower = match after {
                Some(after) => Bound::Excluded((queue, after)),
                None => Bound::Included((queue, "")),
            };
            let upper = Bound::Excluded((end.as_str(), ""));
            for entry in table.range((lower, upper)).map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                let id = key.value().1;
                let what = format_args!("queue {queue} dead letter {id}");
                let (header, body) = codec::decode_dead(&what, value.value())?;
                out.push(DeadLetter {
                    id: id.to_string(),
                    body: body.to_vec(),
                    failures: header.failures,
                    sent_ms: header.sent_ms,
                    dead_at_ms: header.dead_at_ms,
                    reason: header.reason,
                });
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn redrive(&self, queue: &str, ids: Option<Vec<String>>, now_ms: u64) -> Pending<u64> {
        self.submit(
            Command::Redrive {
                queue: queue.to_string(),
                ids,
                now_ms,
            },
            Reply::Count,
        )
    }

    fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Pending<u64> {
        self.submit(
            Command::PurgeDead {
                queue: queue.to_string(),
                ids,
            },
            Reply::Count,
        )
    }

    fn purge(&self, queue: &str) -> Pending<u64> {
        self.submit(Command::Purge(queue.to_string()), Reply::Count)
    }

    fn record_samples(
        &self,
        samples: Vec<(String, QueueSample)>,
        keep_after_ms: u64,
    ) -> Pending<()> {
        self.submit(
            Command::RecordSamples {
                samples,
                keep_after_ms,
            },
            Reply::Unit,
        )
    }

    fn samples(&self, queue: &str, since_ms: u64) -> Pending<Vec<QueueSample>> {
        self.read(|txn| {
            let table = txn.open_table(SAMPLES).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in table
                .range((queue, since_ms)..=(queue, u64::MAX))
                .map_err(unavailable)?
            {
                let (key, value) = entry.map_err(unavailable)?;
                let at_ms = key.value().1;
                let what = format_args!("queue {queue} sample {at_ms}");
                out.push(codec::decode_sample(&what, at_ms, value.value())?);
            }
            Ok(out)
        })
    }
}

/// Every operation on a category that does not exist fails with `NotFound`,
/// except `create_category`, `category` (`None`) and `delete_category`
/// (`false`).
impl Docs for RedbStore {
    fn create_category(
        &self,
        name: &str,
        shards: u32,
        slot_count: u32,
        now_ms: u64,
    ) -> Pending<(CategoryRecord, bool)> {
        // Through the writer even when it exists: a delete issued before
        // must land first.
        self.submit(
            Command::CreateCategory {
                name: name.to_string(),
                shards,
                slot_count,
                now_ms,
            },
            Reply::Category,
        )
    }

    fn category(&self, name: &str) -> Pending<Option<CategoryRecord>> {
        self.read(|txn| {
            let table = txn.open_table(CATEGORIES).map_err(unavailable)?;
            let stored = table.get(name).map_err(unavailable)?;
            stored
                .map(|v| codec::decode_category(&format_args!("category {name}"), v.value()))
                .transpose()
                .map(|found| found.map(|(_, record)| record))
        })
    }

    fn categories(&self) -> Pending<Vec<CategoryRecord>> {
        self.read(|txn| {
            let table = txn.open_table(CATEGORIES).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (name, value) = entry.map_err(unavailable)?;
                let what = format_args!("category {}", name.value());
                out.push(codec::decode_category(&what, value.value())?.1);
            }
            Ok(out)
        })
    }

    fn delete_category(&self, name: &str) -> Pending<bool> {
        self.submit(Command::DeleteCategory(name.to_string()), Reply::Existed)
    }

    fn delete_category_if_empty(&self, name: &str) -> Pending<u64> {
        self.submit(
            Command::DeleteCategoryIfEmpty(name.to_string()),
            Reply::Count,
        )
    }

    fn put_docs(&self, category: &str, docs: Vec<DocWrite>) -> Pending<()> {
        self.submit(
            Command::PutDocs {
                category: category.to_string(),
                docs,
            },
            Reply::Unit,
        )
    }

    fn get_doc(&self, category: &str, shard: u32, id: &str) -> Pending<Option<Vec<u8>>> {
        self.read(|txn| {
            let head = category_head(txn, category)?;
            let table = txn.open_table(DOCS).map_err(unavailable)?;
            let mut key = Vec::with_capacity(codec::SHARD_PREFIX_LEN + id.len());
            codec::doc_key(&mut key, head.id, shard, id);
            let stored = table.get(key.as_slice()).map_err(unavailable)?;
            stored
                .map(|v| {
                    let what = format_args!("category {category} shard {shard} doc {id}");
                    codec::decode_doc(&what, v.value()).map(<[u8]>::to_vec)
                })
                .transpose()
        })
    }

    fn delete_docs(&self, category: &str, docs: Vec<(u32, String)>) -> Pending<u64> {
        self.submit(
            Command::DeleteDocs {
                category: category.to_string(),
                docs,
            },
            Reply::Count,
        )
    }

    fn scan_shard(
        &self,
        category: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<StoredDoc>> {
        self.read(|txn| {
            let head = category_head(txn, category)?;
            let table = txn.open_table(DOCS).map_err(unavailable)?;
            let prefix = codec::shard_prefix(head.id, shard);
            let mut start = Vec::new();
            let lower = match after {
                Some(after) => {
                    codec::doc_key(&mut start, head.id, shard, after);
                    Bound::Excluded(start.as_slice())
                }
                None => Bound::Included(prefix.as_slice()),
            };
            let end = codec::shard_end(head.id, shard);
            let upper = match &end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::with_capacity(limit.min(4096));
            if limit == 0 {
                return Ok(out);
            }
            for entry in table.range::<&[u8]>((lower, upper)).map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                let id = &key.value()[codec::SHARD_PREFIX_LEN..];
                let id = std::str::from_utf8(id).map_err(|e| {
                    Error::Corrupt(format!("category {category} shard {shard}: doc id: {e}"))
                })?;
                let what = format_args!("category {category} shard {shard} doc {id}");
                let body = codec::decode_doc(&what, value.value())?;
                out.push(StoredDoc {
                    id: id.to_string(),
                    body: body.to_vec(),
                });
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn shard_stats(&self, category: &str) -> Pending<Vec<ShardStats>> {
        self.read(|txn| {
            let head = category_head(txn, category)?;
            let table = txn.open_table(DOC_STATS).map_err(unavailable)?;
            let mut out = vec![ShardStats::default(); head.shards as usize];
            let range = (head.id, 0)..(head.id, head.shards);
            for entry in table.range(range).map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                let (docs, bytes, version) = value.value();
                out[key.value().1 as usize] = ShardStats {
                    docs,
                    bytes,
                    version,
                };
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::conformance::sample_invocation;

    const T: u64 = 1_700_000_000_000;

    fn msg(id: &str) -> NewMessage {
        NewMessage {
            id: id.to_string(),
            body: id.as_bytes().to_vec(),
            due_ms: T,
            sent_ms: T - 10,
            dedup: None,
            key: None,
        }
    }

    /// Overwrites stored values behind the store's back.
    fn corrupt(store: &RedbStore) {
        let txn = writer::begin(&store.shared.db().unwrap()).unwrap();
        {
            let mut t = txn.open_table(INVOCATIONS).unwrap();
            t.insert("bad", &b"\x01{not json"[..]).unwrap();
            let mut t = txn.open_table(MESSAGES).unwrap();
            t.insert(("q", "m"), &b"\x09garbage"[..]).unwrap();
            let mut t = txn.open_table(TOKENS).unwrap();
            t.insert("tok", &b"\x01[]"[..]).unwrap();
            let mut t = txn.open_table(TOKEN_SECRETS).unwrap();
            t.insert("sha", "tok").unwrap();
            let mut t = txn.open_table(CATEGORIES).unwrap();
            t.insert("badcat", &b"\x01\x07"[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    fn docs_in_table(store: &RedbStore) -> u64 {
        use redb::ReadableTableMetadata;
        let txn = store.shared.db().unwrap().begin_read().unwrap();
        txn.open_table(DOCS).unwrap().len().unwrap()
    }

    fn garbage_in_table(store: &RedbStore) -> u64 {
        use redb::ReadableTableMetadata;
        let txn = store.shared.db().unwrap().begin_read().unwrap();
        txn.open_table(DOC_GARBAGE).unwrap().len().unwrap()
    }

    fn docs(shard: u32, prefix: &str, n: usize) -> Vec<DocWrite> {
        (0..n)
            .map(|i| DocWrite {
                shard,
                id: format!("{prefix}{i:06}"),
                body: format!("{{\"i\":{i}}}").into_bytes(),
            })
            .collect()
    }

    /// Waits (polling, bounded) until the writer has purged every deleted category.
    async fn purged(store: &RedbStore) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.stats().purge_backlog > 0 {
            assert!(std::time::Instant::now() < deadline, "purge did not finish");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_documents_are_purged_in_chunks_and_resume_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path).unwrap();
        store.create_category("big", 2, 4, T).await.unwrap();
        store.create_category("keep", 1, 4, T).await.unwrap();
        for (shard, prefix) in [(0, "a"), (1, "b"), (0, "c")] {
            store
                .put_docs("big", docs(shard, prefix, 10_000))
                .await
                .unwrap();
        }
        store.put_docs("keep", docs(0, "k", 100)).await.unwrap();
        assert_eq!(docs_in_table(&store), 30_100);

        // Deleted: gone at once, documents purged behind it in several commits.
        let before = store.stats();
        assert!(store.delete_category("big").await.unwrap());
        assert!(store.category("big").await.unwrap().is_none());
        // Writes go on meanwhile.
        store.put_docs("keep", docs(0, "k2-", 10)).await.unwrap();
        purged(&store).await;
        let after = store.stats();
        assert_eq!(after.purged_docs - before.purged_docs, 30_000);
        assert!(
            after.commits - before.commits >= 4,
            "30,000 documents purged in {} commits",
            after.commits - before.commits
        );
        assert_eq!(docs_in_table(&store), 110);
        assert_eq!(garbage_in_table(&store), 0);
        assert_eq!(store.shard_stats("keep").await.unwrap()[0].docs, 110);

        // A crash right after a delete committed: the record is gone and the
        // documents are filed as garbage, none purged yet.
        store.create_category("big", 2, 4, T).await.unwrap();
        store.put_docs("big", docs(1, "z", 15_000)).await.unwrap();
        store.close();
        {
            let txn = writer::begin(&store.shared.db().unwrap()).unwrap();
            {
                let mut categories = txn.open_table(CATEGORIES).unwrap();
                let stored = categories.remove("big").unwrap().unwrap();
                let head = codec::decode_category_head(&"big", stored.value()).unwrap();
                drop(stored);
                let mut garbage = txn.open_table(DOC_GARBAGE).unwrap();
                garbage.insert(head.id, "big").unwrap();
            }
            txn.commit().unwrap();
        }
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert!(store.category("big").await.unwrap().is_none());
        assert_eq!(store.stats().purge_backlog, 1, "the purge resumes on open");
        purged(&store).await;
        assert_eq!(store.stats().purged_docs, 15_000);
        assert_eq!(docs_in_table(&store), 110);
        assert_eq!(garbage_in_table(&store), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_records_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path).unwrap();
        store.send("q", vec![msg("m"), msg("n")]).await.unwrap();
        corrupt(&store);

        assert!(matches!(
            store.invocation("bad").await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(store.tokens().await, Err(Error::Corrupt(_))));
        assert!(matches!(
            store.token_by_secret_sha256("sha").await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            store.category("badcat").await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(store.categories().await, Err(Error::Corrupt(_))));
        let put = store.put_docs("badcat", Vec::new());
        let create = store.create_category("goodcat", 1, 1, T);
        assert!(matches!(put.await, Err(Error::Corrupt(_))));
        assert!(create.await.unwrap().1);
        // A corrupt category can still be deleted.
        assert!(store.delete_category("badcat").await.unwrap());
        assert_eq!(store.categories().await.unwrap().len(), 1);

        // Issued together, so most likely in one batch: only the nack fails.
        let nack = store.nack("q", "m", T);
        let put = store.put_invocations(vec![sample_invocation("good", "f")]);
        let send = store.send("q", vec![msg("o")]);
        assert!(matches!(nack.await, Err(Error::Corrupt(_))));
        put.await.unwrap();
        send.await.unwrap();
        assert!(store.invocation("good").await.unwrap().is_some());

        // A corrupt message is skipped by lease; the rest flows.
        let leased = store.lease("q", T, 10, 1_000).await.unwrap();
        let ids: Vec<_> = leased.deliveries.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["n", "o"]);
        // Revoking a token whose record is corrupt still removes it.
        assert!(store.revoke_token("tok").await.unwrap());
        assert_eq!(store.tokens().await.unwrap(), Vec::new());
        drop(store);

        // Reopening skips the corrupt message (left in place) and keeps the rest.
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.depth("q").await.unwrap(),
            QueueDepth {
                waiting: 2,
                in_flight: 0,
                dead: 0,
                oldest_sent_ms: Some(T - 10),
            }
        );
    }

    fn table_len<K: redb::Key + 'static, V: redb::Value + 'static>(
        store: &RedbStore,
        table: TableDefinition<K, V>,
    ) -> u64 {
        use redb::ReadableTableMetadata;
        let txn = store.shared.db().unwrap().begin_read().unwrap();
        txn.open_table(table).unwrap().len().unwrap()
    }

    fn keyed(id: &str, key: &str, until_ms: u64, sent_ms: u64) -> NewMessage {
        NewMessage {
            dedup: Some((key.to_string(), until_ms)),
            key: None,
            sent_ms,
            ..msg(id)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn expired_dedup_keys_are_pruned_by_sends_and_sample_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        // The key, its expiry entry and the id that took it go together.
        let keys = |store: &RedbStore| {
            let n = table_len(store, DEDUP);
            assert_eq!(table_len(store, DEDUP_IDS), n, "queue_dedup_ids");
            (n, table_len(store, DEDUP_EXPIRY))
        };
        for i in 0..100u64 {
            let m = keyed(&format!("m{i}"), &format!("k{i}"), T + i, T - 1_000);
            store.send(&format!("q{}", i % 2), vec![m]).await.unwrap();
        }
        assert_eq!(keys(&store), (100, 100));
        // Taking an expired key again moves its expiry entry.
        store
            .send("q0", vec![keyed("x", "k0", T + 500, T)])
            .await
            .unwrap();
        assert_eq!(keys(&store), (100, 100));
        // A send prunes a couple of expired keys, earliest first.
        store
            .send("q1", vec![keyed("y", "new", T + 1_000, T + 50)])
            .await
            .unwrap();
        assert_eq!(keys(&store), (99, 99));
        {
            let txn = store.shared.db().unwrap().begin_read().unwrap();
            let t = txn.open_table(DEDUP).unwrap();
            assert!(t.get(("q1", "k1")).unwrap().is_none());
            assert!(t.get(("q0", "k2")).unwrap().is_none());
            assert_eq!(t.get(("q1", "k3")).unwrap().unwrap().value(), T + 3);
        }
        // A sample tick prunes every key expired by its time (within its budget).
        store.record_samples(Vec::new(), T + 100).await.unwrap();
        assert_eq!(keys(&store), (2, 2));
        // What is left still holds.
        store
            .send("q0", vec![keyed("z", "k0", T + 9_000, T + 499)])
            .await
            .unwrap();
        assert_eq!(store.counters("q0").await.unwrap().sent, 51);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn corrupt_dead_letters_and_messages_do_not_block_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        store
            .send("q", vec![msg("m"), msg("n"), msg("x")])
            .await
            .unwrap();
        for id in ["m", "n"] {
            store
                .dead_letter("q", id, "r".to_string(), T)
                .await
                .unwrap();
        }
        {
            let txn = writer::begin(&store.shared.db().unwrap()).unwrap();
            {
                let mut t = txn.open_table(DEAD_LETTERS).unwrap();
                t.insert(("q", "m"), &b"\x01\x02"[..]).unwrap();
                let mut t = txn.open_table(MESSAGES).unwrap();
                t.insert(("q", "x"), &b"\x09garbage"[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(matches!(
            store.dead_letters("q", None, 10).await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            store.dead_letter("q", "x", "r".to_string(), T).await,
            Err(Error::Corrupt(_))
        ));
        // The corrupt dead letter stays; the good one is redriven.
        assert_eq!(store.redrive("q", None, T).await.unwrap(), 1);
        assert_eq!(store.depth("q").await.unwrap().dead, 1);
        assert_eq!(store.purge_dead("q", None).await.unwrap(), 1);
        assert_eq!(store.dead_letters("q", None, 10).await.unwrap(), Vec::new());
        // Purge deletes the corrupt message with the rest.
        assert_eq!(store.purge("q").await.unwrap(), 2);
        assert_eq!(store.depth("q").await.unwrap(), QueueDepth::default());
        assert_eq!(table_len(&store, MESSAGES), 0);
    }

    /// A message written before `sent_ms` existed counts its due time as its age.
    #[tokio::test(flavor = "current_thread")]
    async fn messages_without_sent_ms_age_from_their_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path).unwrap();
        {
            let txn = writer::begin(&store.shared.db().unwrap()).unwrap();
            {
                let mut t = txn.open_table(MESSAGES).unwrap();
                let old = b"\x01\x21\x00\x00\x00{\"due_ms\":5,\"failures\":2,\"seq\":9}body";
                t.insert(("q", "old"), &old[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.depth("q").await.unwrap().oldest_sent_ms, Some(5));
        let leased = store.lease("q", 5, 10, 1_000).await.unwrap();
        assert_eq!(leased.deliveries[0].failures, 2);
        assert_eq!(leased.deliveries[0].body, b"body");
        store.send("q", vec![msg("new")]).await.unwrap();
        assert_eq!(store.depth("q").await.unwrap().oldest_sent_ms, Some(5));
    }

    /// The commit count on disk follows every commit, so after an I/O
    /// error in a commit the writer can tell whether it landed.
    #[tokio::test(flavor = "current_thread")]
    async fn every_commit_is_counted_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path).unwrap();
        let stored = |store: &RedbStore| {
            let txn = store.shared.db().unwrap().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta.get("commits").unwrap().map_or(0, |g| g.value())
        };
        assert_eq!(stored(&store), 0);
        for i in 0..5 {
            store.send("q", vec![msg(&format!("m{i}"))]).await.unwrap();
        }
        let bad = store.put_docs("missing", docs(0, "a", 1)).await;
        assert!(matches!(bad, Err(Error::NotFound(_))));
        assert_eq!(stored(&store), store.stats().commits);
        assert!(store.stats().commits >= 5);
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let before = stored(&store);
        store.send("q", vec![msg("again")]).await.unwrap();
        assert_eq!(stored(&store), before + 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn non_finite_limiter_rates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        let limiter = LimiterRecord {
            name: "l".to_string(),
            per_second: f64::INFINITY,
            burst: 1,
            updated_at_ms: T,
        };
        assert!(matches!(
            store.put_limiter(limiter).await,
            Err(Error::Corrupt(_))
        ));
        assert_eq!(store.limiters().await.unwrap(), Vec::new());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unencodable_records_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        let nan = InvocationRecord {
            billed_gb_s: f64::NAN,
            ..sample_invocation("nan", "f")
        };
        let result = store
            .put_invocations(vec![sample_invocation("ok", "f"), nan])
            .await;
        assert!(matches!(result, Err(Error::Corrupt(_))));
        // The call is refused as a whole.
        assert_eq!(store.invocation("ok").await.unwrap(), None);
        assert_eq!(store.invocation("nan").await.unwrap(), None);
    }

    /// The engine validates these; the store must not panic on them.
    #[tokio::test(flavor = "current_thread")]
    async fn degenerate_categories_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        let (none, _) = store.create_category("none", 0, 0, T).await.unwrap();
        assert!(none.slots.is_empty());
        assert_eq!(store.shard_stats("none").await.unwrap(), Vec::new());
        store.put_docs("none", Vec::new()).await.unwrap();
        assert!(matches!(
            store.put_docs("none", docs(0, "a", 1)).await,
            Err(Error::NotFound(_))
        ));
        let (one_slot, _) = store.create_category("one", 3, 0, T).await.unwrap();
        assert_eq!(one_slot.slots, [0, 0, 0]);
        assert_eq!(
            store.scan_shard("one", u32::MAX, None, 10).await.unwrap(),
            Vec::new()
        );
        assert_eq!(store.get_doc("one", u32::MAX, "").await.unwrap(), None);
        assert_eq!(
            store
                .delete_docs("one", vec![(u32::MAX, "a".into())])
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", LAYOUT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(RedbStore::open(&path), Err(Error::Corrupt(_))));
    }

    /// A layout-1 database with one record of the given table and JSON.
    fn layout_1_with(path: &std::path::Path, invocation_json: &str) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 1).unwrap();
        let mut value = vec![codec::FORMAT_V1];
        value.extend_from_slice(invocation_json.as_bytes());
        txn.open_table(INVOCATIONS)
            .unwrap()
            .insert("i1", value.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    fn stored_layout(path: &std::path::Path) -> u64 {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value()
    }

    const V1_INVOCATION: &str = concat!(
        "{\"id\":\"i1\",\"function\":\"hello\",\"version\":1,\"mode\":\"async\",",
        "\"status\":\"STATUS\",\"input\":\"{}\",\"output\":null,\"error\":null,",
        "\"attempts\":0,\"max_attempts\":3,\"created_at_ms\":7,\"started_at_ms\":null,",
        "\"finished_at_ms\":null,\"duration_ms\":null,\"billed_gb_s\":0.5,",
        "\"cold_start\":false,\"next_attempt_at_ms\":null}"
    );

    #[tokio::test]
    async fn layout_1_is_checked_and_stamped_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        layout_1_with(&path, &V1_INVOCATION.replace("STATUS", "queued"));
        let store = RedbStore::open(&path).unwrap();
        let record = store.invocation("i1").await.unwrap().unwrap();
        assert_eq!(record.status, shoal_types::InvocationStatus::Queued);
        assert_eq!(record.function, "hello");
        drop(store);
        assert_eq!(stored_layout(&path), LAYOUT_VERSION);
    }

    #[tokio::test]
    async fn layout_1_with_a_record_the_schema_does_not_know_is_refused_and_left_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        layout_1_with(&path, &V1_INVOCATION.replace("STATUS", "exploded"));
        match RedbStore::open(&path) {
            Err(Error::Corrupt(msg)) => assert!(
                msg.contains("migrating invocations from layout 1") && msg.contains("exploded"),
                "{msg}"
            ),
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("an unknown status must refuse the open"),
        }
        assert_eq!(
            stored_layout(&path),
            1,
            "a refused migration changes nothing"
        );
    }
}
