//! The jobs port: fan-outs whose fan-in starts exactly once, under the work
//! tag `{w}` with the invocation records and queues they write (`W` =
//! `NS:{w}:`, `J` = `W` + `job:ID`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `J` | hash | `record` (the `JobRecord` JSON, never read in Lua), `total`, `succeeded`, `failed`, `cancelled`, `finished_at`, `cancelled_at` (absent until set), and what completing it needs: `plan_queue` (absent without a fan-in), `cont_job`, `cont_index` (absent unless it continues a parent slot), `invocation`, `fill_ok` (the slot's output when it completes) |
//! | `J:plan` | list | the fan-in's ARGV: its record's `INVOCATION_ARGS`, then its message's `MESSAGE_ARGS` (its `sent` is set when it is sent) |
//! | `J:results` | hash | child index → `ChildResult` JSON (the first result of each index) |
//! | `J:done` | zset | indexes with a result (score = member = index), for pages |
//! | `J:failed` | zset | indexes whose result failed (not succeeded, not cancelled) |
//! | `J:subs` | zset (lex) | jobs created by the job's children, in id order |
//! | `W` + `jobs` | zset (lex) | every job's id, for the newest-first list (`list_jobs`); jobs created before this index existed are not in it and are not listed |
//!
//! Each write is one script: `create_job` writes the job, its children's
//! records (`put_invocation` of `invocations`) and their messages
//! (`enqueue` of `queues`); `finish_child` records a result and, when it
//! completes the job, writes the fan-in's record and message or fills the
//! parent slot, up the tree, in the same script. `cancel_job` walks the
//! whole tree below the job (every job in it is read once); the result
//! pages read `limit` entries.

use std::sync::LazyLock;

use shoal_store::{
    ChildFinished, ChildResult, Error, InvocationRecord, JobProgress, JobRecord, Jobs, NewMessage,
    Pending, Result,
};
use shoal_types::InvocationStatus;

use crate::conn::{Lua, arg};
use crate::invocations::{INVOCATION_ARGS, PUT_INVOCATION_LUA, invocation_args};
use crate::queues::{ENQUEUE_LUA, MESSAGE_ARGS, Reply, message_args};
use crate::{RedisStore, decode, encode};

