//! The docs port: categories of documents split into shards. Each category
//! lives in its own slot, under the hash tag `{d:CATEGORY}`, so a cluster
//! spreads categories; only the list of names and the round-robin counter
//! of placement are in `{catalog}`.
//!
//! | key | type | what |
//! |---|---|---|
//! | `NS:{d:CAT}:cat` | hash | the category: `shards`, `created` (ms), `sc` (the slot count it was created with), `start` (its first placement slot, before the modulo), and, kept after a delete, `gen` (its incarnation) and `ver` (the last shard version given out) |
//! | `NS:{d:CAT}:GEN:ids:S` | sorted set | ids of shard S's documents, score 0: byte order, scanned with `ZRANGE BYLEX LIMIT` |
//! | `NS:{d:CAT}:GEN:body:S` | hash | id → document body of shard S (raw bytes, never JSON-decoded by Lua) |
//! | `NS:{d:CAT}:GEN:stats` | hash | `b:S` bytes of shard S, `v:S` its version (its count is the `body` hash's length) |
//! | `NS:{catalog}:categories` | hash | name → placement start while the category lives, `-` after its delete (names are kept, see below) |
//! | `NS:{catalog}:category-next` | string | the round-robin counter of placement, shared by all categories |
//!
//! A category's record is plain hash fields (no JSON), so its scripts read
//! `shards` without decoding anything. Every change of one category is one
//! script on its slot; documents of incarnation GEN are only reachable
//! while `cat` says `gen` = GEN. A delete removes the record's fields and
//! `UNLINK`s the incarnation's keys in the same script (O(shards) calls;
//! Redis frees big values off its main thread), and a create takes the
//! next `gen`, so a category created again starts empty even if old keys
//! were left. Shard versions come from `ver`, which survives the delete:
//! they are never reused under a name.
//!
//! ## Placement and the catalog list
//!
//! Placement needs the global counter, in `{catalog}`, and a script cannot
//! read another slot, so a create is two calls, both issued when
//! `create_category` is called, in this order:
//!
//! 1. `PLACE` (catalog): when the name is not listed as live, takes the next
//!    `shards` values of the counter and lists the name with its start;
//!    otherwise returns the listed start (an idempotent create does not
//!    advance the counter).
//! 2. `CREATE` (category slot): creates the record unless it exists, with
//!    its shards, time and slot count, but no `start` yet (the script
//!    cannot know it). A `put_docs` issued after it finds the category.
//!
//! When the create's reply comes back, `PATCH` stores the start from step
//! 1 in the record (only for the incarnation just created, and only if no
//! start is there yet). Any read that finds a record without `start` (the
//! window before `PATCH`, a create whose future was dropped, a crash in
//! between) does `PLACE` and `PATCH` itself, so the record always gets one
//! placement and every reader agrees on it.
//!
//! The catalog's call comes first because the list is only ever read
//! through the records: a name listed without a record is skipped, while a
//! record whose name never reached the list could not be found by
//! `categories()` at all.
//!
//! A delete is `DELETE` (category slot) then `MARK` (catalog: the name's
//! entry becomes `-`, so the next create of the name advances the
//! counter); `delete_category_if_empty` marks only once its script says it
//! deleted. Names are never removed from the list: the list is an index of
//! every name ever created, and `categories()` reads each listed name's
//! record and shows only those that exist.
//!
//! What a crash (or two nodes racing on one name) between the two calls can
//! leave, and why it is harmless:
//! - `PLACE` done, `CREATE` not: the name is listed live with no record.
//!   `categories()` does not show it (no record); the counter skipped a few
//!   slots (placement is only balance); the next create of the name reuses
//!   the listed start.
//! - `DELETE` done, `MARK` not: the same state (listed live, no record).
//! - A create on one node racing a delete on another can leave a live record
//!   whose entry says `-`: the name is still listed, so the category is
//!   shown; the next create of the name advances the counter once more for
//!   nothing (the record keeps the start it has: the record wins over the
//!   list).
//!
//! Calls per operation: `category` one `HMGET` (plus `PLACE` and `PATCH`
//! once, for a record a create did not finish placing); `put_docs` one
//! script whatever the number of documents; `get_doc`, `delete_docs`,
//! `scan_shard` (O(limit)), `shard_stats` (O(shards)) one script each;
//! `categories` one `HKEYS` and one `HMGET` per listed name, pipelined.
//!
//! Because names are kept, the list (and `categories()`) grows with every
//! name ever created, not only the live ones; so does the `cat` hash per
//! name (two small fields).

