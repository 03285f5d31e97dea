//! Schedules: `[[schedule]]` of `shoal.toml` (parsed and checked here) and
//! the service that fires them.
//!
//! Each node follows the schedules of every live version. At a tick it
//! claims the tick with a KV write that only succeeds when the key is
//! absent (`"\0T\0<function>\0<index>\0<tick ms>"`); the node whose write
//! succeeds fires, so a tick fires once across nodes and restarts. Firing
//! is an ordinary asynchronous invocation with the schedule's event.
//!
//! When a schedule is first seen (a deploy, a node start), ticks up to
//! now are skipped, unless `missed = "catch_up"`: then the ticks since the
//! last claimed one (at most [`MAX_CATCH_UP`], none before the version was
//! deployed) fire late. Cron expressions are read in their `timezone`
//! (UTC by default), from the system's time zone database.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;

use shoal_store::{KvCondition, MAX_CATCH_UP, ScheduleRecord};

use crate::dispatch::{AsyncStart, Dispatcher, derived_id};
use crate::env::Env;
use crate::error::{Entity, Error};

type EResult<T> = crate::error::Result<T>;
use crate::functions::Functions;

/// Most schedules one function may declare.
pub const MAX_SCHEDULES: usize = 20;
/// The shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The largest event of a schedule, as JSON text.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The prefix of the keys that claim ticks.
const TICK_KEY: &str = "\0T\0";
/// How often the service looks for new or changed schedules when no tick
/// is due sooner (it looks at once when this node changes the live
/// versions, itself or by following the catalog).
const RESCAN: Duration = Duration::from_secs(1);

/// `[[schedule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    every: Option<toml::Value>,
    cron: Option<String>,
    timezone: Option<String>,
    event: Option<toml::Value>,
    missed: Option<String>,
}

/// Checks `[[schedule]]` entries; an error says which one and what to fix.
pub(crate) fn parse(raw: Vec<RawSchedule>) -> Result<Vec<ScheduleRecord>, String> {
    if raw.len() > MAX_SCHEDULES {
        return Err(format!(
            "a function may have at most {MAX_SCHEDULES} [[schedule]] entries"
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| parse_one(r).map_err(|e| format!("[[schedule]] {}: {e}", i + 1)))
        .collect()
}

fn parse_one(r: RawSchedule) -> Result<ScheduleRecord, String> {
    let (every_ms, cron) = match (r.every, r.cron) {
        (Some(_), Some(_)) => return Err("set either `every` or `cron`, not both".into()),
        (None, None) => {
            return Err(
                "set `every = \"30s\"` or `cron = \"*/5 * * * * *\"` (with seconds)".into(),
            );
        }
        (Some(v), None) => {
            let bad = || "`every` must be a duration such as \"30s\", \"5m\" or \"1h\"".to_string();
            let d = match &v {
                toml::Value::Integer(n) if *n > 0 => Duration::from_secs(*n as u64),
                toml::Value::String(s) => crate::manifest::parse_duration(s).ok_or_else(bad)?,
                _ => return Err(bad()),
            };
            if d < MIN_EVERY {
                return Err("`every` must be at least 1s".into());
            }
            if d.subsec_nanos() % 1_000_000 != 0 {
                return Err("`every` must be a whole number of milliseconds".into());
            }
            (Some(d.as_millis() as u64), None)
        }
        (None, Some(c)) => {
            parse_cron(&c)?;
            (None, Some(c))
        }
    };
    let timezone = match r.timezone {
        None => None,
        Some(tz) if cron.is_none() => {
            return Err(format!(
                "`timezone = {tz:?}` is for `cron`; `every` ticks at multiples of its period since the epoch, the same in every time zone"
            ));
        }
        Some(tz) if tz == "UTC" => None,
        Some(tz) => {
            time_zone(&tz)?;
            Some(tz)
        }
    };
    let event = match r.event {
        None => "{}".to_string(),
        Some(v) => serde_json::to_string(&v).map_err(|e| format!("`event`: {e}"))?,
    };
    if event.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "`event` is {} bytes as JSON; at most {MAX_EVENT_BYTES}",
            event.len()
        ));
    }
    let catch_up = match r.missed.as_deref() {
        None | Some("skip") => false,
        Some("catch_up") => true,
        Some(other) => {
            return Err(format!(
                "`missed` is {other:?}; it must be \"skip\" or \"catch_up\""
            ));
        }
    };
    Ok(ScheduleRecord {
        every_ms,
        cron,
        timezone,
        event,
        catch_up,
    })
}

