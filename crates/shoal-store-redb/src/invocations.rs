//! The invocation indexes: newest-first lists by function, status and time.
//!
//! Every record has one entry in each of four index tables, keyed so that a
//! filtered page is one reverse range scan: by time, by (function, time),
//! by (status, time) and by (function, status, time); `time` is
//! `created_at_ms`, and the id ends every key. Each entry's value is the
//! mode, so a mode filter needs no record read. `invocation_keys` remembers
//! what a record was indexed under, so a write that changes its status
//! moves its two status entries inside the same transaction, and a purge
//! removes all four.

use std::ops::Bound;

use redb::{Database, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use shoal_store::usage::{ALL_FUNCTIONS, Grain, Rollup, RollupQuery, RollupRow, Usage, UsageDelta};
use shoal_store::{
    Error, InvocationCursor, InvocationFilter, InvocationPage, InvocationRecord, Pending, Result,
};
use shoal_types::{InvocationMode, InvocationStatus};

use crate::codec::decode_record;
use crate::{INVOCATIONS, RedbStore, unavailable};

/// (created_at_ms, id) → mode.
pub(crate) const BY_TIME: TableDefinition<(u64, &str), u8> =
    TableDefinition::new("invocations_by_time");
/// (function, created_at_ms, id) → mode.
pub(crate) const BY_FUNCTION: TableDefinition<(&str, u64, &str), u8> =
    TableDefinition::new("invocations_by_function");
/// (status, created_at_ms, id) → mode.
pub(crate) const BY_STATUS: TableDefinition<(u8, u64, &str), u8> =
    TableDefinition::new("invocations_by_status");
/// (function, status, created_at_ms, id) → mode.
pub(crate) const BY_FUNCTION_STATUS: TableDefinition<(&str, u8, u64, &str), u8> =
    TableDefinition::new("invocations_by_function_status");
/// id → (function, created_at_ms, status, mode): what the record is indexed under.
pub(crate) const KEYS: TableDefinition<&str, (&str, u64, u8, u8)> =
    TableDefinition::new("invocation_keys");

/// (grain, bucket start, function, token) → usage rollup
/// ([`Rollup::to_bytes`]), changed in the transaction that makes a record
/// final (see `shoal_store::usage`). Created on first write: no layout change.
pub(crate) const USAGE: TableDefinition<(u8, u64, &str, &str), &[u8]> =
    TableDefinition::new("usage_rollups");

/// The most index entries one page reads (see `list`).
pub(crate) const MAX_SCAN: usize = 10_000;

/// What a record is indexed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexKey {
    pub function: String,
    pub created_at_ms: u64,
    pub status: u8,
    pub mode: u8,
}

impl IndexKey {
    pub(crate) fn of(record: &InvocationRecord) -> IndexKey {
        IndexKey {
            function: record.function.to_string(),
            created_at_ms: record.created_at_ms,
            status: status_code(record.status),
            mode: mode_code(record.mode),
        }
    }
}

/// An invocation record ready for the writer: id, encoded value, index
/// key, and what it adds to the usage rollups if it becomes final here.
pub(crate) struct Encoded {
    pub id: String,
    pub value: Vec<u8>,
    pub key: IndexKey,
    pub usage: Option<UsageDelta>,
}

impl Encoded {
    pub(crate) fn of(record: &InvocationRecord, value: Vec<u8>) -> Encoded {
        Encoded {
            id: record.id.clone(),
            value,
            key: IndexKey::of(record),
            usage: shoal_store::usage::delta(record),
        }
    }
}

/// The index tables inside a write transaction.
pub(crate) struct IndexTables<'txn> {
    by_time: Table<'txn, (u64, &'static str), u8>,
    by_function: Table<'txn, (&'static str, u64, &'static str), u8>,
    by_status: Table<'txn, (u8, u64, &'static str), u8>,
    by_function_status: Table<'txn, (&'static str, u8, u64, &'static str), u8>,
    keys: Table<'txn, &'static str, (&'static str, u64, u8, u8)>,
    usage: Table<'txn, (u8, u64, &'static str, &'static str), &'static [u8]>,
}

