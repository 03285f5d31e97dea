//! Blobs (`shoal_store::Blobs`): content in 1 MiB chunks, each a Redis
//! string, so a ranged read fetches only the chunks it covers; metadata,
//! the listing index and the bookkeeping of uploads under one hash tag,
//! `{blobs}` (`B` = `NS:{blobs}:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `B` `m:KEY` | hash | one blob: `cid` (its content id), `size`, `sha` (hex SHA-256; absent for a fixed-size blob), `ct` (content type, absent when none), `ver`, `mut` (`1` fixed-size, `0` uploaded), `at` (`created_at_ms`) |
//! | `B` `keys` | zset, score 0 | every blob's key, for listing by prefix (`ZRANGE ... BYLEX LIMIT`) |
//! | `B` `version` | string | the last version given out (one counter for every blob and batch) |
//! | `B` `cid` | string | the last content id number given out |
//! | `B` `pending` | zset | content ids of uploads in progress, scored by their last write (ms since the epoch, this node's clock) |
//! | `B` `pendn` | hash | content id of an upload in progress → how many chunks it has issued |
//! | `B` `garbage` | zset | `CID:N` of content no blob names anymore whose `N` chunks may remain (replaced, deleted, abandoned), scored by when |
//! | `B` `f:CID:I` | string | chunk `I` of a fixed-size blob's content (absent: zeros) |
//! | `B` `scratch` | string | a field straddling two chunks of a fixed-size blob, while a batch runs (deleted at once) |
//! | `NS:{bc:CID}:I` | string | chunk `I` of an uploaded content: every chunk but the last is exactly 1 MiB |
//!
//! A content id (`CID`, `<n>-<ms>`: a counter and the time it was taken)
//! names one upload or one creation and is never given again, so a chunk
//! key, and a chunk cached on disk, always holds the same bytes.
//!
//! Uploads write their chunks (each a `SET` in the content's own slot, at
//! most two awaiting Redis's reply, so memory is bounded and a slow Redis
//! holds the client back) while registered in `pending`; the commit, issued
//! once every chunk write is acknowledged (a failed write must not become
//! part of a blob), is one script that checks the upload is still
//! registered, writes the
//! metadata and the index, and queues the replaced content in `garbage`;
//! the committer then `UNLINK`s those chunks and drops the garbage entry.
//! A dropped upload moves itself to `garbage` and unlinks its chunks at
//! once; `blob_sweep` moves uploads idle since before its time to
//! `garbage` and finishes every garbage entry (a node killed mid-upload or
//! mid-delete).
//!
//! Fixed-size blobs keep their chunks under `{blobs}` with the metadata
//! (not in a slot of their own): a batch is ONE script that checks the
//! blob, validates every operation against its size, applies them with
//! `BITFIELD`/`SETRANGE` on the chunks and takes a version from the
//! store-wide counter, all atomically, which needs one slot. Fixed-size
//! blobs are at most 256 MiB; in a cluster they share a node (like `{kv}`).
//! A field that straddles two chunks is copied into `scratch`, changed
//! there by `BITFIELD` and copied back. Chunks are created by the first
//! write into them: a missing chunk, or a short one, reads as zeros.
//!
//! Readers: an uploaded content streams chunk by chunk (two fetched ahead);
//! if it is deleted under the reader, the next chunk is missing and the
//! stream ends with an error. A fixed-size content is read in windows of
//! 4 MiB, each one script that checks the blob still has the version the
//! read started with (a range of up to 4 MiB is one snapshot; a longer
//! read that a batch lands in the middle of ends with an error).
//!
//! The chunk cache (`Options::blob_cache_dir`): chunks of uploaded content
//! (immutable) are kept in files `CID-I.chunk` on this node's disk, written
//! under a temporary name and renamed, evicted least recently used first
//! once their total passes `Options::blob_cache_bytes` (the newest chunk is
//! always kept). `blob_read` serves from it and fills it; `blob_files`
//! fetches the chunks of the range into it and answers pieces of those
//! files. Files left by an earlier run are deleted when the store opens
//! (content ids restart if Redis is replaced). Without a cache directory
//! `blob_files` answers `None` (this store then never has files).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use shoal_store::blobs::{MAX_BIT_ARGUMENT, validate_ops};
use shoal_store::{
    Applied, BitType, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, BlobStream, BlobUpload,
    Blobs, Created, Error, FilePiece, Overflow, Pending, Result,
};

use crate::RedisStore;
use crate::conn::{Lua, arg};

/// The bytes of one chunk (the Lua scripts say 1048576 too).
pub(crate) const CHUNK: u64 = 1 << 20;

/// Chunk writes of one upload awaiting Redis's reply before it buffers more.
const WRITES_IN_FLIGHT: usize = 2;

/// Chunks a reader of uploaded content fetches ahead of its consumer.
const READ_AHEAD: usize = 2;

/// The bytes of a fixed-size blob one read script answers.
const FIXED_WINDOW: u64 = 4 * CHUNK;

/// Chunk keys per `UNLINK`.
const UNLINK_BATCH: u64 = 256;

/// Garbage entries a sweep takes at a time, and at most in all per call.
const SWEEP_BATCH: usize = 100;
const SWEEP_MAX: usize = 10_000;

/// The metadata fields, in the order every script answers them.
const FIELDS: [&str; 7] = ["cid", "size", "sha", "ct", "ver", "mut", "at"];

/// `meta(k)`: a blob's fields (`FIELDS` order) or nil. `retire(m, fprefix,
/// garbage, now)`: drops a content no blob names anymore: a fixed one's
/// chunks are unlinked here (at most 256), an uploaded one is queued in
/// `garbage` (answers its member, or '' when there is nothing to queue).
/// `bump(k)`: the next version, as exact text.
pub(crate) const BLOB_LUA: &str = r"
local CHUNK = 1048576
local function meta(k)
  local m = redis.call('HMGET', k, 'cid', 'size', 'sha', 'ct', 'ver', 'mut', 'at')
  if not m[1] then return nil end
  return m
end
local function nchunks(size)
  return math.floor((tonumber(size) + CHUNK - 1) / CHUNK)
end
local function retire(m, fprefix, garbage, now)
  local n = nchunks(m[2])
  if m[6] == '1' then
    for i = 0, n - 1 do redis.call('UNLINK', fprefix .. m[1] .. ':' .. i) end
    return ''
  end
  if n == 0 then return '' end
  local g = m[1] .. ':' .. n
  redis.call('ZADD', garbage, now, g)
  return g
