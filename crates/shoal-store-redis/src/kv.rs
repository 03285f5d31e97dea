//! The key-value store (`shoal_store::Kv`) under a hash tag of its own,
//! `{kv}` (`K` = `NS:{kv}:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `K` `e:KEY` | hash | one entry: `val` (the value's bytes, raw), `ver` (its version, decimal), `upd` (`updated_at_ms`), `exp` (`expires_at_ms` on the caller's clock; absent when it never expires). Carries a `PEXPIRE` of its ttl, so Redis drops it by itself |
//! | `K` `keys` | zset, score 0 | every key written and not yet deleted or swept, for listing by prefix (`ZRANGE ... BYLEX`) |
//! | `K` `expiry` | zset | keys with a ttl, scored by `exp`, for `kv_sweep` |
//! | `K` `version` | string | the last version given out: one counter for every key, so a version is never given twice, even to a key deleted and written again |
//!
//! Why one tag: a write changes the entry, the listing index and the
//! expiry index in one script, so they must share a slot; and the listing
//! index must be one sorted set to be read in key order. In a cluster the
//! whole key-value store is one slot (like the work state).
//!
//! Expiry: every call compares `exp` with the caller's `now_ms`, so an
//! entry is absent from its expiry on, exactly, whatever Redis did. Redis
//! also drops the entry's hash itself, `ttl` after the write on its own
//! clock (`PEXPIRE` of the remaining ttl, capped at about a century); the
//! index entries it leaves are pruned by `kv_list` (as it meets them) and by
//! `kv_sweep` (by `expiry` score), which also deletes entries expired on
//! the caller's clock that Redis still holds. So `kv_sweep` is optional
//! here, but keeps the indexes small.
//!
//! Every write is one script (the condition, the version, the entry and
//! both indexes); `kv_get` is one `HMGET`; `kv_list` reads at most
//! `limit + 1` members of `keys` and `limit` hashes. Values are never
//! decoded in Lua; `kv_incr` checks the JSON-integer pattern in Lua and
//! lets `HINCRBY` do the 64-bit arithmetic (and refuse an overflow).

use std::sync::LazyLock;

use shoal_store::{Error, Kv, KvCondition, KvEntry, KvIncr, KvPage, KvSet, Pending, Result};

use crate::RedisStore;
use crate::conn::{Lua, arg};

/// The longest `PEXPIRE` set (about a century): `exp` still holds the exact
/// expiry, which every read checks.
const MAX_PEXPIRE_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// `live(cur, now)`: whether an `HMGET val ver exp upd` reply is an entry
/// alive at `now`. `entry(...)`: it as a reply (`val ver exp upd`, `exp`
/// empty when none). `bump(k)`: the next version, as exact text.
const KV_LUA: &str = r"
local function live(cur, now)
  return cur[2] and (not cur[3] or now < tonumber(cur[3]))
end
local function bump(k)
  redis.call('INCR', k)
  return redis.call('GET', k)
end
";

/// KEYS: entry, keys, expiry, version. ARGV: key, value, condition (`a`,
/// `nx`, `xx`, `v`), version for `v`, now, exp (empty: none), pexpire ms.
/// Returns `{'1', ver}` when written, `{'0'}` or `{'0', val, ver, exp, upd}`
/// (the live entry) when refused.
static SET: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{KV_LUA}
local now = tonumber(ARGV[5])
local cur = redis.call('HMGET', KEYS[1], 'val', 'ver', 'exp', 'upd')
local alive = live(cur, now)
local c = ARGV[3]
local ok = c == 'a' or (c == 'nx' and not alive) or (c == 'xx' and alive)
  or (c == 'v' and alive and cur[2] == ARGV[4])
if not ok then
  if alive then return {{'0', cur[1], cur[2], cur[3] or '', cur[4]}} end
  return {{'0'}}
end
local v = bump(KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'val', ARGV[2], 'ver', v, 'upd', ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'exp', ARGV[6])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return {{'1', v}}
"
    ))
});

/// KEYS: entry, keys, expiry, version. ARGV: key, by, now. Returns
/// `{'1', val, ver, exp, upd}` (written), `{'2', ...}` (not an integer) or
/// `{'3', ...}` (overflow) with the entry.
static INCR: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{KV_LUA}
local now = tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'val', 'ver', 'exp', 'upd')
if not live(cur, now) then
  local v = bump(KEYS[4])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'val', ARGV[2], 'ver', v, 'upd', ARGV[3])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {{'1', ARGV[2], v, '', ARGV[3]}}
