//! Invocation records and queue messages as the engine makes them: pure
//! functions, no state. Every path that creates an invocation (a call, a
//! job's child, a fan-in, a queue batch) builds it here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use shoal_runtime::Response;
use shoal_store::{ConcurrencyKey, ErrorRecord, InvocationRecord};
use shoal_types::{Failure, InvocationMode, InvocationStatus, Outcome, gb_seconds};

use crate::env::Random;
use crate::functions::Deployed;

/// What an asynchronous invocation's queue message carries; the invocation
/// record holds the rest.
#[derive(Serialize, Deserialize)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) version: u64,
}

impl Message {
    pub(crate) fn new(id: &str, version: u64) -> Message {
        Message {
            id: id.to_string(),
            version,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("message encodes")
    }
}

/// The queue of a function's asynchronous invocations. Queue names with a
/// dot cannot clash with user queue names.
pub(crate) fn queue_name(function: &str) -> String {
    format!("_async.{function}")
}

/// A new, queued invocation record of `d`.
pub(crate) fn new_record(
    d: &Deployed,
    mode: InvocationMode,
    event: String,
    now: u64,
) -> InvocationRecord {
    InvocationRecord {
        id: uuid::Uuid::now_v7().to_string(),
        function: d.record.name.clone(),
        version: d.record.version,
        mode,
        status: InvocationStatus::Queued,
        input: event,
        output: None,
        error: None,
        attempts: 0,
        max_attempts: d.max_attempts(),
        created_at_ms: now,
        started_at_ms: None,
        finished_at_ms: None,
        duration_ms: None,
        queued_ms: None,
        billed_gb_s: 0.0,
        cold_start: false,
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
        cache_hit: false,
        token: None,
        user: None,
    }
}

/// Records the outcome of one run in the invocation's record.
pub(crate) fn apply_response(record: &mut InvocationRecord, d: &Deployed, r: &Response, now: u64) {
    record.status = r.outcome.status();
    record.finished_at_ms = Some(now);
    record.duration_ms = Some(r.duration.as_secs_f64() * 1000.0);
    record.queued_ms = Some(r.queued.as_secs_f64() * 1000.0);
    record.billed_gb_s += gb_seconds(d.record.memory_mb, r.duration);
    record.cold_start |= r.cold_start;
    match &r.outcome {
        Outcome::Succeeded(json) => {
            record.output = Some(json.clone());
            record.error = None;
        }
        Outcome::Failed(f) => {
            record.output = None;
            record.error = Some(error_record(f));
        }
    }
}

pub(crate) fn error_record(f: &Failure) -> ErrorRecord {
    ErrorRecord {
        kind: f.kind,
        exception: f.exception.clone(),
        message: f.message.clone(),
        traceback: f.traceback.clone(),
    }
}

/// Delay before retry number `attempt` (1-based): `base × 2^(attempt-1)`,
/// capped at 15 minutes, with "equal jitter" (between half and all of it) so
/// that failures that happened together do not retry together.
pub(crate) fn backoff(base: Duration, attempt: u32, random: &dyn Random) -> Duration {
    let cap = Duration::from_secs(15 * 60);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let half = exp / 2;
    half + Duration::from_millis(random.up_to(half.as_millis() as u64))
}

/// The concurrency key of an event: the value of the key's field (a dotted
/// path into nested objects), as text; `None` when absent or null.
pub(crate) fn key_of(ck: &ConcurrencyKey, event: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(event).ok()?;
    let mut v = &value;
    for part in ck.field.split('.') {
        v = v.get(part)?;
    }
    match v {
        serde_json::Value::Null => None,
        // A key starting with NUL gets a second one, so that no event makes
        // a key that carries its own limit (`shoal_store::own_key_limit`).
        serde_json::Value::String(s) if s.starts_with('\0') => Some(format!("\0{s}")),
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_event() {
        let ck = |field: &str| ConcurrencyKey {
            field: field.into(),
            per_key: 1,
        };
        let event = r#"{"tenant":"acme","n":7,"ok":true,"c":{"id":"x-1"},"z":null,"l":[1]}"#;
        assert_eq!(key_of(&ck("tenant"), event).as_deref(), Some("acme"));
        let sneaky = r#"{"tenant":"\u00009\u0000x"}"#;
        let key = key_of(&ck("tenant"), sneaky).unwrap();
        assert_eq!(shoal_store::own_key_limit(&key), None);
        assert_eq!(key_of(&ck("n"), event).as_deref(), Some("7"));
        assert_eq!(key_of(&ck("ok"), event).as_deref(), Some("true"));
        assert_eq!(key_of(&ck("c.id"), event).as_deref(), Some("x-1"));
        assert_eq!(key_of(&ck("l"), event).as_deref(), Some("[1]"));
        assert_eq!(key_of(&ck("z"), event), None);
        assert_eq!(key_of(&ck("missing"), event), None);
        assert_eq!(key_of(&ck("tenant.deeper"), event), None);
        assert_eq!(key_of(&ck("tenant"), "[1, 2]"), None);
        assert_eq!(key_of(&ck("tenant"), "not json"), None);
    }

    struct Fixed(u64);

    impl Random for Fixed {
        fn up_to(&self, max: u64) -> u64 {
            self.0.min(max)
        }
    }

    #[test]
    fn backoff_doubles_within_equal_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..6u32 {
            let full = base * 2u32.pow(attempt - 1);
            assert_eq!(backoff(base, attempt, &Fixed(0)), full / 2);
            assert_eq!(backoff(base, attempt, &Fixed(u64::MAX)), full);
            let d = backoff(base, attempt, &crate::env::SystemRandom);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            backoff(Duration::from_secs(60), 90, &Fixed(u64::MAX)),
            Duration::from_secs(15 * 60)
        );
    }
}
