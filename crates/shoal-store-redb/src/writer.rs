//! The writer thread: group commit.
//!
//! One `std::thread` owns every write transaction. Callers send operations
//! through a channel in call order; the writer blocks for the first, takes
//! everything else already queued (up to `MAX_BATCH`), applies it all in one
//! transaction, commits once (`Durability::Immediate`, quick-repair: one
//! fsync for the whole batch), updates the in-memory queue index, then
//! answers each caller. An operation whose own data is bad (a corrupt stored
//! record, a missing category) fails alone and writes nothing; a storage
//! error fails the whole batch.
//!
//! An I/O error (a full disk, typically) fails the whole batch too, and
//! then redb refuses every later write (`PreviousIo`) until the file is
//! re-opened. So the writer re-opens it by itself: it drops the old
//! `Database` and opens the file again (redb recovers the last commit; with
//! quick-repair that is quick). Out of space, the failed batch never
//! reached the file (redb writes the header that makes a commit visible only
//! after its pages are written), and its effects never reached memory (they
//! are applied only after a commit), so memory and disk still agree. An I/O
//! error in the commit itself (a failed fsync) can leave the commit in the
//! file after all: every commit also counts itself in `meta["commits"]`, and
//! after the re-open the count says whether it landed; if it did, memory
//! takes its effects too. Its callers are told it failed either way. While the disk is full
//! (`Failing::full`, also what `Invocations::health` reports) batches fail at
//! once with `Error::Full`; a real commit is tried again at most once per
//! `RETRY_EVERY`, and only once the filesystem shows free space again (or
//! after `FORCE_RETRY`, for quotas `statvfs` does not show). The first batch
//! that commits ends it; so does free space seen while idle.
//!
//! A batch is also bounded by its size (`MAX_BATCH_BYTES`), so large
//! document writes make several commits of a few MiB rather than one huge
//! transaction. While deleted categories await their purge, every commit
//! also deletes a chunk of their documents (a bigger chunk when idle).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use shoal_store::{
    CategoryRecord, ChildFinished, ChildResult, DocWrite, Error, FunctionRecord, NewMessage,
    QueueSample, Result, TokenRecord,
};
use tokio::sync::oneshot;

use crate::blobs::{self, BlobCmd, BlobDone, BlobReply, BlobTables};
use crate::channels::{self, ChannelCmd, ChannelDone, ChannelSender, ChannelTables};
use crate::codec::{self, MessageHeader};
use crate::docs::{self, Scratch};
use crate::invocations::{Encoded, IndexTables};
use crate::jobs::{self, JobTables, NewJob};
use crate::kv::{self, KvDone, KvOp, KvSender, KvTables};
use crate::queue::TotalsRow;
use crate::queue_ops::{self, QueueOps};
use crate::{
    CATEGORIES, DEAD_LETTERS, DEDUP, DEDUP_EXPIRY, DEDUP_IDS, DOC_GARBAGE, DOC_STATS, DOCS,
    FUNCTION_REFS, FUNCTION_VERSIONS, FUNCTIONS, INVOCATIONS, LIMITERS, LOGS, MESSAGES, META,
    QUEUE_TOTALS, QUEUES, SAMPLES, Shared, TOKEN_SECRETS, TOKENS, USERS, pending_purges,
    unavailable,
};

/// The most operations committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;

/// No more operations are added to a batch once it carries this much data
/// (it always takes at least one operation, however large).
pub(crate) const MAX_BATCH_BYTES: usize = 8 << 20;

/// Documents of deleted categories removed per commit: alongside a batch of
/// writes, and in a commit of its own when no write is waiting.
const PURGE_BUSY: usize = 1_000;
const PURGE_IDLE: usize = 10_000;

/// While writes fail after an I/O error, a real commit is tried at most
/// this often; the batches in between fail at once.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// While the disk is full, a commit is tried only once the filesystem has
/// this much free, or a twentieth of its size if that is less...
const RESUME_FREE_BYTES: u64 = 16 << 20;
const RESUME_FREE_PART: u64 = 20;
/// ...or this long after the last failure (a quota `statvfs` cannot see).
const FORCE_RETRY: Duration = Duration::from_secs(30);

/// Writes are failing since an I/O error.
struct Failing {
    /// For lack of space: the store reports itself full.
    full: bool,
    /// When the last commit (or re-open) failed.
    at: Instant,
}

/// A failure of a whole batch: the error its operations get, and whether
/// it was an I/O error, after which the file must be re-opened.
pub(crate) type Fault = (Error, bool);

/// Classifies a redb error: out of space is `Error::Full`; any I/O error
/// means the database must be re-opened.
pub(crate) fn storage_fault(e: impl Into<redb::Error>) -> Fault {
    let e = e.into();
    match &e {
        redb::Error::Io(io) if is_full(io) => (Error::Full(e.to_string()), true),
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            (Error::Unavailable(e.to_string()), true)
        }
        _ => (Error::Unavailable(e.to_string()), false),
    }
}

