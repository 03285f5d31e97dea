//! The queues port: messages with leases, dead letters, deduplication keys,
//! counters and samples, under the work tag `{w}` (`W` = `NS:{w}:`, `P` =
//! `W` + `q:QUEUE:`; queue names never hold `:`, the engine's names are
//! `[a-z0-9_-]` and `_async.<function>`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `W q-seq` | string | the last send sequence number (every queue; a redrive takes a new one) |
//! | `P m:ID` | hash | a queued message: `body` (raw bytes), `due`, `sent`, `mem`, `failures`, `starts`, `key` (absent without one), `lease` (lease end, absent while waiting) |
//! | `P ready` | zset | waiting messages: score = due, member `mem` = 20-digit seq + `:` + id (equal due times keep send order) |
//! | `P n`, `P k:KEY` | zset | the same, per concurrency key (`n`: messages without one) |
//! | `P heads` | zset (lex) | the first waiting message of each key: `20-digit due:mem`, score 0 |
//! | `P leased` | zset | leased messages (also after their lease ended): score = lease end, member `mem` |
//! | `P kleased` | hash | concurrency key → how many of its messages are in `leased` (a key at 0 is deleted) |
//! | `P sent` | zset | queued messages by `sent_ms` (member id), for the oldest age |
//! | `P dedup` | hash | deduplication key → `until:id` of the message that took it |
//! | `W q-dedup` | zset | every queue's deduplication keys by `until` (member `len(queue):queue` + key), to forget them |
//! | `P counters` | hash | `sent`, `acked`, `nacked`, `dead_lettered` (changed by the script that does the operation) |
//! | `P d:ID` | hash | a dead letter: `body`, `failures`, `sent`, `dead_at`, `reason`, `key` |
//! | `P dead` | zset (lex) | dead letter ids, listed in id order |
//! | `P samples` | zset | samples by `at_ms`, member `at,waiting,in_flight,dead,oldest,sent,acked,nacked,dead_lettered` |
//! | `W q-sampled` | set | queues that have samples |
//!
//! Concurrency keys hold across every node sharing the queue: a
//! [`KeyLimit`] counts, for each key, `max(running[key], kleased[key])`
//! messages in flight. `kleased` is kept by the scripts that lease (+1 for
//! each waiting message taken, with or without a limit), ack, nack and
//! dead-letter a leased message (-1); `purge` and `redrive` touch only
//! waiting messages and `extend` changes no count. A lease that ended
//! still counts until it is taken over or acked: the work of a node that
//! died is in flight until another node takes it. Taking it over moves it
//! from one holder to another, so the store's count does not change and
//! only the caller's own count (`running` and this lease's takes) must have
//! room; taking a waiting message needs room in both. Why `max()`: on one
//! node `running` and `kleased` count the same messages (a sum would count
//! them twice), so the limit reads as it does on the in-memory store; across
//! nodes `kleased` is the cluster-wide count, while `running` still covers
//! what only the caller knows (a message it still works on whose lease
//! another node took over or acked). Every change is inside the script that
//! makes it, so two nodes leasing at once never pass the limit together.
//!
//! Bounds: a plain lease reads at most `max` expired leases and `max`
//! waiting messages. A keyed lease walks the heads of the keys (one step
//! per key), so passing over a busy key costs one step however many
//! messages it holds: at most `max` + (keys at their limit) steps, and the
//! keys at their limit are at most those in `running`, those at their
//! limit in `kleased` (at most the queue's leased messages / `per_key`)
//! and the `max` this lease fills (every key when `per_key` is 0). It reads
//! `kleased` once per key it meets. Its walk of expired leases
//! reads at most `max + EXPIRED_SCAN` of them (further expired leases of
//! keys at their limit wait for a later lease). `purge`, `redrive` and
//! `purge_dead` of a whole queue touch every message they move, in one
//! script. `purge` stays one script on purpose: the trait deletes the
//! messages waiting when it is called and no others, and writes keep call
//! order; a purge in chunks (a bounded script repeated until done) would
//! also delete what a later call made wait (a send, or the nack of a
//! message leased at the purge), which a sequence bound can fix for sends
//! but not for nacks without reading every message;
//! `record_samples` forgets at most `DEDUP_PRUNE` deduplication keys per
//! call. Numbers in Lua are doubles: times must stay below 2^53 ms.
//!
//! For the other work ports, [`ENQUEUE_LUA`] is a Lua snippet defining
//! `local function enqueue(w, queue, a, i)`: `w` is the work prefix
//! `NS:{w}:`, `a` a table of arguments and `i` the index of the message's
//! first one ([`MESSAGE_ARGS`] of them, from [`message_args`]). It stores
//! the message exactly as `send` does (an id already queued is a no-op;
//! deduplication; the `sent` counter) and returns nil when stored (or
//! already queued) or the id holding its deduplication key. It also
//! defines the `q_*` helpers it uses; prepend it once.

use std::sync::LazyLock;

use redis::Value;