use std::sync::LazyLock;

use redis::Value;

use shoal_store::{CategoryRecord, DocWrite, Docs, Error, Pending, Result, ShardStats, StoredDoc};

use crate::RedisStore;
use crate::conn::{Lua, arg};

/// The fields of a category's hash that make its record, in this order.
const RECORD_FIELDS: [&str; 5] = ["shards", "created", "sc", "start", "gen"];

/// Lists a name with its placement start, taking `shards` values of the
/// counter unless the name is listed live; returns the start.
static PLACE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local e = redis.call('HGET', KEYS[1], ARGV[1])
if e and e ~= '-' then return e end
local n = tonumber(ARGV[2])
local start = string.format('%d', redis.call('INCRBY', KEYS[2], n) - n)
redis.call('HSET', KEYS[1], ARGV[1], start)
return start
",
    )
});

/// Marks a listed name as deleted (a name never listed is left alone).
static MARK: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], '-')
end
return 1
",
    )
});

/// Creates the category unless it exists: `{created, shards, created_ms,
/// sc, start, gen}` (start false until patched).
static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'created', 'sc', 'start', 'gen')
if m[1] then return {0, m[1], m[2], m[3], m[4], m[5]} end
local gen = string.format('%d', redis.call('HINCRBY', KEYS[1], 'gen', 1))
redis.call('HSET', KEYS[1], 'shards', ARGV[1], 'created', ARGV[2], 'sc', ARGV[3])
return {1, ARGV[1], ARGV[2], ARGV[3], false, gen}
",
    )
});

/// Stores the placement start of incarnation ARGV[1] unless it has one;
/// the stored start, or false when that incarnation is gone.
static PATCH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen', 'start')
if not m[1] or m[2] ~= ARGV[1] then return false end
if m[3] then return m[3] end
redis.call('HSET', KEYS[1], 'start', ARGV[2])
return ARGV[2]
",
    )
});

/// Lua: `drop(meta, prefix, m)` deletes the category whose `HMGET meta
/// shards gen` is `m`: its record fields and its incarnation's keys.
const DROP: &str = r"
local function drop(meta, prefix, m)
  local p = prefix .. m[2] .. ':'
  for s = 0, tonumber(m[1]) - 1 do
    redis.call('UNLINK', p .. 'ids:' .. s, p .. 'body:' .. s)
  end
  redis.call('UNLINK', p .. 'stats')
  redis.call('HDEL', meta, 'shards', 'created', 'sc', 'start')
end
";

/// Deletes the category; 1 when it existed.
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{DROP}
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return 0 end
drop(KEYS[1], KEYS[2], m)
return 1
"
    ))
});

/// Deletes the category if it holds no document; how many it holds, or -1
/// when it does not exist.
static DELETE_IF_EMPTY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{DROP}
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return -1 end
local p = KEYS[2] .. m[2] .. ':'
local n = 0
for s = 0, tonumber(m[1]) - 1 do
  n = n + redis.call('HLEN', p .. 'body:' .. s)
end
if n == 0 then drop(KEYS[1], KEYS[2], m) end
return n
"
    ))
});

/// Writes documents (ARGV: shard, id, body triples), all or none; 0 when
/// the category does not exist or a shard is out of range, 1 when written.
static PUT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return 0 end
local shards = tonumber(m[1])
for i = 1, #ARGV, 3 do
  local s = tonumber(ARGV[i])
  if not s or s >= shards then return 0 end