end
local function bump(k)
  redis.call('INCR', k)
  return redis.call('GET', k)
end
";

/// KEYS: cid counter, pending, pendn. ARGV: now. Registers an upload;
/// returns its content id.
static START: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local cid = redis.call('INCR', KEYS[1]) .. '-' .. ARGV[1]
redis.call('ZADD', KEYS[2], ARGV[1], cid)
redis.call('HSET', KEYS[3], cid, 0)
return cid
",
    )
});

/// KEYS: pending, pendn. ARGV: cid, chunks issued, now. Returns 1, or 0
/// when the upload is no longer registered (swept).
static TOUCH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
",
    )
});

/// KEYS: pending, pendn, garbage. ARGV: cid, chunks issued, now. An upload
/// given up: moved to `garbage` (whose member it returns, or '').
static ABORT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] == '0' then return '' end
local g = ARGV[1] .. ':' .. ARGV[2]
redis.call('ZADD', KEYS[3], ARGV[3], g)
return g
",
    )
});

/// KEYS: meta, keys, version, pending, pendn, garbage. ARGV: key, cid,
/// size, sha, has content type (`1`/`0`), content type, now, fixed chunk
/// prefix. Returns `{'ok', ver, garbage member or ''}`, or `{'gone'}` when
/// the upload is no longer registered.
static COMMIT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}
if not redis.call('ZSCORE', KEYS[4], ARGV[2]) then return {{'gone'}} end
local old = meta(KEYS[1])
local g = ''
if old then g = retire(old, ARGV[8], KEYS[6], ARGV[7]) end
local v = bump(KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'cid', ARGV[2], 'size', ARGV[3], 'sha', ARGV[4], 'ver', v, 'mut', '0', 'at', ARGV[7])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'ct', ARGV[6]) end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
return {{'ok', v, g}}
"
    ))
});

/// KEYS: meta, keys, garbage. ARGV: key, fixed chunk prefix, now. Returns
/// `{'1', garbage member or ''}` when there was a blob, `{'0'}`.
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}
local old = meta(KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not old then return {{'0'}} end
local g = retire(old, ARGV[2], KEYS[3], ARGV[3])
redis.call('DEL', KEYS[1])
return {{'1', g}}
"
    ))
});

/// KEYS: meta, keys, version, cid counter, garbage. ARGV: key, size,
/// replace (`1`/`0`), now, fixed chunk prefix. Returns `{'exists', FIELDS}`
/// or `{'created', ver, garbage member or '', cid}`.
static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}
local old = meta(KEYS[1])
if old and ARGV[3] ~= '1' then return {{'exists', unpack(old)}} end
local g = ''
if old then g = retire(old, ARGV[5], KEYS[5], ARGV[4]) end
local cid = redis.call('INCR', KEYS[4]) .. '-' .. ARGV[4]
local v = bump(KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'cid', cid, 'size', ARGV[2], 'ver', v, 'mut', '1', 'at', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {{'created', v, g, cid}}
"
    ))
});

/// `apply_ops(meta key, version key, scratch key, fixed chunk prefix, base,
/// n)`: a batch of `n` operations whose arguments are five each from
/// `ARGV[base]`: kind, type, offset, argument, overflow. Kinds: `g` get,
/// `s` set (argument already fitted: never overflows), `n` a set that
/// fails (answers nil), `i` incrby, `w` write bytes (offset in bytes,
/// argument the bytes), `x` invalid whatever the size. Returns `{'nf'}`,
/// `{'nm'}` (not mutable), `{'inv', size}` (nothing changed; Rust names
/// the bad operation), or `{'ok', FIELDS after the batch, answer...}` with
/// nil for no answer. Everything that refuses comes before the first
/// write, so a script may go on to other writes only after `'ok'` (the
/// channels' publish does). Needs `BLOB_LUA` before it.
pub(crate) const APPLY_LUA: &str = r"
local function apply_ops(mkey, vkey, scratch, fprefix, base, n)
  local m = meta(mkey)
  if not m then return {'nf'} end
  if m[6] ~= '1' then return {'nm'} end
  local size = tonumber(m[2])
  local function span(b)
    local kind, off = ARGV[b], tonumber(ARGV[b + 2])
    if kind == 'w' then return off, off + #ARGV[b + 3] end
    local bits = tonumber(string.sub(ARGV[b + 1], 2))
    return math.floor(off / 8), math.floor((off + bits + 7) / 8)
  end
  for i = 0, n - 1 do
    local b = base + i * 5
    if ARGV[b] == 'x' then return {'inv', m[2]} end
    local s, e = span(b)
    if e > size then return {'inv', m[2]} end
  end
  local fp = fprefix .. m[1] .. ':'
  local function pad(s, len)
    if #s < len then return s .. string.rep('\0', len - #s) end
    return s
  end
  local out = {'ok'}
  for j = 1, 7 do out[1 + j] = m[j] end
  for i = 0, n - 1 do
    local b = base + i * 5
    local kind, ty, off, val, ovf = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
    local r = false
    if kind == 'w' then
      local pos, done = off, 0
      while done < #val do
        local c = math.floor(pos / CHUNK)
        local at = pos - c * CHUNK
        local take = math.min(CHUNK - at, #val - done)
        redis.call('SETRANGE', fp .. c, at, string.sub(val, done + 1, done + take))
        done = done + take
        pos = pos + take
      end
    elseif kind ~= 'n' then
      local op = 'GET'
      if kind == 's' then op = 'SET' elseif kind == 'i' then op = 'INCRBY' end
      local sb, eb = span(b)
      local c, c2 = math.floor(sb / CHUNK), math.floor((eb - 1) / CHUNK)
      if c == c2 then
        local bit = off - c * CHUNK * 8
        local rs
        if op == 'GET' then
          rs = redis.call('BITFIELD', fp .. c, 'GET', ty, bit)
        else
          rs = redis.call('BITFIELD', fp .. c, 'OVERFLOW', ovf, op, ty, bit, val)
        end
        r = rs[1]
      else
        local k1, k2 = fp .. c, fp .. c2
        local at1 = sb - c * CHUNK
        local len1, len2 = CHUNK - at1, eb - c2 * CHUNK
        local s1 = pad(redis.call('GETRANGE', k1, at1, CHUNK - 1), len1)
        local s2 = pad(redis.call('GETRANGE', k2, 0, len2 - 1), len2)
        redis.call('SET', scratch, s1 .. s2)
        local bit = off - sb * 8
        local rs
        if op == 'GET' then
          rs = redis.call('BITFIELD', scratch, 'GET', ty, bit)
        else
          rs = redis.call('BITFIELD', scratch, 'OVERFLOW', ovf, op, ty, bit, val)
        end
        r = rs[1]
        if op ~= 'GET' and r then
          local w = redis.call('GET', scratch)
          redis.call('SETRANGE', k1, at1, string.sub(w, 1, len1))
          redis.call('SETRANGE', k2, 0, string.sub(w, len1 + 1))
        end
        redis.call('DEL', scratch)
      end
    end
    out[9 + i] = r
  end
  local v = bump(vkey)
  redis.call('HSET', mkey, 'ver', v)
  out[6] = v
  return out
end
";

/// KEYS: meta, version, scratch. ARGV: fixed chunk prefix, then five per
/// operation (see `APPLY_LUA`).
static APPLY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        "{BLOB_LUA}{APPLY_LUA}return apply_ops(KEYS[1], KEYS[2], KEYS[3], ARGV[1], 2, (#ARGV - 1) / 5)\n"
    ))
});

