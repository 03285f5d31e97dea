//! Categories of JSON documents: create, write, read, scan, delete, query.
//!
//! A document's shard is a stable hash of its id modulo the category's shard
//! level, so any node can find a document without a lookup. A query maps a
//! function over every shard on the runtime's warm workers, which keep the
//! decoded documents of their shards resident between queries.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use shoal_runtime::{QueryEvent, QueryOutcome, QueryRequest, QueryShard, ShardSource};
use shoal_store::{CategoryRecord, DocWrite, Docs, ShardStats, StoredDoc};
use shoal_types::{Invalid, validate_name};

use crate::env::Env;
use crate::error::{Conflict, Entity, Error, Removal, Result};
use crate::functions::Functions;
use crate::querydist::{QueryDist, Spread};

/// Settings for categories.
#[derive(Debug, Clone, Copy)]
pub struct CategoryOptions {
    /// Shard level of a category created without one.
    pub default_shards: u32,
    /// Number of shard slots shards are placed on (round-robin).
    pub slot_count: u32,
    /// Largest document accepted, in bytes of JSON.
    pub max_doc_bytes: usize,
    /// Most documents in one write. A write is atomic: it holds all its
    /// documents in memory until the store commits them, so this (with the
    /// HTTP layer's byte limit) bounds the memory of one write.
    pub max_write_docs: usize,
}

impl Default for CategoryOptions {
    fn default() -> CategoryOptions {
        CategoryOptions {
            default_shards: 8,
            slot_count: 256,
            max_doc_bytes: 1024 * 1024,
            max_write_docs: 500_000,
        }
    }
}

pub const MAX_SHARDS: u32 = 1024;
/// Most documents in one page of a scan.
pub const MAX_SCAN: usize = 10_000;
pub const MAX_ID_BYTES: usize = 256;

/// A category and its per-shard statistics.
#[derive(Debug, Clone)]
pub struct Category {
    pub record: CategoryRecord,
    pub stats: Vec<ShardStats>,
}

/// A document to write: its id if the client gave one, and its JSON text.
#[derive(Debug, Clone)]
pub struct NewDoc {
    pub id: Option<String>,
    pub body: Vec<u8>,
}

/// A query in progress: events as they come, then the outcome.
pub struct RunningQuery {
    pub events: mpsc::Receiver<QueryEvent>,
    pub outcome: BoxFuture<'static, Result<QueryOutcome>>,
    pub docs_total: u64,
    pub shards: u32,
    pub started: Instant,
}

/// Stable 64-bit FNV-1a hash of a document id: picks its shard.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

pub(crate) fn check_category_name(name: &str) -> Result<()> {
    Ok(validate_name("category name", name)?)
}

pub(crate) fn check_doc_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(Error::Invalid(Invalid {
            field: "document id",
            reason: format!(
                "{:?} must be 1 to {MAX_ID_BYTES} bytes without control characters",
                id.chars().take(40).collect::<String>()
            ),
        }));
    }
    Ok(())
}

/// Categories of documents and the queries over them.
pub(crate) struct Categories {
    env: Arc<Env>,
    functions: Arc<Functions>,
    /// `_docs.<category>` feeds.
    channels: Arc<crate::channels::Channels>,
    /// Spreads queries over the nodes when the store is shared.
    dist: Option<Arc<QueryDist>>,
}

impl Categories {
    pub(crate) fn new(
        env: Arc<Env>,
        functions: Arc<Functions>,
        channels: Arc<crate::channels::Channels>,
    ) -> Categories {
        let dist = QueryDist::new(env.clone(), functions.clone());
        Categories {
            env,
            functions,
            channels,
            dist,
        }
    }

    /// Starts this node's share of the queries of every node (a store
    /// shared by several nodes only).
    pub(crate) fn start_shared_queries(&self) {
        if let Some(dist) = &self.dist {
            dist.start();
        }
    }

