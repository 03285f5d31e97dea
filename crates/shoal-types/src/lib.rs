//! Shoal's domain vocabulary: names, ids, roles, limits and invocation outcomes.
//!
//! No I/O, no async: these types are what the other crates talk in. Names
//! are validated at construction, so a `FunctionName` in hand is always a
//! valid one. The closed sets (roles, statuses, modes, failure kinds) derive
//! serde with their stable snake_case names, so stored records and wire
//! types carry the enums themselves rather than strings parsed back later.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a name or value given by a user was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

/// A function's name: 1 to 64 characters of `a-z`, `0-9`, `-` and `_`,
/// starting with a letter or digit.
///
/// Stored records carry it too: decoding a record checks the name again, so
/// a name in hand is valid wherever it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(String);

impl FunctionName {
    pub fn parse(s: &str) -> Result<FunctionName, Invalid> {
        validate_name("function name", s).map(|()| FunctionName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FunctionName {
    type Error = Invalid;

    fn try_from(s: String) -> Result<FunctionName, Invalid> {
        validate_name("function name", &s).map(|()| FunctionName(s))
    }
}

impl From<FunctionName> for String {
    fn from(name: FunctionName) -> String {
        name.0
    }
}

impl std::ops::Deref for FunctionName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for FunctionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for FunctionName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FunctionName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for FunctionName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the shared naming rule for user-chosen names (functions, queues,
/// categories): `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn validate_name(field: &'static str, s: &str) -> Result<(), Invalid> {
    let bad = |reason: &str| Invalid {
        field,
        reason: format!(
            "{s:?} {reason}; use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ),
    };
    if s.is_empty() || s.len() > 64 {
        return Err(bad("has the wrong length"));
    }
    let mut chars = s.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(bad("does not start with a letter or digit"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(bad("contains a character that is not allowed"));
    }
    Ok(())
}

/// An API token's role. Each role can do everything the roles before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads functions, invocations and logs.
    Reader,
    /// Also invokes functions.
    Invoker,
    /// Also deploys and removes functions.
    Developer,
    /// Also manages tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Invoker, Role::Developer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Invoker => "invoker",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, Invalid> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Invalid {
                field: "role",
                reason: format!("{s:?} is not a role; use reader, invoker, developer or admin"),
            })
    }

    /// True when a token with this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What network a function's processes see (`network` in `shoal.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Network {
    /// The node's network (`network = "default"`).
    #[default]
    #[serde(rename = "default")]
    Host,
    /// None at all: an empty network namespace, not even loopback up
    /// (`network = "none"`).
    #[serde(rename = "none")]
    Off,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, Invalid> {
        match s {
            "default" => Ok(Network::Host),
            "none" => Ok(Network::Off),
            other => Err(Invalid {
                field: "network",
                reason: format!("{other:?} is not a network; use \"default\" or \"none\""),
            }),
        }
    }
}

/// Per-function resource limits, taken from `shoal.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one invocation may take before its worker is killed.
    pub timeout: Duration,
    /// Memory one worker may use, in MiB.
    pub memory_mb: u32,
    /// Invocations of the function that may run at once (= warm workers at most).
    pub concurrency: u32,
}

impl Limits {
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
    pub const MIN_MEMORY_MB: u32 = 32;
    pub const MAX_MEMORY_MB: u32 = 16 * 1024;
    pub const MAX_CONCURRENCY: u32 = 256;
}

/// The state of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Never ran (or was not retried) because its job was cancelled.
    Cancelled,
}

impl InvocationStatus {
    pub const ALL: [InvocationStatus; 6] = [
        InvocationStatus::Queued,
        InvocationStatus::Running,
        InvocationStatus::Succeeded,
        InvocationStatus::Failed,
        InvocationStatus::TimedOut,
        InvocationStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Queued => "queued",
            InvocationStatus::Running => "running",
            InvocationStatus::Succeeded => "succeeded",
            InvocationStatus::Failed => "failed",
            InvocationStatus::TimedOut => "timed_out",
            InvocationStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<InvocationStatus> {
        InvocationStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            InvocationStatus::Succeeded
                | InvocationStatus::Failed
                | InvocationStatus::TimedOut
                | InvocationStatus::Cancelled
        )
    }
}

/// How an invocation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationMode {
    /// `POST /v1/functions/{name}/invoke`: the caller waits for the outcome.
    Sync,
    /// Queued (`?mode=async`, `ctx.spawn`, a job's child or fan-in).
    Async,
    /// A subscribed function run for messages of a user queue.
    Queue,
}

impl InvocationMode {
    pub const ALL: [InvocationMode; 3] = [
        InvocationMode::Sync,
        InvocationMode::Async,
        InvocationMode::Queue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvocationMode::Sync => "sync",
            InvocationMode::Async => "async",
            InvocationMode::Queue => "queue",
        }
    }
}