/// KEYS: meta. ARGV: fixed chunk prefix, offset, len, expected cid and
/// version (both empty: any). Returns `{}` (no blob), `{'x'}` (not the
/// expected content), or `FIELDS` and, for a fixed-size blob, the first
/// and end byte of `[offset, offset + len)` clamped to the size, then one
/// `GETRANGE` per chunk of it (short or empty where the chunk is: zeros).
static READ: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}
local m = meta(KEYS[1])
if ARGV[4] ~= '' and (not m or m[1] ~= ARGV[4] or m[5] ~= ARGV[5]) then return {{'x'}} end
if not m then return {{}} end
if m[6] ~= '1' then return m end
local size = tonumber(m[2])
local s = math.min(tonumber(ARGV[2]), size)
local e = math.min(s + tonumber(ARGV[3]), size)
local out = m
out[8] = string.format('%d', s)
out[9] = string.format('%d', e)
local fp = ARGV[1] .. m[1] .. ':'
local pos = s
while pos < e do
  local c = math.floor(pos / CHUNK)
  local to = math.min((c + 1) * CHUNK, e)
  out[#out + 1] = redis.call('GETRANGE', fp .. c, pos - c * CHUNK, to - c * CHUNK - 1)
  pos = to
end
return out
"
    ))
});

/// KEYS: keys. ARGV: meta key prefix, min, max (BYLEX), limit + 1. Returns
/// `{next, key, FIELDS..., key, FIELDS..., ...}`; `next` is the last key
/// looked at when more follow, else empty.
static LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}
local limit = tonumber(ARGV[4]) - 1
local ks = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'BYLEX', 'LIMIT', 0, limit + 1)
local n = #ks
local out = {{''}}
if n > limit then
  n = limit
  out[1] = ks[n]
end
for i = 1, n do
  local m = meta(ARGV[1] .. ks[i])
  if not m then
    redis.call('ZREM', KEYS[1], ks[i])
  else
    out[#out + 1] = ks[i]
    for j = 1, 7 do out[#out + 1] = m[j] end
  end
end
return out
"
    ))
});

/// KEYS: pending, pendn, garbage. ARGV: older than, max, now. Moves up to
/// `max` uploads idle since before `older than` to `garbage`; returns how
/// many.
static SWEEP: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local old = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, cid in ipairs(old) do
  local n = redis.call('HGET', KEYS[2], cid) or '0'
  redis.call('ZREM', KEYS[1], cid)
  redis.call('HDEL', KEYS[2], cid)
  redis.call('ZADD', KEYS[3], ARGV[3], cid .. ':' .. n)
end
return #old
",
    )
});

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn corrupt(key: &str, what: &str) -> Error {
    Error::Corrupt(format!("blob {key:?}: {what}"))
}

fn gone(key: &str) -> Error {
    Error::Unavailable(format!(
        "blob {key:?} was replaced or deleted while it was read"
    ))
}

fn text(key: &str, field: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(key, &format!("{field} is not UTF-8")))
}

fn number(key: &str, field: &str, bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(key, &format!("{field} is not a number")))
}

/// A blob as stored: its metadata and its content id.
#[derive(Debug, Clone)]
struct Stored {
    meta: BlobMeta,
    cid: String,
}

/// A blob from its fields in `FIELDS` order; `None` when absent.
fn stored(key: &str, fields: &[Option<Vec<u8>>]) -> Result<Option<Stored>> {
    let [cid, size, sha, ct, ver, mutable, at] = fields else {
        if fields.is_empty() {
            return Ok(None);
        }
        return Err(corrupt(key, "unexpected metadata reply"));
    };
    let Some(cid) = cid else { return Ok(None) };
    let need = |field: &str, v: &Option<Vec<u8>>| -> Result<u64> {
        number(key, field, v.as_deref().unwrap_or_default())
    };
    Ok(Some(Stored {
        meta: BlobMeta {
            key: key.to_string(),
            size: need("size", size)?,
            sha256: sha.as_deref().map(|s| text(key, "sha", s)).transpose()?,
            content_type: ct.as_deref().map(|s| text(key, "ct", s)).transpose()?,
            version: need("ver", ver)?,
            mutable: mutable.as_deref() == Some(b"1"),
            created_at_ms: need("at", at)?,
        },
        cid: text(key, "cid", cid)?,
    }))
}

impl RedisStore {
    fn blob_key(&self, what: &str) -> String {
        self.keys.blobs(what)
    }
    fn blob_meta_key(&self, key: &str) -> String {
        self.blob_key(&format!("m:{key}"))
    }
    /// The keys of `apply_ops` for the blob `key`: meta, version, scratch.
    pub(crate) fn blob_apply_keys(&self, key: &str) -> Vec<String> {
        vec![
            self.blob_meta_key(key),
            self.blob_key("version"),
            self.blob_key("scratch"),
        ]
    }

    /// The prefix of a fixed-size content's chunk keys (`CID:I` follows).
    pub(crate) fn blob_fixed_prefix(&self) -> String {
        self.blob_key("f:")
    }

    fn blob_meta_cmd(&self, key: &str) -> Pending<Vec<Option<Vec<u8>>>> {
        let cmd = redis::cmd("HMGET")
            .arg(self.blob_meta_key(key))
            .arg(&FIELDS)
            .clone();
        self.conn.query(cmd)
    }