/// A full disk's error, told in words an operator can act on.
fn explain(path: &Path, (e, io): Fault) -> Fault {
    match e {
        Error::Full(raw) => (Error::Full(format!("{} ({raw})", full_message(path))), io),
        other => (other, io),
    }
}

pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// What a write is told while the disk is full, and what the store's
/// health says.
pub(crate) fn full_message(path: &Path) -> String {
    format!(
        "the disk holding {} is full; free space on that filesystem and writes \
         resume by themselves, without a restart (every write acknowledged before is kept)",
        path.display()
    )
}

/// Whether the filesystem of `path` shows enough free space to try a
/// commit again. True when it cannot tell.
fn space_free(path: &Path) -> bool {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    match rustix::fs::statvfs(dir.unwrap_or(Path::new("."))) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let size = st.f_blocks.saturating_mul(st.f_frsize);
            free >= RESUME_FREE_BYTES.min(size / RESUME_FREE_PART)
        }
        Err(_) => true,
    }
}

pub(crate) enum Msg {
    Op(Op),
    /// Commit what is queued, then stop.
    Shutdown,
}

pub(crate) struct Op {
    pub command: Command,
    pub reply: Reply,
}

/// A write, already validated and (where possible) encoded by the caller.
pub(crate) enum Command {
    Deploy(Box<FunctionRecord>),
    RemoveFunction(String),
    PutToken {
        id: String,
        secret_sha256: String,
        value: Vec<u8>,
    },
    RevokeToken(String),
    PutInvocations(Vec<Encoded>),
    PutLogs {
        id: String,
        value: Vec<u8>,
    },
    /// Records to delete with their logs, each only if it is still stored
    /// exactly as given: (id, stored bytes).
    PurgeInvocations(Vec<(String, Vec<u8>)>),
    Send {
        queue: String,
        messages: Vec<NewMessage>,
    },
    Ack {
        queue: String,
        ids: Vec<String>,
    },
    Nack {
        queue: String,
        id: String,
        due_ms: u64,
    },
    Started {
        queue: String,
        ids: Vec<String>,
    },
    DeadLetter {
        queue: String,
        id: String,
        reason: String,
        now_ms: u64,
    },
    Redrive {
        queue: String,
        ids: Option<Vec<String>>,
        now_ms: u64,
    },
    PurgeDead {
        queue: String,
        ids: Option<Vec<String>>,
    },
    Purge(String),
    RecordSamples {
        samples: Vec<(String, QueueSample)>,
        keep_after_ms: u64,
    },
    /// A queue or limiter record: (name, encoded record).
    PutNamed(Named, String, Vec<u8>),
    RemoveNamed(Named, String),
    CreateCategory {
        name: String,
        shards: u32,
        slot_count: u32,
        now_ms: u64,
    },
    DeleteCategory(String),
    DeleteCategoryIfEmpty(String),
    PutDocs {
        category: String,
        docs: Vec<DocWrite>,
    },
    DeleteDocs {
        category: String,
        docs: Vec<(u32, String)>,
    },
    CreateJob(Box<NewJob>),
    FinishChild {
        job: String,
        result: Box<ChildResult>,
        now_ms: u64,
    },
    CancelJob {
        id: String,
        now_ms: u64,
    },
    /// A key-value write (see `kv`).
    Kv(KvOp),
    /// A blob write (see `blobs`).
    Blob(BlobCmd),
    /// A channel write (see `channels`).
    Channel(ChannelCmd),
}

impl Command {
    /// About how many bytes the operation writes, to bound a batch.
    fn weight(&self) -> usize {
        const ROW: usize = 64;
        match self {
            Command::PutInvocations(records) => records.iter().map(|r| ROW + r.value.len()).sum(),
            Command::PutLogs { value, .. } => ROW + value.len(),
            Command::Send { messages, .. } => messages.iter().map(|m| ROW + m.body.len()).sum(),
            Command::RecordSamples { samples, .. } => samples.len() * ROW,
            Command::PutDocs { docs, .. } => {
                docs.iter().map(|d| ROW + d.id.len() + d.body.len()).sum()
            }
            Command::DeleteDocs { docs, .. } => docs.len() * ROW,
            Command::CreateJob(job) => {
                let children: usize = job.children.iter().map(|r| ROW + r.value.len()).sum();
                let messages: usize = job.messages.iter().map(|m| ROW + m.body.len()).sum();
                children + messages
            }
            Command::Kv(op) => op.weight(),
            Command::Blob(cmd) => cmd.weight(),
            Command::Channel(cmd) => cmd.weight(),
            _ => ROW,
        }
    }
}

/// The catalog tables of named records written the same way.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Named {
    Queue,
    Limiter,
    FunctionRefs,
    User,
}

/// Where the answer goes.
pub(crate) enum Reply {
    Unit(oneshot::Sender<Result<()>>),
    Version(oneshot::Sender<Result<u64>>),
    Existed(oneshot::Sender<Result<bool>>),
    Count(oneshot::Sender<Result<u64>>),
    Category(oneshot::Sender<Result<(CategoryRecord, bool)>>),
    Finished(oneshot::Sender<Result<ChildFinished>>),
    /// Per message sent: `Some(id)` of the message it duplicates.
    Sent(oneshot::Sender<Result<Vec<Option<String>>>>),
    Kv(KvSender),
    Blob(BlobReply),
    Channel(ChannelSender),
}

