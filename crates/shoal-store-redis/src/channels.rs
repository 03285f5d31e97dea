//! Channels (`shoal_store::Channels`): one stream per channel whose entry
//! ids ARE the offsets (`0-<offset>`, given explicitly), and a hash of the
//! channel's epoch, head and settings. They live under the blobs' hash tag
//! (`B` = `NS:{blobs}:`), because a publish may apply operations to a
//! fixed-size blob in the same script, which must touch one slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `B` `ch:m:NAME` | hash | `epoch`, `head` (last offset); `set` = `1` once configured, with `pub`, `len`, `age`, `coal` (the settings) |
//! | `B` `ch:s:NAME` | stream | the kept messages: id `0-OFFSET`, fields `a` (`at_ms`), `b` (`1` binary), `d` (the data) |
//! | `B` `ch:names` | zset, score 0 | every channel with a hash, for listing by prefix |
//!
//! A publish is one script: the blob operations first (`APPLY_LUA`, the
//! very code of `blob_apply`; a refusal writes nothing), then `XADD` of
//! each message with its explicit id, the new head, `XTRIM MAXLEN` to the
//! history length. Its epoch is made by the caller (16 hex digits of a
//! hash of the time, the process and a counter) and kept by the script
//! when the channel has none, or when its history was lost: a hash without
//! a stream, a stream without a hash, or a stream whose last id is not the
//! head (a flush, a partial restore) start a new epoch, offsets from 1, so
//! a subscriber never takes a new history for the old one.
//!
//! Ages are not trimmed (the length bounds the memory): a read compares
//! each message's `at_ms` with the caller's clock. A read is one script
//! too (hash and range from one moment).
//!
//! `channel_wait`: `XREAD BLOCK` on the channels' streams, on a connection
//! of its own (a blocked `XREAD` must not hold up the shared, pipelined
//! one). Idle connections are kept for the next wait; a wait whose future
//! is dropped mid-block drops its connection with it (the answer it would
//! read later belongs to no one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use shoal_store::channels::{
    BlobWrite, ChannelInfo, ChannelMessage, ChannelRead, ChannelSettings, Channels,
    MAX_HISTORY_LEN, NewChannelMessage, Published,
};
use shoal_store::{Applied, Error, Pending, Result};

use crate::RedisStore;
use crate::blobs::{APPLY_LUA, BLOB_LUA, applied, op_args};
use crate::conn::{Lua, arg, failed};

/// Idle wait connections kept for later waits.
const IDLE_WAITERS: usize = 4;

/// How much longer than its own timeout a blocked `XREAD` may take to
/// answer before its connection is taken as dead.
const WAIT_SLACK: Duration = Duration::from_secs(5);

/// The hash fields, in the order the scripts answer them.
const FIELDS: &str = "'epoch', 'head', 'set', 'pub', 'len', 'age', 'coal'";

/// KEYS: hash, stream, names[, blob meta, blob version, scratch]. ARGV:
/// name, now, a new epoch, message count, the default history length, two
/// per message (binary `1`/`0`, data), then with a blob: the fixed chunk
/// prefix and five per operation (see `APPLY_LUA`). Returns `{'refused',
/// apply_ops's answer}`, or `{'ok', epoch, first, last, apply_ops's answer
/// or nil}`.
static PUBLISH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{BLOB_LUA}{APPLY_LUA}
local nm = tonumber(ARGV[4])
local done = false
if #KEYS > 3 then
  local base = 6 + 2 * nm
  done = apply_ops(KEYS[4], KEYS[5], KEYS[6], ARGV[base], base + 1, (#ARGV - base) / 5)
  if done[1] ~= 'ok' then return {{'refused', done}} end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local head = tonumber(redis.call('HGET', KEYS[1], 'head') or '0')
local lost = (not epoch) or epoch == '' or head == 0
if not lost then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  lost = #last == 0 or last[1][1] ~= string.format('0-%d', head)
end
if lost then
  epoch = ARGV[3]
  head = 0
  redis.call('DEL', KEYS[2])
end
local first = head + 1
for i = 0, nm - 1 do
  head = head + 1
  redis.call('XADD', KEYS[2], string.format('0-%d', head), 'a', ARGV[2], 'b', ARGV[6 + 2 * i], 'd', ARGV[7 + 2 * i])
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', string.format('%d', head))
local len = redis.call('HGET', KEYS[1], 'len') or ARGV[5]
redis.call('XTRIM', KEYS[2], 'MAXLEN', len)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return {{'ok', epoch, first, head, done}}
"
    ))
});