    /// Issues `UNLINK`s of chunks `0..n` of an uploaded content now.
    fn unlink_chunks(&self, cid: &str, n: u64) -> Vec<Pending<i64>> {
        let mut out = Vec::new();
        let mut from = 0;
        while from < n {
            let to = (from + UNLINK_BATCH).min(n);
            let mut cmd = redis::cmd("UNLINK");
            for i in from..to {
                cmd.arg(self.keys.blob_chunk(cid, i));
            }
            out.push(self.conn.query(cmd));
            from = to;
        }
        out
    }

    /// Deletes the chunks of a garbage entry (`CID:N`), then the entry.
    fn reclaim(&self, member: &str) -> Pending<()> {
        let Some((cid, n)) = member
            .rsplit_once(':')
            .and_then(|(cid, n)| Some((cid.to_string(), n.parse::<u64>().ok()?)))
        else {
            // Not ours: drop the entry.
            return self.forget_garbage(member);
        };
        if let Some(cache) = &self.blob_cache {
            cache.forget_content(&cid);
        }
        let unlinks = self.unlink_chunks(&cid, n);
        let store = self.clone();
        let member = member.to_string();
        Box::pin(async move {
            for u in unlinks {
                u.await?;
            }
            store.forget_garbage(&member).await
        })
    }

    fn forget_garbage(&self, member: &str) -> Pending<()> {
        let cmd = redis::cmd("ZREM")
            .arg(self.blob_key("garbage"))
            .arg(member)
            .clone();
        let reply = self.conn.query::<i64>(cmd);
        Box::pin(async move { reply.await.map(|_| ()) })
    }

    /// Reclaims a garbage entry a write just made; a failure is left to
    /// the sweep.
    async fn reclaim_now(&self, member: &str) {
        if member.is_empty() {
            return;
        }
        if let Err(e) = self.reclaim(member).await {
            tracing::warn!(content = member, error = %e, "Could not delete a replaced blob's chunks yet; the sweep will.");
        }
    }

    /// A piece `[a, b)` of chunk `index` (of `chunk_len` bytes) of an
    /// uploaded content: from the cache when there, else from Redis (the
    /// whole chunk, into the cache, when there is one). Issued now.
    fn fetch_piece(
        &self,
        key: &str,
        cid: &str,
        index: u64,
        chunk_len: u64,
        a: u64,
        b: u64,
    ) -> Pending<Bytes> {
        let Some(cache) = self.blob_cache.clone() else {
            let cmd = redis::cmd("GETRANGE")
                .arg(self.keys.blob_chunk(cid, index))
                .arg(a)
                .arg(b - 1)
                .clone();
            let reply = self.conn.query::<Vec<u8>>(cmd);
            let key = key.to_string();
            return Box::pin(async move {
                let data = reply.await?;
                if data.len() as u64 != b - a {
                    return Err(gone(&key));
                }
                Ok(Bytes::from(data))
            });
        };
        let cached = cache.lookup(cid, index);
        let fetch = cached.is_none().then(|| self.fetch_chunk(cid, index));
        let store = self.clone();
        let (key, cid) = (key.to_string(), cid.to_string());
        Box::pin(async move {
            if let Some(path) = cached {
                match read_file_range(path, a, b - a).await {
                    Ok(bytes) => return Ok(bytes),
                    // Evicted meanwhile: from Redis.
                    Err(_) => cache.forget(&cid, index),
                }
            }
            let fetch = fetch.unwrap_or_else(|| store.fetch_chunk(&cid, index));
            let data = fetch.await?.ok_or_else(|| gone(&key))?;
            if data.len() as u64 != chunk_len {
                return Err(gone(&key));
            }
            let data = Bytes::from(data);
            if let Err(e) = cache.insert(&cid, index, data.clone()).await {
                tracing::warn!(error = %e, "Could not write a blob chunk to the cache.");
            }
            Ok(data.slice(a as usize..b as usize))
        })
    }

    fn fetch_chunk(&self, cid: &str, index: u64) -> Pending<Option<Vec<u8>>> {
        let cmd = redis::cmd("GET")
            .arg(self.keys.blob_chunk(cid, index))
            .clone();
        self.conn.query(cmd)
    }

    /// Issues the read script.
    fn read_script(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        expect: Option<(&str, u64)>,
    ) -> Pending<Vec<Option<Vec<u8>>>> {
        let (cid, ver) = match expect {
            Some((cid, ver)) => (cid.to_string(), ver.to_string()),
            None => (String::new(), String::new()),
        };
        self.conn.script(
            &READ,
            vec![self.blob_meta_key(key)],
            vec![
                arg(self.blob_fixed_prefix()),
                arg(offset.to_string()),
                arg(len.to_string()),
                arg(cid),
                arg(ver),
            ],
        )
    }
}

/// The bytes of a fixed-size content's window from a read reply (after
/// `FIELDS`): first, end, then one piece per chunk, zero-padded.
fn fixed_window(key: &str, rest: &[Option<Vec<u8>>]) -> Result<(u64, u64, Bytes)> {
    let [Some(s), Some(e), pieces @ ..] = rest else {
        return Err(corrupt(key, "unexpected read reply"));
    };
    let (s, e) = (number(key, "start", s)?, number(key, "end", e)?);
    let mut out = Vec::with_capacity((e - s) as usize);
    let mut pos = s;
    let mut pieces = pieces.iter();
    while pos < e {
        let to = ((pos / CHUNK + 1) * CHUNK).min(e);
        let piece = pieces
            .next()
            .ok_or_else(|| corrupt(key, "a read reply is short"))?;
        let piece = piece.as_deref().unwrap_or_default();
        let want = (to - pos) as usize;
        out.extend_from_slice(&piece[..piece.len().min(want)]);
        out.resize(out.len() + want - piece.len().min(want), 0);
        pos = to;
    }
    Ok((s, e, Bytes::from(out)))
}