end
if #ARGV == 0 then return 1 end
local v = redis.call('HINCRBY', KEYS[1], 'ver', 1)
local p = KEYS[2] .. m[2] .. ':'
local stats = p .. 'stats'
for i = 1, #ARGV, 3 do
  local s, id, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local bodies = p .. 'body:' .. s
  local old = redis.call('HSTRLEN', bodies, id)
  if redis.call('HSET', bodies, id, body) == 1 then
    redis.call('ZADD', p .. 'ids:' .. s, 0, id)
  end
  redis.call('HINCRBY', stats, 'b:' .. s, #body - old)
  redis.call('HSET', stats, 'v:' .. s, v)
end
return 1
",
    )
});

/// Deletes documents (ARGV: shard, id pairs); how many existed, or -1 when
/// the category does not exist.
static DELETE_DOCS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return -1 end
local shards = tonumber(m[1])
local p = KEYS[2] .. m[2] .. ':'
local stats = p .. 'stats'
local removed = 0
local changed = {}
for i = 1, #ARGV, 2 do
  local s, id = ARGV[i], ARGV[i + 1]
  local n = tonumber(s)
  if n and n < shards then
    local bodies = p .. 'body:' .. s
    local old = redis.call('HSTRLEN', bodies, id)
    if redis.call('HDEL', bodies, id) == 1 then
      redis.call('ZREM', p .. 'ids:' .. s, id)
      redis.call('HINCRBY', stats, 'b:' .. s, -old)
      changed[s] = true
      removed = removed + 1
    end
  end
end
if removed > 0 then
  local v = redis.call('HINCRBY', KEYS[1], 'ver', 1)
  for s in pairs(changed) do redis.call('HSET', stats, 'v:' .. s, v) end
end
return removed
",
    )
});

/// One document: `{0}` no category, `{1}` no document, `{1, body}`.
static GET: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return {0} end
if tonumber(ARGV[1]) >= tonumber(m[1]) then return {1} end
local body = redis.call('HGET', KEYS[2] .. m[2] .. ':body:' .. ARGV[1], ARGV[2])
if not body then return {1} end
return {1, body}
",
    )
});

/// A page of one shard (ARGV: shard, `(after` or `-`, limit): `{0}` no
/// category, else `{1, id, body, id, body, ...}`.
static SCAN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return {0} end
if tonumber(ARGV[1]) >= tonumber(m[1]) or ARGV[3] == '0' then return {1} end
local p = KEYS[2] .. m[2] .. ':'
local ids = redis.call('ZRANGE', p .. 'ids:' .. ARGV[1], ARGV[2], '+', 'BYLEX', 'LIMIT', 0, ARGV[3])
local bodies = p .. 'body:' .. ARGV[1]
local out = {1}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', bodies, id)
  if body then
    out[#out + 1] = id
    out[#out + 1] = body
  end
end
return out
",
    )
});

/// Per-shard stats: `{0}` no category, else `{1, docs, bytes, version, ...}`.
static STATS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'shards', 'gen')
if not m[1] then return {0} end
local p = KEYS[2] .. m[2] .. ':'
local stats = p .. 'stats'
local out = {1}
for s = 0, tonumber(m[1]) - 1 do
  out[#out + 1] = redis.call('HLEN', p .. 'body:' .. s)
  out[#out + 1] = redis.call('HGET', stats, 'b:' .. s) or '0'
  out[#out + 1] = redis.call('HGET', stats, 'v:' .. s) or '0'
end
return out
",
    )
});

/// A category's record as stored in its hash.
struct Meta {
    shards: u32,
    created_at_ms: u64,
    slot_count: u32,
    start: Option<u64>,
    incarnation: u64,
}

