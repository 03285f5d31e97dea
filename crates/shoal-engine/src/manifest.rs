//! `shoal.toml`: the function manifest, parsed and validated.
//!
//! Unknown keys are rejected so a typo (`timout = "5s"`) is an error, not a
//! silently ignored setting.

use std::time::Duration;

use serde::Deserialize;

use shoal_types::{FunctionName, Limits};

/// The shortest delay before a retry (of a function with `retries`, or of
/// a queue's messages): a zero delay with many retries would spin.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: FunctionName,
    pub runtime: String,
    pub handler: String,
    pub limits: Limits,
    /// Retries of a failed asynchronous invocation (0 to 100).
    pub retries: u32,
    /// First retry delay; doubled on each retry, with jitter.
    pub retry_delay: Duration,
    /// The queue the function consumes (`[subscribe]`).
    pub subscribe: Option<Subscribe>,
    /// A shared rate limiter every invocation takes a token from.
    pub limiter: Option<String>,
    /// `concurrency_key` (an event field) and `concurrency_per_key`.
    pub concurrency_key: Option<(String, u32)>,
    /// `network = "none"` isolates the function from every network.
    pub network: shoal_types::Network,
    /// `[env]`: environment variables of the function's processes.
    pub env: std::collections::BTreeMap<String, String>,
    /// `secrets = ["NAME"]`: secrets it gets as environment variables.
    pub secrets: Vec<String>,
    /// `[cache]`: answer identical synchronous events from a result cache.
    pub cache: Option<Cache>,
    /// `max_invocations_per_worker`: a worker that has served this many
    /// invocations is replaced by a fresh one (containing leaks).
    pub max_invocations_per_worker: Option<std::num::NonZeroU32>,
    /// `max_jobs_in_flight`: at most this many of its jobs have children
    /// out at once; later ones wait in order.
    pub max_jobs_in_flight: Option<std::num::NonZeroU32>,
    /// `[[route]]`: the HTTP routes the function serves (`routes.rs`).
    pub routes: Vec<shoal_store::RouteRecord>,
    /// `[[schedule]]`: when the function runs by itself (`schedules.rs`).
    pub schedules: Vec<shoal_store::ScheduleRecord>,
    /// `[[trigger]]`: what else runs the function (`triggers.rs`).
    pub triggers: Vec<shoal_store::TriggerRecord>,
}

/// The largest `max_jobs_in_flight`.
pub const MAX_JOBS_IN_FLIGHT: u32 = 100_000;

/// `[cache]`: the result cache of synchronous invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cache {
    /// How long a cached result is served (1s to 1d).
    pub ttl: Duration,
    /// The cache's size on a node, in MiB (1 to 1024).
    pub max_mb: u32,
}

/// `[subscribe]`: run the function for messages of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub queue: String,
    /// Messages per invocation (1 to 100); above 1 the event is a list.
    pub batch_size: u32,
    /// Invocations from the queue at once (default: the function's concurrency).
    pub concurrency: u32,
}

impl Manifest {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MEMORY_MB: u32 = 256;
    pub const DEFAULT_CONCURRENCY: u32 = 4;
    pub const DEFAULT_RETRIES: u32 = 2;
    pub const MAX_RETRIES: u32 = 100;
    pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