/// The job helpers: `job_fill` records a result and follows completed
/// jobs up the tree; `job_complete` runs what a completed job starts.
const JOB_LUA: &str = r#"
local function job_complete(w, job, cancelled, now, out)
  local jk = w .. 'job:' .. job
  local f = redis.call('HMGET', jk, 'plan_queue', 'cont_job', 'cont_index', 'invocation', 'fill_ok')
  if f[1] and not cancelled then
    local plan = redis.call('LRANGE', jk .. ':plan', 0, -1)
    plan[INVOCATION_ARGS + 4] = string.format('%d', now)
    put_invocation(w, plan, 1)
    enqueue(w, f[1], plan, INVOCATION_ARGS + 1)
    out.sent_to[#out.sent_to + 1] = f[1]
    return nil
  end
  if not f[2] then return nil end
  local status, output, class = 'succeeded', cjson.encode(f[5]), 's'
  if cancelled then status, output, class = 'cancelled', 'null', 'c' end
  local json = '{"index":' .. f[3] .. ',"invocation":' .. cjson.encode(f[4]) ..
    ',"status":"' .. status .. '","output":' .. output ..
    ',"error":null,"finished_at_ms":' .. string.format('%d', now) .. '}'
  return {f[2], tonumber(f[3]), class, json}
end
local function job_fill(w, job, index, class, json, now, out)
  while true do
    local jk = w .. 'job:' .. job
    local f = redis.call('HMGET', jk, 'total', 'finished_at', 'cancelled_at')
    if not f[1] or index >= tonumber(f[1]) then return end
    if redis.call('HSETNX', jk .. ':results', index, json) == 0 then return end
    redis.call('ZADD', jk .. ':done', index, index)
    local field = 'succeeded'
    if class == 'c' then field = 'cancelled' end
    if class == 'f' then
      field = 'failed'
      redis.call('ZADD', jk .. ':failed', index, index)
    end
    redis.call('HINCRBY', jk, field, 1)
    local p = redis.call('HMGET', jk, 'succeeded', 'failed', 'cancelled')
    local done = tonumber(p[1]) + tonumber(p[2]) + tonumber(p[3])
    if done < tonumber(f[1]) or f[2] then return end
    redis.call('HSET', jk, 'finished_at', string.format('%d', now))
    out.completed[#out.completed + 1] = job
    local nxt = job_complete(w, job, f[3] ~= false, now, out)
    if not nxt then return end
    job, index, class, json = nxt[1], nxt[2], nxt[3], nxt[4]
  end
end
local function job_reply(out, recorded)
  local r = {'ok', recorded, #out.completed}
  for _, j in ipairs(out.completed) do r[#r + 1] = j end
  for _, q in ipairs(out.sent_to) do r[#r + 1] = q end
  return r
end
"#;

fn script(body: &str) -> Lua {
    let text = format!("{PUT_INVOCATION_LUA}{ENQUEUE_LUA}{JOB_LUA}{body}")
        .replace("INVOCATION_ARGS", &INVOCATION_ARGS.to_string());
    Lua::new(text)
}

/// `KEYS[1]` = W. ARGV: job id, record JSON, total, parent ('' or '=' +
/// id), plan queue ('' or '=' + name), continues job ('' or '=' + id),
/// continues index, invocation, fill_ok, created_at, the number of plan
/// arguments, the plan arguments, queue, the number of children, the
/// children's records, then the messages. Returns 0 when the job exists.
static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local w = KEYS[1]
local id = ARGV[1]
local jk = w .. 'job:' .. id
if redis.call('EXISTS', jk) == 1 then return 0 end
local total = tonumber(ARGV[3])
redis.call('HSET', jk, 'record', ARGV[2], 'total', ARGV[3], 'succeeded', 0, 'failed', 0,
  'cancelled', 0, 'invocation', ARGV[8], 'fill_ok', ARGV[9])
redis.call('ZADD', w .. 'jobs', 0, id)
if ARGV[4] ~= '' then redis.call('ZADD', w .. 'job:' .. string.sub(ARGV[4], 2) .. ':subs', 0, id) end
if ARGV[5] ~= '' then redis.call('HSET', jk, 'plan_queue', string.sub(ARGV[5], 2)) end
if ARGV[6] ~= '' then
  redis.call('HSET', jk, 'cont_job', string.sub(ARGV[6], 2), 'cont_index', ARGV[7])
end
local i = 12
local nplan = tonumber(ARGV[11])
for j = i, i + nplan - 1 do redis.call('RPUSH', jk .. ':plan', ARGV[j]) end
i = i + nplan
local queue = ARGV[i]
local children = tonumber(ARGV[i + 1])
i = i + 2
for _ = 1, children do
  put_invocation(w, ARGV, i)
  i = i + INVOCATION_ARGS
end
while i <= #ARGV do
  enqueue(w, queue, ARGV, i)
  i = i + MESSAGE_ARGS
end
if total == 0 then
  local now = tonumber(ARGV[10])
  redis.call('HSET', jk, 'finished_at', ARGV[10])
  local out = {completed = {}, sent_to = {}}
  local nxt = job_complete(w, id, false, now, out)
  if nxt then job_fill(w, nxt[1], nxt[2], nxt[3], nxt[4], now, out) end
end
return 1
",
    )
});

/// `KEYS[1]` = W. ARGV: job, index, class ('s', 'c', 'f'), result JSON, now.
/// Returns {'nojob'}, {'range', total} or {'ok', recorded, n, n completed
/// jobs, queues sent to}.
static FINISH: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local w = KEYS[1]
local jk = w .. 'job:' .. ARGV[1]
local total = redis.call('HGET', jk, 'total')
if not total then return {'nojob'} end
local index = tonumber(ARGV[2])
if index >= tonumber(total) then return {'range', total} end
local out = {completed = {}, sent_to = {}}
if redis.call('HEXISTS', jk .. ':results', ARGV[2]) == 1 then return job_reply(out, 0) end
job_fill(w, ARGV[1], index, ARGV[3], ARGV[4], tonumber(ARGV[5]), out)
return job_reply(out, 1)
",
    )
});

/// `KEYS[1]` = W. ARGV: job, the index zset ('done' or 'failed'), lower
/// score bound, limit. Returns the results' JSON in index order.
static RESULTS: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local jk = KEYS[1] .. 'job:' .. ARGV[1]
local out = {}
if tonumber(ARGV[4]) == 0 then return out end
local idx = redis.call('ZRANGE', jk .. ':' .. ARGV[2], ARGV[3], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[4])
for _, i in ipairs(idx) do
  local json = redis.call('HGET', jk .. ':results', i)
  if json then out[#out + 1] = json end
end
return out
",
    )
});