use shoal_store::{
    Admitted, DeadLetter, Delivery, Error, InvocationRecord, KeyLimit, Leased, NewMessage, Pending,
    QueueCounters, QueueDepth, QueueSample, Queues, Result,
};

use crate::RedisStore;
use crate::conn::{Lua, arg};
use crate::invocations::{INVOCATION_ARGS, PUT_INVOCATION_LUA, invocation_args};

/// Arguments of one message for [`ENQUEUE_LUA`]'s `enqueue`.
pub(crate) const MESSAGE_ARGS: usize = 7;

/// Extra expired leases a keyed lease may read past `max`.
pub(crate) const EXPIRED_SCAN: usize = 1000;

/// Deduplication keys forgotten per `record_samples` call at most.
pub(crate) const DEDUP_PRUNE: usize = 1000;

/// The arguments `enqueue` reads for one message: id, body, due, sent,
/// dedup key (`""` for none, else `=` + key), dedup until, concurrency key
/// (`""` for none, else `=` + key).
pub(crate) fn message_args(m: &NewMessage) -> Vec<Vec<u8>> {
    let (dedup, until) = match &m.dedup {
        Some((key, until)) => (optional(Some(key)), arg(until)),
        None => (Vec::new(), arg(0)),
    };
    vec![
        arg(&m.id),
        m.body.clone(),
        arg(m.due_ms),
        arg(m.sent_ms),
        dedup,
        until,
        optional(m.key.as_ref()),
    ]
}

fn optional(s: Option<&String>) -> Vec<u8> {
    match s {
        Some(s) => format!("={s}").into_bytes(),
        None => Vec::new(),
    }
}

/// The queue helpers and `enqueue` (see the module docs).
pub(crate) const ENQUEUE_LUA: &str = r"
local MESSAGE_ARGS = 7
local function q_pad(n) return string.format('%020d', n) end
local function q_group(p, key)
  if key then return p .. 'k:' .. key end
  return p .. 'n'
end
local function q_head_of(g)
  local first = redis.call('ZRANGE', g, 0, 0, 'WITHSCORES')
  if first[1] then return q_pad(tonumber(first[2])) .. ':' .. first[1] end
  return nil
end
local function q_head_sync(p, g, old)
  local new = q_head_of(g)
  if old ~= new then
    if old then redis.call('ZREM', p .. 'heads', old) end
    if new then redis.call('ZADD', p .. 'heads', 0, new) end
  end
end
-- A message starts waiting (ready, its key's group, the heads).
local function q_wait(p, mem, due, key)
  local g = q_group(p, key)
  local old = q_head_of(g)
  redis.call('ZADD', p .. 'ready', due, mem)
  redis.call('ZADD', g, due, mem)
  q_head_sync(p, g, old)
end
-- A waiting message stops waiting.
local function q_unwait(p, mem, key)
  local g = q_group(p, key)
  local old = q_head_of(g)
  redis.call('ZREM', p .. 'ready', mem)
  redis.call('ZREM', g, mem)
  q_head_sync(p, g, old)
end
-- Counts leased messages of a key (nothing for a message without one).
local function q_inflight(p, key, d)
  if not key then return end
  if redis.call('HINCRBY', p .. 'kleased', key, d) <= 0 then
    redis.call('HDEL', p .. 'kleased', key)
  end
end
-- Takes a queued message out of the flow (waiting or leased); its hash
-- stays for the caller to delete.
local function q_unqueue(p, mk, id)
  local f = redis.call('HMGET', mk, 'mem', 'key', 'lease')
  if f[3] then
    redis.call('ZREM', p .. 'leased', f[1])
    q_inflight(p, f[2], -1)
  else
    q_unwait(p, f[1], f[2])
  end
  redis.call('ZREM', p .. 'sent', id)
end
local function q_store(w, p, id, body, due, sent, key)
  local seq = redis.call('INCR', w .. 'q-seq')
  local mem = q_pad(seq) .. ':' .. id
  local mk = p .. 'm:' .. id
  redis.call('HSET', mk, 'body', body, 'due', due, 'sent', sent, 'mem', mem,
    'failures', 0, 'starts', 0)
  if key then redis.call('HSET', mk, 'key', key) end
  q_wait(p, mem, tonumber(due), key)
  redis.call('ZADD', p .. 'sent', sent, id)
end
local function enqueue(w, queue, a, i)
  local p = w .. 'q:' .. queue .. ':'
  local id = a[i]
  if redis.call('EXISTS', p .. 'm:' .. id) == 1 then return nil end
  local dedup = a[i + 4]
  if dedup ~= '' then
    local dk = string.sub(dedup, 2)
    local held = redis.call('HGET', p .. 'dedup', dk)
    if held then
      local c = string.find(held, ':', 1, true)
      if tonumber(string.sub(held, 1, c - 1)) > tonumber(a[i + 3]) then
        return string.sub(held, c + 1)
      end
    end
    redis.call('HSET', p .. 'dedup', dk, a[i + 5] .. ':' .. id)
    redis.call('ZADD', w .. 'q-dedup', a[i + 5], string.len(queue) .. ':' .. queue .. dk)
  end
  local key = nil
  if a[i + 6] ~= '' then key = string.sub(a[i + 6], 2) end
  q_store(w, p, id, a[i + 1], a[i + 2], a[i + 3], key)
  redis.call('HINCRBY', p .. 'counters', 'sent', 1)
  return nil
end
-- Removes the messages whose ids are a[first..] from queue prefix p,
-- counting them as acked; returns how many there were.
local function q_ack(p, a, first)
  local n = 0
  for j = first, #a do
    local mk = p .. 'm:' .. a[j]
    if redis.call('EXISTS', mk) == 1 then
      q_unqueue(p, mk, a[j])
      redis.call('DEL', mk)
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', p .. 'counters', 'acked', n) end
  return n
end
";

/// A queue script: the snippet, then `body` with its bounds filled in.
fn script(body: &str) -> Lua {
    let body = body
        .replace("EXPIRED_SCAN", &EXPIRED_SCAN.to_string())
        .replace("DEDUP_PRUNE", &DEDUP_PRUNE.to_string());
    Lua::new(format!("{ENQUEUE_LUA}{body}"))
}

/// `KEYS[1]` = W; ARGV = queue, then messages.
static SEND: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local out = {}
local n = (#ARGV - 1) / MESSAGE_ARGS
for j = 0, n - 1 do
  out[j + 1] = enqueue(KEYS[1], ARGV[1], ARGV, 2 + j * MESSAGE_ARGS) or false
end
return out
",
    )
});