/// Parses a cron expression with seconds (six fields: second, minute,
/// hour, day of month, month, day of week).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "cron {expr:?} must have six fields, seconds first: \"sec min hour day month weekday\" (such as \"0 */5 * * * *\")"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron {expr:?}: {e}"))
}

/// The time zone of this IANA name (`Europe/Paris`), from the system's
/// time zone database.
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|_| {
        format!("timezone {name:?} is not a known time zone; use an IANA name such as \"Europe/Paris\" or \"UTC\"")
    })
}

/// A schedule ready to compute ticks.
#[derive(Clone)]
pub(crate) enum Ticks {
    Every(u64),
    Cron(Box<croner::Cron>, jiff::tz::TimeZone),
}

impl Ticks {
    pub(crate) fn of(s: &ScheduleRecord) -> Option<Ticks> {
        match (&s.every_ms, &s.cron) {
            (Some(p), _) if *p > 0 => Some(Ticks::Every(*p)),
            (_, Some(c)) => {
                let tz = match &s.timezone {
                    None => jiff::tz::TimeZone::UTC,
                    Some(name) => time_zone(name).ok()?,
                };
                parse_cron(c).ok().map(|c| Ticks::Cron(Box::new(c), tz))
            }
            _ => None,
        }
    }

    /// The first tick after `t` (ms since the epoch).
    pub(crate) fn next_after(&self, t: u64) -> Option<u64> {
        match self {
            Ticks::Every(p) => Some((t / p + 1) * p),
            Ticks::Cron(c, tz) => {
                let z = zoned(t, tz)?;
                let next = c.find_next_occurrence(&z, false).ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()
            }
        }
    }

    /// The last tick at or before `t`.
    pub(crate) fn at_or_before(&self, t: u64) -> Option<u64> {
        match self {
            Ticks::Every(p) => Some(t / p * p),
            Ticks::Cron(c, tz) => {
                // Cron ticks are whole seconds.
                let z = zoned(t / 1000 * 1000, tz)?;
                let prev = c.find_previous_occurrence(&z, true).ok()?;
                u64::try_from(prev.timestamp().as_millisecond()).ok()
            }
        }
    }
}

fn zoned(t: u64, tz: &jiff::tz::TimeZone) -> Option<jiff::Zoned> {
    let ts = jiff::Timestamp::from_millisecond(i64::try_from(t).ok()?).ok()?;
    Some(ts.to_zoned(tz.clone()))
}

/// The prefix of the pause marks (`"\0TP\0<function>\0<index>"`).
const PAUSE_KEY: &str = "\0TP\0";

/// The key that claims a tick: the tick's time inverted, in 20 digits, so
/// that a listing of a schedule's keys gives the newest tick first.
pub(crate) fn tick_key(function: &str, index: usize, tick_ms: u64) -> String {
    format!("{}{:020}", tick_prefix(function, index), u64::MAX - tick_ms)
}

/// The prefix of one schedule's tick keys.
fn tick_prefix(function: &str, index: usize) -> String {
    format!("{TICK_KEY}{function}\0{index}\0")
}

/// The tick of a key made by [`tick_key`].
fn tick_of_key(key: &str) -> Option<u64> {
    let digits = key.rsplit('\0').next()?;
    digits.parse::<u64>().ok().map(|n| u64::MAX - n)
}

/// The key whose presence pauses a schedule.
fn pause_key(function: &str, index: usize) -> String {
    format!("{PAUSE_KEY}{function}\0{index}")
}

/// What the claim of a tick holds.
#[derive(serde::Serialize, Deserialize)]
struct Claim {
    /// The address of the node that fired it.
    node: String,
    fired_at_ms: u64,
    /// The id of the invocation it queued (or was about to queue).
    invocation: String,
}

/// The last tick of a schedule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct LastTick {
    pub tick_ms: u64,
    pub fired_at_ms: u64,
    pub invocation: String,
}

/// A fired tick, as the history lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRecord {
    pub tick_ms: u64,
    pub fired_at_ms: u64,
    pub invocation: String,
    /// The address of the node that fired it.
    pub node: String,
    /// The status of its invocation; `None` when there is no record of it
    /// (the node died before queueing it, or retention removed it).
    pub status: Option<shoal_types::InvocationStatus>,
}

/// Most items of one page of a schedule's history.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// How long a claimed tick (its history) is kept at most: 7 days, or
/// [`KEPT_TICKS`] periods when that is shorter (at least an hour, and
/// always long enough for catching up).
const KEPT_FOR_MS: u64 = 7 * 24 * 3_600_000;
/// How many periods of ticks are kept when that is shorter than 7 days.
const KEPT_TICKS: u64 = 1000;