/// KEYS: hash, stream, names. ARGV: name, public, len, age, coalesce.
static CONFIGURE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
redis.call('HSET', KEYS[1], 'set', '1', 'pub', ARGV[2], 'len', ARGV[3], 'age', ARGV[4], 'coal', ARGV[5])
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
",
    )
});

/// KEYS: hash, stream. ARGV: first offset, count. Returns `{FIELDS,
/// entries}`: the entries from that offset to the head, at most count.
static READ: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"
local m = redis.call('HMGET', KEYS[1], {FIELDS})
local entries = {{}}
if m[2] and tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], '0-' .. ARGV[1], '0-' .. m[2], 'COUNT', ARGV[2])
end
return {{m, entries}}
"
    ))
});

/// KEYS: names. ARGV: hash key prefix, min, max (BYLEX), limit. Returns
/// `{name, FIELDS, name, FIELDS, ...}`.
static LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"
local ks = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'BYLEX', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {{}}
for _, k in ipairs(ks) do
  out[#out + 1] = k
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. k, {FIELDS})
end
return out
"
    ))
});

/// KEYS: hashes. Returns `{epoch, head, ...}` ('' and '0' when absent).
static HEADS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local out = {}
for i, k in ipairs(KEYS) do
  local m = redis.call('HMGET', k, 'epoch', 'head')
  out[2 * i - 1] = m[1] or ''
  out[2 * i] = m[2] or '0'
end
return out
",
    )
});

/// Connections for `channel_wait`, idle between waits.
#[derive(Default)]
pub(crate) struct Waiters {
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Waiters {
    fn take(&self) -> Option<MultiplexedConnection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_WAITERS {
            idle.push(conn);
        }
    }
}

fn corrupt(name: &str, what: &str) -> Error {
    Error::Corrupt(format!("channel {name:?}: {what}"))
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number(name: &str, field: &str, v: &[u8]) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(name, &format!("{field} is not a number")))
}

fn int(name: &str, v: &Value) -> Result<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| corrupt(name, "a negative offset")),
        other => number(name, "offset", bulk(other).unwrap_or_default()),
    }
}

fn array<'a>(name: &str, v: &'a Value) -> Result<&'a [Value]> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(corrupt(name, &format!("unexpected reply {other:?}"))),
    }
}

/// A channel's hash: `None` when it has none.
#[derive(Debug, Clone, Default)]
struct Meta {
    epoch: String,
    head: u64,
    settings: Option<ChannelSettings>,
}

impl Meta {
    fn parse(name: &str, fields: &[Value]) -> Result<Option<Meta>> {
        let [epoch, head, set, public, len, age, coal] = fields else {
            return Err(corrupt(name, "unexpected hash reply"));
        };
        if fields.iter().all(|f| matches!(f, Value::Nil)) {
            return Ok(None);
        }
        let num = |field: &str, v: &Value| number(name, field, bulk(v).unwrap_or(b"0"));
        let settings = match bulk(set) {
            Some(b"1") => Some(ChannelSettings {
                public: bulk(public) == Some(b"1"),
                history_len: num("len", len)?,
                history_age_ms: num("age", age)?,
                coalesce_ms: u32::try_from(num("coal", coal)?)
                    .map_err(|_| corrupt(name, "coal is too large"))?,
            }),
            _ => None,
        };
        let epoch = bulk(epoch).unwrap_or_default();
        Ok(Some(Meta {
            epoch: String::from_utf8(epoch.to_vec()).map_err(|_| corrupt(name, "epoch"))?,
            head: num("head", head)?,
            settings,
        }))
    }

    fn settings(&self) -> ChannelSettings {
        self.settings.clone().unwrap_or_default()
    }
}

/// A stream entry: `[id, [field, value, ...]]`.
fn message(name: &str, entry: &Value) -> Result<ChannelMessage> {
    let bad = || corrupt(name, "unexpected stream entry");
    let [id, fields] = array(name, entry)? else {
        return Err(bad());
    };
    let id = bulk(id).ok_or_else(bad)?;
    let offset = id
        .strip_prefix(b"0-")
        .ok_or_else(|| corrupt(name, "a stream id not of the form 0-OFFSET"))?;
    let mut m = ChannelMessage {
        offset: number(name, "id", offset)?,
        at_ms: 0,
        binary: false,
        data: Vec::new(),
    };
    for pair in array(name, fields)?.chunks(2) {
        let [k, v] = pair else { return Err(bad()) };
        let v = bulk(v).ok_or_else(bad)?;
        match bulk(k).ok_or_else(bad)? {
            b"a" => m.at_ms = number(name, "at", v)?,
            b"b" => m.binary = v == b"1",
            b"d" => m.data = v.to_vec(),
            _ => {}
        }
    }
    Ok(m)
}