/// Streams `[start, end)` of an uploaded content chunk by chunk, fetching
/// `READ_AHEAD` chunks ahead.
fn uploaded_body(store: RedisStore, stored: &Stored, start: u64, end: u64) -> BlobStream {
    struct State {
        store: RedisStore,
        key: String,
        cid: String,
        size: u64,
        next: u64,
        end: u64,
        queue: VecDeque<Pending<Bytes>>,
    }
    let state = State {
        store,
        key: stored.meta.key.clone(),
        cid: stored.cid.clone(),
        size: stored.meta.size,
        next: start,
        end,
        queue: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        while s.queue.len() < READ_AHEAD && s.next < s.end {
            let index = s.next / CHUNK;
            let base = index * CHUNK;
            let to = (base + CHUNK).min(s.end);
            let chunk_len = CHUNK.min(s.size - base);
            let piece =
                s.store
                    .fetch_piece(&s.key, &s.cid, index, chunk_len, s.next - base, to - base);
            s.queue.push_back(piece);
            s.next = to;
        }
        let piece = s.queue.pop_front()?.await;
        if piece.is_err() {
            s.queue.clear();
            s.next = s.end;
        }
        Some((piece, s))
    }))
}

/// Streams `[start, end)` of a fixed-size content in windows, each checked
/// to be of the version the read started with; `first` is the first
/// window's bytes (from `start`).
fn fixed_body(store: RedisStore, stored: &Stored, first: Bytes, end: u64, pos: u64) -> BlobStream {
    struct State {
        store: RedisStore,
        key: String,
        cid: String,
        version: u64,
        first: Option<Bytes>,
        pos: u64,
        end: u64,
    }
    let state = State {
        store,
        key: stored.meta.key.clone(),
        cid: stored.cid.clone(),
        version: stored.meta.version,
        first: (!first.is_empty()).then_some(first),
        pos,
        end,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if let Some(first) = s.first.take() {
            return Some((Ok(first), s));
        }
        if s.pos >= s.end {
            return None;
        }
        let len = (s.end - s.pos).min(FIXED_WINDOW);
        let reply = s
            .store
            .read_script(&s.key, s.pos, len, Some((&s.cid, s.version)))
            .await;
        let window = reply.and_then(|reply| {
            if reply.len() <= FIELDS.len() {
                return Err(gone(&s.key));
            }
            fixed_window(&s.key, &reply[FIELDS.len()..])
        });
        match window {
            Ok((_, e, bytes)) if e > s.pos => {
                s.pos = e;
                Some((Ok(bytes), s))
            }
            Ok(_) => {
                s.pos = s.end;
                Some((Err(corrupt(&s.key, "a read made no progress")), s))
            }
            Err(e) => {
                s.pos = s.end;
                Some((Err(e), s))
            }
        }
    }))
}

async fn read_file_range(path: PathBuf, offset: u64, len: u64) -> std::io::Result<Bytes> {
    blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len as usize];
        file.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// This node's cache of uploaded chunks on disk (see the module docs).
pub(crate) struct ChunkCache {
    dir: PathBuf,
    cap: u64,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// `(cid, index)` → `(bytes, last use)`.
    files: BTreeMap<(String, u64), (u64, u64)>,
    /// Last use → `(cid, index)`, oldest first.
    lru: BTreeMap<u64, (String, u64)>,
    total: u64,
    tick: u64,
    seq: u64,
}

impl CacheState {
    fn touch(&mut self, k: &(String, u64)) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.files.get_mut(k) else {
            return false;
        };
        self.lru.remove(&entry.1);
        entry.1 = tick;
        self.lru.insert(tick, k.clone());
        true
    }

    fn remove(&mut self, k: &(String, u64)) -> bool {
        match self.files.remove(k) {
            Some((len, tick)) => {
                self.lru.remove(&tick);
                self.total -= len;
                true
            }
            None => false,
        }
    }
}

impl ChunkCache {
    /// Opens `dir` (created if needed), deleting the chunk files an earlier
    /// run left there.
    pub(crate) fn open(dir: &Path, cap: u64) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let ours = path.extension().is_some_and(|e| e == "chunk" || e == "tmp");
            if ours && path.is_file() {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(ChunkCache {
            dir: dir.to_path_buf(),
            cap,
            state: Mutex::new(CacheState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, cid: &str, index: u64) -> PathBuf {
        self.dir.join(format!("{cid}-{index}.chunk"))
    }

    /// The file of a cached chunk (now the most recently used).
    fn lookup(&self, cid: &str, index: u64) -> Option<PathBuf> {
        let found = self.lock().touch(&(cid.to_string(), index));
        found.then(|| self.path(cid, index))
    }

    fn forget(&self, cid: &str, index: u64) {
        let mut s = self.lock();
        if s.remove(&(cid.to_string(), index)) {
            let _ = std::fs::remove_file(self.path(cid, index));
        }
    }

    /// Drops every cached chunk of a content (deleted or replaced).
    fn forget_content(&self, cid: &str) {
        let mut s = self.lock();
        let keys: Vec<(String, u64)> = s
            .files
            .range((cid.to_string(), 0)..=(cid.to_string(), u64::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            s.remove(&k);
            let _ = std::fs::remove_file(self.path(&k.0, k.1));
        }
    }

    /// Writes a chunk into the cache (a temporary file renamed), evicting
    /// the least recently used over the cap; its file.
    async fn insert(
        self: &Arc<Self>,
        cid: &str,
        index: u64,
        data: Bytes,
    ) -> std::io::Result<PathBuf> {
        let cache = self.clone();
        let cid = cid.to_string();
        blocking(move || cache.insert_blocking(&cid, index, &data)).await
    }

    fn insert_blocking(&self, cid: &str, index: u64, data: &[u8]) -> std::io::Result<PathBuf> {
        let seq = {
            let mut s = self.lock();
            s.seq += 1;
            s.seq
        };
        let tmp = self.dir.join(format!("{cid}-{index}.{seq}.tmp"));
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(data));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let path = self.path(cid, index);
        let k = (cid.to_string(), index);
        // Renames and removals under the lock, so an eviction never
        // removes a file renamed in after it was chosen.
        let mut s = self.lock();
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        s.remove(&k);
        s.tick += 1;
        let tick = s.tick;
        s.files.insert(k.clone(), (data.len() as u64, tick));
        s.lru.insert(tick, k);
        s.total += data.len() as u64;
        while s.total > self.cap {
            let Some((&oldest, victim)) = s.lru.first_key_value() else {
                break;
            };
            if oldest == tick {
                break;
            }
            let victim = victim.clone();
            s.remove(&victim);
            let _ = std::fs::remove_file(self.path(&victim.0, victim.1));
        }
        Ok(path)
    }

    /// Chunks one `blob_files` call may bring in (more would evict its own
    /// first pieces): half the cap, at least one.
    fn max_chunks_per_call(&self) -> u64 {
        (self.cap / CHUNK / 2).max(1)
    }
}

/// An upload in progress (see the module docs).
struct RedisUpload {
    store: RedisStore,
    key: String,
    cid: String,
    buf: Vec<u8>,
    /// Chunks issued.
    chunks: u64,
    written: u64,
    hash: Sha256,
    in_flight: VecDeque<Pending<()>>,
    /// A write failed: the upload can only be dropped.
    failed: Option<String>,
    /// Committed (or being committed): dropping it leaves it alone.
    done: bool,
}

impl RedisUpload {
    fn pending_keys(&self) -> Vec<String> {
        vec![self.store.blob_key("pending"), self.store.blob_key("pendn")]
    }

    /// Issues the buffered bytes as the next chunk.
    fn issue_chunk(&mut self) {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK as usize));
        let index = self.chunks;
        self.chunks += 1;
        let touch = self.store.conn.script::<i64>(
            &TOUCH,
            self.pending_keys(),
            vec![
                arg(&self.cid),
                arg(self.chunks.to_string()),
                arg(now_ms().to_string()),
            ],
        );
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.store.keys.blob_chunk(&self.cid, index))
            .arg(data);
        let set = self.store.conn.query::<()>(cmd);
        let key = self.key.clone();
        self.in_flight.push_back(Box::pin(async move {
            if touch.await? == 0 {
                return Err(Error::Unavailable(format!(
                    "the upload of blob {key:?} was idle too long and was swept"
                )));
            }
            set.await
        }));
    }