/// How long the claim of a tick of a schedule with this period is kept.
fn claim_ttl(period_ms: u64) -> u64 {
    period_ms
        .saturating_mul(KEPT_TICKS)
        .min(KEPT_FOR_MS)
        .max(period_ms.saturating_mul(MAX_CATCH_UP as u64 + 1))
        .max(3_600_000)
}

/// How many next fire times [`views`] gives per schedule.
pub const NEXT_SHOWN: usize = 5;

/// A schedule of a live version, with its next fire times.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleView {
    pub function: String,
    /// The live version whose `shoal.toml` declares it.
    pub version: u64,
    /// Its place among the function's `[[schedule]]` entries, from 0.
    pub index: usize,
    pub schedule: ScheduleRecord,
    /// The next [`NEXT_SHOWN`] ticks after `now` (ms since the epoch).
    pub next_ms: Vec<u64>,
    /// Paused: its ticks are skipped (on every node).
    pub paused: bool,
    /// The last tick that fired, if the store still remembers one.
    pub last: Option<LastTick>,
}

/// The schedules of every live version, by function and index.
pub(crate) fn views(functions: &Functions, now: u64) -> Vec<ScheduleView> {
    let mut out = Vec::new();
    for name in functions.names() {
        let Some(d) = functions.latest(&name) else {
            continue;
        };
        for (index, s) in d.record.schedules.iter().enumerate() {
            let mut next_ms = Vec::new();
            if let Some(ticks) = Ticks::of(s) {
                let mut t = now;
                while next_ms.len() < NEXT_SHOWN {
                    let Some(n) = ticks.next_after(t) else { break };
                    next_ms.push(n);
                    t = n;
                }
            }
            out.push(ScheduleView {
                function: name.clone(),
                version: d.record.version,
                index,
                schedule: s.clone(),
                next_ms,
                paused: false,
                last: None,
            });
        }
    }
    out
}

/// [`views`] with each schedule's pause state and last tick, read from
/// the store.
pub(crate) async fn listed(env: &Env, functions: &Functions) -> EResult<Vec<ScheduleView>> {
    let mut views = views(functions, env.now_ms());
    let paused = paused_set(env).await?;
    for v in &mut views {
        v.paused = paused.contains(&(v.function.clone(), v.index));
        v.last = last_tick(env, &v.function, v.index).await?;
    }
    Ok(views)
}

/// One schedule of a live version, as [`listed`] gives it; not found when
/// the function has no live version or no schedule at `index`.
pub(crate) async fn one(
    env: &Env,
    functions: &Functions,
    function: &str,
    index: usize,
) -> EResult<ScheduleView> {
    let mut v = views(functions, env.now_ms())
        .into_iter()
        .find(|v| v.function == function && v.index == index)
        .ok_or_else(|| not_found(functions, function, index))?;
    v.paused = env
        .backend
        .kv
        .kv_get(&pause_key(function, index), env.now_ms())
        .await?
        .is_some();
    v.last = last_tick(env, function, index).await?;
    Ok(v)
}

fn not_found(functions: &Functions, function: &str, index: usize) -> Error {
    if functions.latest(function).is_none() {
        Error::not_found(Entity::Function, function)
    } else {
        Error::not_found(Entity::Schedule, format!("{function}[{index}]"))
    }
}

/// Pauses (or resumes) a schedule of a live version, on every node: the
/// mark is a KV entry kept across deploys while the index stays.
pub(crate) async fn set_paused(
    env: &Env,
    functions: &Functions,
    function: &str,
    index: usize,
    paused: bool,
) -> EResult<ScheduleView> {
    // Exists?
    one(env, functions, function, index).await?;
    let key = pause_key(function, index);
    let now = env.now_ms();
    if paused {
        let value = serde_json::json!({ "paused_at_ms": now }).to_string();
        env.backend
            .kv
            .kv_set(&key, value.into_bytes(), None, KvCondition::Absent, now)
            .await?;
    } else {
        env.backend.kv.kv_delete(&key, None, now).await?;
    }
    one(env, functions, function, index).await
}