impl<'txn> IndexTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(IndexTables {
            by_time: txn.open_table(BY_TIME)?,
            by_function: txn.open_table(BY_FUNCTION)?,
            by_status: txn.open_table(BY_STATUS)?,
            by_function_status: txn.open_table(BY_FUNCTION_STATUS)?,
            keys: txn.open_table(KEYS)?,
            usage: txn.open_table(USAGE)?,
        })
    }

    /// Indexes a record being written and, when it becomes final here (the
    /// stored one was absent or not final), adds its usage to the rollups.
    pub(crate) fn put(&mut self, e: &Encoded) -> std::result::Result<(), redb::StorageError> {
        let old = self.index(&e.id, &e.key)?;
        let Some(delta) = &e.usage else {
            return Ok(());
        };
        if old.is_some_and(is_final_code) {
            return Ok(());
        }
        self.add_usage(delta)
    }

    /// Adds a final record's usage to its rollup rows.
    pub(crate) fn add_usage(
        &mut self,
        delta: &UsageDelta,
    ) -> std::result::Result<(), redb::StorageError> {
        let add = delta.rollup();
        for (grain, start, function, token) in delta.rows() {
            let key = (grain_code(grain), start, function, token);
            let mut row = match self.usage.get(key)? {
                Some(v) => Rollup::from_bytes(v.value()),
                None => Rollup::default(),
            };
            row.add(&add);
            self.usage.insert(key, row.to_bytes().as_slice())?;
        }
        Ok(())
    }

    /// Indexes `id` under `key`, moving whatever entries it had before.
    /// A status change (the usual update) touches the two status tables
    /// and the key row only. Answers the status code it had before.
    pub(crate) fn index(
        &mut self,
        id: &str,
        key: &IndexKey,
    ) -> std::result::Result<Option<u8>, redb::StorageError> {
        let old = self.stored_key(id)?;
        let was = old.as_ref().map(|o| o.status);
        if old.as_ref() == Some(key) {
            return Ok(was);
        }
        let (f, t, s, m) = (
            key.function.as_str(),
            key.created_at_ms,
            key.status,
            key.mode,
        );
        match &old {
            Some(o) if o.function == key.function && o.created_at_ms == t && o.mode == m => {
                self.by_status.remove((o.status, t, id))?;
                self.by_function_status.remove((f, o.status, t, id))?;
            }
            Some(o) => {
                self.remove_entries(id, o)?;
                self.by_time.insert((t, id), m)?;
                self.by_function.insert((f, t, id), m)?;
            }
            None => {
                self.by_time.insert((t, id), m)?;
                self.by_function.insert((f, t, id), m)?;
            }
        }
        self.by_status.insert((s, t, id), m)?;
        self.by_function_status.insert((f, s, t, id), m)?;
        self.keys.insert(id, (f, t, s, m))?;
        Ok(was)
    }

    /// Removes every index entry of `id` (a purged record).
    pub(crate) fn unindex(&mut self, id: &str) -> std::result::Result<(), redb::StorageError> {
        if let Some(old) = self.stored_key(id)? {
            self.remove_entries(id, &old)?;
            self.keys.remove(id)?;
        }
        Ok(())
    }

    fn stored_key(&self, id: &str) -> std::result::Result<Option<IndexKey>, redb::StorageError> {
        Ok(self.keys.get(id)?.map(|g| {
            let (function, created_at_ms, status, mode) = g.value();
            IndexKey {
                function: function.to_string(),
                created_at_ms,
                status,
                mode,
            }
        }))
    }

    fn remove_entries(
        &mut self,
        id: &str,
        o: &IndexKey,
    ) -> std::result::Result<(), redb::StorageError> {
        let (f, t) = (o.function.as_str(), o.created_at_ms);
        self.by_time.remove((t, id))?;
        self.by_function.remove((f, t, id))?;
        self.by_status.remove((o.status, t, id))?;
        self.by_function_status.remove((f, o.status, t, id))?;
        Ok(())
    }
}

/// Creates the index tables (a fresh database, or before a migration).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    IndexTables::open(txn).map_err(unavailable)?;
    Ok(())
}