impl Meta {
    /// From the values of [`RECORD_FIELDS`]; `None` when the category does
    /// not exist.
    fn parse(name: &str, v: &[Value]) -> Result<Option<Meta>> {
        let [shards, created, sc, start, incarnation] = v else {
            return Err(corrupt(name, "a record of the wrong length"));
        };
        let Some(shards) = opt_num(name, shards)? else {
            return Ok(None);
        };
        let field = |v: &Value| opt_num(name, v)?.ok_or_else(|| corrupt(name, "a missing field"));
        Ok(Some(Meta {
            shards: u32::try_from(shards).map_err(|_| corrupt(name, "shards"))?,
            created_at_ms: field(created)?,
            slot_count: u32::try_from(field(sc)?).map_err(|_| corrupt(name, "slot count"))?,
            start: opt_num(name, start)?,
            incarnation: field(incarnation)?,
        }))
    }

    fn record(&self, name: &str, start: u64) -> CategoryRecord {
        let slot_count = u64::from(self.slot_count.max(1));
        CategoryRecord {
            name: name.to_string(),
            shards: self.shards,
            slots: (0..u64::from(self.shards))
                .map(|i| (start.wrapping_add(i) % slot_count) as u32)
                .collect(),
            created_at_ms: self.created_at_ms,
        }
    }
}

impl Docs for RedisStore {
    fn create_category(
        &self,
        name: &str,
        shards: u32,
        slot_count: u32,
        now_ms: u64,
    ) -> Pending<(CategoryRecord, bool)> {
        let placed = self.place(name, shards);
        let created = self.conn.script::<Vec<Value>>(
            &CREATE,
            vec![self.keys.category(name, "cat")],
            vec![arg(shards), arg(now_ms), arg(slot_count)],
        );
        let (store, name) = (self.clone(), name.to_string());
        Box::pin(async move {
            let reply = created.await?;
            let (flag, fields) = reply
                .split_first()
                .ok_or_else(|| corrupt(&name, "an empty reply"))?;
            let meta = Meta::parse(&name, fields)?
                .ok_or_else(|| corrupt(&name, "no record after create"))?;
            let start = match meta.start {
                Some(start) => start,
                None => store.patch(&name, meta.incarnation, placed.await?).await?,
            };
            Ok((meta.record(&name, start), num(&name, flag)? == 1))
        })
    }

    fn category(&self, name: &str) -> Pending<Option<CategoryRecord>> {
        let fields = self.read_meta(name);
        let (store, name) = (self.clone(), name.to_string());
        Box::pin(async move {
            let fields = fields.await?;
            store.record_of(name, fields).await
        })
    }