    /// Parses `shoal.toml` text. The error message names the offending field.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let name = FunctionName::parse(&raw.name).map_err(|e| format!("shoal.toml: {e}"))?;
        let runtime = raw.runtime.unwrap_or_else(|| "python".to_string());
        if runtime != "python" {
            return Err(format!(
                "shoal.toml: runtime {runtime:?} is not supported; use \"python\""
            ));
        }
        let handler = raw.handler.unwrap_or_else(|| "main:handler".to_string());
        check_handler(&handler)?;
        let timeout = match raw.timeout {
            None => Self::DEFAULT_TIMEOUT,
            Some(v) => duration_field("timeout", &v)?,
        };
        if timeout.is_zero() || timeout > Limits::MAX_TIMEOUT {
            return Err("shoal.toml: timeout must be between 1ms and 15m".to_string());
        }
        let memory_mb = raw.memory_mb.unwrap_or(Self::DEFAULT_MEMORY_MB);
        if !(Limits::MIN_MEMORY_MB..=Limits::MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(format!(
                "shoal.toml: memory_mb must be between {} and {}",
                Limits::MIN_MEMORY_MB,
                Limits::MAX_MEMORY_MB
            ));
        }
        let concurrency = raw.concurrency.unwrap_or(Self::DEFAULT_CONCURRENCY);
        if !(1..=Limits::MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!(
                "shoal.toml: concurrency must be between 1 and {}",
                Limits::MAX_CONCURRENCY
            ));
        }
        let retries = raw.retries.unwrap_or(Self::DEFAULT_RETRIES);
        if retries > Self::MAX_RETRIES {
            return Err(format!(
                "shoal.toml: retries must be between 0 and {}",
                Self::MAX_RETRIES
            ));
        }
        let retry_delay = match raw.retry_delay {
            None => Self::DEFAULT_RETRY_DELAY,
            Some(v) => duration_field("retry_delay", &v)?,
        };
        if retry_delay > Duration::from_secs(3600) {
            return Err("shoal.toml: retry_delay must be at most 1h".to_string());
        }
        if retries > 0 && retry_delay < MIN_RETRY_DELAY {
            return Err(format!(
                "shoal.toml: retry_delay must be at least 100ms when retries is above 0 (it is {retry_delay:?})"
            ));
        }
        let subscribe = match raw.subscribe {
            None => None,
            Some(sub) => {
                shoal_types::validate_name("queue name", &sub.queue)
                    .map_err(|e| format!("shoal.toml: [subscribe] {e}"))?;
                let batch_size = sub.batch_size.unwrap_or(1);
                if !(1..=100).contains(&batch_size) {
                    return Err(
                        "shoal.toml: [subscribe] batch_size must be between 1 and 100".into(),
                    );
                }
                let sub_concurrency = sub.concurrency.unwrap_or(concurrency);
                if !(1..=concurrency).contains(&sub_concurrency) {
                    return Err(format!(
                        "shoal.toml: [subscribe] concurrency must be between 1 and the function's concurrency ({concurrency})"
                    ));
                }
                Some(Subscribe {
                    queue: sub.queue,
                    batch_size,
                    concurrency: sub_concurrency,
                })
            }
        };
        if let Some(l) = &raw.limiter {
            shoal_types::validate_name("limiter name", l)
                .map_err(|e| format!("shoal.toml: {e}"))?;
        }
        let concurrency_key = match (raw.concurrency_key, raw.concurrency_per_key) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(
                    "shoal.toml: concurrency_per_key needs concurrency_key (the event field to count by)"
                        .into(),
                );
            }
            (Some(field), per_key) => {
                let valid = !field.is_empty()
                    && field.len() <= 200
                    && field.split('.').all(|part| !part.is_empty());
                if !valid {
                    return Err(format!(
                        "shoal.toml: concurrency_key must name an event field, like \"tenant\" or \"customer.id\", not {field:?}"
                    ));
                }
                let per_key = per_key.unwrap_or(1);
                if !(1..=concurrency).contains(&per_key) {
                    return Err(format!(
                        "shoal.toml: concurrency_per_key must be between 1 and the function's concurrency ({concurrency})"
                    ));
                }
                Some((field, per_key))
            }
        };
        let network = match &raw.network {
            None => shoal_types::Network::Host,
            Some(n) => shoal_types::Network::parse(n).map_err(|e| format!("shoal.toml: {e}"))?,
        };
        let env = raw.env.unwrap_or_default();
        check_env(&env)?;
        let mut secrets = raw.secrets.unwrap_or_default();
        secrets.sort();
        secrets.dedup();
        for s in &secrets {
            crate::secrets::check_name(s).map_err(|e| format!("shoal.toml: secrets: {e}"))?;
            if env.contains_key(s) {
                return Err(format!(
                    "shoal.toml: {s} is both in [env] and in secrets; keep one"
                ));
            }
        }
        if secrets.len() > 64 {
            return Err("shoal.toml: a function may name at most 64 secrets".into());
        }
        let cache = match raw.cache {
            None => None,
            Some(c) => {
                let ttl = match c.ttl {
                    None => Cache::DEFAULT_TTL,
                    Some(v) => duration_field("[cache] ttl", &v)?,
                };
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(86_400) {
                    return Err("shoal.toml: [cache] ttl must be between 1s and 24h".into());
                }
                let max_mb = c.max_mb.unwrap_or(Cache::DEFAULT_MAX_MB);
                if !(1..=1024).contains(&max_mb) {
                    return Err("shoal.toml: [cache] max_mb must be between 1 and 1024".into());
                }
                Some(Cache { ttl, max_mb })
            }
        };
        let max_invocations_per_worker = match raw.max_invocations_per_worker {
            None => None,
            Some(n) => Some(std::num::NonZeroU32::new(n).ok_or(
                "shoal.toml: max_invocations_per_worker must be at least 1 (leave it out to keep workers)",
            )?),
        };
        let max_jobs_in_flight = match raw.max_jobs_in_flight {
            None => None,
            Some(n) if n > MAX_JOBS_IN_FLIGHT => {
                return Err(format!(
                    "shoal.toml: max_jobs_in_flight must be between 1 and {MAX_JOBS_IN_FLIGHT}"
                ));
            }
            Some(n) => Some(std::num::NonZeroU32::new(n).ok_or(
                "shoal.toml: max_jobs_in_flight must be at least 1 (leave it out for no bound)",
            )?),
        };
        let routes = crate::routes::parse(raw.route.unwrap_or_default())
            .map_err(|e| format!("shoal.toml: {e}"))?;
        let schedules = crate::schedules::parse(raw.schedule.unwrap_or_default())
            .map_err(|e| format!("shoal.toml: {e}"))?;
        let triggers = crate::triggers::parse(raw.trigger.unwrap_or_default(), name.as_str())
            .map_err(|e| format!("shoal.toml: {e}"))?;
        Ok(Manifest {
            triggers,
            routes,
            schedules,
            max_invocations_per_worker,
            max_jobs_in_flight,
            cache,
            secrets,
            env,
            network,
            concurrency_key,
            limiter: raw.limiter,
            subscribe,
            name,
            runtime,
            handler,
            limits: Limits {
                timeout,
                memory_mb,
                concurrency,
            },
            retries,
            retry_delay,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    runtime: Option<String>,
    handler: Option<String>,
    timeout: Option<toml::Value>,
    memory_mb: Option<u32>,
    concurrency: Option<u32>,
    retries: Option<u32>,
    retry_delay: Option<toml::Value>,
    subscribe: Option<RawSubscribe>,
    limiter: Option<String>,
    concurrency_key: Option<String>,
    concurrency_per_key: Option<u32>,
    network: Option<String>,
    env: Option<std::collections::BTreeMap<String, String>>,
    secrets: Option<Vec<String>>,
    cache: Option<RawCache>,
    max_invocations_per_worker: Option<u32>,
    max_jobs_in_flight: Option<u32>,
    route: Option<Vec<crate::routes::RawRoute>>,
    schedule: Option<Vec<crate::schedules::RawSchedule>>,
    trigger: Option<Vec<crate::triggers::RawTrigger>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl: Option<toml::Value>,
    max_mb: Option<u32>,
}

impl Cache {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_MB: u32 = 64;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscribe {
    queue: String,
    batch_size: Option<u32>,
    concurrency: Option<u32>,
}

/// Variables a function may not set: the node sets them (the scratch
/// directory, the interpreter's search paths) or they change how programs
/// are loaded.
const RESERVED_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "PWD"];
const RESERVED_ENV_PREFIXES: &[&str] = &["PYTHON", "LD_", "SHOAL_"];

fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > 256 {
        return Err("shoal.toml: [env] may have at most 256 variables".into());
    }
    let mut size = 0;
    for (name, value) in env {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "shoal.toml: [env] {name:?} is not a variable name; use letters, digits and _, not starting with a digit"
            ));
        }
        if RESERVED_ENV.contains(&name.as_str())
            || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            return Err(format!(
                "shoal.toml: [env] {name} is set by the node; choose another name (PATH, HOME, TMPDIR, PWD, PYTHON*, LD_* and SHOAL_* are reserved)"
            ));
        }
        if value.contains('\0') {
            return Err(format!("shoal.toml: [env] {name} contains a NUL byte"));
        }
        size += name.len() + value.len();
    }
    if size > 64 * 1024 {
        return Err("shoal.toml: [env] is larger than 64 KiB in all".into());
    }
    Ok(())
}