pub(crate) enum Value {
    Unit,
    Version(u64),
    Existed(bool),
    Count(u64),
    /// The record, and whether it was created now.
    Category(CategoryRecord, bool),
    Finished(ChildFinished),
    Sent(Vec<Option<String>>),
    Kv(KvDone),
    Blob(BlobDone),
    Channel(ChannelDone),
}

impl Reply {
    fn send(self, outcome: Result<Value>) {
        // A caller that dropped its future does not want the answer.
        match (self, outcome) {
            (Reply::Unit(tx), Ok(Value::Unit)) => {
                let _ = tx.send(Ok(()));
            }
            (Reply::Version(tx), Ok(Value::Version(v))) => {
                let _ = tx.send(Ok(v));
            }
            (Reply::Existed(tx), Ok(Value::Existed(b))) => {
                let _ = tx.send(Ok(b));
            }
            (Reply::Count(tx), Ok(Value::Count(n))) => {
                let _ = tx.send(Ok(n));
            }
            (Reply::Category(tx), Ok(Value::Category(record, created))) => {
                let _ = tx.send(Ok((record, created)));
            }
            (Reply::Finished(tx), Ok(Value::Finished(f))) => {
                let _ = tx.send(Ok(f));
            }
            (Reply::Sent(tx), Ok(Value::Sent(d))) => {
                let _ = tx.send(Ok(d));
            }
            (Reply::Kv(tx), Ok(Value::Kv(d))) => {
                let _ = tx.send(Ok(d));
            }
            (Reply::Blob(r), Ok(Value::Blob(d))) => r.send(Ok(d)),
            (Reply::Channel(tx), Ok(Value::Channel(d))) => {
                let _ = tx.send(Ok(d));
            }
            (reply, Ok(_)) => reply.fail(Error::Unavailable("internal: mismatched reply".into())),
            (reply, Err(e)) => reply.fail(e),
        }
    }