    pub(crate) async fn create(&self, name: &str, shards: Option<u32>) -> Result<Category> {
        check_category_name(name)?;
        let shards = shards.unwrap_or(self.env.opts.categories.default_shards);
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(Error::Invalid(Invalid {
                field: "shards",
                reason: format!("{shards} is out of range; use 1 to {MAX_SHARDS}"),
            }));
        }
        let (record, created) = self
            .env
            .backend
            .docs
            .create_category(
                name,
                shards,
                self.env.opts.categories.slot_count,
                self.env.now_ms(),
            )
            .await?;
        if !created {
            return Err(Error::conflict(
                Conflict::CategoryExists,
                format!("category `{name}` exists already"),
            ));
        }
        let stats = vec![ShardStats::default(); record.shards as usize];
        Ok(Category { record, stats })
    }

    /// The category, created with the default shard level if missing.
    async fn ensure(&self, name: &str) -> Result<CategoryRecord> {
        check_category_name(name)?;
        if let Some(rec) = self.env.backend.docs.category(name).await? {
            return Ok(rec);
        }
        let (rec, _) = self
            .env
            .backend
            .docs
            .create_category(
                name,
                self.env.opts.categories.default_shards,
                self.env.opts.categories.slot_count,
                self.env.now_ms(),
            )
            .await?;
        Ok(rec)
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Category> {
        let record = self.existing(name).await?;
        let stats = self.stats(name).await?;
        Ok(Category { record, stats })
    }

    /// Per-shard statistics of an existing category.
    async fn stats(&self, name: &str) -> Result<Vec<ShardStats>> {
        self.env
            .backend
            .docs
            .shard_stats(name)
            .await
            .map_err(|e| Error::from_store(e, Entity::Category, name))
    }

    pub(crate) async fn list(&self) -> Result<Vec<Category>> {
        let mut out = Vec::new();
        for record in self.env.backend.docs.categories().await? {
            let stats = match self.env.backend.docs.shard_stats(&record.name).await {
                Ok(s) => s,
                // Deleted between the two reads.
                Err(shoal_store::Error::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push(Category { record, stats });
        }
        Ok(out)
    }

    /// Deletes a category; unless forced, only an empty one.
    pub(crate) async fn delete(&self, name: &str, removal: Removal) -> Result<()> {
        check_category_name(name)?;
        if removal == Removal::IfEmpty {
            // Checked and deleted in one store step: a write landing
            // between a check and a delete would be lost.
            let docs = match self.env.backend.docs.delete_category_if_empty(name).await {
                Ok(docs) => docs,
                Err(shoal_store::Error::NotFound(_)) => {
                    return Err(Error::not_found(Entity::Category, name));
                }
                Err(e) => return Err(e.into()),
            };
            if docs > 0 {
                return Err(Error::conflict(
                    Conflict::ForceRequired,
                    format!(
                        "category `{name}` holds {docs} document{}; delete it with ?force=true (CLI: --force) to lose them",
                        if docs == 1 { "" } else { "s" }
                    ),
                ));
            }
            return Ok(());
        }
        if self.env.backend.docs.delete_category(name).await? {
            Ok(())
        } else {
            Err(Error::not_found(Entity::Category, name))
        }
    }

    /// Writes documents atomically; returns their ids in request order.
    ///
    /// Memory: the documents are held once (moved, never copied) until the
    /// store commits them; besides their JSON a write costs about 250 bytes
    /// per document (id, generated or given, the store's write list and the
    /// returned id), hence the cap on documents per write.
    pub(crate) async fn write(&self, name: &str, mut docs: Vec<NewDoc>) -> Result<Vec<String>> {
        let max_docs = self.env.opts.categories.max_write_docs;
        if docs.len() > max_docs {
            return Err(Error::TooLarge(format!(
                "a write may hold at most {max_docs} documents, not {}; split it into several writes",
                docs.len()
            )));
        }
        let max = self.env.opts.categories.max_doc_bytes;
        for (i, d) in docs.iter().enumerate() {
            if d.body.len() > max {
                return Err(Error::TooLarge(format!(
                    "document {i} is {} bytes; the limit is {max} bytes",
                    d.body.len()
                )));
            }
            if let Some(id) = &d.id {
                check_doc_id(id)?;
            }
        }
        let record = self.ensure(name).await?;
        // A trigger following the category gets the documents' text: kept
        // only then.
        let triggers = self.env.triggers().filter(|t| t.wants_docs(name));
        let mut changes = triggers.as_ref().map(|_| Vec::with_capacity(docs.len()));
        let mut ids = Vec::with_capacity(docs.len());
        let mut writes = Vec::with_capacity(docs.len());
        // Drained from the back and shrunk as it goes, so the request's list
        // and the store's are not both whole at once.
        docs.reverse();
        while let Some(d) = docs.pop() {
            if docs.capacity() > 1024 && docs.len() < docs.capacity() / 4 {
                docs.shrink_to(docs.len() * 2);
            }
            let id = d.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            if let Some(changes) = &mut changes {
                changes.push(crate::triggers::Change::Put(id.clone(), d.body.clone()));
            }
            writes.push(DocWrite {
                shard: shard_of(&id, record.shards),
                id: id.clone(),
                body: d.body,
            });
            ids.push(id);
        }
        if writes.is_empty() {
            return Ok(ids);
        }
        match self.env.backend.docs.put_docs(name, writes).await {
            Ok(()) => {
                self.channels.feeds.docs(name, &ids, false);
                // Durable before the write is answered (docs/triggers.md).
                if let (Some(t), Some(changes)) = (triggers, changes) {
                    t.docs_changed(name, changes).await;
                }
                Ok(ids)
            }
            // Deleted between `ensure` and the write.
            Err(e) => Err(Error::from_store(e, Entity::Category, name)),
        }
    }

    pub(crate) async fn get_doc(&self, name: &str, id: &str) -> Result<Vec<u8>> {
        check_doc_id(id)?;
        let record = self.existing(name).await?;
        self.env
            .backend
            .docs
            .get_doc(name, shard_of(id, record.shards), id)
            .await
            .map_err(|e| Error::from_store(e, Entity::Category, name))?
            .ok_or_else(|| Error::not_found(Entity::Document, id))
    }

    pub(crate) async fn delete_doc(&self, name: &str, id: &str) -> Result<()> {
        check_doc_id(id)?;
        let record = self.existing(name).await?;
        let n = self
            .env
            .backend
            .docs
            .delete_docs(name, vec![(shard_of(id, record.shards), id.to_string())])
            .await
            .map_err(|e| Error::from_store(e, Entity::Category, name))?;
        if n == 0 {
            return Err(Error::not_found(Entity::Document, id));
        }
        self.channels.feeds.docs(name, &[id.to_string()], true);
        if let Some(t) = self.env.triggers() {
            t.docs_changed(name, vec![crate::triggers::Change::Delete(id.to_string())])
                .await;
        }
        Ok(())
    }

    /// One page of a category scan. The cursor is opaque to clients:
    /// `<shard>.<hex of the last id>`.
    pub(crate) async fn scan(
        &self,
        name: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredDoc>, Option<String>)> {
        let record = self.existing(name).await?;
        crate::queues::check_page_limit(limit, MAX_SCAN)?;
        let (mut shard, mut after) = match cursor {
            None | Some("") => (0, None),
            Some(c) => parse_cursor(c, record.shards)?,
        };
        let mut out = Vec::new();
        while shard < record.shards && out.len() < limit {
            let page = self
                .env
                .backend
                .docs
                .scan_shard(name, shard, after.as_deref(), limit - out.len())
                .await
                .map_err(|e| Error::from_store(e, Entity::Category, name))?;
            let short = page.len() < limit - out.len();
            out.extend(page);
            if short {
                shard += 1;
                after = None;
            } else {
                after = out.last().map(|d| d.id.clone());
            }
        }
        let next = if shard >= record.shards {
            None
        } else {
            match (&after, out.last()) {
                (Some(a), _) => Some(format!("{shard}.{}", hex::encode(a))),
                (None, _) => Some(format!("{shard}.")),
            }
        };
        Ok((out, next))
    }

    /// Starts a query: resolves the category and the function, then runs the
    /// map (and reduce) on the runtime while events stream out.
    pub(crate) async fn query(
        &self,
        name: &str,
        function: &str,
        skip_errors: bool,
    ) -> Result<RunningQuery> {
        let record = self.existing(name).await?;
        let d = self.functions.resolve(function).await?;
        let stats = self.stats(name).await?;
        let shards: Vec<QueryShard> = stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.docs > 0)
            .map(|(i, s)| QueryShard {
                shard: i as u32,
                version: s.version,
                docs: s.docs,
            })
            .collect();
        let docs_total = shards.iter().map(|s| s.docs).sum();
        let (tx, rx) = mpsc::channel(64);
        if let Some(dist) = &self.dist {
            let n = shards.len() as u32;
            let spread = Spread {
                category: name.to_string(),
                dataset: format!("{}@{}", record.name, record.created_at_ms),
                shards,
                skip_errors,
                events: tx,
            };
            let dist = dist.clone();
            let function = d.record.name.to_string();
            let outcome = Box::pin(async move {
                let out = dist.run(d, spread).await;
                let label = match &out {
                    Ok(o) if matches!(o.result, shoal_runtime::QueryResult::Failed { .. }) => {
                        "failed"
                    }
                    Ok(_) => "succeeded",
                    Err(_) => "platform_error",
                };
                metrics::counter!("shoal_queries_total", "function" => function, "outcome" => label)
                    .increment(1);
                out
            });
            return Ok(RunningQuery {
                events: rx,
                outcome,
                docs_total,
                shards: n,
                started: Instant::now(),
            });
        }
        let source = Arc::new(StoreSource {
            docs: self.env.backend.docs.clone(),
            category: name.to_string(),
        });
        let request = QueryRequest {
            query_id: uuid::Uuid::now_v7().to_string(),
            dataset: format!("{}@{}", record.name, record.created_at_ms),
            shards,
            skip_errors,
            source,
            events: tx,
        };
        let n = request.shards.len() as u32;
        let fut = self.env.runtime.query(&d.deployment, request);
        let function = d.record.name.to_string();
        let outcome = Box::pin(async move {
            let out = fut.await;
            let label = match &out {
                Ok(o) if matches!(o.result, shoal_runtime::QueryResult::Failed { .. }) => "failed",
                Ok(_) => "succeeded",
                Err(_) => "platform_error",
            };
            metrics::counter!("shoal_queries_total", "function" => function, "outcome" => label)
                .increment(1);
            Ok(out?)
        });
        Ok(RunningQuery {
            events: rx,
            outcome,
            docs_total,
            shards: n,
            started: Instant::now(),
        })
    }

    async fn existing(&self, name: &str) -> Result<CategoryRecord> {
        check_category_name(name)?;
        self.env
            .backend
            .docs
            .category(name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Category, name))
    }
}