/// `KEYS[1]` = W. ARGV: the exclusive upper bound ('+' or '(' + id),
/// limit. Returns the records' JSON of the newest jobs below the bound.
static LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local w = KEYS[1]
local out = {}
if tonumber(ARGV[2]) == 0 then return out end
local ids = redis.call('ZRANGE', w .. 'jobs', ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local json = redis.call('HGET', w .. 'job:' .. id, 'record')
  if json then out[#out + 1] = json end
end
return out
",
    )
});

/// `KEYS[1]` = W. ARGV: job, now. Returns 0 when the job does not exist.
static CANCEL: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r"
local w = KEYS[1]
if redis.call('EXISTS', w .. 'job:' .. ARGV[1]) == 0 then return 0 end
local todo = {ARGV[1]}
local seen = {[ARGV[1]] = true}
local n = 1
while n <= #todo do
  local jk = w .. 'job:' .. todo[n]
  local f = redis.call('HMGET', jk, 'total', 'finished_at', 'cancelled_at')
  if f[1] and not f[2] and not f[3] then redis.call('HSET', jk, 'cancelled_at', ARGV[2]) end
  for _, sub in ipairs(redis.call('ZRANGE', jk .. ':subs', 0, -1)) do
    if not seen[sub] then
      seen[sub] = true
      todo[#todo + 1] = sub
    end
  end
  n = n + 1
end
return 1
",
    )
});