    async fn wait_writes(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep {
            let Some(write) = self.in_flight.pop_front() else {
                break;
            };
            if let Err(e) = write.await {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::Unavailable(format!(
                "the upload failed before: {why}"
            ))),
            None => Ok(()),
        }
    }
}

impl BlobUpload for RedisUpload {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check()?;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let take = (CHUNK as usize - self.buf.len()).min(rest.len());
                self.buf.extend_from_slice(&rest[..take]);
                self.hash.update(&rest[..take]);
                self.written += take as u64;
                rest = &rest[take..];
                if self.buf.len() == CHUNK as usize {
                    self.wait_writes(WRITES_IN_FLIGHT - 1).await?;
                    self.issue_chunk();
                }
            }
            Ok(())
        })
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>, content_type: Option<String>, now: u64) -> Pending<BlobMeta> {
        if self.failed.is_none() && !self.buf.is_empty() {
            self.issue_chunk();
        }
        Box::pin(async move {
            self.check()?;
            self.wait_writes(0).await?;
            let sha256 = hex::encode(std::mem::replace(&mut self.hash, Sha256::new()).finalize());
            let s = &self.store;
            let keys = vec![
                s.blob_meta_key(&self.key),
                s.blob_key("keys"),
                s.blob_key("version"),
                s.blob_key("pending"),
                s.blob_key("pendn"),
                s.blob_key("garbage"),
            ];
            let args = vec![
                arg(&self.key),
                arg(&self.cid),
                arg(self.written.to_string()),
                arg(&sha256),
                arg(if content_type.is_some() { "1" } else { "0" }),
                arg(content_type.clone().unwrap_or_default()),
                arg(now.to_string()),
                arg(s.blob_fixed_prefix()),
            ];
            let reply = s.conn.script::<Vec<String>>(&COMMIT, keys, args);
            self.done = true;
            let reply = match reply.await {
                Ok(reply) => reply,
                Err(e) => {
                    // Unknown whether it landed: the sweep reclaims the
                    // chunks if it did not.
                    return Err(e);
                }
            };
            match reply.as_slice() {
                [ok, ver, garbage] if ok == "ok" => {
                    let version = number(&self.key, "ver", ver.as_bytes())?;
                    self.store.reclaim_now(garbage).await;
                    Ok(BlobMeta {
                        key: self.key.clone(),
                        size: self.written,
                        sha256: Some(sha256),
                        content_type,
                        version,
                        mutable: false,
                        created_at_ms: now,
                    })
                }
                [g] if g == "gone" => {
                    // Dropping cleans up after the sweep.
                    self.done = false;
                    Err(Error::Unavailable(format!(
                        "the upload of blob {:?} was idle too long and was swept",
                        self.key
                    )))
                }
                _ => Err(corrupt(&self.key, "unexpected reply to a commit")),
            }
        })
    }
}

impl Drop for RedisUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Issued now, after every chunk write: the upload leaves `pending`
        // for `garbage` and its chunks go; the next sweep drops the garbage
        // entry (nothing here waits for Redis).
        let keys = vec![
            self.store.blob_key("pending"),
            self.store.blob_key("pendn"),
            self.store.blob_key("garbage"),
        ];
        let args = vec![
            arg(&self.cid),
            arg(self.chunks.to_string()),
            arg(now_ms().to_string()),
        ];
        drop(self.store.conn.script::<String>(&ABORT, keys, args));
        drop(self.store.unlink_chunks(&self.cid, self.chunks));
    }
}

/// The arguments of one operation for `APPLY` (kind, type, offset,
/// argument, overflow).
pub(crate) fn op_args(op: &BlobOp, out: &mut Vec<Vec<u8>>) {
    // Anything past this is past every fixed-size blob; in Lua's doubles
    // it stays exact.
    const FAR: u64 = 1 << 50;
    let ovf = |o: Overflow| match o {
        Overflow::Wrap => "WRAP",
        Overflow::Sat => "SAT",
        Overflow::Fail => "FAIL",
    };
    let bad_arg = |n: i64| n.unsigned_abs() > MAX_BIT_ARGUMENT as u64;
    let mut push = |kind: &str, ty: String, offset: u64, value: Vec<u8>, overflow: &str| {
        out.extend([
            arg(kind),
            arg(ty),
            arg(offset.to_string()),
            value,
            arg(overflow),
        ]);
    };
    match op {
        BlobOp::Get { ty, offset } if *offset < FAR => {
            push("g", ty.name(), *offset, Vec::new(), "WRAP")
        }
        BlobOp::Set {
            ty,
            offset,
            value,
            overflow,
        } if *offset < FAR && !bad_arg(*value) => match fit(*ty, *value, *overflow) {
            Some(v) => push("s", ty.name(), *offset, arg(v.to_string()), "WRAP"),
            None => push("n", ty.name(), *offset, Vec::new(), "WRAP"),
        },
        BlobOp::IncrBy {
            ty,
            offset,
            by,
            overflow,
        } if *offset < FAR && !bad_arg(*by) => {
            push("i", ty.name(), *offset, arg(by.to_string()), ovf(*overflow))
        }
        BlobOp::WriteAt { offset, data } if *offset < FAR => {
            push("w", String::new(), *offset, data.clone(), "")
        }
        _ => push("x", String::new(), 0, Vec::new(), ""),
    }
}