/// A TOML error with the line it happened on, so the user sees which key.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = format!("shoal.toml: {}", e.message().trim_end());
    if let Some(span) = e.span() {
        let line_no = text[..span.start.min(text.len())].matches('\n').count();
        if let Some(line) = text.lines().nth(line_no) {
            msg += &format!(" (line {}: `{}`)", line_no + 1, line.trim());
        }
    }
    msg
}

fn check_handler(handler: &str) -> Result<(), String> {
    let ok = handler.split_once(':').is_some_and(|(module, func)| {
        let ident = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        module.split('.').all(ident) && ident(func)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "shoal.toml: handler {handler:?} must look like \"module:function\", e.g. \"main:handler\""
        ))
    }
}

/// A duration given as a string with a unit (`"500ms"`, `"30s"`, `"2m"`) or a
/// number of seconds.
fn duration_field(field: &str, value: &toml::Value) -> Result<Duration, String> {
    let bad =
        || format!("shoal.toml: {field} must be a duration such as \"500ms\", \"30s\" or \"2m\"");
    match value {
        toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        toml::Value::String(s) => parse_duration(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Parses `"250ms"`, `"30s"`, `"2m"`, `"1h"` (one number and one unit).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let m = Manifest::parse("name = \"hello\"").unwrap();
        assert_eq!(m.handler, "main:handler");
        assert_eq!(m.limits.timeout, Duration::from_secs(30));
        assert_eq!(m.limits.concurrency, 4);
        assert_eq!(m.retries, 2);
    }

    #[test]
    fn max_jobs_in_flight() {
        let m = Manifest::parse("name = \"a\"").unwrap();
        assert_eq!(m.max_jobs_in_flight, None);
        let m = Manifest::parse("name = \"a\"\nmax_jobs_in_flight = 2").unwrap();
        assert_eq!(m.max_jobs_in_flight.map(|n| n.get()), Some(2));
        for bad in ["0", "100001", "-1", "\"2\""] {
            let err =
                Manifest::parse(&format!("name = \"a\"\nmax_jobs_in_flight = {bad}")).unwrap_err();
            assert!(err.contains("max_jobs_in_flight"), "{bad}: {err}");
        }
    }

    #[test]
    fn max_invocations_per_worker() {
        let m = Manifest::parse("name = \"a\"").unwrap();
        assert_eq!(m.max_invocations_per_worker, None);
        let m = Manifest::parse("name = \"a\"\nmax_invocations_per_worker = 3").unwrap();
        assert_eq!(m.max_invocations_per_worker.map(|n| n.get()), Some(3));
        let err = Manifest::parse("name = \"a\"\nmax_invocations_per_worker = 0").unwrap_err();
        assert!(
            err.contains("max_invocations_per_worker must be at least 1"),
            "{err}"
        );
        let err = Manifest::parse("name = \"a\"\nmax_invocations_per_worker = -1").unwrap_err();
        assert!(err.contains("max_invocations_per_worker"), "{err}");
    }

    #[test]
    fn cache_section() {
        let m = Manifest::parse("name = \"a\"").unwrap();
        assert_eq!(m.cache, None);
        let m = Manifest::parse("name = \"a\"\n[cache]").unwrap();
        assert_eq!(
            m.cache,
            Some(Cache {
                ttl: Duration::from_secs(60),
                max_mb: 64
            })
        );
        let m = Manifest::parse("name = \"a\"\n[cache]\nttl = \"5m\"\nmax_mb = 1024").unwrap();
        assert_eq!(
            m.cache,
            Some(Cache {
                ttl: Duration::from_secs(300),
                max_mb: 1024
            })
        );
        for (text, needle) in [
            ("ttl = \"500ms\"", "[cache] ttl must be between 1s and 24h"),
            ("ttl = \"25h\"", "[cache] ttl must be between 1s and 24h"),
            ("ttl = \"soon\"", "[cache] ttl must be a duration"),
            ("max_mb = 0", "[cache] max_mb must be between 1 and 1024"),
            ("max_mb = 1025", "[cache] max_mb must be between 1 and 1024"),
            ("size = 3", "unknown field"),
        ] {
            let err = Manifest::parse(&format!("name = \"a\"\n[cache]\n{text}")).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn full_manifest() {
        let m = Manifest::parse(
            "name = \"a\"\nruntime = \"python\"\nhandler = \"pkg.mod:run\"\ntimeout = \"500ms\"\nmemory_mb = 128\nconcurrency = 2\nretries = 50\nretry_delay = \"100ms\"",
        )
        .unwrap();
        assert_eq!(m.limits.timeout, Duration::from_millis(500));
        assert_eq!(m.retries, 50);
        assert_eq!(m.retry_delay, Duration::from_millis(100));
        assert_eq!(m.handler, "pkg.mod:run");
    }

    #[test]
    fn rejects_bad_fields() {
        for (text, needle) in [
            ("", "name"),
            ("name = \"Bad Name\"", "function name"),
            ("name = \"a\"\ntimout = \"5s\"", "unknown field"),
            ("name = \"a\"\ntimeout = \"soon\"", "timeout"),
            ("name = \"a\"\nretries = 101", "retries"),
            (
                "name = \"a\"\nretries = 100\nretry_delay = \"0s\"",
                "at least 100ms",
            ),
            (
                "name = \"a\"\nretries = 1\nretry_delay = \"99ms\"",
                "at least 100ms",
            ),
            ("name = \"a\"\nretry_delay = \"2h\"", "at most 1h"),
            ("name = \"a\"\nconcurrency = 0", "concurrency"),
            ("name = \"a\"\nmemory_mb = 1", "memory_mb"),
            ("name = \"a\"\nhandler = \"main\"", "handler"),
            ("name = \"a\"\nruntime = \"ruby\"", "runtime"),
            ("name = 5", "name"),
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn concurrency_keys() {
        assert_eq!(
            Manifest::parse("name = \"a\"").unwrap().concurrency_key,
            None
        );
        let m = Manifest::parse("name = \"a\"\nconcurrency_key = \"tenant\"").unwrap();
        assert_eq!(m.concurrency_key, Some(("tenant".to_string(), 1)));
        let m = Manifest::parse(
            "name = \"a\"\nconcurrency = 8\nconcurrency_key = \"customer.id\"\nconcurrency_per_key = 8",
        )
        .unwrap();
        assert_eq!(m.concurrency_key, Some(("customer.id".to_string(), 8)));
        for text in [
            "name = \"a\"\nconcurrency_per_key = 1",
            "name = \"a\"\nconcurrency_key = \"\"",
            "name = \"a\"\nconcurrency_key = \".x\"",
            "name = \"a\"\nconcurrency_key = \"t\"\nconcurrency_per_key = 0",
            "name = \"a\"\nconcurrency = 2\nconcurrency_key = \"t\"\nconcurrency_per_key = 3",
            "name = \"a\"\nconcurrency_key = 5",
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert!(err.contains("concurrency"), "{text:?}: {err}");
        }
    }

    #[test]
    fn subscriptions() {
        let m = Manifest::parse("name = \"a\"\nconcurrency = 8\n[subscribe]\nqueue = \"jobs\"\nbatch_size = 10\nconcurrency = 2").unwrap();
        assert_eq!(
            m.subscribe,
            Some(Subscribe {
                queue: "jobs".into(),
                batch_size: 10,
                concurrency: 2
            })
        );
        let m = Manifest::parse("name = \"a\"\n[subscribe]\nqueue = \"jobs\"").unwrap();
        assert_eq!(m.subscribe.unwrap().concurrency, 4);
        for bad in [
            "name = \"a\"\n[subscribe]\nqueue = \"Bad Q\"",
            "name = \"a\"\n[subscribe]\nqueue = \"q\"\nbatch_size = 0",
            "name = \"a\"\n[subscribe]\nqueue = \"q\"\nconcurrency = 9",
            "name = \"a\"\n[subscribe]\nqueue = \"q\"\nbatchsize = 2",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