/// A queue script that also writes invocation records (the snippets of
/// both modules, then `body`, `INVOCATION_ARGS` filled in).
fn script_with_records(body: &str) -> Lua {
    let text = format!("{PUT_INVOCATION_LUA}{ENQUEUE_LUA}{body}")
        .replace("INVOCATION_ARGS", &INVOCATION_ARGS.to_string());
    Lua::new(text)
}

/// `KEYS[1]` = W; ARGV = queue, cap, number of records, the records'
/// groups, then the messages' groups. Writes nothing and answers
/// `{'full', held}` when the queue's waiting and leased messages plus these
/// exceed the cap; else writes the records, then sends the messages, and
/// answers `{'sent', per message: false or the id holding its key}`.
static PUT_AND_SEND: LazyLock<Lua> = LazyLock::new(|| {
    script_with_records(
        r"
local queue, cap, nrec = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local p = KEYS[1] .. 'q:' .. queue .. ':'
local first = 4 + nrec * INVOCATION_ARGS
local n = (#ARGV - first + 1) / MESSAGE_ARGS
local held = redis.call('ZCARD', p .. 'ready') + redis.call('ZCARD', p .. 'leased')
if held + n > cap then return {'full', held} end
for i = 4, first - 1, INVOCATION_ARGS do put_invocation(KEYS[1], ARGV, i) end
local out = {'sent'}
for j = 0, n - 1 do
  out[j + 2] = enqueue(KEYS[1], queue, ARGV, first + j * MESSAGE_ARGS) or false
end
return out
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, number of records, the records' groups,
/// then the ids to ack (as `ACK`).
static PUT_AND_ACK: LazyLock<Lua> = LazyLock::new(|| {
    script_with_records(
        r"
local nrec = tonumber(ARGV[2])
local first = 3 + nrec * INVOCATION_ARGS
for i = 3, first - 1, INVOCATION_ARGS do put_invocation(KEYS[1], ARGV, i) end
return q_ack(KEYS[1] .. 'q:' .. ARGV[1] .. ':', ARGV, first)
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, now, max, visibility, per_key ('' without a
/// limit), then running (key, count) pairs. Returns next due (or false),
/// lease end, then id, body, failures, starts, key per delivery.
static LEASE: LazyLock<Lua> =
    LazyLock::new(|| script(&LEASE_BODY.replace("WITH_RECORDS", "false")));

/// `LEASE`, with each delivery followed by the invocation record whose id
/// is the message's (false when there is none).
static LEASE_WITH_RECORDS: LazyLock<Lua> =
    LazyLock::new(|| script(&LEASE_BODY.replace("WITH_RECORDS", "true")));

const LEASE_BODY: &str = r"
local w = KEYS[1]
local p = w .. 'q:' .. ARGV[1] .. ':'
local now = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local untilms = now + tonumber(ARGV[4])
local limited = ARGV[5] ~= ''
local per = tonumber(ARGV[5])
-- Per key: `mine` = the caller's messages in flight (`running`, then
-- this lease's takes), `all` = the store's count of leased messages (with
-- this lease's fresh takes), read when first needed.
local mine = {}
for j = 6, #ARGV, 2 do mine[ARGV[j]] = tonumber(ARGV[j + 1]) end
local all = {}
local function stored(key)
  if all[key] == nil then
    all[key] = tonumber(redis.call('HGET', p .. 'kleased', key) or 0)
  end
  return all[key]
end
-- Taking over an expired lease moves it from its holder to the caller:
-- only the caller's count grows.
-- A key may carry its own limit: NUL, decimal digits, NUL, the rest.
local function per_of(key)
  local own = string.match(key, '^%z([1-9]%d*)%z')
  if own and #own <= 10 and tonumber(own) <= 4294967295 then return tonumber(own) end
  return per
end
local function room_over(key)
  if not limited or not key then return true end
  return (mine[key] or 0) < per_of(key)
end
-- Taking a waiting message grows both counts.
local function room(key)
  if not limited or not key then return true end
  local lim = per_of(key)
  return (mine[key] or 0) < lim and stored(key) < lim
end
local function took(key, fresh)
  if limited and key then
    mine[key] = (mine[key] or 0) + 1
    if fresh then all[key] = stored(key) + 1 end
  end
end
local taken = {}
local fresh = {}
-- Expired leases first, by lease end then send order.
if max > 0 then
  local bound = max
  if limited then bound = max + EXPIRED_SCAN end
  local off = 0
  while #taken < max and off < bound do
    local batch = redis.call('ZRANGE', p .. 'leased', '-inf', ARGV[2], 'BYSCORE', 'LIMIT', off,
      math.min(100, bound - off))
    if #batch == 0 then break end
    for _, mem in ipairs(batch) do
      if #taken >= max then break end
      local id = string.sub(mem, 22)
      local key = redis.call('HGET', p .. 'm:' .. id, 'key')
      if room_over(key) then
        took(key, false)
        taken[#taken + 1] = id
      end
    end
    off = off + #batch
  end
end
-- Then waiting messages that are due, by due time then send order.
if #taken < max then
  if not limited then
    local batch = redis.call('ZRANGE', p .. 'ready', '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0,
      max - #taken)
    for _, mem in ipairs(batch) do
      local id = string.sub(mem, 22)
      q_unwait(p, mem, redis.call('HGET', p .. 'm:' .. id, 'key'))
      taken[#taken + 1] = id
      fresh[id] = true
    end
  else
    -- The heads of the keys in due order; taking a head makes the key's
    -- next message its head, later in the walk.
    local hi = '(' .. q_pad(now + 1)
    local cursor = '-'
    while #taken < max do
      local h = redis.call('ZRANGE', p .. 'heads', cursor, hi, 'BYLEX', 'LIMIT', 0, 1)
      if #h == 0 then break end
      cursor = '(' .. h[1]
      local mem = string.sub(h[1], 22)
      local id = string.sub(mem, 22)
      local key = redis.call('HGET', p .. 'm:' .. id, 'key')
      if room(key) then
        took(key, true)
        q_unwait(p, mem, key)
        taken[#taken + 1] = id
        fresh[id] = true
      end
    end
  end
end
local out = {false, untilms}
local lease = string.format('%d', untilms)
for _, id in ipairs(taken) do
  local mk = p .. 'm:' .. id
  local f = redis.call('HMGET', mk, 'mem', 'body', 'failures', 'starts', 'key')
  redis.call('ZADD', p .. 'leased', lease, f[1])
  redis.call('HSET', mk, 'lease', lease)
  if fresh[id] then q_inflight(p, f[5], 1) end
  out[#out + 1] = id
  out[#out + 1] = f[2]
  out[#out + 1] = tonumber(f[3])
  out[#out + 1] = tonumber(f[4])
  out[#out + 1] = f[5]
  if WITH_RECORDS then
    out[#out + 1] = redis.call('HGET', w .. 'inv:r:' .. id, 'r') or false
  end
end
local r = redis.call('ZRANGE', p .. 'ready', 0, 0, 'WITHSCORES')
local l = redis.call('ZRANGE', p .. 'leased', 0, 0, 'WITHSCORES')
local next_due = nil
if r[2] then next_due = tonumber(r[2]) end
if l[2] and (not next_due or tonumber(l[2]) < next_due) then next_due = tonumber(l[2]) end
if next_due then out[1] = next_due end
return out
";

/// `KEYS[1]` = W; ARGV = queue, id, lease end.
static EXTEND: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local mk = p .. 'm:' .. ARGV[2]
local f = redis.call('HMGET', mk, 'mem', 'lease')
if not f[2] then return 0 end
redis.call('ZADD', p .. 'leased', ARGV[3], f[1])
redis.call('HSET', mk, 'lease', ARGV[3])
return 1
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, ids.
static ACK: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
return q_ack(KEYS[1] .. 'q:' .. ARGV[1] .. ':', ARGV, 2)
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, id, due.
static NACK: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local mk = p .. 'm:' .. ARGV[2]
local f = redis.call('HMGET', mk, 'mem', 'key', 'lease')
if not f[1] then return 0 end
if f[3] then
  redis.call('ZREM', p .. 'leased', f[1])
  redis.call('HDEL', mk, 'lease')
  q_inflight(p, f[2], -1)
else
  q_unwait(p, f[1], f[2])
end
redis.call('HSET', mk, 'due', ARGV[3])
redis.call('HINCRBY', mk, 'failures', 1)
q_wait(p, f[1], tonumber(ARGV[3]), f[2])
redis.call('HINCRBY', p .. 'counters', 'nacked', 1)
return 1
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, ids.
static STARTED: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
for j = 2, #ARGV do
  local mk = p .. 'm:' .. ARGV[j]
  if redis.call('EXISTS', mk) == 1 then redis.call('HINCRBY', mk, 'starts', 1) end
end
return 1
",
    )
});

/// `KEYS[1]` = W; ARGV = queue. Returns waiting, in flight, dead, oldest sent.
static DEPTH: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local oldest = redis.call('ZRANGE', p .. 'sent', 0, 0, 'WITHSCORES')
local o = false
if oldest[2] then o = tonumber(oldest[2]) end
return {redis.call('ZCARD', p .. 'ready'), redis.call('ZCARD', p .. 'leased'),
  redis.call('ZCARD', p .. 'dead'), o}
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, id, reason, now.
static DEAD_LETTER: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local id = ARGV[2]
local mk = p .. 'm:' .. id
if redis.call('EXISTS', mk) == 0 then return 0 end
q_unqueue(p, mk, id)
local f = redis.call('HMGET', mk, 'body', 'failures', 'sent', 'key')
local dk = p .. 'd:' .. id
redis.call('DEL', dk)
redis.call('HSET', dk, 'body', f[1], 'failures', f[2], 'sent', f[3], 'dead_at', ARGV[4],
  'reason', ARGV[3])
if f[4] then redis.call('HSET', dk, 'key', f[4]) end
redis.call('ZADD', p .. 'dead', 0, id)
redis.call('DEL', mk)
redis.call('HINCRBY', p .. 'counters', 'dead_lettered', 1)
return 1
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, lower bound ('-' or '(' + after), limit.
/// Returns id, body, failures, sent, dead_at, reason per dead letter.
static DEAD_LETTERS: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local out = {}
if tonumber(ARGV[3]) == 0 then return out end
local ids = redis.call('ZRANGE', p .. 'dead', ARGV[2], '+', 'BYLEX', 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', p .. 'd:' .. id, 'body', 'failures', 'sent', 'dead_at', 'reason')
  if f[1] then
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = tonumber(f[2])
    out[#out + 1] = tonumber(f[3])
    out[#out + 1] = tonumber(f[4])
    out[#out + 1] = f[5]
  end
end
return out
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, now, 'all' or 'ids', ids.
static REDRIVE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local w = KEYS[1]
local p = w .. 'q:' .. ARGV[1] .. ':'
local ids = {}
if ARGV[3] == 'all' then
  ids = redis.call('ZRANGE', p .. 'dead', 0, -1)
else
  for j = 4, #ARGV do ids[#ids + 1] = ARGV[j] end
end
local n = 0
for _, id in ipairs(ids) do
  local dk = p .. 'd:' .. id
  if redis.call('EXISTS', p .. 'm:' .. id) == 0 and redis.call('EXISTS', dk) == 1 then
    local f = redis.call('HMGET', dk, 'body', 'sent', 'key')
    q_store(w, p, id, f[1], ARGV[2], f[2], f[3])
    redis.call('DEL', dk)
    redis.call('ZREM', p .. 'dead', id)
    n = n + 1
  end
end
return n
",
    )
});

/// `KEYS[1]` = W; ARGV = queue, 'all' or 'ids', ids.
static PURGE_DEAD: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local ids = {}
if ARGV[2] == 'all' then
  ids = redis.call('ZRANGE', p .. 'dead', 0, -1)
else
  for j = 3, #ARGV do ids[#ids + 1] = ARGV[j] end
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', p .. 'dead', id) == 1 then
    redis.call('DEL', p .. 'd:' .. id)
    n = n + 1
  end
end
return n
",
    )
});

/// `KEYS[1]` = W; ARGV = queue.
static PURGE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local p = KEYS[1] .. 'q:' .. ARGV[1] .. ':'
local waiting = redis.call('ZRANGE', p .. 'ready', 0, -1)
local groups = {}
for _, mem in ipairs(waiting) do
  local id = string.sub(mem, 22)
  local mk = p .. 'm:' .. id
  groups[q_group(p, redis.call('HGET', mk, 'key'))] = true
  redis.call('DEL', mk)
  redis.call('ZREM', p .. 'sent', id)
end
for g, _ in pairs(groups) do redis.call('DEL', g) end
redis.call('DEL', p .. 'ready', p .. 'heads')
return #waiting
",
    )
});

/// `KEYS[1]` = W; ARGV = keep_after, then (queue, at, member) per sample.
static RECORD_SAMPLES: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local w = KEYS[1]
local keep = tonumber(ARGV[1])
local now = keep
for j = 2, #ARGV, 3 do
  local sk = w .. 'q:' .. ARGV[j] .. ':samples'
  redis.call('ZREMRANGEBYSCORE', sk, ARGV[j + 1], ARGV[j + 1])
  redis.call('ZADD', sk, ARGV[j + 1], ARGV[j + 2])
  redis.call('SADD', w .. 'q-sampled', ARGV[j])
  if tonumber(ARGV[j + 1]) > now then now = tonumber(ARGV[j + 1]) end
end
for _, queue in ipairs(redis.call('SMEMBERS', w .. 'q-sampled')) do
  local sk = w .. 'q:' .. queue .. ':samples'
  redis.call('ZREMRANGEBYSCORE', sk, '-inf', '(' .. ARGV[1])
  if redis.call('ZCARD', sk) == 0 then redis.call('SREM', w .. 'q-sampled', queue) end
end
-- Deduplication keys whose window ended by the latest time seen: no send
-- at or after it can find them held.
local ended = redis.call('ZRANGE', w .. 'q-dedup', '-inf', string.format('%d', now), 'BYSCORE', 'LIMIT', 0, DEDUP_PRUNE)
for _, member in ipairs(ended) do
  local c = string.find(member, ':', 1, true)
  local len = tonumber(string.sub(member, 1, c - 1))
  local queue = string.sub(member, c + 1, c + len)
  redis.call('HDEL', w .. 'q:' .. queue .. ':dedup', string.sub(member, c + len + 1))
  redis.call('ZREM', w .. 'q-dedup', member)
end
return 1
",
    )
});

impl Queues for RedisStore {
    fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Pending<Vec<Option<String>>> {
        if messages.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let mut args = Vec::with_capacity(1 + messages.len() * MESSAGE_ARGS);
        args.push(arg(queue));
        for m in &messages {
            args.extend(message_args(m));
        }
        self.conn.script(&SEND, self.work_keys(), args)
    }

    fn put_and_send(
        &self,
        records: &[InvocationRecord],
        queue: &str,
        messages: &[NewMessage],
        cap: u64,
    ) -> Option<Pending<Admitted>> {
        let mut args = vec![arg(queue), arg(cap), arg(records.len())];
        for record in records {
            match invocation_args(record) {
                Ok(a) => args.extend(a),
                Err(e) => return Some(Box::pin(async move { Err(e) })),
            }
        }
        for m in messages {
            args.extend(message_args(m));
        }
        let reply = self
            .conn
            .script::<Vec<Value>>(&PUT_AND_SEND, self.work_keys(), args);
        Some(Box::pin(async move {
            let mut r = Reply::new("a send", reply.await?);
            if r.string()? == "full" {
                return Ok(Admitted::Full { held: r.u64()? });
            }
            let mut out = Vec::new();
            while !r.is_empty() {
                out.push(r.opt_string()?);
            }
            Ok(Admitted::Sent(out))
        }))
    }

    fn put_and_ack(
        &self,
        records: &[InvocationRecord],
        queue: &str,
        ids: &[String],
    ) -> Option<Pending<()>> {
        let mut args = vec![arg(queue), arg(records.len())];
        for record in records {
            match invocation_args(record) {
                Ok(a) => args.extend(a),
                Err(e) => return Some(Box::pin(async move { Err(e) })),
            }
        }
        Some(self.unit(&PUT_AND_ACK, with_ids(args, ids)))
    }

    fn lease_with_records(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Option<Pending<(Leased, Vec<Option<InvocationRecord>>)>> {
        Some(self.lease_script(
            &LEASE_WITH_RECORDS,
            queue,
            now_ms,
            max,
            visibility_ms,
            limit,
        ))
    }

    fn lease_keyed(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Pending<Leased> {
        let leased = self.lease_script(&LEASE, queue, now_ms, max, visibility_ms, limit);
        Box::pin(async move { Ok(leased.await?.0) })
    }

    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> Pending<()> {
        let args = vec![arg(queue), arg(id), arg(lease_until_ms)];
        self.unit(&EXTEND, args)
    }

    fn ack(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        if ids.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        self.unit(&ACK, with_ids(vec![arg(queue)], &ids))
    }

    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> Pending<()> {
        self.unit(&NACK, vec![arg(queue), arg(id), arg(due_ms)])
    }

    fn started(&self, queue: &str, ids: Vec<String>) -> Pending<()> {
        if ids.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        self.unit(&STARTED, with_ids(vec![arg(queue)], &ids))
    }

    fn depth(&self, queue: &str) -> Pending<QueueDepth> {
        let reply = self
            .conn
            .script::<Vec<Value>>(&DEPTH, self.work_keys(), vec![arg(queue)]);
        Box::pin(async move {
            let mut r = Reply::new("a queue depth", reply.await?);
            Ok(QueueDepth {
                waiting: r.u64()?,
                in_flight: r.u64()?,
                dead: r.u64()?,
                oldest_sent_ms: r.opt_u64()?,
            })
        })
    }

    fn counters(&self, queue: &str) -> Pending<QueueCounters> {
        let reply = self.conn.query::<Vec<Option<u64>>>(
            redis::cmd("HMGET")
                .arg(self.queue_key(queue, "counters"))
                .arg(&["sent", "acked", "nacked", "dead_lettered"])
                .clone(),
        );
        Box::pin(async move {
            let c = reply.await?;
            let at = |i: usize| c.get(i).copied().flatten().unwrap_or(0);
            Ok(QueueCounters {
                sent: at(0),
                acked: at(1),
                nacked: at(2),
                dead_lettered: at(3),
            })
        })
    }

    fn dead_letter(&self, queue: &str, id: &str, reason: String, now_ms: u64) -> Pending<()> {
        let args = vec![arg(queue), arg(id), arg(reason), arg(now_ms)];
        self.unit(&DEAD_LETTER, args)
    }

    fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Pending<Vec<DeadLetter>> {
        let from = match after {
            Some(after) => format!("({after}"),
            None => "-".to_string(),
        };
        let limit = limit.min(i64::MAX as usize);
        let args = vec![arg(queue), arg(from), arg(limit)];
        let reply = self
            .conn
            .script::<Vec<Value>>(&DEAD_LETTERS, self.work_keys(), args);
        Box::pin(async move {
            let mut r = Reply::new("dead letters", reply.await?);
            let mut out = Vec::new();
            while !r.is_empty() {
                out.push(DeadLetter {
                    id: r.string()?,
                    body: r.bytes()?,
                    failures: r.u32()?,
                    sent_ms: r.u64()?,
                    dead_at_ms: r.u64()?,
                    reason: r.string()?,
                });
            }
            Ok(out)
        })
    }

    fn redrive(&self, queue: &str, ids: Option<Vec<String>>, now_ms: u64) -> Pending<u64> {
        let args = which(vec![arg(queue), arg(now_ms)], ids.as_deref());
        self.conn.script(&REDRIVE, self.work_keys(), args)
    }

    fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Pending<u64> {
        let args = which(vec![arg(queue)], ids.as_deref());
        self.conn.script(&PURGE_DEAD, self.work_keys(), args)
    }

    fn purge(&self, queue: &str) -> Pending<u64> {
        self.conn.script(&PURGE, self.work_keys(), vec![arg(queue)])
    }

    fn record_samples(
        &self,
        samples: Vec<(String, QueueSample)>,
        keep_after_ms: u64,
    ) -> Pending<()> {
        let mut args = vec![arg(keep_after_ms)];
        for (queue, s) in &samples {
            args.push(arg(queue));
            args.push(arg(s.at_ms));
            args.push(arg(sample_member(s)));
        }
        self.unit(&RECORD_SAMPLES, args)
    }

    fn samples(&self, queue: &str, since_ms: u64) -> Pending<Vec<QueueSample>> {
        let members = self.conn.query::<Vec<String>>(
            redis::cmd("ZRANGE")
                .arg(self.queue_key(queue, "samples"))
                .arg(since_ms)
                .arg("+inf")
                .arg("BYSCORE")
                .clone(),
        );
        Box::pin(async move { members.await?.iter().map(|m| parse_sample(m)).collect() })
    }
}

impl RedisStore {
    /// A lease by `lua` (`LEASE`, or `LEASE_WITH_RECORDS`: the records come
    /// back too).
    fn lease_script(
        &self,
        lua: &'static Lua,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&KeyLimit>,
    ) -> Pending<(Leased, Vec<Option<InvocationRecord>>)> {
        let with_records = std::ptr::eq(lua, &*LEASE_WITH_RECORDS);
        // Lua numbers are doubles: a larger `max` could not be a LIMIT.
        let max = max.min(u32::MAX as usize);
        let mut args = vec![arg(queue), arg(now_ms), arg(max), arg(visibility_ms)];
        match limit {
            None => args.push(Vec::new()),
            Some(limit) => {
                args.push(arg(limit.per_key));
                for (key, running) in &limit.running {
                    args.push(arg(key));
                    args.push(arg(*running));
                }
            }
        }
        let reply = self.conn.script::<Vec<Value>>(lua, self.work_keys(), args);
        Box::pin(async move {
            let mut r = Reply::new("a lease", reply.await?);
            let next_due_ms = r.opt_u64()?;
            let lease_until_ms = r.u64()?;
            let mut deliveries = Vec::new();
            let mut records = Vec::new();
            while !r.is_empty() {
                deliveries.push(Delivery {
                    id: r.string()?,
                    body: r.bytes()?,
                    failures: r.u32()?,
                    starts: r.u32()?,
                    key: r.opt_string()?,
                    lease_until_ms,
                });
                if with_records {
                    let record = match r.opt_string()? {
                        Some(json) => {
                            Some(crate::decode::<InvocationRecord>("an invocation", &json)?)
                        }
                        None => None,
                    };
                    records.push(record);
                }
            }
            let leased = Leased {
                deliveries,
                next_due_ms,
            };
            Ok((leased, records))
        })
    }

    /// The keys of a work script: the work prefix, from which it derives
    /// the rest (all in the `{w}` slot).
    pub(crate) fn work_keys(&self) -> Vec<String> {
        vec![self.keys.work("")]
    }

    fn queue_key(&self, queue: &str, what: &str) -> String {
        self.keys.work(&format!("q:{queue}:{what}"))
    }

    /// Runs a work script whose reply is not needed.
    fn unit(&self, lua: &'static Lua, args: Vec<Vec<u8>>) -> Pending<()> {
        let reply = self.conn.script::<Value>(lua, self.work_keys(), args);
        Box::pin(async move {
            reply.await?;
            Ok(())
        })
    }
}

fn with_ids(mut args: Vec<Vec<u8>>, ids: &[String]) -> Vec<Vec<u8>> {
    args.extend(ids.iter().map(arg));
    args
}

/// `all`, or `ids` followed by the ids.
fn which(mut args: Vec<Vec<u8>>, ids: Option<&[String]>) -> Vec<Vec<u8>> {
    match ids {
        None => args.push(arg("all")),
        Some(ids) => {
            args.push(arg("ids"));
            args.extend(ids.iter().map(arg));
        }
    }
    args
}

/// A sample as a sorted-set member (its time first, so members differ).
fn sample_member(s: &QueueSample) -> String {
    let oldest = s.depth.oldest_sent_ms.map(|o| o.to_string());
    format!(
        "{},{},{},{},{},{},{},{},{}",
        s.at_ms,
        s.depth.waiting,
        s.depth.in_flight,
        s.depth.dead,
        oldest.unwrap_or_default(),
        s.counters.sent,
        s.counters.acked,
        s.counters.nacked,
        s.counters.dead_lettered,
    )
}

fn parse_sample(member: &str) -> Result<QueueSample> {
    let bad = || Error::Corrupt(format!("queue sample {member:?}"));
    let fields: Vec<&str> = member.split(',').collect();
    let [
        at,
        waiting,
        in_flight,
        dead,
        oldest,
        sent,
        acked,
        nacked,
        dead_lettered,
    ] = fields[..]
    else {
        return Err(bad());
    };
    let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
    Ok(QueueSample {
        at_ms: n(at)?,
        depth: QueueDepth {
            waiting: n(waiting)?,
            in_flight: n(in_flight)?,
            dead: n(dead)?,
            oldest_sent_ms: if oldest.is_empty() {
                None
            } else {
                Some(n(oldest)?)
            },
        },
        counters: QueueCounters {
            sent: n(sent)?,
            acked: n(acked)?,
            nacked: n(nacked)?,
            dead_lettered: n(dead_lettered)?,
        },
    })
}

/// The fields of a script's flat array reply, read in order.
pub(crate) struct Reply {
    what: &'static str,
    items: std::collections::VecDeque<Value>,
}

impl Reply {
    pub(crate) fn new(what: &'static str, items: Vec<Value>) -> Reply {
        Reply {
            what,
            items: items.into(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn bad(&self, why: &str) -> Error {
        Error::Corrupt(format!("{} from Redis: {why}", self.what))
    }

    fn next(&mut self) -> Result<Value> {
        self.items.pop_front().ok_or_else(|| self.bad("too short"))
    }

    pub(crate) fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        match self.next()? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b)),
            Value::SimpleString(s) => Ok(Some(s.into_bytes())),
            Value::Okay => Ok(Some(b"OK".to_vec())),
            other => Err(self.bad(&format!("{other:?} where bytes belong"))),
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>> {
        self.opt_bytes()?
            .ok_or_else(|| self.bad("nil where bytes belong"))
    }

    pub(crate) fn opt_string(&mut self) -> Result<Option<String>> {
        match self.opt_bytes()? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| self.bad("a string that is not UTF-8")),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        self.opt_string()?
            .ok_or_else(|| self.bad("nil where a string belongs"))
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>> {
        match self.next()? {
            Value::Nil => Ok(None),
            Value::Int(n) => u64::try_from(n)
                .map(Some)
                .map_err(|_| self.bad(&format!("negative number {n}"))),
            Value::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| self.bad("a number that does not parse")),
            other => Err(self.bad(&format!("{other:?} where a number belongs"))),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.opt_u64()?
            .ok_or_else(|| self.bad("nil where a number belongs"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let n = self.u64()?;
        u32::try_from(n).map_err(|_| self.bad(&format!("{n} out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snippet_reads_as_many_arguments_as_message_args_gives() {
        assert!(ENQUEUE_LUA.contains(&format!("local MESSAGE_ARGS = {MESSAGE_ARGS}\n")));
        let m = NewMessage {
            id: "a".into(),
            body: vec![0, 255],
            due_ms: 1,
            sent_ms: 2,
            dedup: Some(("k".into(), 3)),
            key: Some("t".into()),
        };
        assert_eq!(message_args(&m).len(), MESSAGE_ARGS);
    }

    #[test]
    fn samples_read_back_as_written() {
        let s = QueueSample {
            at_ms: 5,
            depth: QueueDepth {
                waiting: 1,
                in_flight: 2,
                dead: 3,
                oldest_sent_ms: None,
            },
            counters: QueueCounters {
                sent: 4,
                acked: 5,
                nacked: 6,
                dead_lettered: 7,
            },
        };
        assert_eq!(parse_sample(&sample_member(&s)).unwrap(), s);
    }
}