    fn fail(self, e: Error) {
        match self {
            Reply::Unit(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Version(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Existed(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Count(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Category(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Finished(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Sent(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Kv(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Blob(r) => r.send(Err(e)),
            Reply::Channel(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// What the in-memory state (queue index, purge list) learns once the
/// batch is committed.
pub(crate) enum Effect {
    None,
    Sent(String, Vec<(String, MessageHeader)>),
    /// Messages deleted (acked, dead-lettered, purged).
    Removed(String, Vec<String>),
    Released {
        queue: String,
        id: String,
        due_ms: u64,
        failures: u32,
    },
    /// A deleted category's documents (by internal id) await the purge.
    Garbage(u64),
}

/// An applied operation, waiting for the commit.
struct Done {
    reply: Reply,
    outcome: Result<(Value, Effect)>,
}

/// An operation's result inside the transaction: the outer error is a
/// storage error (fails the batch), the inner one the operation's own.
pub(crate) type Applied = std::result::Result<Result<(Value, Effect)>, redb::Error>;

pub(crate) fn ok(value: Value, effect: Effect) -> Applied {
    Ok(Ok((value, effect)))
}

pub(crate) struct Tables<'txn> {
    pub meta: Table<'txn, &'static str, u64>,
    pub categories: Table<'txn, &'static str, &'static [u8]>,
    pub docs: Table<'txn, &'static [u8], &'static [u8]>,
    pub doc_stats: Table<'txn, (u64, u32), (u64, u64, u64)>,
    pub doc_garbage: Table<'txn, u64, &'static str>,
    functions: Table<'txn, (&'static str, u64), &'static [u8]>,
    function_versions: Table<'txn, &'static str, u64>,
    tokens: Table<'txn, &'static str, &'static [u8]>,
    token_secrets: Table<'txn, &'static str, &'static str>,
    invocations: Table<'txn, &'static str, &'static [u8]>,
    /// The invocation indexes, changed with every record write.
    invocation_index: IndexTables<'txn>,
    logs: Table<'txn, &'static str, &'static [u8]>,
    pub messages: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    /// Opened on first use, like `extra`.
    totals: Option<Table<'txn, &'static str, TotalsRow>>,
    extra: Option<QueueExtra<'txn>>,
    jobs: Option<JobTables<'txn>>,
    kv: Option<KvTables<'txn>>,
    blobs: Option<BlobTables<'txn>>,
    channels: Option<ChannelTables<'txn>>,
    txn: &'txn WriteTransaction,
}

/// Tables the hot path (send without deduplication, ack, nack) never
/// touches: a batch opens them only when one of its operations needs them,
/// so they add nothing to the commits of the async-invocation path.
pub(crate) struct QueueExtra<'txn> {
    pub dead: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub dedup: Table<'txn, (&'static str, &'static str), u64>,
    pub dedup_expiry: Table<'txn, (u64, &'static str, &'static str), ()>,
    pub dedup_ids: Table<'txn, (&'static str, &'static str), &'static str>,
    pub samples: Table<'txn, (&'static str, u64), &'static [u8]>,
    queues: Table<'txn, &'static str, &'static [u8]>,
    limiters: Table<'txn, &'static str, &'static [u8]>,
    function_refs: Table<'txn, &'static str, &'static [u8]>,
    users: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> QueueExtra<'txn> {
    fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(QueueExtra {
            dead: txn.open_table(DEAD_LETTERS)?,
            dedup: txn.open_table(DEDUP)?,
            dedup_expiry: txn.open_table(DEDUP_EXPIRY)?,
            dedup_ids: txn.open_table(DEDUP_IDS)?,
            samples: txn.open_table(SAMPLES)?,
            queues: txn.open_table(QUEUES)?,
            limiters: txn.open_table(LIMITERS)?,
            function_refs: txn.open_table(FUNCTION_REFS)?,
            users: txn.open_table(USERS)?,
        })
    }
}

impl<'txn> Tables<'txn> {
    /// The queue totals table, opened on first use.
    pub(crate) fn totals(
        &mut self,
    ) -> std::result::Result<&mut Table<'txn, &'static str, TotalsRow>, redb::TableError> {
        if self.totals.is_none() {
            self.totals = Some(self.txn.open_table(QUEUE_TOTALS)?);
        }
        Ok(self.totals.as_mut().expect("just opened"))
    }

    /// The job tables, opened on first use.
    pub(crate) fn jobs(&mut self) -> std::result::Result<&mut JobTables<'txn>, redb::TableError> {
        if self.jobs.is_none() {
            self.jobs = Some(JobTables::open(self.txn)?);
        }
        Ok(self.jobs.as_mut().expect("just opened"))
    }

    /// The key-value tables, opened on first use.
    pub(crate) fn kv(&mut self) -> std::result::Result<&mut KvTables<'txn>, redb::TableError> {
        if self.kv.is_none() {
            self.kv = Some(KvTables::open(self.txn)?);
        }
        Ok(self.kv.as_mut().expect("just opened"))
    }

    /// The blob tables, opened on first use.
    pub(crate) fn blobs(&mut self) -> std::result::Result<&mut BlobTables<'txn>, redb::TableError> {
        if self.blobs.is_none() {
            self.blobs = Some(BlobTables::open(self.txn)?);
        }
        Ok(self.blobs.as_mut().expect("just opened"))
    }

    /// The channel tables, opened on first use.
    pub(crate) fn channels(
        &mut self,
    ) -> std::result::Result<&mut ChannelTables<'txn>, redb::TableError> {
        if self.channels.is_none() {
            self.channels = Some(ChannelTables::open(self.txn)?);
        }
        Ok(self.channels.as_mut().expect("just opened"))
    }

    /// Inserts or replaces encoded invocation records, and moves their
    /// index entries in the same transaction.
    pub(crate) fn put_invocations(
        &mut self,
        records: &[Encoded],
    ) -> std::result::Result<(), redb::StorageError> {
        for r in records {
            self.invocations.insert(r.id.as_str(), r.value.as_slice())?;
            self.invocation_index.put(r)?;
        }
        Ok(())
    }

    /// The messages and the other queue tables, opened on first use.
    #[allow(clippy::type_complexity)]
    pub(crate) fn queue_extra(
        &mut self,
    ) -> std::result::Result<
        (
            &mut Table<'txn, (&'static str, &'static str), &'static [u8]>,
            &mut QueueExtra<'txn>,
        ),
        redb::TableError,
    > {
        if self.extra.is_none() {
            self.extra = Some(QueueExtra::open(self.txn)?);
        }
        Ok((
            &mut self.messages,
            self.extra.as_mut().expect("just opened"),
        ))
    }

    fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            categories: txn.open_table(CATEGORIES)?,
            docs: txn.open_table(DOCS)?,
            doc_stats: txn.open_table(DOC_STATS)?,
            doc_garbage: txn.open_table(DOC_GARBAGE)?,
            functions: txn.open_table(FUNCTIONS)?,
            function_versions: txn.open_table(FUNCTION_VERSIONS)?,
            tokens: txn.open_table(TOKENS)?,
            token_secrets: txn.open_table(TOKEN_SECRETS)?,
            invocations: txn.open_table(INVOCATIONS)?,
            invocation_index: IndexTables::open(txn)?,
            logs: txn.open_table(LOGS)?,
            messages: txn.open_table(MESSAGES)?,
            totals: None,
            extra: None,
            jobs: None,
            kv: None,
            blobs: None,
            channels: None,
            txn,
        })
    }
}

/// Begins a write transaction with the durability policy: every commit is
/// fsynced, with quick-repair (allocator state saved, 2-phase commit).
pub(crate) fn begin(db: &Database) -> Result<WriteTransaction> {
    begin_write(db).map_err(|(e, _)| e)
}