/// A new epoch: 16 hex digits, different on every call in every process.
fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let here = &n as *const u64 as usize;
    let seed = format!("{nanos}:{}:{n}:{here:x}", std::process::id());
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

impl RedisStore {
    fn channel_hash(&self, name: &str) -> String {
        self.keys.blobs(&format!("ch:m:{name}"))
    }
    fn channel_stream(&self, name: &str) -> String {
        self.keys.blobs(&format!("ch:s:{name}"))
    }
    fn channel_names(&self) -> String {
        self.keys.blobs("ch:names")
    }

    /// The positions whose channel moved on (another head or epoch), with
    /// where it is now.
    async fn channels_moved(
        &self,
        positions: &[(String, String, u64)],
    ) -> Result<Vec<(String, String, u64)>> {
        let keys = positions.iter().map(|p| self.channel_hash(&p.0)).collect();
        let heads: Vec<String> = self.conn.script(&HEADS, keys, Vec::new()).await?;
        if heads.len() != positions.len() * 2 {
            return Err(Error::Corrupt("unexpected reply to channel heads".into()));
        }
        let mut moved = Vec::new();
        for ((name, epoch, offset), now) in positions.iter().zip(heads.chunks(2)) {
            let head = number(name, "head", now[1].as_bytes())?;
            if now[0] != *epoch || head > *offset {
                moved.push((name.clone(), now[0].clone(), head));
            }
        }
        Ok(moved)
    }

    /// `XREAD BLOCK` on the positions' streams, after their offsets, on a
    /// connection of its own.
    async fn block_on_streams(
        &self,
        positions: &[(String, String, u64)],
        timeout_ms: u64,
    ) -> Result<()> {
        let mut conn = match self.waiters.take() {
            Some(conn) => conn,
            None => self.conn.dedicated().await?,
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK").arg(timeout_ms.max(1)).arg("STREAMS");
        for (name, _, _) in positions {
            cmd.arg(self.channel_stream(name));
        }
        for (_, _, offset) in positions {
            cmd.arg(format!("0-{offset}"));
        }
        let limit = Duration::from_millis(timeout_ms) + WAIT_SLACK;
        match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => {
                self.waiters.give_back(conn);
                Ok(())
            }
            // The connection goes with its error.
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(Error::Unavailable(
                "redis: a blocked XREAD did not answer in time".into(),
            )),
        }
    }
}

impl Channels for RedisStore {
    fn channel_configure(&self, name: &str, settings: ChannelSettings) -> Pending<()> {
        let keys = vec![
            self.channel_hash(name),
            self.channel_stream(name),
            self.channel_names(),
        ];
        let args = vec![
            arg(name),
            arg(if settings.public { "1" } else { "0" }),
            arg(settings.history_len.max(1).to_string()),
            arg(settings.history_age_ms.to_string()),
            arg(settings.coalesce_ms.to_string()),
        ];
        let reply = self.conn.script::<i64>(&CONFIGURE, keys, args);
        Box::pin(async move {
            reply.await?;
            Ok(())
        })
    }

    fn channel_settings(&self, name: &str) -> Pending<Option<ChannelSettings>> {
        let cmd = redis::cmd("HMGET")
            .arg(self.channel_hash(name))
            .arg(&["epoch", "head", "set", "pub", "len", "age", "coal"])
            .clone();
        let reply = self.conn.query::<Vec<Value>>(cmd);
        let name = name.to_string();
        Box::pin(async move { Ok(Meta::parse(&name, &reply.await?)?.and_then(|m| m.settings)) })
    }

