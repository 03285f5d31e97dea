//! Categories of documents, split into shards.
//!
//! A category owns its documents: deleting it drops them, and a category
//! created again under the name starts empty. Shard versions come from one
//! store-wide counter that only grows, so a version is never reused, not
//! even by a category created again under a deleted one's name. Every write
//! that changes shards takes the next value for all of them.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{CategoryRecord, DocWrite, Docs, Error, Pending, Result, ShardStats, StoredDoc};

use super::MemoryStore;

#[derive(Default)]
pub(super) struct DocState {
    categories: BTreeMap<String, Category>,
    /// The next slot of the round-robin placement, shared by all categories.
    next_slot: u64,
    /// The last shard version given out.
    version: u64,
    /// Partial results of queries spread over engines, by query and shard.
    query_parts: BTreeMap<String, BTreeMap<u32, Vec<u8>>>,
}

struct Category {
    record: CategoryRecord,
    /// Indexed by shard, `record.shards` of them.
    shards: Vec<Shard>,
}

#[derive(Default)]
struct Shard {
    /// Documents by id (byte order of the id, which is `str` order).
    docs: BTreeMap<String, Vec<u8>>,
    stats: ShardStats,
}

impl DocState {
    fn create(&mut self, name: &str, shards: u32, slot_count: u32, now_ms: u64) -> CategoryRecord {
        // A slot count of 0 names no slot: one slot rather than a division by zero.
        let slot_count = u64::from(slot_count.max(1));
        let slots = (0..u64::from(shards))
            .map(|i| (self.next_slot.wrapping_add(i) % slot_count) as u32)
            .collect();
        self.next_slot = self.next_slot.wrapping_add(u64::from(shards));
        let record = CategoryRecord {
            name: name.to_string(),
            shards,
            slots,
            created_at_ms: now_ms,
        };
        let category = Category {
            record: record.clone(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
        };
        self.categories.insert(name.to_string(), category);
        record
    }

    /// Writes every document or, when the category is missing or a shard
    /// is out of range, none.
    fn put(&mut self, category: &str, docs: Vec<DocWrite>) -> Result<()> {
        let c = self
            .categories
            .get_mut(category)
            .ok_or_else(|| not_found(category))?;
        if docs.iter().any(|d| d.shard >= c.record.shards) {
            return Err(not_found(category));
        }
        if docs.is_empty() {
            return Ok(());
        }
        self.version += 1;
        for d in docs {
            let shard = &mut c.shards[d.shard as usize];
            let added = d.body.len() as u64;
            match shard.docs.insert(d.id, d.body) {
                Some(old) => shard.stats.bytes -= old.len() as u64,
                None => shard.stats.docs += 1,
            }
            shard.stats.bytes += added;
            // A put changes the shard even when the body is the same.
            shard.stats.version = self.version;
        }
        Ok(())
    }

    /// Deletes documents; only shards that lost one change.
    fn delete(&mut self, category: &str, docs: Vec<(u32, String)>) -> Result<u64> {
        let c = self
            .categories
            .get_mut(category)
            .ok_or_else(|| not_found(category))?;
        let version = self.version + 1;
        let mut removed = 0;
        for (shard, id) in docs {
            let Some(shard) = c.shards.get_mut(shard as usize) else {
                continue;
            };
            if let Some(old) = shard.docs.remove(&id) {
                shard.stats.docs -= 1;
                shard.stats.bytes -= old.len() as u64;
                shard.stats.version = version;
                removed += 1;
            }
        }
        if removed > 0 {
            self.version = version;
        }
        Ok(removed)
    }

    fn category(&self, name: &str) -> Result<&Category> {
        self.categories.get(name).ok_or_else(|| not_found(name))
    }
}

impl Docs for MemoryStore {
    fn create_category(
        &self,
        name: &str,
        shards: u32,
        slot_count: u32,
        now_ms: u64,
    ) -> Pending<(CategoryRecord, bool)> {
        self.run(|s| {
            if let Some(c) = s.docs.categories.get(name) {
                return Ok((c.record.clone(), false));
            }
            Ok((s.docs.create(name, shards, slot_count, now_ms), true))
        })
    }