/// The paused schedules, by function and index.
async fn paused_set(env: &Env) -> EResult<HashSet<(String, usize)>> {
    let mut out = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = env
            .backend
            .kv
            .kv_list(PAUSE_KEY, after.as_deref(), 1000, env.now_ms())
            .await?;
        for e in &page.entries {
            let rest = &e.key[PAUSE_KEY.len()..];
            if let Some((f, i)) = rest.rsplit_once('\0')
                && let Ok(i) = i.parse()
            {
                out.insert((f.to_string(), i));
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The newest claimed tick of a schedule.
async fn last_tick(env: &Env, function: &str, index: usize) -> EResult<Option<LastTick>> {
    let (items, _) = claimed(env, function, index, None, 1).await?;
    Ok(items.into_iter().next().map(|(tick_ms, c)| LastTick {
        tick_ms,
        fired_at_ms: c.fired_at_ms,
        invocation: c.invocation,
    }))
}

/// Claimed ticks of a schedule, newest first, older than `before` when
/// given; at most `limit`, and the cursor of the next page.
async fn claimed(
    env: &Env,
    function: &str,
    index: usize,
    before: Option<u64>,
    limit: usize,
) -> EResult<(Vec<(u64, Claim)>, Option<u64>)> {
    let prefix = tick_prefix(function, index);
    let mut after = before.map(|t| tick_key(function, index, t));
    let mut out = Vec::new();
    // Expired keys count against a page: look a little further, bounded.
    for _ in 0..16 {
        let page = env
            .backend
            .kv
            .kv_list(
                &prefix,
                after.as_deref(),
                limit + 1 - out.len(),
                env.now_ms(),
            )
            .await?;
        for e in page.entries {
            let Some(tick) = tick_of_key(&e.key) else {
                continue;
            };
            let claim = serde_json::from_slice::<Claim>(&e.value).unwrap_or(Claim {
                // Claims made before the history was kept hold the node.
                node: String::from_utf8_lossy(&e.value).into_owned(),
                fired_at_ms: e.updated_at_ms,
                invocation: String::new(),
            });
            out.push((tick, claim));
        }
        if out.len() > limit {
            out.truncate(limit);
            let cursor = out.last().map(|(t, _)| *t);
            return Ok((out, cursor));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok((out, None)),
        }
    }
    let cursor = out.last().map(|(t, _)| *t);
    Ok((out, cursor))
}

/// A page of a schedule's history (newest first), with the cursor of the
/// next page (the last tick listed).
pub(crate) async fn history(
    env: &Env,
    dispatcher: &Dispatcher,
    functions: &Functions,
    function: &str,
    index: usize,
    before: Option<u64>,
    limit: usize,
) -> EResult<(Vec<TickRecord>, Option<u64>)> {
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("must be 1 to {MAX_HISTORY_PAGE}"),
        ));
    }
    one(env, functions, function, index).await?;
    let (items, cursor) = claimed(env, function, index, before, limit).await?;
    let mut out = Vec::with_capacity(items.len());
    for (tick_ms, c) in items {
        let status = if c.invocation.is_empty() {
            None
        } else {
            match dispatcher.invocation(&c.invocation).await {
                Ok(r) => Some(r.status),
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            }
        };
        out.push(TickRecord {
            tick_ms,
            fired_at_ms: c.fired_at_ms,
            invocation: c.invocation,
            node: c.node,
            status,
        });
    }
    Ok((out, cursor))
}

/// One followed schedule.
struct Followed {
    spec: ScheduleRecord,
    ticks: Ticks,
    next: u64,
    /// When its version was deployed (catching up goes no further back).
    since_ms: u64,
    /// Paused when this node last looked.
    paused: bool,
}

/// The service firing the schedules of live versions.
pub(crate) struct Schedules {
    env: Arc<Env>,
    functions: Arc<Functions>,
    dispatcher: Arc<Dispatcher>,
}

impl Schedules {
    pub(crate) fn new(
        env: Arc<Env>,
        functions: Arc<Functions>,
        dispatcher: Arc<Dispatcher>,
    ) -> Schedules {
        Schedules {
            env,
            functions,
            dispatcher,
        }
    }

