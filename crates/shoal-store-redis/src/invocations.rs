//! The invocations port: records, their four newest-first indexes, the id
//! order the retention sweep walks, and logs, all in the work slot `{w}`.
//!
//! | key | type | what |
//! |---|---|---|
//! | `NS:{w}:inv:r:ID` | hash | one record: `r` its JSON, and what it is indexed under: `f` function, `s` status, `m` mode, `k` its index member, `p` when it may be purged (see below) |
//! | `NS:{w}:inv:log:ID` | string | the logs of invocation ID, raw bytes (kept apart: either may exist without the other) |
//! | `NS:{w}:inv:ids` | sorted set | every record's id, score 0: the id order of `purge_invocations` (`ZRANGE BYLEX`) |
//! | `NS:{w}:inv:all` | sorted set | every record's index member, score 0 |
//! | `NS:{w}:inv:f:FUNCTION` | sorted set | the index members of one function's records |
//! | `NS:{w}:inv:s:STATUS` | sorted set | ... of the records in one status (`queued`, `timed_out`, ...) |
//! | `NS:{w}:inv:fs:FUNCTION:STATUS` | sorted set | ... of one function's records in one status |
//!
//! An index member is `TTTTTTTTTTTTTTTTTTTT:ID`: `created_at_ms` as 20
//! decimal digits, then the id. Every member has score 0, so the set is in
//! byte order, which is `(created_at_ms, id)` order, and a page is one
//! `ZRANGE index (CURSOR [SINCE BYLEX REV LIMIT 0 N`. The time is in the
//! member and not the score because a score is a double: times above 2^53
//! (the conformance suite uses some) would lose their order.
//!
//! `p` is `finished_at_ms` as 20 digits when the status is final, and
//! empty otherwise: the purge compares it with its cutoff and so never
//! deletes a record still queued or running, however old.
//!
//! A record written again moves its index entries in the same script that
//! writes it (the old ones are read from its hash), so a list never finds
//! a record under a status it left. A mode filter is checked on the record
//! hashes of the entries the other fields choose; one call reads at most
//! [`MAX_SCAN`] entries, and a page cut there ends short with a cursor.
//!
//! # The snippet for other scripts
//!
//! [`PUT_INVOCATION_LUA`] defines `local function put_invocation(w, a, i)`
//! for scripts that write invocation records with other state (jobs): `w`
//! is [`work_prefix`] (`NS:{w}:`, passed in KEYS so the slot is declared),
//! `a` a table of strings (ARGV) and `i` the index of the first of the
//! record's [`INVOCATION_ARGS`] entries, as [`invocation_args`] makes them.
//! It writes the record and moves its index entries; it reads and writes
//! only keys under `w`. Prepend it to the script's text.

use std::sync::LazyLock;

use shoal_store::usage::{ALL_FUNCTIONS, Rollup, RollupQuery, RollupRow, Usage};
use shoal_store::{
    Error, InvocationCursor, InvocationFilter, InvocationPage, InvocationRecord, Invocations,
    Pending, Purged, Result, StoreHealth,
};

use crate::conn::{Lua, arg};
use crate::{Keys, RedisStore, decode, encode};

/// The most index entries one `list_invocations` call reads (as redb).
pub(crate) const MAX_SCAN: usize = 10_000;

/// The most ids one `purge_invocations` step looks at, whatever `scan`
/// says: one step is one script, and a script blocks Redis while it runs.
pub(crate) const MAX_PURGE_SCAN: usize = 10_000;

/// How many ARGV entries one record takes in [`PUT_INVOCATION_LUA`].
pub(crate) const INVOCATION_ARGS: usize = 8;