end
local s = cur[1]
local entry = {{cur[1], cur[2], cur[3] or '', cur[4]}}
if not (s == '0' or string.match(s, '^%-?[1-9]%d*$')) then
  return {{'2', unpack(entry)}}
end
local r = redis.pcall('HINCRBY', KEYS[1], 'val', ARGV[2])
if type(r) == 'table' and r.err then
  if string.find(r.err, 'overflow') then return {{'3', unpack(entry)}} end
  return {{'2', unpack(entry)}}
end
local v = bump(KEYS[4])
redis.call('HSET', KEYS[1], 'ver', v, 'upd', ARGV[3])
return {{'1', redis.call('HGET', KEYS[1], 'val'), v, cur[3] or '', ARGV[3]}}
"
    ))
});

/// KEYS: entry, keys, expiry. ARGV: key, version (empty: any), now.
/// Returns 1 when a live entry was deleted. An expired entry (or index
/// entries left by Redis's own expiry) is removed, answering 0.
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local now = tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'ver', 'exp')
local alive = cur[1] and (not cur[2] or now < tonumber(cur[2]))
if alive and ARGV[2] ~= '' and cur[1] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if alive then return 1 end
return 0
",
    )
});

/// KEYS: keys, expiry. ARGV: entry key prefix (`K` `e:`), min, max (BYLEX),
/// limit + 1, now. Returns `{next, key, val, ver, exp, upd, ...}` with the
/// live entries among the first `limit` keys; `next` is the last key
/// looked at when more follow, else empty. Members whose hash Redis has
/// dropped are pruned.
static LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local now = tonumber(ARGV[5])
local limit = tonumber(ARGV[4]) - 1
local ks = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'BYLEX', 'LIMIT', 0, limit + 1)
local n = #ks
local out = {''}
if n > limit then
  n = limit
  out[1] = ks[n]
end
for i = 1, n do
  local k = ks[i]
  local e = redis.call('HMGET', ARGV[1] .. k, 'val', 'ver', 'exp', 'upd')
  if not e[2] then
    redis.call('ZREM', KEYS[1], k)
    redis.call('ZREM', KEYS[2], k)
  elseif not e[3] or now < tonumber(e[3]) then
    out[#out + 1] = k
    out[#out + 1] = e[1]
    out[#out + 1] = e[2]
    out[#out + 1] = e[3] or ''
    out[#out + 1] = e[4]
  end
end
return out
",
    )
});

/// KEYS: keys, expiry. ARGV: entry key prefix, now, max. Removes up to
/// `max` keys whose `exp` score is at or before `now`, with their entries
/// (those Redis still holds); returns how many.
static SWEEP: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, k in ipairs(due) do
  redis.call('DEL', ARGV[1] .. k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
return #due
",
    )
});

fn corrupt(key: &str, what: &str) -> Error {
    Error::Corrupt(format!("kv entry {key:?}: {what}"))
}

fn number(key: &str, field: &str, bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(key, &format!("{field} is not a number")))
}

/// An entry from `val ver exp upd` (`exp` empty when none).
fn entry(key: &str, fields: &[Vec<u8>]) -> Result<KvEntry> {
    let [val, ver, exp, upd] = fields else {
        return Err(corrupt(key, "unexpected reply"));
    };
    Ok(KvEntry {
        key: key.to_string(),
        value: val.clone(),
        version: number(key, "ver", ver)?,
        expires_at_ms: if exp.is_empty() {
            None
        } else {
            Some(number(key, "exp", exp)?)
        },
        updated_at_ms: number(key, "upd", upd)?,
    })
}

impl RedisStore {
    fn kv_key(&self, what: &str) -> String {
        self.keys.kv(what)
    }

    /// entry, keys, expiry, version.
    fn kv_keys(&self, key: &str) -> Vec<String> {
        vec![
            self.kv_key(&format!("e:{key}")),
            self.kv_key("keys"),
            self.kv_key("expiry"),
            self.kv_key("version"),
        ]
    }
}