impl Jobs for RedisStore {
    fn create_job(
        &self,
        job: JobRecord,
        children: Vec<InvocationRecord>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Pending<()> {
        let args = match create_args(&job, &children, queue, &messages) {
            Ok(args) => args,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let created = self.conn.script::<i64>(&CREATE, self.work_keys(), args);
        let id = job.id;
        Box::pin(async move {
            if created.await? == 0 {
                return Err(Error::Corrupt(format!("job {id} exists already")));
            }
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Pending<Option<(JobRecord, JobProgress)>> {
        let fields = self.conn.query::<Vec<Option<String>>>(
            redis::cmd("HMGET")
                .arg(self.keys.work(&format!("job:{id}")))
                .arg(&[
                    "record",
                    "succeeded",
                    "failed",
                    "cancelled",
                    "finished_at",
                    "cancelled_at",
                ])
                .clone(),
        );
        let id = id.to_string();
        Box::pin(async move {
            let f = fields.await?;
            let [record, succeeded, failed, cancelled, finished, cancelled_at] = &f[..] else {
                return Err(Error::Corrupt(format!("job {id}: a short reply")));
            };
            let Some(record) = record else {
                return Ok(None);
            };
            let what = format!("job {id}");
            let record: JobRecord = decode(&what, record)?;
            let number = |s: &Option<String>| -> Result<Option<u64>> {
                s.as_deref()
                    .map(|s| {
                        s.parse::<u64>()
                            .map_err(|_| Error::Corrupt(format!("{what}: number {s:?}")))
                    })
                    .transpose()
            };
            let progress = JobProgress {
                succeeded: number(succeeded)?.unwrap_or(0),
                failed: number(failed)?.unwrap_or(0),
                cancelled: number(cancelled)?.unwrap_or(0),
                finished_at_ms: number(finished)?,
                cancelled_at_ms: number(cancelled_at)?,
            };
            Ok(Some((record, progress)))
        })
    }

    fn list_jobs(&self, after: Option<&str>, limit: usize) -> Pending<Vec<JobRecord>> {
        let bound = after.map_or("+".to_string(), |a| format!("({a}"));
        let limit = limit.min(i64::MAX as usize);
        let jsons =
            self.conn
                .script::<Vec<String>>(&LIST, self.work_keys(), vec![arg(bound), arg(limit)]);
        Box::pin(async move {
            jsons
                .await?
                .iter()
                .map(|json| decode("a listed job", json))
                .collect()
        })
    }

    fn finish_child(&self, job: &str, result: ChildResult, now_ms: u64) -> Pending<ChildFinished> {
        let json = match encode(&result) {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let class = match result.status {
            InvocationStatus::Succeeded => "s",
            InvocationStatus::Cancelled => "c",
            _ => "f",
        };
        let args = vec![
            arg(job),
            arg(result.index),
            arg(class),
            arg(json),
            arg(now_ms),
        ];
        let reply = self
            .conn
            .script::<Vec<redis::Value>>(&FINISH, self.work_keys(), args);
        let (job, index) = (job.to_string(), result.index);
        Box::pin(async move {
            let mut r = Reply::new("a finished child", reply.await?);
            match r.string()?.as_str() {
                "nojob" => Err(Error::NotFound(format!("job {job}"))),
                "range" => Err(Error::NotFound(format!(
                    "job {job} child {index} (the job has {})",
                    r.u64()?
                ))),
                _ => {
                    let recorded = r.u64()? == 1;
                    let n = r.u64()?;
                    let mut completed = Vec::new();
                    for _ in 0..n {
                        completed.push(r.string()?);
                    }
                    let mut sent_to = Vec::new();
                    while !r.is_empty() {
                        sent_to.push(r.string()?);
                    }
                    Ok(ChildFinished {
                        recorded,
                        completed,
                        sent_to,
                    })
                }
            }
        })
    }

    fn child_results(&self, job: &str, from_index: u64, limit: usize) -> Pending<Vec<ChildResult>> {
        self.results(job, "done", from_index.to_string(), limit)
    }

    fn child_failures(
        &self,
        job: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Pending<Vec<ChildResult>> {
        let from = after.map_or("-inf".to_string(), |a| format!("({a}"));
        self.results(job, "failed", from, limit)
    }

    fn sub_jobs(&self, job: &str) -> Pending<Vec<String>> {
        self.conn.query(
            redis::cmd("ZRANGE")
                .arg(self.keys.work(&format!("job:{job}:subs")))
                .arg(0)
                .arg(-1)
                .clone(),
        )
    }

    fn cancel_job(&self, id: &str, now_ms: u64) -> Pending<bool> {
        let found = self
            .conn
            .script::<i64>(&CANCEL, self.work_keys(), vec![arg(id), arg(now_ms)]);
        Box::pin(async move { Ok(found.await? == 1) })
    }
}

impl RedisStore {
    /// Results of the indexes in one of a job's index sets, from `from` (a
    /// score bound), at most `limit`.
    fn results(
        &self,
        job: &str,
        set: &str,
        from: String,
        limit: usize,
    ) -> Pending<Vec<ChildResult>> {
        let limit = limit.min(i64::MAX as usize);
        let args = vec![arg(job), arg(set), arg(from), arg(limit)];
        let jsons = self
            .conn
            .script::<Vec<String>>(&RESULTS, self.work_keys(), args);
        let what = format!("job {job}: a child result");
        Box::pin(async move {
            jsons
                .await?
                .iter()
                .map(|json| decode(&what, json))
                .collect()
        })
    }
}

/// The ARGV of `CREATE`.
fn create_args(
    job: &JobRecord,
    children: &[InvocationRecord],
    queue: &str,
    messages: &[NewMessage],
) -> Result<Vec<Vec<u8>>> {
    let opt = |s: Option<&str>| s.map_or_else(Vec::new, |s| format!("={s}").into_bytes());
    let fill_ok = serde_json::json!({"job": job.id, "count": job.total}).to_string();
    let plan = match &job.then_plan {
        None => Vec::new(),
        Some(plan) => {
            let message = NewMessage {
                id: plan.record.id.clone(),
                body: plan.body.clone().into_bytes(),
                due_ms: 0,
                // Set to the time of the write that sends it.
                sent_ms: 0,
                dedup: None,
                key: None,
            };
            let mut args = invocation_args(&plan.record)?;
            args.extend(message_args(&message));
            args
        }
    };
    let mut args = vec![
        arg(&job.id),
        arg(encode(job)?),
        arg(job.total),
        opt(job.parent.as_deref()),
        opt(job.then_plan.as_ref().map(|p| p.queue.as_str())),
        opt(job.continues.as_ref().map(|c| c.job.as_str())),
        arg(job.continues.as_ref().map_or(0, |c| c.index)),
        arg(job.invocation.clone().unwrap_or_default()),
        arg(fill_ok),
        arg(job.created_at_ms),
        arg(plan.len()),
    ];
    args.extend(plan);
    args.push(arg(queue));
    args.push(arg(children.len()));
    for child in children {
        args.extend(invocation_args(child)?);
    }
    for m in messages {
        args.extend(message_args(m));
    }
    debug_assert_eq!(
        args.len(),
        13 + job
            .then_plan
            .as_ref()
            .map_or(0, |_| INVOCATION_ARGS + MESSAGE_ARGS)
            + children.len() * INVOCATION_ARGS
            + messages.len() * MESSAGE_ARGS
    );
    Ok(args)
}