fn begin_write(db: &Database) -> std::result::Result<WriteTransaction, Fault> {
    let mut txn = db.begin_write().map_err(storage_fault)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| (unavailable(e), false))?;
    txn.set_quick_repair(true);
    Ok(txn)
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    /// Queue writes: the message sequence and the totals of the batch.
    queues: QueueOps,
    /// Deleted categories (internal ids) whose documents are not all purged.
    garbage: BTreeSet<u64>,
    scratch: Scratch,
    /// Set while writes fail after an I/O error.
    failing: Option<Failing>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        next_seq: u64,
        garbage: BTreeSet<u64>,
    ) -> Writer {
        shared
            .purge_backlog
            .store(garbage.len() as u64, Ordering::Relaxed);
        Writer {
            shared,
            rx,
            queues: QueueOps::new(next_seq),
            garbage,
            scratch: Scratch::default(),
            failing: None,
        }
    }

    /// Runs until `Shutdown` (or every sender is gone), committing what was
    /// queued before it. A purge left unfinished resumes on the next open.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<Op> = Vec::new();
        let mut stopping = false;
        loop {
            // With a purge pending, do not wait: purge while nothing is
            // queued. While writes fail, wake up to see if they may resume.
            let purging = !self.garbage.is_empty() && self.failing.is_none();
            if !stopping && !purging {
                let next = if self.failing.is_some() {
                    match self.rx.recv_timeout(RETRY_EVERY) {
                        Ok(msg) => Some(msg),
                        Err(RecvTimeoutError::Timeout) => {
                            self.retry_idle();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => None,
                    }
                } else {
                    self.rx.recv().ok()
                };
                match next {
                    Some(Msg::Op(op)) => batch.push(op),
                    Some(Msg::Shutdown) | None => stopping = true,
                }
            }
            let mut weight = batch.first().map_or(0, |op| op.command.weight());
            while batch.len() < MAX_BATCH && weight < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op)) => {
                        weight += op.command.weight();
                        batch.push(op);
                    }
                    Ok(Msg::Shutdown) => stopping = true,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                if stopping {
                    return;
                }
                if !purging {
                    continue;
                }
            }
            self.commit(std::mem::take(&mut batch));
        }
    }

    /// Whether to try a commit now while writes fail.
    fn may_try(&self, f: &Failing) -> bool {
        let waited = f.at.elapsed();
        waited >= RETRY_EVERY && (!f.full || waited >= FORCE_RETRY || space_free(&self.shared.path))
    }

    /// What a batch gets while writes fail and no commit is tried.
    fn failing_error(&self, f: &Failing) -> Error {
        if f.full {
            Error::Full(full_message(&self.shared.path))
        } else {
            Error::Unavailable(format!(
                "{}: writes are paused after an I/O error and retried within {} s",
                self.shared.path.display(),
                RETRY_EVERY.as_secs()
            ))
        }
    }

    /// Idle while writes fail: re-open the file if the last attempt could
    /// not, and end the failure once space is free (a full disk) or after
    /// the pause (another I/O error); the next batch then tells.
    fn retry_idle(&mut self) {
        let Some(f) = &self.failing else {
            return;
        };
        if f.at.elapsed() < RETRY_EVERY || (f.full && !space_free(&self.shared.path)) {
            return;
        }
        let closed = self
            .shared
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        if closed && !self.reopen() {
            if let Some(f) = &mut self.failing {
                f.at = Instant::now();
            }
            return;
        }
        self.resumed();
    }

    /// A batch failed with an I/O error: remember it (and say the store
    /// is full if that is why).
    fn note_failure(&mut self, e: &Error) {
        let full = matches!(e, Error::Full(_)) || self.failing.as_ref().is_some_and(|f| f.full);
        self.failing = Some(Failing {
            full,
            at: Instant::now(),
        });
        if full && !self.shared.full.swap(true, Ordering::AcqRel) {
            tracing::error!(
                path = %self.shared.path.display(),
                "redb: the disk is full; writes fail with `storage full` until space is freed"
            );
        }
    }

    /// Writes work again.
    fn resumed(&mut self) {
        if self.failing.take().is_some() {
            self.shared.full.store(false, Ordering::Release);
            tracing::info!(path = %self.shared.path.display(), "redb: writes resumed");
        }
    }

    /// Drops the database (which refuses every write after an I/O error)
    /// and opens the file again; redb recovers its last commit. Reloads the
    /// purge list (a paused purge resumes). False if the open failed: the
    /// store then has no database until a later attempt succeeds.
    fn reopen(&mut self) -> bool {
        let mut slot = self.shared.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            // After an I/O error the close reports that error; the file is
            // left for the open below to recover.
            if let Err(e) = old.close() {
                tracing::debug!(error = %e, "redb: closing after an I/O error");
            }
        }
        let opened = Database::builder()
            .set_cache_size(self.shared.cache_bytes)
            .open(&self.shared.path);
        match opened {
            Ok(db) => {
                match pending_purges(&db) {
                    Ok(garbage) => self.garbage = garbage,
                    Err(e) => tracing::error!(error = %e, "redb: cannot read the purge list"),
                }
                self.shared
                    .purge_backlog
                    .store(self.garbage.len() as u64, Ordering::Relaxed);
                *slot = Some(db);
                tracing::warn!(path = %self.shared.path.display(), "redb: re-opened after an I/O error");
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    path = %self.shared.path.display(),
                    "redb: cannot re-open after an I/O error; retrying"
                );
                false
            }
        }
    }

    /// Applies and commits a batch, plus a purge step while deleted
    /// categories await one (the whole commit when `batch` is empty).
    fn commit(&mut self, batch: Vec<Op>) {
        if let Some(f) = &self.failing
            && !self.may_try(f)
        {
            let e = self.failing_error(f);
            return fail_all(batch.into_iter().map(|op| op.reply), &e);
        }
        let idle = batch.is_empty();
        let begun = self
            .shared
            .db()
            .map_err(|e| (e, true))
            .and_then(|db| begin_write(&db))
            .map_err(|f| explain(&self.shared.path, f));
        let txn = match begun {
            Ok(txn) => txn,
            Err((e, io)) => {
                tracing::error!(error = %e, "redb: cannot begin a write transaction");
                if idle {
                    self.pause_purge();
                }
                if io {
                    self.note_failure(&e);
                }
                fail_all(batch.into_iter().map(|op| op.reply), &e);
                if io {
                    self.reopen();
                }
                return;
            }
        };
        let mut done = Vec::with_capacity(batch.len());
        let mut ops = batch.into_iter();
        let mut purged = None;
        let mut marker = None;
        let fatal: Option<Fault> = match Tables::open(&txn) {
            Err(e) => Some(storage_fault(e)),
            Ok(mut tables) => {
                let fatal = loop {
                    let Some(op) = ops.next() else {
                        break None;
                    };
                    match self.apply(&mut tables, op.command) {
                        Ok(outcome) => done.push(Done {
                            reply: op.reply,
                            outcome,
                        }),
                        Err(e) => {
                            let fault = storage_fault(e);
                            let own = (clone_error(&fault.0), fault.1);
                            op.reply.fail(explain(&self.shared.path, own).0);
                            break Some(fault);
                        }
                    }
                };
                // The batch's queue totals, once per queue, in the same transaction.
                let fatal = match fatal {
                    None => self
                        .queues
                        .write_totals(&mut tables)
                        .err()
                        .map(storage_fault),
                    some => some,
                };
                let fatal = if fatal.is_none() && !self.garbage.is_empty() {
                    let budget = if idle { PURGE_IDLE } else { PURGE_BUSY };
                    match docs::purge(&mut tables, self.garbage.iter().copied(), budget) {
                        Ok(p) => {
                            purged = Some(p);
                            None
                        }
                        Err(e) => Some(storage_fault(e)),
                    }
                } else {
                    fatal
                };
                match fatal {
                    None => match mark_commit(&mut tables) {
                        Ok(n) => {
                            marker = Some(n);
                            None
                        }
                        Err(e) => Some(storage_fault(e)),
                    },
                    some => some,
                }
            }
        };
        let committed = match fatal {
            Some(e) => {
                let _ = txn.abort();
                Err(e)
            }
            None => txn.commit().map_err(storage_fault),
        }
        .map_err(|f| explain(&self.shared.path, f));
        match committed {
            Ok(()) => {
                self.resumed();
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                let writes = done.len() as u64;
                self.shared.writes.fetch_add(writes, Ordering::Relaxed);
                if let Some(p) = purged {
                    self.shared.purged_docs.fetch_add(p.docs, Ordering::Relaxed);
                    for id in p.finished {
                        self.garbage.remove(&id);
                    }
                }
                // The effects on memory (the queue index) first, then the
                // totals, then the answers: whoever sees a total counting a
                // write (an ack) sees the index without its message.
                let outcomes: Vec<_> = done
                    .into_iter()
                    .map(|d| {
                        let outcome = d.outcome.map(|(value, effect)| {
                            self.apply_effect(effect);
                            value
                        });
                        (d.reply, outcome)
                    })
                    .collect();
                self.queues.committed(&self.shared.index);
                for (reply, outcome) in outcomes {
                    reply.send(outcome);
                }
            }
            Err((e, io)) => {
                tracing::error!(error = %e, "redb: write batch failed");
                if idle {
                    self.pause_purge();
                }
                if io {
                    self.note_failure(&e);
                }
                let mut effects = Vec::with_capacity(done.len());
                for d in done {
                    match d.outcome {
                        Ok((_, effect)) => {
                            effects.push(effect);
                            d.reply.fail(clone_error(&e));
                        }
                        Err(own) => d.reply.fail(own),
                    }
                }
                fail_all(ops.map(|op| op.reply), &e);
                // Out of space, the commit never reaches the file. An I/O
                // error in the commit itself (a failed fsync) may leave it
                // there after all: the commit count on disk tells, and
                // memory follows the file. The callers were told it failed
                // either way: its durability is not known.
                let reopened = io && self.reopen();
                let landed = reopened && marker.is_some_and(|n| self.stored_commits() == Some(n));
                if landed {
                    tracing::warn!("redb: a commit that reported an I/O error reached the file");
                    for effect in effects {
                        self.apply_effect(effect);
                    }
                    self.queues.committed(&self.shared.index);
                } else {
                    // Nothing of the batch reached memory: its effects and
                    // totals are dropped with it.
                    self.queues.aborted();
                }
            }
        }
        self.shared
            .purge_backlog
            .store(self.garbage.len() as u64, Ordering::Relaxed);
    }

    /// The commit count on disk (`meta["commits"]`), if it can be read.
    fn stored_commits(&self) -> Option<u64> {
        let txn = self.shared.db().ok()?.begin_read().ok()?;
        let meta = txn.open_table(META).ok()?;
        Some(meta.get(COMMITS).ok()?.map_or(0, |g| g.value()))
    }

    /// A purge alone failed: stop purging rather than retry in a tight
    /// loop. The garbage stays filed, so the purge resumes on the next open.
    fn pause_purge(&mut self) {
        tracing::error!("redb: document purge paused until the store is reopened");
        self.garbage.clear();
        self.shared.purge_backlog.store(0, Ordering::Relaxed);
    }

    fn apply_effect(&mut self, effect: Effect) {
        let index = &self.shared.index;
        match effect {
            Effect::None => {}
            Effect::Sent(queue, messages) => {
                for (id, header) in messages {
                    index.insert(&queue, &id, header);
                }
            }
            Effect::Removed(queue, ids) => index.remove(&queue, &ids),
            Effect::Released {
                queue,
                id,
                due_ms,
                failures,
            } => index.release(&queue, &id, due_ms, failures),
            Effect::Garbage(id) => {
                self.garbage.insert(id);
            }
        }
    }

    fn apply(&mut self, t: &mut Tables<'_>, command: Command) -> Applied {
        match command {
            Command::Deploy(record) => deploy(t, *record),
            Command::RemoveFunction(name) => {
                let versions = t
                    .functions
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
                    .map(|entry| entry.map(|(k, _)| k.value().1))
                    .collect::<std::result::Result<Vec<u64>, _>>()?;
                for v in &versions {
                    t.functions.remove((name.as_str(), *v))?;
                }
                let (_, x) = t.queue_extra()?;
                x.function_refs.remove(name.as_str())?;
                ok(Value::Existed(!versions.is_empty()), Effect::None)
            }
            Command::PutToken {
                id,
                secret_sha256,
                value,
            } => {
                if let Some(old) = stored_token_secret(t, &id)?
                    && old != secret_sha256
                {
                    remove_secret_if_owned(t, &old, &id)?;
                }
                t.tokens.insert(id.as_str(), value.as_slice())?;
                t.token_secrets
                    .insert(secret_sha256.as_str(), id.as_str())?;
                ok(Value::Unit, Effect::None)
            }
            Command::RevokeToken(id) => {
                let old = stored_token_secret(t, &id)?;
                let existed = t.tokens.remove(id.as_str())?.is_some();
                if let Some(old) = old {
                    remove_secret_if_owned(t, &old, &id)?;
                }
                ok(Value::Existed(existed), Effect::None)
            }
            Command::PutInvocations(records) => {
                t.put_invocations(&records)?;
                ok(Value::Unit, Effect::None)
            }
            Command::PutLogs { id, value } => {
                t.logs.insert(id.as_str(), value.as_slice())?;
                ok(Value::Unit, Effect::None)
            }
            Command::PurgeInvocations(seen) => {
                let mut deleted = 0;
                for (id, value) in &seen {
                    let unchanged = t
                        .invocations
                        .get(id.as_str())?
                        .is_some_and(|v| v.value() == value.as_slice());
                    if unchanged {
                        t.invocations.remove(id.as_str())?;
                        t.invocation_index.unindex(id)?;
                        t.logs.remove(id.as_str())?;
                        deleted += 1;
                    }
                }
                ok(Value::Count(deleted), Effect::None)
            }
            Command::Send { queue, messages } => {
                self.queues.send(t, &self.shared.index, queue, messages)
            }
            Command::Ack { queue, ids } => self.queues.ack(t, &self.shared.index, queue, ids),
            Command::Nack { queue, id, due_ms } => {
                self.queues.nack(t, &self.shared.index, queue, id, due_ms)
            }
            Command::Started { queue, ids } => self.queues.started(t, queue, ids),
            Command::DeadLetter {
                queue,
                id,
                reason,
                now_ms,
            } => self
                .queues
                .dead_letter(t, &self.shared.index, queue, id, reason, now_ms),
            Command::Redrive { queue, ids, now_ms } => {
                self.queues
                    .redrive(t, &self.shared.index, queue, ids, now_ms)
            }
            Command::PurgeDead { queue, ids } => {
                self.queues.purge_dead(t, &self.shared.index, &queue, ids)
            }
            Command::Purge(queue) => self.queues.purge(t, &self.shared.index, queue),
            Command::RecordSamples {
                samples,
                keep_after_ms,
            } => queue_ops::record_samples(t, &samples, keep_after_ms),
            Command::PutNamed(which, name, value) => {
                let (_, x) = t.queue_extra()?;
                let table = match which {
                    Named::Queue => &mut x.queues,
                    Named::Limiter => &mut x.limiters,
                    Named::FunctionRefs => &mut x.function_refs,
                    Named::User => &mut x.users,
                };
                table.insert(name.as_str(), value.as_slice())?;
                ok(Value::Unit, Effect::None)
            }
            Command::RemoveNamed(which, name) => {
                let (_, x) = t.queue_extra()?;
                let table = match which {
                    Named::Queue => &mut x.queues,
                    Named::Limiter => &mut x.limiters,
                    Named::FunctionRefs => &mut x.function_refs,
                    Named::User => &mut x.users,
                };
                let existed = table.remove(name.as_str())?.is_some();
                ok(Value::Existed(existed), Effect::None)
            }
            Command::CreateCategory {
                name,
                shards,
                slot_count,
                now_ms,
            } => docs::create_category(t, &name, shards, slot_count, now_ms),
            Command::DeleteCategory(name) => docs::delete_category(t, &name),
            Command::DeleteCategoryIfEmpty(name) => docs::delete_category_if_empty(t, &name),
            Command::PutDocs { category, docs } => {
                docs::put_docs(t, &mut self.scratch, &category, &docs)
            }
            Command::DeleteDocs { category, docs } => {
                docs::delete_docs(t, &mut self.scratch, &category, &docs)
            }
            Command::CreateJob(job) => jobs::create(&mut self.queues, t, &self.shared.index, *job),
            Command::FinishChild {
                job,
                result,
                now_ms,
            } => jobs::finish_child(
                &mut self.queues,
                t,
                &self.shared.index,
                job,
                *result,
                now_ms,
            ),
            Command::CancelJob { id, now_ms } => jobs::cancel(t, id, now_ms),
            Command::Kv(op) => kv::apply(t, op),
            Command::Blob(cmd) => blobs::apply(t, cmd),
            Command::Channel(cmd) => channels::apply(t, cmd),
        }
    }
}