/// Layout 2 → 3: indexes every stored record, `chunk` records per commit
/// (one transaction over millions of records would hold all their pages in
/// memory). Indexing is idempotent, so an open interrupted midway starts
/// over and ends the same; the caller stamps the layout after the last
/// chunk. A record that does not decode fails the open, loudly.
pub(crate) fn build(db: &Database, chunk: usize) -> Result<u64> {
    let (mut after, mut total) = (None::<String>, 0u64);
    loop {
        let txn = crate::writer::begin(db)?;
        let last = {
            let records = txn.open_table(INVOCATIONS).map_err(unavailable)?;
            let mut tables = IndexTables::open(&txn).map_err(unavailable)?;
            let range = match &after {
                Some(a) => records.range::<&str>((Bound::Excluded(a.as_str()), Bound::Unbounded)),
                None => records.range::<&str>(..),
            }
            .map_err(unavailable)?;
            let (mut n, mut last) = (0, None);
            for row in range {
                let (id, value) = row.map_err(unavailable)?;
                let id = id.value();
                let what = format!("indexing invocation {id} (migrating to layout 3)");
                let record: InvocationRecord = decode_record(&what, value.value())?;
                tables
                    .index(id, &IndexKey::of(&record))
                    .map_err(unavailable)?;
                n += 1;
                if n == chunk {
                    last = Some(id.to_string());
                    break;
                }
            }
            total += n as u64;
            last
        };
        txn.commit().map_err(unavailable)?;
        match last {
            Some(id) => after = Some(id),
            None => return Ok(total),
        }
    }
}

/// Where the usage backfill stands: `"after"` → the last record id added.
const USAGE_BACKFILL: TableDefinition<&str, &str> = TableDefinition::new("usage_backfill");
/// `meta` key set once every record stored before the rollups existed is
/// in them (a new database sets it at creation).
pub(crate) const USAGE_BUILT: &str = "usage_built";

/// Adds the final records stored before the usage rollups existed (a
/// database of an older build) to the rollups, `chunk` records per commit,
/// each commit also recording how far it got, so an open interrupted
/// midway goes on where it stopped and counts nothing twice. Does nothing
/// once `meta[USAGE_BUILT]` is set. Returns the final records added.
pub(crate) fn build_usage(db: &Database, chunk: usize) -> Result<u64> {
    let mut total = 0;
    loop {
        let txn = crate::writer::begin(db)?;
        let done = {
            let mut meta = txn.open_table(crate::META).map_err(unavailable)?;
            if meta.get(USAGE_BUILT).map_err(unavailable)?.is_some() {
                return Ok(total);
            }
            let mut progress = txn.open_table(USAGE_BACKFILL).map_err(unavailable)?;
            let after = progress
                .get("after")
                .map_err(unavailable)?
                .map(|g| g.value().to_string());
            let records = txn.open_table(INVOCATIONS).map_err(unavailable)?;
            let mut tables = IndexTables::open(&txn).map_err(unavailable)?;
            let range = match &after {
                Some(a) => records.range::<&str>((Bound::Excluded(a.as_str()), Bound::Unbounded)),
                None => records.range::<&str>(..),
            }
            .map_err(unavailable)?;
            let (mut n, mut last) = (0, None::<String>);
            for row in range {
                let (id, value) = row.map_err(unavailable)?;
                let id = id.value();
                let what = format!("adding invocation {id} to the usage rollups");
                let record: InvocationRecord = decode_record(&what, value.value())?;
                if let Some(delta) = shoal_store::usage::delta(&record) {
                    tables.add_usage(&delta).map_err(unavailable)?;
                    total += 1;
                }
                n += 1;
                last = Some(id.to_string());
                if n == chunk {
                    break;
                }
            }
            if let Some(last) = &last {
                progress
                    .insert("after", last.as_str())
                    .map_err(unavailable)?;
            }
            let done = n < chunk;
            if done {
                meta.insert(USAGE_BUILT, 1).map_err(unavailable)?;
            }
            done
        };
        txn.commit().map_err(unavailable)?;
        if done {
            if total > 0 {
                tracing::info!(
                    records = total,
                    "Usage rollups built from the stored records."
                );
            }
            return Ok(total);
        }
    }
}

