//! Documents in categories, the writer's side: create, delete, put, delete
//! documents, and the background purge (reads are in `lib.rs`).
//!
//! A category's documents live under its *internal id* (see
//! `codec::CategoryHead`), never under its name. Deleting a category removes
//! its record and stats and files the id in `doc_garbage`, all in one small
//! transaction: from then on the name is free and nothing can reach the old
//! documents. The writer then purges them in chunks between (and alongside)
//! ordinary batches, so deleting a million documents never holds the write
//! lock for long. The garbage table survives a crash, so the purge resumes on
//! open.
//!
//! Shard versions come from one store-wide counter (`meta["doc_version"]`):
//! a write that changes a shard stamps it with the next value. Versions thus
//! strictly increase per shard and are never reused, not even by a category
//! created again under a deleted one's name, so a cache keyed by (category
//! name, shard, version) can never serve an older incarnation's documents.

use std::ops::Bound;

use redb::{ReadableTable, StorageError};
use shoal_store::{CategoryRecord, DocWrite, Error};

use crate::codec::{self, CategoryHead};
use crate::writer::{Applied, Effect, Tables, Value, ok};

const META_CATEGORY_ID: &str = "category_next_id";
const META_ROUND_ROBIN: &str = "category_round_robin";
const META_DOC_VERSION: &str = "doc_version";