/// The key in `meta` counting commits.
const COMMITS: &str = "commits";

/// Counts the commit in `meta` (in its own transaction): after an I/O
/// error in the commit itself, the count on disk tells whether it landed.
fn mark_commit(t: &mut Tables<'_>) -> std::result::Result<u64, redb::StorageError> {
    let next = t.meta.get(COMMITS)?.map_or(0, |g| g.value()) + 1;
    t.meta.insert(COMMITS, next)?;
    Ok(next)
}

/// Stores the next version of a function: one more than both the per-name
/// counter (which survives removal) and any stored version.
fn deploy(t: &mut Tables<'_>, mut record: FunctionRecord) -> Applied {
    let name = record.name.clone();
    let counted = t
        .function_versions
        .get(name.as_str())?
        .map(|g| g.value())
        .unwrap_or(0);
    let stored = match t
        .functions
        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
        .next_back()
    {
        Some(entry) => entry?.0.value().1,
        None => 0,
    };
    let Some(version) = counted.max(stored).checked_add(1) else {
        return Ok(Err(Error::Corrupt(format!(
            "function {name}: versions exhausted"
        ))));
    };
    record.version = version;
    let value = match codec::encode_record(&format_args!("function {name}"), &record) {
        Ok(value) => value,
        Err(e) => return Ok(Err(e)),
    };
    t.functions
        .insert((name.as_str(), version), value.as_slice())?;
    t.function_versions.insert(name.as_str(), version)?;
    ok(Value::Version(version), Effect::None)
}