/// Defines `put_invocation(w, a, i)`: writes the record whose
/// [`INVOCATION_ARGS`] entries start at `a[i]` (id, function, status,
/// mode, index member, purge time, JSON, usage delta) and moves its index
/// entries; when the record becomes final here (the stored one is absent
/// or not final), adds its usage delta ([`usage_arg`]) to the rollups:
/// `use:m:START` / `use:h:START` / `use:d:START` hashes of `FUNCTION\x1fTOKEN\x1fFIELD`
/// counters, their starts in the sorted sets `use:m` / `use:h` / `use:d`.
pub(crate) const PUT_INVOCATION_LUA: &str = r"
local final_status = {succeeded = true, failed = true, timed_out = true, cancelled = true}
local function add_usage(w, u)
  local p = {}
  for x in string.gmatch(u, '[^\t]+') do p[#p + 1] = x end
  for _, b in ipairs({{'m', p[1]}, {'h', p[2]}, {'d', p[3]}}) do
    local key = w .. 'use:' .. b[1] .. ':' .. b[2]
    for j = 6, #p, 2 do
      redis.call('HINCRBY', key, p[4] .. p[j], p[j + 1])
      redis.call('HINCRBY', key, p[5] .. p[j], p[j + 1])
    end
    redis.call('ZADD', w .. 'use:' .. b[1], b[2], b[2])
  end
end
local function put_invocation(w, a, i)
  local id, f, s, m, k, p, json, u = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]
  local r = w .. 'inv:r:' .. id
  local old = redis.call('HMGET', r, 'f', 's', 'k')
  if u ~= '' and not (old[2] and final_status[old[2]]) then add_usage(w, u) end
  if old[3] == k and old[1] == f and old[2] ~= s then
    -- Only the status moved (queued, running, final): its two indexes.
    redis.call('ZREM', w .. 'inv:s:' .. old[2], k)
    redis.call('ZREM', w .. 'inv:fs:' .. f .. ':' .. old[2], k)
    redis.call('ZADD', w .. 'inv:s:' .. s, 0, k)
    redis.call('ZADD', w .. 'inv:fs:' .. f .. ':' .. s, 0, k)
  elseif old[3] ~= k or old[1] ~= f or old[2] ~= s then
    if old[3] then
      redis.call('ZREM', w .. 'inv:all', old[3])
      redis.call('ZREM', w .. 'inv:f:' .. old[1], old[3])
      redis.call('ZREM', w .. 'inv:s:' .. old[2], old[3])
      redis.call('ZREM', w .. 'inv:fs:' .. old[1] .. ':' .. old[2], old[3])
    else
      redis.call('ZADD', w .. 'inv:ids', 0, id)
    end
    redis.call('ZADD', w .. 'inv:all', 0, k)
    redis.call('ZADD', w .. 'inv:f:' .. f, 0, k)
    redis.call('ZADD', w .. 'inv:s:' .. s, 0, k)
    redis.call('ZADD', w .. 'inv:fs:' .. f .. ':' .. s, 0, k)
  end
  redis.call('HSET', r, 'r', json, 'f', f, 's', s, 'm', m, 'k', k, 'p', p)
end
";

/// The key prefix of the work slot, `NS:{w}:`: what scripts that derive
/// work keys in Lua take in KEYS.
pub(crate) fn work_prefix(keys: &Keys) -> String {
    keys.work("")
}

/// The [`INVOCATION_ARGS`] ARGV entries of one record for
/// [`PUT_INVOCATION_LUA`].
pub(crate) fn invocation_args(record: &InvocationRecord) -> Result<Vec<Vec<u8>>> {
    let purge_at = match record.finished_at_ms {
        Some(at) if record.status.is_final() => digits(at),
        _ => String::new(),
    };
    Ok(vec![
        arg(&record.id),
        arg(record.function.as_str()),
        arg(record.status.as_str()),
        arg(record.mode.as_str()),
        arg(member(record.created_at_ms, &record.id)),
        arg(purge_at),
        arg(encode(record)?),
        arg(usage_arg(record)),
    ])
}

/// The usage delta of a final record for [`PUT_INVOCATION_LUA`]
/// (`MINUTE\tHOUR\tDAY\tFUNCTION\x1fTOKEN\x1f\t*\x1fTOKEN\x1f\tFIELD\tN...`: each
/// field counted for the function and for all functions), empty while not final.
pub(crate) fn usage_arg(record: &InvocationRecord) -> String {
    let Some(d) = shoal_store::usage::delta(record) else {
        return String::new();
    };
    let [(_, minute), (_, hour), (_, day)] = d.buckets();
    let mut out = format!(
        "{minute}\t{hour}\t{day}\t{}\x1f{}\x1f\t{ALL_FUNCTIONS}\x1f{}\x1f",
        d.function, d.token, d.token
    );
    for (field, n) in d.fields {
        out.push_str(&format!("\t{field}\t{n}"));
    }
    out
}

