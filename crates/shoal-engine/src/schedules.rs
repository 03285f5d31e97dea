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

use crate::dispatch::Dispatcher;
use crate::env::Env;
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

/// The key that claims a tick.
pub(crate) fn tick_key(function: &str, index: usize, tick_ms: u64) -> String {
    format!("{TICK_KEY}{function}\0{index}\0{tick_ms}")
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
            });
        }
    }
    out
}

/// One followed schedule.
struct Followed {
    spec: ScheduleRecord,
    ticks: Ticks,
    next: u64,
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
                    if s.catch_up {
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
                        },
                    );
                }
            }
            followed.retain(|k, _| seen.contains(k));
            for ((name, i), f) in followed.iter_mut() {
                while f.next <= now {
                    self.fire(name, *i, &f.spec, &f.ticks, f.next).await;
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

    /// Claims a tick and, when this node got it, runs the function.
    async fn fire(&self, name: &str, index: usize, s: &ScheduleRecord, ticks: &Ticks, tick: u64) {
        let now = self.env.now_ms();
        // Kept long enough for catching up to see it (past the last
        // MAX_CATCH_UP ticks), and at least an hour.
        let period = ticks.next_after(tick).map_or(0, |n| n - tick);
        let ttl = period
            .saturating_mul(MAX_CATCH_UP as u64 + 1)
            .max(3_600_000);
        let claimed = self
            .env
            .backend
            .kv
            .kv_set(
                &tick_key(name, index, tick),
                self.env.opts.node.address.clone().into_bytes(),
                Some(ttl),
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
        if let Err(e) = self.dispatcher.invoke_async(name, s.event.clone()).await {
            warn!(function = %name, tick, error = %e, "A scheduled run could not be queued; the tick is lost.");
        }
    }
}