impl fmt::Display for InvocationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for InvocationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a fan-out job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Children are queued or running.
    Running,
    /// Cancelled; children already running are finishing.
    Cancelling,
    /// Every child has finished (and the fan-in, if any, was started).
    Finished,
    /// Cancelled, and every child has finished or was recorded cancelled.
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Finished => "finished",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why user code failed. Each kind is reported as its own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler raised an exception.
    Raised,
    /// The invocation ran past its timeout; the worker's process group was killed.
    TimedOut,
    /// The worker ran out of its memory limit.
    OutOfMemory,
    /// The worker died from a signal (segfault, abort, ...).
    Crashed,
    /// The worker exited on its own (`os._exit`, `sys.exit` in a thread, ...).
    Exited,
    /// The handler left child processes running.
    Forked,
    /// The invocation wrote more output (logs or result) than allowed.
    OutputLimit,
    /// The function could not be loaded (import error, missing handler).
    LoadFailed,
    /// The function's result could not be encoded as JSON.
    BadResult,
}

impl FailureKind {
    pub const ALL: [FailureKind; 9] = [
        FailureKind::Raised,
        FailureKind::TimedOut,
        FailureKind::OutOfMemory,
        FailureKind::Crashed,
        FailureKind::Exited,
        FailureKind::Forked,
        FailureKind::OutputLimit,
        FailureKind::LoadFailed,
        FailureKind::BadResult,
    ];

    /// The stable error type reported to users.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Raised => "raised",
            FailureKind::TimedOut => "timed_out",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Crashed => "crashed",
            FailureKind::Exited => "exited",
            FailureKind::Forked => "forked",
            FailureKind::OutputLimit => "output_limit",
            FailureKind::LoadFailed => "load_failed",
            FailureKind::BadResult => "bad_result",
        }
    }

    pub fn parse(s: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of user code: what kind, what the message was, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The Python exception's class name, when the handler raised.
    pub exception: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            exception: None,
            message: message.into(),
            traceback: None,
        }
    }
}

/// What one run of user code produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned; the value is its result encoded as JSON text.
    Succeeded(String),
    Failed(Failure),
}

impl Outcome {
    pub fn status(&self) -> InvocationStatus {
        match self {
            Outcome::Succeeded(_) => InvocationStatus::Succeeded,
            Outcome::Failed(f) if f.kind == FailureKind::TimedOut => InvocationStatus::TimedOut,
            Outcome::Failed(_) => InvocationStatus::Failed,
        }
    }
}

/// Billed compute: configured memory in GiB times the run's duration in seconds.
pub fn gb_seconds(memory_mb: u32, duration: Duration) -> f64 {
    f64::from(memory_mb) / 1024.0 * duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(FunctionName::parse("hello").is_ok());
        assert!(FunctionName::parse("a-b_c9").is_ok());
        assert!(FunctionName::parse("").is_err());
        assert!(FunctionName::parse("-x").is_err());
        assert!(FunctionName::parse("Hello").is_err());
        assert!(FunctionName::parse("a/b").is_err());
        assert!(FunctionName::parse(&"a".repeat(65)).is_err());
        assert!(FunctionName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Developer));
        assert!(Role::Invoker.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Invoker));
        assert!(!Role::Developer.allows(Role::Admin));
        assert_eq!(Role::parse("invoker"), Ok(Role::Invoker));
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn outcome_status_follows_kind() {
        let t = Outcome::Failed(Failure::new(FailureKind::TimedOut, "late"));
        assert_eq!(t.status(), InvocationStatus::TimedOut);
        let r = Outcome::Failed(Failure::new(FailureKind::Raised, "boom"));
        assert_eq!(r.status(), InvocationStatus::Failed);
        assert_eq!(
            Outcome::Succeeded("1".into()).status(),
            InvocationStatus::Succeeded
        );
    }

    /// The serde names are the stable strings users see (and old data
    /// directories hold), for every variant.
    #[test]
    fn serde_names_are_the_stable_strings() {
        fn json<T: Serialize>(v: T) -> String {
            serde_json::to_string(&v).unwrap()
        }
        for r in Role::ALL {
            assert_eq!(json(r), format!("\"{r}\""));
        }
        for s in InvocationStatus::ALL {
            assert_eq!(json(s), format!("\"{s}\""));
        }
        for k in FailureKind::ALL {
            assert_eq!(json(k), format!("\"{k}\""));
        }
        for m in InvocationMode::ALL {
            assert_eq!(json(m), format!("\"{m}\""));
        }
    }

    #[test]
    fn gb_seconds_is_memory_times_time() {
        let v = gb_seconds(512, Duration::from_secs(2));
        assert!((v - 1.0).abs() < 1e-9);
    }
}