    fn category(&self, name: &str) -> Pending<Option<CategoryRecord>> {
        self.run(|s| Ok(s.docs.categories.get(name).map(|c| c.record.clone())))
    }

    fn categories(&self) -> Pending<Vec<CategoryRecord>> {
        self.run(|s| {
            let categories = s.docs.categories.values();
            Ok(categories.map(|c| c.record.clone()).collect())
        })
    }

    fn delete_category(&self, name: &str) -> Pending<bool> {
        self.run(|s| Ok(s.docs.categories.remove(name).is_some()))
    }

    fn delete_category_if_empty(&self, name: &str) -> Pending<u64> {
        self.run(|s| {
            let docs: u64 = s
                .docs
                .category(name)?
                .shards
                .iter()
                .map(|sh| sh.docs.len() as u64)
                .sum();
            if docs == 0 {
                s.docs.categories.remove(name);
            }
            Ok(docs)
        })
    }

    fn put_docs(&self, category: &str, docs: Vec<DocWrite>) -> Pending<()> {
        self.run(|s| s.docs.put(category, docs))
    }

    fn get_doc(&self, category: &str, shard: u32, id: &str) -> Pending<Option<Vec<u8>>> {
        self.run(|s| {
            let shard = s.docs.category(category)?.shards.get(shard as usize);
            Ok(shard.and_then(|sh| sh.docs.get(id)).cloned())
        })
    }

    fn delete_docs(&self, category: &str, docs: Vec<(u32, String)>) -> Pending<u64> {
        self.run(|s| s.docs.delete(category, docs))
    }

    fn scan_shard(
        &self,
        category: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<StoredDoc>> {
        self.run(|s| {
            let Some(shard) = s.docs.category(category)?.shards.get(shard as usize) else {
                return Ok(Vec::new());
            };
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let page = shard
                .docs
                .range::<str, _>((from, Bound::Unbounded))
                .take(limit);
            let page = page.map(|(id, body)| StoredDoc {
                id: id.clone(),
                body: body.clone(),
            });
            Ok(page.collect())
        })
    }

    fn shard_stats(&self, category: &str) -> Pending<Vec<ShardStats>> {
        self.run(|s| {
            let shards = &s.docs.category(category)?.shards;
            Ok(shards.iter().map(|sh| sh.stats).collect())
        })
    }

    /// Two engines on one `MemoryStore` share queries as nodes on one
    /// Redis do. The partials have no expiry here: nothing outlives the
    /// store anyway.
    fn shares_queries(&self) -> bool {
        true
    }

    fn put_query_part(
        &self,
        query_id: &str,
        shard: u32,
        part: Vec<u8>,
        _ttl_ms: u64,
    ) -> Pending<bool> {
        self.run(|s| {
            let parts = s.docs.query_parts.entry(query_id.to_string()).or_default();
            if parts.contains_key(&shard) {
                return Ok(false);
            }
            parts.insert(shard, part);
            Ok(true)
        })
    }

    fn query_parts(&self, query_id: &str, shards: Vec<u32>) -> Pending<Vec<Option<Vec<u8>>>> {
        self.run(|s| {
            let parts = s.docs.query_parts.get(query_id);
            Ok(shards
                .iter()
                .map(|shard| parts.and_then(|p| p.get(shard)).cloned())
                .collect())
        })
    }

    fn drop_query_parts(&self, query_id: &str) -> Pending<()> {
        self.run(|s| {
            s.docs.query_parts.remove(query_id);
            Ok(())
        })
    }
}

/// `NotFound` carries the bare category name.
fn not_found(category: &str) -> Error {
    Error::NotFound(category.to_string())
}