/// What a `set` stores (`shoal_store::blobs` semantics: a value out of
/// range is wrapped, clamped, or fails), so Redis is only asked to store a
/// value in range (its `SET` saturates a negative unsigned value to the
/// maximum, where Shoal clamps it to 0).
fn fit(ty: BitType, value: i64, overflow: Overflow) -> Option<i64> {
    let (min, max) = (i128::from(ty.min()), i128::from(ty.max()));
    let value = i128::from(value);
    if (min..=max).contains(&value) {
        return Some(value as i64);
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(value.clamp(min, max) as i64),
        Overflow::Wrap => {
            let span = 1i128 << ty.bits;
            let mut wrapped = value.rem_euclid(span);
            if ty.signed && wrapped > max {
                wrapped -= span;
            }
            Some(wrapped as i64)
        }
    }
}

/// What `apply_ops` (`APPLY_LUA`) answered for `ops` on `key`.
pub(crate) fn applied(key: &str, ops: &[BlobOp], reply: &[redis::Value]) -> Result<Applied> {
    let bulk = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let Some(what) = reply.first().and_then(bulk) else {
        return Err(corrupt(key, "unexpected reply to a batch"));
    };
    match what.as_slice() {
        b"nf" => Ok(Applied::NotFound),
        b"nm" => Ok(Applied::NotMutable),
        b"inv" => {
            let size = reply
                .get(1)
                .and_then(bulk)
                .ok_or_else(|| corrupt(key, "unexpected reply to a batch"))?;
            match validate_ops(ops, number(key, "size", &size)?) {
                Err(bad) => Ok(Applied::Invalid(bad)),
                Ok(()) => Err(corrupt(key, "Redis refused a batch Shoal finds valid")),
            }
        }
        b"ok" if reply.len() == 8 + ops.len() => {
            let fields: Vec<Option<Vec<u8>>> = reply[1..8].iter().map(bulk).collect();
            let meta = stored(key, &fields)?
                .ok_or_else(|| corrupt(key, "unexpected reply to a batch"))?
                .meta;
            let mut results = Vec::with_capacity(ops.len());
            for answer in &reply[8..] {
                results.push(match answer {
                    redis::Value::Int(n) => Some(*n),
                    redis::Value::Nil => None,
                    other => {
                        return Err(corrupt(
                            key,
                            &format!("unexpected answer to an operation: {other:?}"),
                        ));
                    }
                });
            }
            Ok(Applied::Done { results, meta })
        }
        _ => Err(corrupt(key, "unexpected reply to a batch")),
    }
}

impl Blobs for RedisStore {
    fn blob_upload(&self, key: &str) -> Pending<Box<dyn BlobUpload>> {
        let keys = vec![
            self.blob_key("cid"),
            self.blob_key("pending"),
            self.blob_key("pendn"),
        ];
        let reply = self
            .conn
            .script::<String>(&START, keys, vec![arg(now_ms().to_string())]);
        let store = self.clone();
        let key = key.to_string();
        Box::pin(async move {
            let cid = reply.await?;
            Ok(Box::new(RedisUpload {
                store,
                key,
                cid,
                buf: Vec::new(),
                chunks: 0,
                written: 0,
                hash: Sha256::new(),
                in_flight: VecDeque::new(),
                failed: None,
                done: false,
            }) as Box<dyn BlobUpload>)
        })
    }

    fn blob_meta(&self, key: &str) -> Pending<Option<BlobMeta>> {
        let reply = self.blob_meta_cmd(key);
        let key = key.to_string();
        Box::pin(async move { Ok(stored(&key, &reply.await?)?.map(|s| s.meta)) })
    }

