//! The key-value store (`shoal_store::Kv`) on two tables, written through
//! the writer thread like every other write (group commit), read inline.
//!
//! | table | key | value |
//! |---|---|---|
//! | `kv` | key | `[1] ++ u8 has expiry ++ u64 LE version ++ u64 LE expires_at_ms ++ u64 LE updated_at_ms ++ value bytes` |
//! | `kv_expiry` | (expires_at_ms, key) | (), the entries with an expiry, soonest first, for `kv_sweep` |
//! | `meta` | `"kv_version"` | u64, the last version given out (store-wide, so never reused) |
//!
//! Both tables are created when missing at open (like `function_refs`): a
//! data directory from before the key-value store opens without a layout
//! change or a migration.
//!
//! Expired entries stay in the tables until `kv_sweep` (or a write of the
//! key) removes them; reads compare the stored expiry with the caller's
//! `now_ms`, so an expired entry is absent at once. A listing reads at most
//! `limit + 1` rows of `kv`. An entry that does not decode is
//! `Error::Corrupt` for every call on its key, except a `kv_delete` without
//! a version, which clears it (answering true).

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use shoal_store::{
    Error, Kv, KvCondition, KvEntry, KvIncr, KvPage, KvSet, Pending, Result, kv_integer,
};
use tokio::sync::oneshot;

use crate::codec::FORMAT_V1;
use crate::writer::{Applied, Command, Effect, Reply, Tables, Value, ok};
use crate::{KV, KV_EXPIRY, RedbStore, ready, unavailable};

/// The `meta` key of the version counter.
const VERSION: &str = "kv_version";

const HEAD: usize = 1 + 1 + 8 + 8 + 8;

/// The key-value tables, opened by the first key-value write of a batch.
pub(crate) struct KvTables<'txn> {
    entries: Table<'txn, &'static str, &'static [u8]>,
    expiry: Table<'txn, (u64, &'static str), ()>,
}

impl<'txn> KvTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(KvTables {
            entries: txn.open_table(KV)?,
            expiry: txn.open_table(KV_EXPIRY)?,
        })
    }
}

/// Creates the tables (at open, when missing).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(KV).map_err(unavailable)?;
    txn.open_table(KV_EXPIRY).map_err(unavailable)?;
    Ok(())
}

fn encode(e: &KvEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + e.value.len());
    out.push(FORMAT_V1);
    out.push(u8::from(e.expires_at_ms.is_some()));
    out.extend_from_slice(&e.version.to_le_bytes());
    out.extend_from_slice(&e.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&e.updated_at_ms.to_le_bytes());
    out.extend_from_slice(&e.value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Result<KvEntry> {
    let corrupt = |why: &str| Error::Corrupt(format!("kv entry {key:?}: {why}"));
    if bytes.len() < HEAD {
        return Err(corrupt("truncated"));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {}", bytes[0])));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Ok(KvEntry {
        key: key.to_string(),
        version: u64_at(2),
        expires_at_ms: (bytes[1] != 0).then(|| u64_at(10)),
        updated_at_ms: u64_at(18),
        value: bytes[HEAD..].to_vec(),
    })
}

/// A key-value write, done by the writer thread.
pub(crate) enum KvOp {
    Set {
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: KvCondition,
        now_ms: u64,
    },
    Incr {
        key: String,
        by: i64,
        now_ms: u64,
    },
    Delete {
        key: String,
        version: Option<u64>,
        now_ms: u64,
    },
    Sweep {
        now_ms: u64,
        max: usize,
    },
}

impl KvOp {
    /// About how many bytes it writes.
    pub(crate) fn weight(&self) -> usize {
        match self {
            KvOp::Set { key, value, .. } => 64 + key.len() + value.len(),
            _ => 64,
        }
    }
}

/// What a key-value write answers.
pub(crate) enum KvDone {
    Set(KvSet),
    Incr(KvIncr),
    Deleted(bool),
    Swept(u64),
}

type Storage<T> = std::result::Result<T, redb::Error>;

/// The stored entry of `key`, expired or not.
fn stored(t: &mut Tables<'_>, key: &str) -> Storage<Result<Option<KvEntry>>> {
    let kv = t.kv()?;
    Ok(match kv.entries.get(key)? {
        None => Ok(None),
        Some(v) => decode(key, v.value()).map(Some),
    })
}

fn remove(t: &mut Tables<'_>, key: &str, old: &KvEntry) -> Storage<()> {
    let kv = t.kv()?;
    kv.entries.remove(key)?;
    if let Some(at) = old.expires_at_ms {
        kv.expiry.remove((at, key))?;
    }
    Ok(())
}

/// Writes a new value of `key` with the next version, replacing `old`.
fn write(
    t: &mut Tables<'_>,
    key: &str,
    old: Option<&KvEntry>,
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
    now_ms: u64,
) -> Storage<KvEntry> {
    let version = t.meta.get(VERSION)?.map_or(0, |g| g.value()) + 1;
    t.meta.insert(VERSION, version)?;
    if let Some(old) = old {
        remove(t, key, old)?;
    }
    let entry = KvEntry {
        key: key.to_string(),
        value,
        version,
        expires_at_ms,
        updated_at_ms: now_ms,
    };
    let kv = t.kv()?;
    kv.entries.insert(key, encode(&entry).as_slice())?;
    if let Some(at) = expires_at_ms {
        kv.expiry.insert((at, key), ())?;
    }
    Ok(entry)
}