    /// Runs until the engine stops.
    pub(crate) async fn run(self) {
        let mut followed: HashMap<(String, usize), Followed> = HashMap::new();
        loop {
            let now = self.env.now_ms();
            // Read once per pass; a failed read leaves the last known state.
            let paused = match paused_set(&self.env).await {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(error = %e, "Reading which schedules are paused failed.");
                    None
                }
            };
            let is_paused =
                |key: &(String, usize), was: bool| paused.as_ref().map_or(was, |p| p.contains(key));
            let mut seen = HashSet::new();
            for name in self.functions.names() {
                let Some(d) = self.functions.latest(&name) else {
                    continue;
                };
                for (i, s) in d.record.schedules.iter().enumerate() {
                    let key = (name.clone(), i);
                    seen.insert(key.clone());
                    if followed.get(&key).is_some_and(|f| f.spec == *s) {
                        continue;
                    }
                    let Some(ticks) = Ticks::of(s) else {
                        continue;
                    };
                    let paused_now = is_paused(&key, false);
                    if s.catch_up && !paused_now {
                        self.catch_up(&name, i, s, &ticks, now, d.record.deployed_at_ms)
                            .await;
                    }
                    // Ticks after now; those up to now were skipped or
                    // caught up.
                    let Some(next) = ticks.next_after(now) else {
                        continue;
                    };
                    followed.insert(
                        key,
                        Followed {
                            spec: s.clone(),
                            ticks,
                            next,
                            since_ms: d.record.deployed_at_ms,
                            paused: paused_now,
                        },
                    );
                }
            }
            followed.retain(|k, _| seen.contains(k));
            for (key, f) in followed.iter_mut() {
                let (name, i) = key;
                let paused_now = is_paused(key, f.paused);
                if f.paused && !paused_now && f.spec.catch_up {
                    // Resumed: the ticks skipped while paused, bounded.
                    self.catch_up(name, *i, &f.spec, &f.ticks, now, f.since_ms)
                        .await;
                }
                f.paused = paused_now;
                while f.next <= now {
                    if !f.paused {
                        self.fire(name, *i, &f.spec, &f.ticks, f.next).await;
                    }
                    match f.ticks.next_after(f.next) {
                        Some(n) => f.next = n,
                        None => {
                            f.next = u64::MAX;
                            break;
                        }
                    }
                }
            }
            let soonest = followed.values().map(|f| f.next).min().unwrap_or(u64::MAX);
            let wait = Duration::from_millis(soonest.saturating_sub(now)).min(RESCAN);
            tokio::select! {
                _ = self.env.tasks.stopping() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.functions.live_changed.notified() => {}
            }
        }
    }

    /// Fires the ticks missed since the last claimed one, at most
    /// [`MAX_CATCH_UP`] and none before `since_ms`.
    async fn catch_up(
        &self,
        name: &str,
        index: usize,
        s: &ScheduleRecord,
        ticks: &Ticks,
        now: u64,
        since_ms: u64,
    ) {
        let mut missed = Vec::new();
        let mut t = now;
        while missed.len() < MAX_CATCH_UP {
            let Some(tick) = ticks.at_or_before(t) else {
                break;
            };
            if tick < since_ms {
                break;
            }
            match self
                .env
                .backend
                .kv
                .kv_get(&tick_key(name, index, tick), now)
                .await
            {
                Ok(Some(_)) => break,
                Ok(None) => missed.push(tick),
                Err(e) => {
                    warn!(function = %name, error = %e, "Reading a schedule's claimed ticks failed; not catching up.");
                    return;
                }
            }
            if tick == 0 {
                break;
            }
            t = tick - 1;
        }
        for tick in missed.into_iter().rev() {
            self.fire(name, index, s, ticks, tick).await;
        }
    }

    /// Claims a tick and, when this node got it, runs the function. The
    /// claim names the invocation (its id made from the tick), so the
    /// history can list it.
    async fn fire(&self, name: &str, index: usize, s: &ScheduleRecord, ticks: &Ticks, tick: u64) {
        let now = self.env.now_ms();
        let period = ticks.next_after(tick).map_or(0, |n| n - tick);
        let id = derived_id(
            tick,
            format!("schedule\0{name}\0{index}\0{tick}").as_bytes(),
        );
        let claim = Claim {
            node: self.env.opts.node.address.clone(),
            fired_at_ms: now,
            invocation: id.clone(),
        };
        let claimed = self
            .env
            .backend
            .kv
            .kv_set(
                &tick_key(name, index, tick),
                serde_json::to_vec(&claim).expect("a claim encodes"),
                Some(claim_ttl(period)),
                KvCondition::Absent,
                now,
            )
            .await;
        match claimed {
            Ok(shoal_store::KvSet::Written(_)) => {}
            Ok(_) => return,
            Err(e) => {
                warn!(function = %name, tick, error = %e, "Claiming a schedule's tick failed; another node may fire it.");
                return;
            }
        }
        let start = AsyncStart {
            id: Some(id),
            ..AsyncStart::default()
        };
        if let Err(e) = self
            .dispatcher
            .invoke_async_as(name, s.event.clone(), start)
            .await
        {
            warn!(function = %name, tick, error = %e, "A scheduled run could not be queued; the tick is lost.");
        }
    }
}