    fn channel_publish(
        &self,
        name: &str,
        messages: Vec<NewChannelMessage>,
        blob: Option<BlobWrite>,
        now_ms: u64,
    ) -> Pending<Published> {
        let mut keys = vec![
            self.channel_hash(name),
            self.channel_stream(name),
            self.channel_names(),
        ];
        let mut args = Vec::with_capacity(5 + 2 * messages.len());
        args.extend([
            arg(name),
            arg(now_ms.to_string()),
            arg(new_epoch()),
            arg(messages.len().to_string()),
            arg(ChannelSettings::default().history_len.to_string()),
        ]);
        for m in &messages {
            args.push(arg(if m.binary { "1" } else { "0" }));
            args.push(m.data.clone());
        }
        let blob = blob.map(|BlobWrite { key, ops }| {
            keys.extend(self.blob_apply_keys(&key));
            args.push(arg(self.blob_fixed_prefix()));
            for op in &ops {
                op_args(op, &mut args);
            }
            (key, ops)
        });
        let reply = self.conn.script::<Vec<Value>>(&PUBLISH, keys, args);
        let name = name.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            let bad = || corrupt(&name, "unexpected reply to a publish");
            let done = |answer: &Value| -> Result<Applied> {
                let (key, ops) = blob.as_ref().ok_or_else(bad)?;
                applied(key, ops, array(&name, answer)?)
            };
            match reply.as_slice() {
                [what, answer] if bulk(what) == Some(b"refused") => match done(answer)? {
                    Applied::Done { .. } => Err(bad()),
                    refused => Ok(Published::BlobRefused(refused)),
                },
                [what, epoch, first, last, answer] if bulk(what) == Some(b"ok") => {
                    let epoch = bulk(epoch).ok_or_else(bad)?;
                    let applied = match (&blob, answer) {
                        (None, _) => None,
                        (Some(_), answer) => match done(answer)? {
                            Applied::Done { results, meta } => Some((results, meta)),
                            _ => return Err(bad()),
                        },
                    };
                    Ok(Published::Done {
                        epoch: String::from_utf8(epoch.to_vec()).map_err(|_| bad())?,
                        first: int(&name, first)?,
                        last: int(&name, last)?,
                        applied,
                    })
                }
                _ => Err(bad()),
            }
        })
    }

    fn channel_read(
        &self,
        name: &str,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Pending<ChannelRead> {
        let keys = vec![self.channel_hash(name), self.channel_stream(name)];
        let from = after.saturating_add(1);
        // Never more than a history holds (and a count Redis takes).
        let count = limit.clamp(1, MAX_HISTORY_LEN as usize);
        let args = vec![arg(from.to_string()), arg(count.to_string())];
        let reply = self.conn.script::<Vec<Value>>(&READ, keys, args);
        let name = name.to_string();
        Box::pin(async move {
            let reply = reply.await?;
            let [meta, entries] = reply.as_slice() else {
                return Err(corrupt(&name, "unexpected reply to a read"));
            };
            let Some(meta) = Meta::parse(&name, array(&name, meta)?)? else {
                return Ok(ChannelRead {
                    epoch: String::new(),
                    head: 0,
                    messages: Vec::new(),
                    gap: after > 0,
                });
            };
            let mut read = ChannelRead {
                epoch: meta.epoch.clone(),
                head: meta.head,
                messages: Vec::new(),
                gap: after > meta.head,
            };
            if after >= meta.head {
                return Ok(read);
            }
            let settings = meta.settings();
            if from < settings.first_kept(meta.head) {
                read.gap = true;
                return Ok(read);
            }
            for entry in array(&name, entries)? {
                let m = message(&name, entry)?;
                if !read.take_next(from, &settings, now_ms, m) {
                    return Ok(read);
                }
            }
            if read.messages.is_empty() {
                read.gap = true;
            }
            Ok(read)
        })
    }

    fn channel_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<ChannelInfo>> {
        let (min, max) = crate::lex_range(prefix, after);
        let args = vec![
            arg(self.channel_hash("")),
            min,
            max,
            arg(limit.clamp(1, i32::MAX as usize).to_string()),
        ];
        let reply = self
            .conn
            .script::<Vec<Value>>(&LIST, vec![self.channel_names()], args);
        Box::pin(async move {
            let reply = reply.await?;
            let mut out = Vec::with_capacity(reply.len() / 2);
            for pair in reply.chunks(2) {
                let [name, fields] = pair else {
                    return Err(Error::Corrupt("unexpected reply to a channel list".into()));
                };
                let name = bulk(name)
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .ok_or_else(|| Error::Corrupt("a channel name is not UTF-8".into()))?;
                // A name whose hash is gone (a flush of part of the keys).
                if let Some(meta) = Meta::parse(name, array(name, fields)?)? {
                    out.push(ChannelInfo {
                        name: name.to_string(),
                        epoch: meta.epoch,
                        head: meta.head,
                        settings: meta.settings,
                    });
                }
            }
            Ok(out)
        })
    }

    fn channel_wait(
        &self,
        positions: Vec<(String, String, u64)>,
        timeout_ms: u64,
    ) -> Option<Pending<Vec<(String, String, u64)>>> {
        let store = self.clone();
        Some(Box::pin(async move {
            if positions.is_empty() {
                return Ok(Vec::new());
            }
            let moved = store.channels_moved(&positions).await?;
            if !moved.is_empty() {
                return Ok(moved);
            }
            store.block_on_streams(&positions, timeout_ms).await?;
            // Whatever woke it (or nothing): where the channels are now,
            // which also catches a new epoch the XREAD cannot see.
            store.channels_moved(&positions).await
        }))
    }
}