fn parse_cursor(c: &str, shards: u32) -> Result<(u32, Option<String>)> {
    let bad = || {
        Error::Invalid(Invalid {
            field: "cursor",
            reason: "is not a cursor this node gave out; start again without one".into(),
        })
    };
    let (shard, id) = c.split_once('.').ok_or_else(bad)?;
    let shard: u32 = shard.parse().map_err(|_| bad())?;
    if shard >= shards {
        return Err(bad());
    }
    if id.is_empty() {
        return Ok((shard, None));
    }
    let id = hex::decode(id).map_err(|_| bad())?;
    let id = String::from_utf8(id).map_err(|_| bad())?;
    Ok((shard, Some(id)))
}

/// Feeds a query from the store, shard by shard.
pub(crate) struct StoreSource {
    docs: Arc<dyn Docs>,
    category: String,
}

impl StoreSource {
    pub(crate) fn new(docs: Arc<dyn Docs>, category: &str) -> StoreSource {
        StoreSource {
            docs,
            category: category.to_string(),
        }
    }
}

impl ShardSource for StoreSource {
    fn scan(
        &self,
        shard: u32,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'static, std::result::Result<Vec<(String, Vec<u8>)>, String>> {
        let fut = self
            .docs
            .scan_shard(&self.category, shard, after.as_deref(), limit);
        Box::pin(async move {
            fut.await
                .map(|docs| docs.into_iter().map(|d| (d.id, d.body)).collect())
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("a", 8), shard_of("a", 8));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("doc-{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        assert_eq!(parse_cursor("3.", 8).unwrap(), (3, None));
        let c = format!("2.{}", hex::encode("doc/ü"));
        assert_eq!(parse_cursor(&c, 8).unwrap(), (2, Some("doc/ü".to_string())));
        for junk in ["x", "9.", "1.zz", "-1.", "1"] {
            assert!(parse_cursor(junk, 8).is_err(), "{junk}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_doc_id("ok-1").is_ok());
        assert!(check_doc_id("").is_err());
        assert!(check_doc_id("a\nb").is_err());
        assert!(check_doc_id(&"x".repeat(257)).is_err());
    }
}