    fn blob_read(&self, key: &str, offset: u64, len: u64) -> Pending<Option<BlobRead>> {
        let reply = self.read_script(key, offset, len.min(FIXED_WINDOW), None);
        let store = self.clone();
        let key = key.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            let fields = &reply[..reply.len().min(FIELDS.len())];
            let Some(stored) = stored(&key, fields)? else {
                return Ok(None);
            };
            let size = stored.meta.size;
            let start = offset.min(size);
            let end = offset.saturating_add(len).min(size);
            let body = if stored.meta.mutable {
                let (s, e, first) = fixed_window(&key, &reply[FIELDS.len()..])?;
                if s != start || e > end {
                    return Err(corrupt(&key, "a read answered another range"));
                }
                fixed_body(store, &stored, first, end, e)
            } else {
                uploaded_body(store, &stored, start, end)
            };
            Ok(Some(BlobRead {
                meta: stored.meta,
                body,
            }))
        })
    }

    fn blob_files(&self, key: &str, offset: u64, len: u64) -> Option<Pending<Option<BlobFiles>>> {
        let cache = self.blob_cache.clone()?;
        let reply = self.blob_meta_cmd(key);
        let store = self.clone();
        let key = key.to_string();
        Some(Box::pin(async move {
            let Some(stored) = stored(&key, &reply.await?)? else {
                return Ok(None);
            };
            let size = stored.meta.size;
            let start = offset.min(size);
            let end = offset.saturating_add(len).min(size);
            let first = start / CHUNK;
            let count = if end > start {
                (end - 1) / CHUNK + 1 - first
            } else {
                0
            };
            if stored.meta.mutable || count > cache.max_chunks_per_call() {
                return Ok(Some(BlobFiles {
                    meta: stored.meta,
                    pieces: None,
                }));
            }
            // Chunks already cached, and fetches of the others issued
            // `READ_AHEAD` at a time.
            let mut plan = Vec::with_capacity(count as usize);
            let mut pos = start;
            while pos < end {
                let index = pos / CHUNK;
                let base = index * CHUNK;
                let to = (base + CHUNK).min(end);
                plan.push((
                    index,
                    pos - base,
                    to - pos,
                    cache.lookup(&stored.cid, index),
                ));
                pos = to;
            }
            let mut fetches = VecDeque::new();
            let mut issued = 0;
            let mut pieces = Vec::with_capacity(plan.len());
            for i in 0..plan.len() {
                while issued < plan.len() && issued < i + READ_AHEAD {
                    let (index, _, _, cached) = &plan[issued];
                    fetches.push_back(
                        cached
                            .is_none()
                            .then(|| store.fetch_chunk(&stored.cid, *index)),
                    );
                    issued += 1;
                }
                let (index, file_offset, len, cached) = &plan[i];
                let path = match (fetches.pop_front().flatten(), cached) {
                    (None, Some(path)) => path.clone(),
                    (fetch, _) => {
                        let fetch = fetch.unwrap_or_else(|| store.fetch_chunk(&stored.cid, *index));
                        let data = fetch.await?.ok_or_else(|| gone(&key))?;
                        if data.len() as u64 != CHUNK.min(size - index * CHUNK) {
                            return Err(gone(&key));
                        }
                        match cache.insert(&stored.cid, *index, Bytes::from(data)).await {
                            Ok(path) => path,
                            Err(e) => {
                                tracing::warn!(error = %e, "Could not write a blob chunk to the cache.");
                                return Ok(Some(BlobFiles {
                                    meta: stored.meta,
                                    pieces: None,
                                }));
                            }
                        }
                    }
                };
                pieces.push(FilePiece {
                    path,
                    file_offset: *file_offset,
                    len: *len,
                });
            }
            Ok(Some(BlobFiles {
                meta: stored.meta,
                pieces: Some(pieces),
            }))
        }))
    }

    fn blob_delete(&self, key: &str) -> Pending<bool> {
        let keys = vec![
            self.blob_meta_key(key),
            self.blob_key("keys"),
            self.blob_key("garbage"),
        ];
        let args = vec![
            arg(key),
            arg(self.blob_fixed_prefix()),
            arg(now_ms().to_string()),
        ];
        let reply = self.conn.script::<Vec<String>>(&DELETE, keys, args);
        let store = self.clone();
        Box::pin(async move {
            let reply = reply.await?;
            match reply.as_slice() {
                [found, garbage] if found == "1" => {
                    store.reclaim_now(garbage).await;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn blob_list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Pending<BlobPage> {
        let limit = limit.max(1);
        let (min, max) = crate::lex_range(prefix, after);
        let args = vec![
            arg(self.blob_meta_key("")),
            min,
            max,
            arg(limit.saturating_add(1).to_string()),
        ];
        let reply =
            self.conn
                .script::<Vec<Option<Vec<u8>>>>(&LIST, vec![self.blob_key("keys")], args);
        Box::pin(async move {
            let reply = reply.await?;
            let Some((next, rows)) = reply.split_first() else {
                return Err(Error::Corrupt("unexpected reply to a blob list".into()));
            };
            let next = next.as_deref().unwrap_or_default();
            let mut page = BlobPage {
                blobs: Vec::with_capacity(rows.len() / 8),
                next: if next.is_empty() {
                    None
                } else {
                    Some(text("", "next", next)?)
                },
            };
            for row in rows.chunks(8) {
                let key = text("", "key", row[0].as_deref().unwrap_or_default())?;
                if let Some(s) = stored(&key, &row[1..])? {
                    page.blobs.push(s.meta);
                }
            }
            Ok(page)
        })
    }

    fn blob_create_fixed(&self, key: &str, size: u64, replace: bool, now: u64) -> Pending<Created> {
        let keys = vec![
            self.blob_meta_key(key),
            self.blob_key("keys"),
            self.blob_key("version"),
            self.blob_key("cid"),
            self.blob_key("garbage"),
        ];
        let args = vec![
            arg(key),
            arg(size.to_string()),
            arg(if replace { "1" } else { "0" }),
            arg(now.to_string()),
            arg(self.blob_fixed_prefix()),
        ];
        let reply = self
            .conn
            .script::<Vec<Option<Vec<u8>>>>(&CREATE, keys, args);
        let store = self.clone();
        let key = key.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            let Some((what, rest)) = reply.split_first() else {
                return Err(corrupt(&key, "unexpected reply to a create"));
            };
            match (what.as_deref(), rest) {
                (Some(b"exists"), fields) => {
                    let s = stored(&key, fields)?
                        .ok_or_else(|| corrupt(&key, "unexpected reply to a create"))?;
                    Ok(Created::Exists(s.meta))
                }
                (Some(b"created"), [Some(ver), Some(garbage), Some(_cid)]) => {
                    let version = number(&key, "ver", ver)?;
                    store.reclaim_now(&text(&key, "garbage", garbage)?).await;
                    Ok(Created::Created(BlobMeta {
                        key,
                        size,
                        sha256: None,
                        content_type: None,
                        version,
                        mutable: true,
                        created_at_ms: now,
                    }))
                }
                _ => Err(corrupt(&key, "unexpected reply to a create")),
            }
        })
    }

    fn blob_apply(&self, key: &str, ops: Vec<BlobOp>) -> Pending<Applied> {
        let mut args = Vec::with_capacity(1 + ops.len() * 5);
        args.push(arg(self.blob_fixed_prefix()));
        for op in &ops {
            op_args(op, &mut args);
        }
        let keys = self.blob_apply_keys(key);
        let reply = self.conn.script::<Vec<redis::Value>>(&APPLY, keys, args);
        let key = key.to_string();
        Box::pin(async move { applied(&key, &ops, &reply.await?) })
    }

    fn blob_sweep(&self, older_than_ms: u64) -> Pending<u64> {
        let keys = vec![
            self.blob_key("pending"),
            self.blob_key("pendn"),
            self.blob_key("garbage"),
        ];
        let store = self.clone();
        Box::pin(async move {
            loop {
                let moved: u64 = store
                    .conn
                    .script(
                        &SWEEP,
                        keys.clone(),
                        vec![
                            arg(older_than_ms.to_string()),
                            arg(SWEEP_BATCH.to_string()),
                            arg(now_ms().to_string()),
                        ],
                    )
                    .await?;
                if moved < SWEEP_BATCH as u64 {
                    break;
                }
            }
            let mut removed = 0u64;
            while (removed as usize) < SWEEP_MAX {
                let cmd = redis::cmd("ZRANGE")
                    .arg(store.blob_key("garbage"))
                    .arg(0)
                    .arg(SWEEP_BATCH - 1)
                    .clone();
                let members: Vec<String> = store.conn.query(cmd).await?;
                if members.is_empty() {
                    break;
                }
                let reclaims: Vec<_> = members.iter().map(|m| store.reclaim(m)).collect();
                for r in reclaims {
                    r.await?;
                }
                removed += members.len() as u64;
            }
            Ok(removed)
        })
    }
}