/// One page of `list_invocations`, from the index the filter chooses.
pub(crate) fn list(
    txn: &ReadTransaction,
    filter: &InvocationFilter,
    after: Option<&InvocationCursor>,
    limit: usize,
) -> Result<InvocationPage> {
    if limit == 0 {
        return Ok(InvocationPage::default());
    }
    let since = filter.since_ms.unwrap_or(0);
    let until = filter.until_ms.unwrap_or(u64::MAX);
    if since >= until {
        return Ok(InvocationPage::default());
    }
    // The exclusive upper end: the cursor or `until`, whichever is lower.
    let (hi_t, hi_id): (u64, &str) = match after {
        Some(c) if (c.created_at_ms, c.id.as_str()) < (until, "") => {
            (c.created_at_ms, c.id.as_str())
        }
        _ => (until, ""),
    };
    if (hi_t, hi_id) <= (since, "") {
        return Ok(InvocationPage::default());
    }
    let mode = filter.mode.map(mode_code);
    let want = limit + 1;
    let mut ids: Vec<String> = Vec::with_capacity(want.min(1024));
    // A mode filter skips entries: a rare mode would read the whole index
    // in one call, on the caller's thread. Past `MAX_SCAN` entries the page
    // ends short, with a cursor where the scan stopped.
    let (mut scanned, mut stopped) = (0, None::<InvocationCursor>);
    let mut take = |t: u64, id: &str, m: u8| {
        if mode.is_none_or(|want| want == m) {
            ids.push(id.to_string());
        }
        scanned += 1;
        if ids.len() < want && scanned >= MAX_SCAN {
            stopped = Some(InvocationCursor {
                created_at_ms: t,
                id: id.to_string(),
            });
            return false;
        }
        ids.len() < want
    };
    match (&filter.function, filter.status.map(status_code)) {
        (Some(f), Some(s)) => {
            let t = txn.open_table(BY_FUNCTION_STATUS).map_err(unavailable)?;
            let f = f.as_str();
            let range = (
                Bound::Included((f, s, since, "")),
                Bound::Excluded((f, s, hi_t, hi_id)),
            );
            for e in t.range(range).map_err(unavailable)?.rev() {
                let (k, v) = e.map_err(unavailable)?;
                if !take(k.value().2, k.value().3, v.value()) {
                    break;
                }
            }
        }
        (Some(f), None) => {
            let t = txn.open_table(BY_FUNCTION).map_err(unavailable)?;
            let f = f.as_str();
            let range = (
                Bound::Included((f, since, "")),
                Bound::Excluded((f, hi_t, hi_id)),
            );
            for e in t.range(range).map_err(unavailable)?.rev() {
                let (k, v) = e.map_err(unavailable)?;
                if !take(k.value().1, k.value().2, v.value()) {
                    break;
                }
            }
        }
        (None, Some(s)) => {
            let t = txn.open_table(BY_STATUS).map_err(unavailable)?;
            let range = (
                Bound::Included((s, since, "")),
                Bound::Excluded((s, hi_t, hi_id)),
            );
            for e in t.range(range).map_err(unavailable)?.rev() {
                let (k, v) = e.map_err(unavailable)?;
                if !take(k.value().1, k.value().2, v.value()) {
                    break;
                }
            }
        }
        (None, None) => {
            let t = txn.open_table(BY_TIME).map_err(unavailable)?;
            let range = (Bound::Included((since, "")), Bound::Excluded((hi_t, hi_id)));
            for e in t.range(range).map_err(unavailable)?.rev() {
                let (k, v) = e.map_err(unavailable)?;
                if !take(k.value().0, k.value().1, v.value()) {
                    break;
                }
            }
        }
    }
    let more = ids.len() > limit;
    ids.truncate(limit);
    let table = txn.open_table(INVOCATIONS).map_err(unavailable)?;
    let mut records = Vec::with_capacity(ids.len());
    for id in &ids {
        let Some(value) = table.get(id.as_str()).map_err(unavailable)? else {
            return Err(Error::Corrupt(format!(
                "invocation {id} is indexed but not stored"
            )));
        };
        let record: InvocationRecord =
            decode_record(&format_args!("invocation {id}"), value.value())?;
        records.push(record);
    }
    let next = match (more, records.last()) {
        (true, Some(last)) => Some(InvocationCursor::after(last)),
        _ => stopped,
    };
    Ok(InvocationPage { records, next })
}