/// The rollup rows of one grain starting in `[ARGV[1], ARGV[2])`, flat:
/// `{start, n, field, value, ... (n pairs), start, n, ...}`.
static ROLLUPS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local w, g = KEYS[1], ARGV[3]
local out = {}
for _, start in ipairs(redis.call('ZRANGEBYSCORE', w .. 'use:' .. g, ARGV[1], '(' .. ARGV[2])) do
  local h = redis.call('HGETALL', w .. 'use:' .. g .. ':' .. start)
  out[#out + 1] = start
  out[#out + 1] = tostring(#h / 2)
  for _, x in ipairs(h) do out[#out + 1] = x end
end
return out
",
    )
});

impl Usage for RedisStore {
    fn rollups(&self, q: &RollupQuery) -> Pending<Vec<RollupRow>> {
        if q.since_ms >= q.until_ms {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let reply = self.conn.script::<Vec<String>>(
            &ROLLUPS,
            vec![work_prefix(&self.keys)],
            vec![arg(q.since_ms), arg(q.until_ms), arg(q.grain.tag())],
        );
        let q = q.clone();
        Box::pin(async move { rollup_rows(&reply.await?, &q) })
    }

    fn count_indexed(&self, filter: &InvocationFilter) -> Pending<u64> {
        let since = filter.since_ms.unwrap_or(0);
        let until = filter.until_ms.unwrap_or(u64::MAX);
        if since >= until {
            return Box::pin(async { Ok(0) });
        }
        let index = match (&filter.function, filter.status) {
            (Some(f), Some(s)) => self
                .keys
                .work(&format!("inv:fs:{}:{}", f.as_str(), s.as_str())),
            (Some(f), None) => self.keys.work(&format!("inv:f:{}", f.as_str())),
            (None, Some(s)) => self.keys.work(&format!("inv:s:{}", s.as_str())),
            (None, None) => self.keys.work("inv:all"),
        };
        self.conn.query(
            redis::cmd("ZLEXCOUNT")
                .arg(index)
                .arg(format!("[{}", member(since, "")))
                .arg(format!("({}", member(until, "")))
                .clone(),
        )
    }
}

/// Decodes [`ROLLUPS`]' answer into rows, filtered by `q`.
fn rollup_rows(flat: &[String], q: &RollupQuery) -> Result<Vec<RollupRow>> {
    let bad = || Error::Corrupt("a usage rollup hash is malformed".to_string());
    let mut rows: std::collections::BTreeMap<(u64, String, String), Rollup> = Default::default();
    let mut i = 0;
    while i + 1 < flat.len() {
        let start: u64 = flat[i].parse().map_err(|_| bad())?;
        let n: usize = flat[i + 1].parse().map_err(|_| bad())?;
        i += 2;
        for _ in 0..n {
            let (field, value) = (
                flat.get(i).ok_or_else(bad)?,
                flat.get(i + 1).ok_or_else(bad)?,
            );
            i += 2;
            let mut parts = field.split('\x1f');
            let (Some(function), Some(token), Some(idx)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            if !q.wants(function, token) {
                continue;
            }
            let idx: usize = idx.parse().map_err(|_| bad())?;
            let value: u64 = value.parse().map_err(|_| bad())?;
            if idx < shoal_store::usage::FIELDS {
                rows.entry((start, function.to_string(), token.to_string()))
                    .or_default()
                    .bump(idx, value);
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|((start_ms, function, token), rollup)| RollupRow {
            start_ms,
            function,
            token,
            rollup,
        })
        .collect())
}

/// Writes every record given (groups of ARGV) and their indexes.
static PUT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{PUT_INVOCATION_LUA}
for i = 1, #ARGV, {INVOCATION_ARGS} do put_invocation(KEYS[1], ARGV, i) end
return 1
"
    ))
});

/// One page: from the index `KEYS[1]`, below `ARGV[1]` and at or above `ARGV[2]`
/// (BYLEX bounds), newest first, up to `ARGV[3]` records whose mode is
/// `ARGV[4]` (any when empty), reading at most `ARGV[5]` entries. Answers
/// `{stopped, member, json, member, json, ...}`: `stopped` is the last
/// entry read when the budget ran out first (else empty), and a `json` is
/// false for an indexed record that is not stored.
static LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local index, w = KEYS[1], KEYS[2]
local hi, lo, want, mode, budget = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local out, found, scanned, last = {''}, 0, 0, nil
while found < want and scanned < budget do
  local n = want - found
  if mode ~= '' and n < 256 then n = 256 end
  if n > budget - scanned then n = budget - scanned end
  local batch = redis.call('ZRANGE', index, hi, lo, 'BYLEX', 'REV', 'LIMIT', 0, n)
  for _, k in ipairs(batch) do
    scanned = scanned + 1
    last = k
    local id = string.sub(k, 22)
    local h = redis.call('HMGET', w .. 'inv:r:' .. id, 'm', 'r')
    if mode == '' or h[1] == mode or not h[2] then
      out[#out + 1] = k
      out[#out + 1] = h[2] or false
      found = found + 1
      if found >= want then break end
    end
  end
  if #batch < n then break end
  hi = '(' .. last
end
if found < want and scanned >= budget and last then out[1] = last end
return out
",
    )
});