/// Reusable buffers, so a put does not allocate per document.
#[derive(Default)]
pub(crate) struct Scratch {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Changes to one shard's counts within one operation.
#[derive(Default, Clone, Copy)]
struct Delta {
    docs: i64,
    bytes: i64,
}

/// `NotFound` carries the bare category name (the engine words the message).
fn not_found(category: &str) -> Error {
    Error::NotFound(category.to_string())
}

/// The stored head of a category, or the operation's own error.
fn head(
    t: &Tables<'_>,
    category: &str,
) -> std::result::Result<shoal_store::Result<CategoryHead>, StorageError> {
    let Some(stored) = t.categories.get(category)? else {
        return Ok(Err(not_found(category)));
    };
    let what = format_args!("category {category}");
    Ok(codec::decode_category_head(&what, stored.value()))
}

fn meta_get(t: &Tables<'_>, key: &str) -> std::result::Result<u64, StorageError> {
    Ok(t.meta.get(key)?.map(|g| g.value()).unwrap_or(0))
}

pub(crate) fn create_category(
    t: &mut Tables<'_>,
    name: &str,
    shards: u32,
    slot_count: u32,
    now_ms: u64,
) -> Applied {
    if let Some(stored) = t.categories.get(name)? {
        let what = format_args!("category {name}");
        return Ok(codec::decode_category(&what, stored.value())
            .map(|(_, record)| (Value::Category(record, false), Effect::None)));
    }
    // A slot count of 0 names no slot; treat it as one slot rather than
    // divide by zero (the engine validates it anyway).
    let slot_count = u64::from(slot_count.max(1));
    let next = meta_get(t, META_ROUND_ROBIN)?;
    let slots = (0..u64::from(shards))
        .map(|i| (next.wrapping_add(i) % slot_count) as u32)
        .collect();
    let record = CategoryRecord {
        name: name.to_string(),
        shards,
        slots,
        created_at_ms: now_ms,
    };
    let id = meta_get(t, META_CATEGORY_ID)?;
    let value = match codec::encode_category(CategoryHead { id, shards }, &record) {
        Ok(value) => value,
        Err(e) => return Ok(Err(e)),
    };
    t.categories.insert(name, value.as_slice())?;
    t.meta.insert(META_CATEGORY_ID, id + 1)?;
    t.meta
        .insert(META_ROUND_ROBIN, next.wrapping_add(u64::from(shards)))?;
    ok(Value::Category(record, true), Effect::None)
}

/// Removes the record and stats now; files the documents for the purge.
pub(crate) fn delete_category(t: &mut Tables<'_>, name: &str) -> Applied {
    let Some(stored) = t.categories.remove(name)? else {
        return ok(Value::Existed(false), Effect::None);
    };
    let what = format_args!("category {name}");
    let head = codec::decode_category_head(&what, stored.value());
    drop(stored);
    let Ok(head) = head else {
        // A corrupt record cannot name its documents; removing it still
        // frees the name (its documents stay unreachable).
        tracing::error!(category = name, "redb: deleted a corrupt category record");
        return ok(Value::Existed(true), Effect::None);
    };
    for entry in t
        .doc_stats
        .extract_from_if((head.id, 0)..=(head.id, u32::MAX), |_, _| true)?
    {
        entry?;
    }
    t.doc_garbage.insert(head.id, name)?;
    ok(Value::Existed(true), Effect::Garbage(head.id))
}

/// Deletes a category only while it holds no documents, in the same
/// transaction as the check; answers how many it holds.
pub(crate) fn delete_category_if_empty(t: &mut Tables<'_>, name: &str) -> Applied {
    let head = match head(t, name)? {
        Ok(head) => head,
        Err(e) => return Ok(Err(e)),
    };
    let mut docs = 0u64;
    for entry in t.doc_stats.range((head.id, 0)..=(head.id, u32::MAX))? {
        let (_, value) = entry?;
        docs += value.value().0;
    }
    if docs > 0 {
        return ok(Value::Count(docs), Effect::None);
    }
    match delete_category(t, name)? {
        Ok(_) => ok(Value::Count(0), Effect::Garbage(head.id)),
        Err(e) => Ok(Err(e)),
    }
}

pub(crate) fn put_docs(
    t: &mut Tables<'_>,
    scratch: &mut Scratch,
    category: &str,
    docs: &[DocWrite],
) -> Applied {
    let head = match head(t, category)? {
        Ok(head) => head,
        Err(e) => return Ok(Err(e)),
    };
    // Checked before anything is written: a failing call writes nothing.
    // A shard out of range means the caller computed shards for another
    // incarnation of the category (deleted and created again since).
    if docs.iter().any(|d| d.shard >= head.shards) {
        return Ok(Err(not_found(category)));
    }
    // In key order: neighbours share B-tree pages, so the tree is walked
    // once rather than jumped around in (~15% faster for random ids). The
    // sort is stable, so among equal ids the last one still wins.
    let mut order: Vec<&DocWrite> = docs.iter().collect();
    order.sort_by(|a, b| (a.shard, a.id.as_str()).cmp(&(b.shard, b.id.as_str())));
    let mut deltas: Vec<(u32, Delta)> = Vec::new();
    for d in order {
        codec::doc_key(&mut scratch.key, head.id, d.shard, &d.id);
        codec::encode_doc(&mut scratch.value, &d.body);
        let old = t
            .docs
            .insert(scratch.key.as_slice(), scratch.value.as_slice())?
            .map(|old| codec::stored_doc_len(old.value()));
        let delta = delta_of(&mut deltas, d.shard);
        match old {
            Some(old) => delta.bytes -= old as i64,
            None => delta.docs += 1,
        }
        delta.bytes += d.body.len() as i64;
    }
    // Every shard written to changed (a put replaces even an equal body).
    stamp(t, head.id, &deltas)?;
    ok(Value::Unit, Effect::None)
}

pub(crate) fn delete_docs(
    t: &mut Tables<'_>,
    scratch: &mut Scratch,
    category: &str,
    docs: &[(u32, String)],
) -> Applied {
    let head = match head(t, category)? {
        Ok(head) => head,
        Err(e) => return Ok(Err(e)),
    };
    let mut order: Vec<&(u32, String)> = docs
        .iter()
        .filter(|(shard, _)| *shard < head.shards)
        .collect();
    order.sort();
    let mut deltas: Vec<(u32, Delta)> = Vec::new();
    let mut existed = 0u64;
    for (shard, id) in order {
        codec::doc_key(&mut scratch.key, head.id, *shard, id);
        if let Some(old) = t.docs.remove(scratch.key.as_slice())? {
            existed += 1;
            let delta = delta_of(&mut deltas, *shard);
            delta.docs -= 1;
            delta.bytes -= codec::stored_doc_len(old.value()) as i64;
        }
    }
    // Only shards that lost a document changed.
    stamp(t, head.id, &deltas)?;
    ok(Value::Count(existed), Effect::None)
}

/// The delta of `shard`, documents coming in shard order.
fn delta_of(deltas: &mut Vec<(u32, Delta)>, shard: u32) -> &mut Delta {
    if deltas.last().is_none_or(|(s, _)| *s != shard) {
        deltas.push((shard, Delta::default()));
    }
    &mut deltas.last_mut().expect("just pushed").1
}

/// Applies the count changes and stamps every listed shard with the next
/// store-wide version.
fn stamp(
    t: &mut Tables<'_>,
    category: u64,
    deltas: &[(u32, Delta)],
) -> std::result::Result<(), StorageError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let version = meta_get(t, META_DOC_VERSION)? + 1;
    t.meta.insert(META_DOC_VERSION, version)?;
    for &(shard, delta) in deltas {
        let (docs, bytes) = t
            .doc_stats
            .get((category, shard))?
            .map(|g| {
                let (docs, bytes, _) = g.value();
                (docs, bytes)
            })
            .unwrap_or((0, 0));
        let docs = docs.saturating_add_signed(delta.docs);
        let bytes = bytes.saturating_add_signed(delta.bytes);
        t.doc_stats
            .insert((category, shard), (docs, bytes, version))?;
    }
    Ok(())
}

/// What one purge step did.
pub(crate) struct Purged {
    pub docs: u64,
    /// Deleted categories whose documents are all gone now.
    pub finished: Vec<u64>,
}

/// Deletes up to `budget` documents of deleted categories, oldest first.
pub(crate) fn purge(
    t: &mut Tables<'_>,
    garbage: impl IntoIterator<Item = u64>,
    budget: usize,
) -> std::result::Result<Purged, StorageError> {
    let mut purged = Purged {
        docs: 0,
        finished: Vec::new(),
    };
    let mut left = budget;
    for id in garbage {
        if left == 0 {
            break;
        }
        let start = id.to_be_bytes();
        let end = id.checked_add(1).map(u64::to_be_bytes);
        let upper = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        let mut removed = 0;
        for entry in t
            .docs
            .extract_from_if::<&[u8], _>((Bound::Included(start.as_slice()), upper), |_, _| true)?
            .take(left)
        {
            entry?;
            removed += 1;
        }
        left -= removed;
        purged.docs += removed as u64;
        if left > 0 {
            // The range ran out before the budget: nothing is left.
            t.doc_garbage.remove(id)?;
            purged.finished.push(id);
        }
    }
    Ok(purged)
}