/// The rollup rows of `q` (an absent table: none yet). Rows are keyed
/// (grain, start, function, token): one function's rows (or the rows of
/// every function together) are read bucket by bucket, each one seek and
/// a few rows, so a range costs its buckets, not every function's rows.
pub(crate) fn rollups(txn: &ReadTransaction, q: &RollupQuery) -> Result<Vec<RollupRow>> {
    let table = match txn.open_table(USAGE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(e)),
    };
    let mut rows = Vec::new();
    if q.since_ms >= q.until_ms {
        return Ok(rows);
    }
    let g = grain_code(q.grain);
    let mut take = |start: u64, function: &str, token: &str, value: &[u8]| {
        if q.wants(function, token) {
            rows.push(RollupRow {
                start_ms: start,
                function: function.to_string(),
                token: token.to_string(),
                rollup: Rollup::from_bytes(value),
            });
        }
    };
    if q.each_function {
        let range = (
            Bound::Included((g, q.since_ms, "", "")),
            Bound::Excluded((g, q.until_ms, "", "")),
        );
        for e in table.range(range).map_err(unavailable)? {
            let (k, v) = e.map_err(unavailable)?;
            let (_, start, function, token) = k.value();
            take(start, function, token, v.value());
        }
        return Ok(rows);
    }
    let want = q.function.as_deref().unwrap_or(ALL_FUNCTIONS);
    let mut start = q.since_ms;
    while start < q.until_ms {
        // The first row at or after (start, want): that bucket's rows of
        // `want`, then where the next bucket begins.
        let mut next = None;
        let range = (
            Bound::Included((g, start, want, "")),
            Bound::Excluded((g, q.until_ms, "", "")),
        );
        for e in table.range(range).map_err(unavailable)? {
            let (k, v) = e.map_err(unavailable)?;
            let (_, s, function, token) = k.value();
            if s == start && function == want {
                take(s, function, token, v.value());
                continue;
            }
            next = Some(if s == start { s + 1 } else { s });
            break;
        }
        match next {
            Some(n) => start = n,
            None => break,
        }
    }
    Ok(rows)
}

/// How many records `filter` matches (mode ignored), counted on the
/// index its other fields choose, reading no record.
pub(crate) fn count(txn: &ReadTransaction, filter: &InvocationFilter) -> Result<u64> {
    let since = filter.since_ms.unwrap_or(0);
    let until = filter.until_ms.unwrap_or(u64::MAX);
    if since >= until {
        return Ok(0);
    }
    let n = match (&filter.function, filter.status.map(status_code)) {
        (Some(f), Some(s)) => {
            let t = txn.open_table(BY_FUNCTION_STATUS).map_err(unavailable)?;
            let f = f.as_str();
            let range = t.range((f, s, since, "")..(f, s, until, ""));
            range.map_err(unavailable)?.count()
        }
        (Some(f), None) => {
            let t = txn.open_table(BY_FUNCTION).map_err(unavailable)?;
            let f = f.as_str();
            t.range((f, since, "")..(f, until, ""))
                .map_err(unavailable)?
                .count()
        }
        (None, Some(s)) => {
            let t = txn.open_table(BY_STATUS).map_err(unavailable)?;
            t.range((s, since, "")..(s, until, ""))
                .map_err(unavailable)?
                .count()
        }
        (None, None) => {
            let t = txn.open_table(BY_TIME).map_err(unavailable)?;
            t.range((since, "")..(until, ""))
                .map_err(unavailable)?
                .count()
        }
    };
    Ok(n as u64)
}