/// Applies a key-value write inside the batch's transaction.
pub(crate) fn apply(t: &mut Tables<'_>, op: KvOp) -> Applied {
    let done = match op {
        KvOp::Set {
            key,
            value,
            ttl_ms,
            cond,
            now_ms,
        } => {
            let old = match stored(t, &key)? {
                Ok(old) => old,
                Err(e) => return Ok(Err(e)),
            };
            let current = old.as_ref().filter(|e| e.live_at(now_ms));
            let holds = match cond {
                KvCondition::Always => true,
                KvCondition::Absent => current.is_none(),
                KvCondition::Present => current.is_some(),
                KvCondition::Version(v) => current.is_some_and(|e| e.version == v),
            };
            if holds {
                let expires = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
                let entry = write(t, &key, old.as_ref(), value, expires, now_ms)?;
                KvDone::Set(KvSet::Written(entry))
            } else {
                let current = current.cloned();
                KvDone::Set(KvSet::Refused { current })
            }
        }
        KvOp::Incr { key, by, now_ms } => {
            let old = match stored(t, &key)? {
                Ok(old) => old,
                Err(e) => return Ok(Err(e)),
            };
            let current = old.clone().filter(|e| e.live_at(now_ms));
            let (n, expires) = match &current {
                None => (0, None),
                Some(c) => match kv_integer(&c.value) {
                    Some(n) => (n, c.expires_at_ms),
                    None => {
                        let current = c.clone();
                        return ok(
                            Value::Kv(KvDone::Incr(KvIncr::NotInteger { current })),
                            Effect::None,
                        );
                    }
                },
            };
            match (n.checked_add(by), current) {
                (None, Some(current)) => KvDone::Incr(KvIncr::Overflow { current }),
                (sum, _) => {
                    let value = sum.unwrap_or(by).to_string().into_bytes();
                    let entry = write(t, &key, old.as_ref(), value, expires, now_ms)?;
                    KvDone::Incr(KvIncr::Written(entry))
                }
            }
        }
        KvOp::Delete {
            key,
            version,
            now_ms,
        } => {
            let old = match stored(t, &key)? {
                Ok(old) => old,
                // An entry that does not decode can still be deleted
                // (without a version), so it can be cleared; a stale
                // expiry row it may leave is dropped by the sweep.
                Err(_) if version.is_none() => {
                    t.kv()?.entries.remove(key.as_str())?;
                    return ok(Value::Kv(KvDone::Deleted(true)), Effect::None);
                }
                Err(e) => return Ok(Err(e)),
            };
            match old {
                None => KvDone::Deleted(false),
                Some(old) if !old.live_at(now_ms) => {
                    // Expired: it goes now, but nothing live was deleted.
                    remove(t, &key, &old)?;
                    KvDone::Deleted(false)
                }
                Some(old) if version.is_some_and(|v| v != old.version) => KvDone::Deleted(false),
                Some(old) => {
                    remove(t, &key, &old)?;
                    KvDone::Deleted(true)
                }
            }
        }
        KvOp::Sweep { now_ms, max } => {
            let kv = t.kv()?;
            let mut due = Vec::new();
            for row in kv.expiry.range((0, "")..)?.take(max) {
                let (k, _) = row?;
                let (at, key) = k.value();
                if at > now_ms {
                    break;
                }
                due.push((at, key.to_string()));
            }
            for (at, key) in &due {
                kv.expiry.remove((*at, key.as_str()))?;
                // The entry goes only if it is still the one that expires
                // then (a later write moved or removed its expiry row).
                let same = match kv.entries.get(key.as_str())? {
                    Some(v) => decode(key, v.value()).is_ok_and(|e| e.expires_at_ms == Some(*at)),
                    None => false,
                };
                if same {
                    kv.entries.remove(key.as_str())?;
                }
            }
            KvDone::Swept(due.len() as u64)
        }
    };
    ok(Value::Kv(done), Effect::None)
}

fn read_entry(txn: &ReadTransaction, key: &str) -> Result<Option<KvEntry>> {
    let table = txn.open_table(KV).map_err(unavailable)?;
    match table.get(key).map_err(unavailable)? {
        None => Ok(None),
        Some(v) => decode(key, v.value()).map(Some),
    }
}

impl RedbStore {
    fn kv_write<T: Send + 'static>(&self, op: KvOp, pick: fn(KvDone) -> Option<T>) -> Pending<T> {
        let done = self.submit(Command::Kv(op), Reply::Kv);
        Box::pin(async move {
            pick(done.await?)
                .ok_or_else(|| Error::Unavailable("internal: mismatched kv reply".to_string()))
        })
    }
}

impl Kv for RedbStore {
    fn kv_get(&self, key: &str, now_ms: u64) -> Pending<Option<KvEntry>> {
        self.read(|txn| Ok(read_entry(txn, key)?.filter(|e| e.live_at(now_ms))))
    }