/// One purge step: looks at up to `ARGV[2]` ids from `ARGV[1]` (a BYLEX
/// bound) and deletes, with logs and index entries, the records whose
/// purge time is before `ARGV[3]`. Answers `{deleted, last id looked at when
/// more follow, else ''}`.
static PURGE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local w = KEYS[1]
local scan = tonumber(ARGV[2])
-- Compares two times of 20 digits in two halves: a Lua number is a double,
-- exact below 2^53 only.
local function earlier(a, b)
  local ah, bh = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, 11)) < tonumber(string.sub(b, 11))
end
local ids = redis.call('ZRANGE', w .. 'inv:ids', ARGV[1], '+', 'BYLEX', 'LIMIT', 0, scan + 1)
local n = math.min(#ids, scan)
local deleted = 0
for j = 1, n do
  local id = ids[j]
  local r = w .. 'inv:r:' .. id
  local h = redis.call('HMGET', r, 'p', 'f', 's', 'k')
  if h[1] and h[1] ~= '' and h[4] and earlier(h[1], ARGV[3]) then
    redis.call('ZREM', w .. 'inv:all', h[4])
    redis.call('ZREM', w .. 'inv:f:' .. h[2], h[4])
    redis.call('ZREM', w .. 'inv:s:' .. h[3], h[4])
    redis.call('ZREM', w .. 'inv:fs:' .. h[2] .. ':' .. h[3], h[4])
    redis.call('ZREM', w .. 'inv:ids', id)
    redis.call('DEL', r, w .. 'inv:log:' .. id)
    deleted = deleted + 1
  end
end
local next = ''
if #ids > scan and n > 0 then next = ids[n] end
return {deleted, next}
",
    )
});

impl Invocations for RedisStore {
    /// One script for the whole batch: every record and its index moves,
    /// atomically.
    fn put_invocations(&self, records: Vec<InvocationRecord>) -> Pending<()> {
        if records.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let mut args = Vec::with_capacity(records.len() * INVOCATION_ARGS);
        for record in &records {
            match invocation_args(record) {
                Ok(a) => args.extend(a),
                Err(e) => return Box::pin(async move { Err(e) }),
            }
        }
        let put = self
            .conn
            .script::<i64>(&PUT, vec![work_prefix(&self.keys)], args);
        Box::pin(async move {
            put.await?;
            Ok(())
        })
    }

    fn invocation(&self, id: &str) -> Pending<Option<InvocationRecord>> {
        let json = self
            .conn
            .query::<Option<String>>(redis::cmd("HGET").arg(self.record_key(id)).arg("r").clone());
        let id = id.to_string();
        Box::pin(async move {
            json.await?
                .map(|j| decode(&format!("invocation {id}"), &j))
                .transpose()
        })
    }

    fn list_invocations(
        &self,
        filter: &InvocationFilter,
        after: Option<&InvocationCursor>,
        limit: usize,
    ) -> Pending<InvocationPage> {
        let empty =
            || -> Pending<InvocationPage> { Box::pin(async { Ok(InvocationPage::default()) }) };
        if limit == 0 {
            return empty();
        }
        let since = filter.since_ms.unwrap_or(0);
        let until = filter.until_ms.unwrap_or(u64::MAX);
        if since >= until {
            return empty();
        }
        // The exclusive upper end: the cursor or `until`, whichever is lower.
        let (hi_t, hi_id) = match after {
            Some(c) if (c.created_at_ms, c.id.as_str()) < (until, "") => {
                (c.created_at_ms, c.id.as_str())
            }
            _ => (until, ""),
        };
        if (hi_t, hi_id) <= (since, "") {
            return empty();
        }
        let index = match (&filter.function, filter.status) {
            (Some(f), Some(s)) => self
                .keys
                .work(&format!("inv:fs:{}:{}", f.as_str(), s.as_str())),
            (Some(f), None) => self.keys.work(&format!("inv:f:{}", f.as_str())),
            (None, Some(s)) => self.keys.work(&format!("inv:s:{}", s.as_str())),
            (None, None) => self.keys.work("inv:all"),
        };
        let want = limit.min(MAX_SCAN) + 1;
        let args = vec![
            arg(format!("({}", member(hi_t, hi_id))),
            arg(format!("[{}", member(since, ""))),
            arg(want),
            arg(filter.mode.map_or("", |m| m.as_str())),
            arg(MAX_SCAN),
        ];
        let reply = self.conn.script::<Vec<Option<String>>>(
            &LIST,
            vec![index, work_prefix(&self.keys)],
            args,
        );
        Box::pin(async move { page(reply.await?, limit) })
    }