fn grain_code(g: Grain) -> u8 {
    match g {
        Grain::Minute => 0,
        Grain::Day => 1,
        Grain::Hour => 2,
    }
}

/// Whether a stored status code is final (succeeded, failed, timed out,
/// cancelled).
fn is_final_code(code: u8) -> bool {
    (2..=5).contains(&code)
}

impl Usage for RedbStore {
    fn rollups(&self, query: &RollupQuery) -> Pending<Vec<RollupRow>> {
        self.read(|txn| rollups(txn, query))
    }

    fn count_indexed(&self, filter: &InvocationFilter) -> Pending<u64> {
        self.read(|txn| count(txn, filter))
    }
}

/// The stored code of a status: part of the layout, never renumbered.
fn status_code(s: InvocationStatus) -> u8 {
    match s {
        InvocationStatus::Queued => 0,
        InvocationStatus::Running => 1,
        InvocationStatus::Succeeded => 2,
        InvocationStatus::Failed => 3,
        InvocationStatus::TimedOut => 4,
        InvocationStatus::Cancelled => 5,
    }
}

/// The stored code of a mode: part of the layout, never renumbered.
fn mode_code(m: InvocationMode) -> u8 {
    match m {
        InvocationMode::Sync => 0,
        InvocationMode::Async => 1,
        InvocationMode::Queue => 2,
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use shoal_store::conformance::sample_invocation;

    use super::*;

    /// The final records of an older database go into the usage rollups
    /// once, in chunks; a second run (or a reopen) adds nothing.
    #[test]
    fn old_records_are_added_to_the_rollups_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(INVOCATIONS).unwrap();
            for i in 0..23u64 {
                let r = InvocationRecord {
                    created_at_ms: 1_000 + i,
                    status: if i % 3 == 0 {
                        InvocationStatus::Queued
                    } else {
                        InvocationStatus::Succeeded
                    },
                    billed_gb_s: 0.5,
                    ..sample_invocation(&format!("id-{i:02}"), "f")
                };
                let v = crate::codec::encode_record(&"test", &r).unwrap();
                t.insert(r.id.as_str(), v.as_slice()).unwrap();
            }
            txn.open_table(crate::META).unwrap();
        }
        txn.commit().unwrap();
        let finals = (0..23).filter(|i| i % 3 != 0).count() as u64;
        assert_eq!(build_usage(&db, 7).unwrap(), finals);
        assert_eq!(build_usage(&db, 7).unwrap(), 0);
        let txn = db.begin_read().unwrap();
        let q = RollupQuery {
            grain: Grain::Day,
            since_ms: 0,
            until_ms: u64::MAX,
            function: Some("f".to_string()),
            each_function: false,
            token: None,
        };
        let rows = rollups(&txn, &q).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.rollup.invocations()).sum::<u64>(),
            finals
        );
        let q = RollupQuery {
            function: None,
            ..q
        };
        let all = rollups(&txn, &q).unwrap();
        assert_eq!(
            all.iter().map(|r| r.rollup.invocations()).sum::<u64>(),
            finals
        );
    }

    /// The migration indexes in chunks, each its own commit, and ends with
    /// every record indexed once, however the chunks fall; running it again
    /// (an open interrupted midway) changes nothing.
    #[test]
    fn the_migration_indexes_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(INVOCATIONS).unwrap();
            for i in 0..23u64 {
                let r = InvocationRecord {
                    created_at_ms: 1_000 + i,
                    ..sample_invocation(&format!("id-{i:02}"), "f")
                };
                let v = crate::codec::encode_record(&"test", &r).unwrap();
                t.insert(r.id.as_str(), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        for chunk in [7, 23, 1_000] {
            assert_eq!(build(&db, chunk).unwrap(), 23, "chunk {chunk}");
            let txn = db.begin_read().unwrap();
            let page = list(&txn, &InvocationFilter::default(), None, 100).unwrap();
            let ids: Vec<String> = page.records.iter().map(|r| r.id.clone()).collect();
            let want: Vec<String> = (0..23).rev().map(|i| format!("id-{i:02}")).collect();
            assert_eq!(ids, want, "chunk {chunk}");
        }
    }
}