/// The secret hash of a stored token, if it exists and decodes.
fn stored_token_secret(
    t: &Tables<'_>,
    id: &str,
) -> std::result::Result<Option<String>, redb::StorageError> {
    let Some(stored) = t.tokens.get(id)? else {
        return Ok(None);
    };
    let what = format_args!("token {id}");
    // A corrupt old record cannot name its hash; lookups verify the hash
    // against the token anyway, so a stale index entry is harmless.
    Ok(codec::decode_record::<TokenRecord>(&what, stored.value())
        .ok()
        .map(|t| t.secret_sha256))
}

fn remove_secret_if_owned(
    t: &mut Tables<'_>,
    secret_sha256: &str,
    id: &str,
) -> std::result::Result<(), redb::StorageError> {
    let owned = t
        .token_secrets
        .get(secret_sha256)?
        .is_some_and(|owner| owner.value() == id);
    if owned {
        t.token_secrets.remove(secret_sha256)?;
    }
    Ok(())
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(s) => Error::Unavailable(s.clone()),
        Error::Full(s) => Error::Full(s.clone()),
        Error::Corrupt(s) => Error::Corrupt(s.clone()),
        Error::NotFound(s) => Error::NotFound(s.clone()),
    }
}

fn fail_all(replies: impl Iterator<Item = Reply>, e: &Error) {
    for reply in replies {
        reply.fail(clone_error(e));
    }
}