impl Kv for RedisStore {
    fn kv_get(&self, key: &str, now_ms: u64) -> Pending<Option<KvEntry>> {
        let cmd = redis::cmd("HMGET")
            .arg(self.kv_key(&format!("e:{key}")))
            .arg(&["val", "ver", "exp", "upd"])
            .clone();
        let reply = self.conn.query::<Vec<Option<Vec<u8>>>>(cmd);
        let key = key.to_string();
        Box::pin(async move {
            let fields = reply.await?;
            let [Some(val), Some(ver), exp, Some(upd)] =
                <[_; 4]>::try_from(fields).map_err(|_| corrupt(&key, "unexpected reply"))?
            else {
                return Ok(None);
            };
            let found = entry(&key, &[val, ver, exp.unwrap_or_default(), upd])?;
            Ok(found.live_at(now_ms).then_some(found))
        })
    }

    fn kv_set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: KvCondition,
        now_ms: u64,
    ) -> Pending<KvSet> {
        let (cond_arg, version) = match cond {
            KvCondition::Always => ("a", String::new()),
            KvCondition::Absent => ("nx", String::new()),
            KvCondition::Present => ("xx", String::new()),
            KvCondition::Version(v) => ("v", v.to_string()),
        };
        let expires_at_ms = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
        let args = vec![
            arg(key),
            value.clone(),
            arg(cond_arg),
            arg(version),
            arg(now_ms.to_string()),
            arg(expires_at_ms.map(|e| e.to_string()).unwrap_or_default()),
            arg(ttl_ms.unwrap_or(0).min(MAX_PEXPIRE_MS).to_string()),
        ];
        let reply = self
            .conn
            .script::<Vec<Vec<u8>>>(&SET, self.kv_keys(key), args);
        let key = key.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            match reply.as_slice() {
                [written, ver] if written == b"1" => Ok(KvSet::Written(KvEntry {
                    version: number(&key, "ver", ver)?,
                    key,
                    value,
                    expires_at_ms,
                    updated_at_ms: now_ms,
                })),
                [refused] if refused == b"0" => Ok(KvSet::Refused { current: None }),
                [refused, fields @ ..] if refused == b"0" => Ok(KvSet::Refused {
                    current: Some(entry(&key, fields)?),
                }),
                _ => Err(corrupt(&key, "unexpected reply to a set")),
            }
        })
    }

    fn kv_incr(&self, key: &str, by: i64, now_ms: u64) -> Pending<KvIncr> {
        let args = vec![arg(key), arg(by.to_string()), arg(now_ms.to_string())];
        let reply = self
            .conn
            .script::<Vec<Vec<u8>>>(&INCR, self.kv_keys(key), args);
        let key = key.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            let Some((what, fields)) = reply.split_first() else {
                return Err(corrupt(&key, "unexpected reply to an incr"));
            };
            let current = entry(&key, fields)?;
            match what.as_slice() {
                b"1" => Ok(KvIncr::Written(current)),
                b"2" => Ok(KvIncr::NotInteger { current }),
                b"3" => Ok(KvIncr::Overflow { current }),
                _ => Err(corrupt(&key, "unexpected reply to an incr")),
            }
        })
    }

    fn kv_delete(&self, key: &str, version: Option<u64>, now_ms: u64) -> Pending<bool> {
        let mut keys = self.kv_keys(key);
        keys.truncate(3);
        let args = vec![
            arg(key),
            arg(version.map(|v| v.to_string()).unwrap_or_default()),
            arg(now_ms.to_string()),
        ];
        let reply = self.conn.script::<i64>(&DELETE, keys, args);
        Box::pin(async move { Ok(reply.await? == 1) })
    }

    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Pending<KvPage> {
        let limit = limit.max(1);
        let (min, max) = crate::lex_range(prefix, after);
        let keys = vec![self.kv_key("keys"), self.kv_key("expiry")];
        let args = vec![
            arg(self.kv_key("e:")),
            min,
            max,
            arg(limit.saturating_add(1).to_string()),
            arg(now_ms.to_string()),
        ];
        let reply = self.conn.script::<Vec<Vec<u8>>>(&LIST, keys, args);
        Box::pin(async move {
            let reply = reply.await?;
            let Some((next, rows)) = reply.split_first() else {
                return Err(Error::Corrupt("unexpected reply to a kv list".into()));
            };
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| Error::Corrupt("a kv key is not UTF-8".into()))
            };
            let mut page = KvPage {
                entries: Vec::with_capacity(rows.len() / 5),
                next: if next.is_empty() {
                    None
                } else {
                    Some(text(next)?)
                },
            };
            for row in rows.chunks(5) {
                let key = text(&row[0])?;
                page.entries.push(entry(&key, &row[1..])?);
            }
            Ok(page)
        })
    }

    fn kv_sweep(&self, now_ms: u64, max: usize) -> Pending<u64> {
        if max == 0 {
            return Box::pin(std::future::ready(Ok(0)));
        }
        let keys = vec![self.kv_key("keys"), self.kv_key("expiry")];
        let args = vec![
            arg(self.kv_key("e:")),
            arg(now_ms.to_string()),
            arg(max.to_string()),
        ];
        let reply = self.conn.script::<u64>(&SWEEP, keys, args);
        Box::pin(reply)
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    const T: u64 = 1_700_000_000_000;

    async fn query<T: redis::FromRedisValue + Send + 'static>(
        store: &RedisStore,
        cmd: &mut redis::Cmd,
    ) -> T {
        store.conn.query(cmd.clone()).await.unwrap()
    }

    /// Redis expires entries by itself (`PEXPIRE` of the ttl, cleared by a
    /// set without one); index members left by Redis's expiry are pruned
    /// by listings and by the sweep.
    #[tokio::test]
    async fn redis_expiry_and_index_pruning() {
        let server = RedisServer::start(&[]);
        let (store, _) = RedisStore::connect(&server.options()).await.unwrap();
        let entry = |k: &str| store.kv_key(&format!("e:{k}"));

        store
            .kv_set("a", b"1".to_vec(), Some(60_000), KvCondition::Always, T)
            .await
            .unwrap();
        let pttl: i64 = query(&store, redis::cmd("PTTL").arg(entry("a"))).await;
        assert!(0 < pttl && pttl <= 60_000, "{pttl}");
        store
            .kv_set("a", b"2".to_vec(), None, KvCondition::Always, T)
            .await
            .unwrap();
        let pttl: i64 = query(&store, redis::cmd("PTTL").arg(entry("a"))).await;
        assert_eq!(pttl, -1, "a set without ttl clears Redis's expiry");
        let KvIncr::Written(_) = store.kv_incr("c", 1, T).await.unwrap() else {
            panic!("incr");
        };
        store
            .kv_set("c", b"5".to_vec(), Some(60_000), KvCondition::Always, T)
            .await
            .unwrap();
        let KvIncr::Written(n) = store.kv_incr("c", 1, T).await.unwrap() else {
            panic!("incr");
        };
        assert_eq!(n.expires_at_ms, Some(T + 60_000));
        let pttl: i64 = query(&store, redis::cmd("PTTL").arg(entry("c"))).await;
        assert!(pttl > 0, "incr keeps Redis's expiry");

        // As if Redis had expired them.
        store
            .kv_set("b", b"1".to_vec(), Some(1_000), KvCondition::Always, T)
            .await
            .unwrap();
        store
            .kv_set("d", b"1".to_vec(), Some(1_000), KvCondition::Always, T)
            .await
            .unwrap();
        let _: i64 = query(&store, redis::cmd("DEL").arg(entry("b")).arg(entry("d"))).await;
        let page = store.kv_list("", None, 10, T).await.unwrap();
        let keys: Vec<&str> = page.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "c"]);
        let listed: Vec<String> = query(
            &store,
            redis::cmd("ZRANGE")
                .arg(store.kv_key("keys"))
                .arg(0)
                .arg(-1),
        )
        .await;
        assert_eq!(listed, ["a", "c"], "the listing pruned b and d");
        // The listing pruned their expiry entries too; one Redis dropped
        // that no listing met is the sweep's.
        store
            .kv_set("e", b"1".to_vec(), Some(1_000), KvCondition::Always, T)
            .await
            .unwrap();
        let _: i64 = query(&store, redis::cmd("DEL").arg(entry("e"))).await;
        assert_eq!(store.kv_sweep(T + 1_000, 10).await.unwrap(), 1);
        let expiring: Vec<String> = query(
            &store,
            redis::cmd("ZRANGE")
                .arg(store.kv_key("expiry"))
                .arg(0)
                .arg(-1),
        )
        .await;
        assert_eq!(expiring, ["c"]);
        assert_eq!(store.kv_sweep(T + 60_000, 10).await.unwrap(), 1);
        let listed: i64 = query(&store, redis::cmd("ZCARD").arg(store.kv_key("keys"))).await;
        assert_eq!(listed, 1, "the sweep removed c from the listing index");
        assert!(
            store.kv_get("c", T).await.unwrap().is_none(),
            "and its entry"
        );
    }
}