    fn count_invocations(&self) -> Pending<u64> {
        self.conn
            .query(redis::cmd("ZCARD").arg(self.keys.work("inv:ids")).clone())
    }

    fn purge_invocations(
        &self,
        before_ms: u64,
        after: Option<&str>,
        scan: usize,
    ) -> Pending<Purged> {
        let from = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        let args = vec![
            arg(from),
            arg(scan.min(MAX_PURGE_SCAN)),
            arg(digits(before_ms)),
        ];
        let reply = self
            .conn
            .script::<(u64, String)>(&PURGE, vec![work_prefix(&self.keys)], args);
        Box::pin(async move {
            let (deleted, next) = reply.await?;
            Ok(Purged {
                deleted,
                next: (!next.is_empty()).then_some(next),
            })
        })
    }

    fn put_logs(&self, id: &str, logs: Vec<u8>) -> Pending<()> {
        self.conn.query::<()>(
            redis::cmd("SET")
                .arg(self.keys.work(&format!("inv:log:{id}")))
                .arg(logs)
                .clone(),
        )
    }

    fn logs(&self, id: &str) -> Pending<Option<Vec<u8>>> {
        self.conn.query(
            redis::cmd("GET")
                .arg(self.keys.work(&format!("inv:log:{id}")))
                .clone(),
        )
    }

    /// Redis has no full-disk flag of its own here: a Redis out of memory
    /// (`maxmemory` reached under `noeviction`) answers each write with an
    /// `OOM` error, which `crate::conn::failed` turns into `Error::Full`,
    /// so writes fail as full while health still says `Ok`.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

impl RedisStore {
    fn record_key(&self, id: &str) -> String {
        self.keys.work(&format!("inv:r:{id}"))
    }
}

/// A time as 20 decimal digits: byte order is time order.
fn digits(ms: u64) -> String {
    format!("{ms:020}")
}

/// A record's index member: `TTTTTTTTTTTTTTTTTTTT:ID`.
fn member(created_at_ms: u64, id: &str) -> String {
    format!("{}:{id}", digits(created_at_ms))
}

/// The cursor of an index member.
fn cursor_of(member: &str) -> Result<InvocationCursor> {
    let corrupt = || Error::Corrupt(format!("invocation index member {member:?}"));
    let (time, id) = member.split_at_checked(20).ok_or_else(corrupt)?;
    let id = id.strip_prefix(':').ok_or_else(corrupt)?;
    Ok(InvocationCursor {
        created_at_ms: time.parse().map_err(|_| corrupt())?,
        id: id.to_string(),
    })
}

/// A page from the `LIST` script's reply.
fn page(reply: Vec<Option<String>>, limit: usize) -> Result<InvocationPage> {
    let mut items = reply.into_iter();
    let stopped = match items.next().flatten() {
        Some(m) if !m.is_empty() => Some(cursor_of(&m)?),
        _ => None,
    };
    let mut records = Vec::new();
    while let Some(m) = items.next() {
        let m = m.unwrap_or_default();
        let Some(json) = items.next().flatten() else {
            return Err(Error::Corrupt(format!(
                "invocation {m:?} is indexed but not stored"
            )));
        };
        let record: InvocationRecord = decode(&format!("invocation {m}"), &json)?;
        records.push(record);
    }
    let more = records.len() > limit;
    records.truncate(limit);
    let next = match (more, records.last()) {
        (true, Some(last)) => Some(InvocationCursor::after(last)),
        _ => stopped,
    };
    Ok(InvocationPage { records, next })
}