    fn categories(&self) -> Pending<Vec<CategoryRecord>> {
        let names = self.conn.query::<Vec<String>>(
            redis::cmd("HKEYS")
                .arg(self.keys.catalog("categories"))
                .clone(),
        );
        let store = self.clone();
        Box::pin(async move {
            let mut names = names.await?;
            names.sort();
            // One pipeline: every listed name's record asked at once.
            let reads: Vec<_> = names.iter().map(|n| store.read_meta(n)).collect();
            let mut records = Vec::new();
            for (name, read) in names.into_iter().zip(reads) {
                records.push(store.record_of(name, read.await?));
            }
            let mut out = Vec::new();
            for record in records {
                // Listed without a record: deleted (or never created).
                if let Some(record) = record.await? {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    fn delete_category(&self, name: &str) -> Pending<bool> {
        let deleted = self
            .conn
            .script::<i64>(&DELETE, self.category_keys(name), Vec::new());
        let mark = self.mark(name);
        Box::pin(async move {
            let deleted = deleted.await? == 1;
            mark.await?;
            Ok(deleted)
        })
    }

    fn delete_category_if_empty(&self, name: &str) -> Pending<u64> {
        let held = self
            .conn
            .script::<i64>(&DELETE_IF_EMPTY, self.category_keys(name), Vec::new());
        let (store, name) = (self.clone(), name.to_string());
        Box::pin(async move {
            let held = held.await?;
            if held == 0 {
                // Left unmarked (a dropped future, a crash), the name is
                // listed live without a record: harmless (module docs).
                store.mark(&name).await?;
            }
            u64::try_from(held).map_err(|_| not_found(&name))
        })
    }

    fn put_docs(&self, category: &str, docs: Vec<DocWrite>) -> Pending<()> {
        let mut args = Vec::with_capacity(docs.len() * 3);
        for d in docs {
            args.push(arg(d.shard));
            args.push(arg(d.id));
            args.push(d.body);
        }
        let put = self
            .conn
            .script::<i64>(&PUT, self.category_keys(category), args);
        let category = category.to_string();
        Box::pin(async move {
            match put.await? {
                1 => Ok(()),
                _ => Err(not_found(&category)),
            }
        })
    }

    fn get_doc(&self, category: &str, shard: u32, id: &str) -> Pending<Option<Vec<u8>>> {
        let got = self.conn.script::<Vec<Value>>(
            &GET,
            self.category_keys(category),
            vec![arg(shard), arg(id)],
        );
        let category = category.to_string();
        Box::pin(async move {
            let reply = got.await?;
            let mut rest = found(&category, &reply)?.iter();
            rest.next().map(|b| bytes(&category, b)).transpose()
        })
    }

    fn delete_docs(&self, category: &str, docs: Vec<(u32, String)>) -> Pending<u64> {
        let mut args = Vec::with_capacity(docs.len() * 2);
        for (shard, id) in docs {
            args.push(arg(shard));
            args.push(arg(id));
        }
        let removed = self
            .conn
            .script::<i64>(&DELETE_DOCS, self.category_keys(category), args);
        let category = category.to_string();
        Box::pin(async move { u64::try_from(removed.await?).map_err(|_| not_found(&category)) })
    }

    fn scan_shard(
        &self,
        category: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<StoredDoc>> {
        let from = match after {
            Some(after) => format!("({after}"),
            None => "-".to_string(),
        };
        // A negative count would mean all; cap instead at what Redis parses.
        let limit = limit.min(i64::MAX as usize);
        let page = self.conn.script::<Vec<Value>>(
            &SCAN,
            self.category_keys(category),
            vec![arg(shard), arg(from), arg(limit.to_string())],
        );
        let category = category.to_string();
        Box::pin(async move {
            let reply = page.await?;
            let rest = found(&category, &reply)?;
            let mut out = Vec::with_capacity(rest.len() / 2);
            for pair in rest.chunks(2) {
                let [id, body] = pair else {
                    return Err(corrupt(&category, "a scan reply of odd length"));
                };
                let id = String::from_utf8(bytes(&category, id)?)
                    .map_err(|_| corrupt(&category, "a document id that is not UTF-8"))?;
                out.push(StoredDoc {
                    id,
                    body: bytes(&category, body)?,
                });
            }
            Ok(out)
        })
    }

    fn shard_stats(&self, category: &str) -> Pending<Vec<ShardStats>> {
        let stats =
            self.conn
                .script::<Vec<Value>>(&STATS, self.category_keys(category), Vec::new());
        let category = category.to_string();
        Box::pin(async move {
            let reply = stats.await?;
            let rest = found(&category, &reply)?;
            let mut out = Vec::with_capacity(rest.len() / 3);
            for triple in rest.chunks(3) {
                let [docs, bytes, version] = triple else {
                    return Err(corrupt(&category, "a stats reply of the wrong length"));
                };
                out.push(ShardStats {
                    docs: num(&category, docs)?,
                    bytes: num(&category, bytes)?,
                    version: num(&category, version)?,
                });
            }
            Ok(out)
        })
    }

    fn shares_queries(&self) -> bool {
        true
    }

    fn put_query_part(
        &self,
        query_id: &str,
        shard: u32,
        part: Vec<u8>,
        ttl_ms: u64,
    ) -> Pending<bool> {
        crate::queries::put(self, query_id, shard, part, ttl_ms)
    }

    fn query_parts(&self, query_id: &str, shards: Vec<u32>) -> Pending<Vec<Option<Vec<u8>>>> {
        crate::queries::get(self, query_id, shards)
    }

    fn drop_query_parts(&self, query_id: &str) -> Pending<()> {
        crate::queries::drop_all(self, query_id)
    }
}

impl RedisStore {
    /// The keys every category script gets: its hash, and the prefix its
    /// scripts derive the incarnation's keys from (same hash tag).
    fn category_keys(&self, name: &str) -> Vec<String> {
        vec![
            self.keys.category(name, "cat"),
            self.keys.category(name, ""),
        ]
    }

    /// Issues `HMGET` of a category's record fields now.
    fn read_meta(&self, name: &str) -> Pending<Vec<Value>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.category(name, "cat")).arg(&RECORD_FIELDS);
        self.conn.query(cmd)
    }

    /// Issues `PLACE` now: the name's placement start.
    fn place(&self, name: &str, shards: u32) -> Pending<u64> {
        let keys = vec![
            self.keys.catalog("categories"),
            self.keys.catalog("category-next"),
        ];
        let start = self
            .conn
            .script::<String>(&PLACE, keys, vec![arg(name), arg(shards)]);
        let name = name.to_string();
        Box::pin(async move {
            let start = start.await?;
            start
                .parse()
                .map_err(|_| corrupt(&name, "a listed placement that is not a number"))
        })
    }

    /// Issues `MARK` now: the name's list entry says deleted.
    fn mark(&self, name: &str) -> Pending<i64> {
        self.conn.script(
            &MARK,
            vec![self.keys.catalog("categories")],
            vec![arg(name)],
        )
    }

    /// Stores `start` in incarnation `incarnation` unless it has one; the start the
    /// record keeps (`start` itself when that incarnation is gone).
    fn patch(&self, name: &str, incarnation: u64, start: u64) -> Pending<u64> {
        let stored = self.conn.script::<Option<String>>(
            &PATCH,
            vec![self.keys.category(name, "cat")],
            vec![arg(incarnation.to_string()), arg(start.to_string())],
        );
        let name = name.to_string();
        Box::pin(async move {
            match stored.await? {
                Some(s) => s
                    .parse()
                    .map_err(|_| corrupt(&name, "a placement that is not a number")),
                None => Ok(start),
            }
        })
    }

    /// The record from its hash's fields, placed first if it has no start
    /// yet (a create not finished: see the module docs).
    fn record_of(&self, name: String, fields: Vec<Value>) -> Pending<Option<CategoryRecord>> {
        let meta = match Meta::parse(&name, &fields) {
            Ok(Some(meta)) => meta,
            other => return Box::pin(async move { other.map(|_| None) }),
        };
        if let Some(start) = meta.start {
            let record = meta.record(&name, start);
            return Box::pin(async move { Ok(Some(record)) });
        }
        let placed = self.place(&name, meta.shards);
        let store = self.clone();
        Box::pin(async move {
            let start = store.patch(&name, meta.incarnation, placed.await?).await?;
            Ok(Some(meta.record(&name, start)))
        })
    }
}

/// The rest of a `{flag, ...}` reply; `NotFound` when the flag is 0.
fn found<'a>(category: &str, reply: &'a [Value]) -> Result<&'a [Value]> {
    let (flag, rest) = reply
        .split_first()
        .ok_or_else(|| corrupt(category, "an empty reply"))?;
    match num(category, flag)? {
        0 => Err(not_found(category)),
        _ => Ok(rest),
    }
}

fn bytes(category: &str, v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        _ => Err(corrupt(category, "a reply that is not a string")),
    }
}

fn num(category: &str, v: &Value) -> Result<u64> {
    opt_num(category, v)?.ok_or_else(|| corrupt(category, "a missing number"))
}

fn opt_num(category: &str, v: &Value) -> Result<Option<u64>> {
    let text = match v {
        Value::Nil => return Ok(None),
        Value::Int(n) => {
            return u64::try_from(*n)
                .map(Some)
                .map_err(|_| corrupt(category, "a negative number"));
        }
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s.as_str()),
        _ => None,
    };
    text.and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| corrupt(category, "a field that is not a number"))
}

/// `NotFound` carries the bare category name.
fn not_found(category: &str) -> Error {
    Error::NotFound(category.to_string())
}

fn corrupt(category: &str, what: &str) -> Error {
    Error::Corrupt(format!("category {category}: {what}"))
}