    fn kv_set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: KvCondition,
        now_ms: u64,
    ) -> Pending<KvSet> {
        let op = KvOp::Set {
            key: key.to_string(),
            value,
            ttl_ms,
            cond,
            now_ms,
        };
        self.kv_write(op, |d| match d {
            KvDone::Set(s) => Some(s),
            _ => None,
        })
    }

    fn kv_incr(&self, key: &str, by: i64, now_ms: u64) -> Pending<KvIncr> {
        let op = KvOp::Incr {
            key: key.to_string(),
            by,
            now_ms,
        };
        self.kv_write(op, |d| match d {
            KvDone::Incr(i) => Some(i),
            _ => None,
        })
    }

    fn kv_delete(&self, key: &str, version: Option<u64>, now_ms: u64) -> Pending<bool> {
        let op = KvOp::Delete {
            key: key.to_string(),
            version,
            now_ms,
        };
        self.kv_write(op, |d| match d {
            KvDone::Deleted(b) => Some(b),
            _ => None,
        })
    }

    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Pending<KvPage> {
        self.read(|txn| {
            let limit = limit.max(1);
            let table = txn.open_table(KV).map_err(unavailable)?;
            let start = match after {
                Some(a) if a >= prefix => Bound::Excluded(a),
                _ => Bound::Included(prefix),
            };
            let mut page = KvPage::default();
            let rows = table
                .range::<&str>((start, Bound::Unbounded))
                .map_err(unavailable)?;
            for (seen, row) in rows.enumerate() {
                let (k, v) = row.map_err(unavailable)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if seen == limit {
                    return Ok(page);
                }
                page.next = Some(key.to_string());
                let entry = decode(key, v.value())?;
                if entry.live_at(now_ms) {
                    page.entries.push(entry);
                }
            }
            page.next = None;
            Ok(page)
        })
    }

    fn kv_sweep(&self, now_ms: u64, max: usize) -> Pending<u64> {
        if max == 0 {
            return ready(Ok(0));
        }
        self.kv_write(KvOp::Sweep { now_ms, max }, |d| match d {
            KvDone::Swept(n) => Some(n),
            _ => None,
        })
    }
}

/// Where a key-value write's answer goes (`Reply::Kv`).
pub(crate) type KvSender = oneshot::Sender<Result<KvDone>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer;

    const T: u64 = 1_700_000_000_000;

    async fn set(store: &RedbStore, key: &str, value: &str, ttl: Option<u64>) -> KvEntry {
        match store
            .kv_set(key, value.as_bytes().to_vec(), ttl, KvCondition::Always, T)
            .await
            .unwrap()
        {
            KvSet::Written(e) => e,
            other => panic!("{other:?}"),
        }
    }

    /// Entries, expiries and the version counter survive a reopen; a file
    /// written before the key-value tables existed opens and gets them.
    #[tokio::test]
    async fn survives_reopen_and_opens_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path).unwrap();
        let a = set(&store, "a", "1", None).await;
        let b = set(&store, "b", "2", Some(1_000)).await;
        store.close();
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.kv_get("a", T).await.unwrap(), Some(a.clone()));
        assert_eq!(store.kv_get("b", T).await.unwrap(), Some(b.clone()));
        let c = set(&store, "a", "3", None).await;
        assert!(c.version > b.version, "the counter survives a reopen");
        assert_eq!(store.kv_sweep(T + 1_000, 10).await.unwrap(), 1);
        store.close();
        drop(store);

        // An older file: no kv tables, no counter.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = writer::begin(&db).unwrap();
            txn.delete_table(KV).unwrap();
            txn.delete_table(KV_EXPIRY).unwrap();
            txn.open_table(crate::META)
                .unwrap()
                .remove(VERSION)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.kv_get("a", T).await.unwrap(), None);
        let page = store.kv_list("", None, 10, T).await.unwrap();
        assert_eq!(page, KvPage::default());
        let e = set(&store, "a", "1", None).await;
        assert_eq!(e.version, 1);
    }

    /// A stored entry that does not decode is `Corrupt`, for reads and
    /// writes of its key alike, and nothing else is affected; a delete
    /// without a version clears it.
    #[tokio::test]
    async fn a_corrupt_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
        set(&store, "ok", "1", None).await;
        {
            let db = store.shared.db().unwrap();
            let txn = writer::begin(&db).unwrap();
            txn.open_table(KV)
                .unwrap()
                .insert("bad", &b"\x01\x00"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            store.kv_get("bad", T).await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            store.kv_incr("bad", 1, T).await,
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            store.kv_delete("bad", Some(1), T).await,
            Err(Error::Corrupt(_))
        ));
        assert!(store.kv_get("ok", T).await.unwrap().is_some());
        let KvIncr::Written(n) = store.kv_incr("ok", 1, T).await.unwrap() else {
            panic!("incr");
        };
        assert_eq!(n.value, b"2");
        // Cleared by a delete without a version.
        assert!(store.kv_delete("bad", None, T).await.unwrap());
        assert_eq!(store.kv_get("bad", T).await.unwrap(), None);
    }
}
