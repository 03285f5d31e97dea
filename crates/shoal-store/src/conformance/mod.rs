//! The conformance suite every storage adapter passes.
//!
//! A behaviour not checked here is not part of the storage contract. Each
//! case is a `pub async fn(&Backend)` in an area module (`catalog`,
//! `invocations`, `queues`, `queue_stats`, `queue_cleanup`, `docs`, `jobs`, `kv`, `blobs`,
//! `channels`, `users`):
//! plain async code with `assert!`s that runs under any executor. Adapters
//! run it with [`conformance_suite!`](crate::conformance_suite), one test per
//! case. The suite never sleeps: the store takes times from its callers, so
//! cases pass explicit `now_ms` values to move time forward. Every function,
//! token, invocation and queue name is unique per run, so cases can share a
//! backend (a Redis used by other tests) and run several times against one
//! store (see `run_all`).

pub mod blobs;
pub mod catalog;
pub mod channels;
pub mod docs;
pub mod invocation_lists;
pub mod invocations;
pub mod jobs;
pub mod kv;
pub mod queue_cleanup;
pub mod queue_stats;
pub mod queues;
pub mod usage;
pub mod users;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_types::{InvocationMode, InvocationStatus};

use crate::{Backend, Delivery, FunctionRecord, InvocationRecord, Leased, NewMessage, QueueDepth};

/// Expands to one `#[tokio::test]` per conformance case, named after the
/// case (`queue_dedup`, `jobs_fan_in_once`, ...), each on a fresh backend.
///
/// `$make` is a function (or closure) taking no arguments and returning a
/// future of something that borrows as a [`Backend`](crate::Backend): a
/// `Backend` itself, or a fixture of the adapter's that also keeps what the
/// backend needs alive (a temporary directory) and implements
/// `Borrow<Backend>`. The calling crate needs `tokio` (with `macros` and
/// `rt`) among its dev-dependencies.
///
/// ```text
/// // tests/conformance.rs of an adapter crate
/// async fn backend() -> shoal_store::Backend { /* a fresh store */ }
/// shoal_store::conformance_suite!(backend);
/// ```
///
/// Run one case alone with `cargo test --test <file> <case> -- --exact`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr $(,)?) => {
        $crate::__conformance_cases!(@tests ($make));
    };
}

/// The one list of conformance cases, as `area::case`. Every use of the
/// list (the tests of `conformance_suite!`, `CASES`, `run_all`) expands
/// from here, and a unit test checks it against the area modules' sources.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (@tests ($make:expr) [$($area:ident :: $case:ident)*]) => {
        $(
            #[::tokio::test]
            async fn $case() {
                let fixture = ($make)().await;
                let backend: &$crate::Backend = ::core::borrow::Borrow::borrow(&fixture);
                $crate::conformance::$area::$case(backend).await;
            }
        )*
    };
    (@names () [$($area:ident :: $case:ident)*]) => {
        &[$(::core::concat!(::core::stringify!($area), "::", ::core::stringify!($case))),*]
    };
    (@run ($backend:expr) [$($area:ident :: $case:ident)*]) => {
        $($crate::conformance::$area::$case($backend).await;)*
    };
    (@$use:ident $args:tt) => {
        $crate::__conformance_cases! { @$use $args [
            catalog::functions
            catalog::function_versions_after_remove
            catalog::function_refs
            catalog::tokens
            users::users
            users::tokens_with_users_and_scopes
            invocations::invocations
            invocations::logs
            invocations::write_order
            invocations::healthy
            invocations::purge_invocations
            invocation_lists::list_invocations_filters
            invocation_lists::list_invocations_paging
            invocation_lists::list_invocations_follow_status
            invocation_lists::list_invocations_of_jobs
            invocation_lists::list_invocations_after_purge
            queues::queue_lease_and_ack
            queues::queue_due_order
            queues::queue_visibility_and_extend
            queues::queue_nack
            queues::queue_started
            queues::queue_dedup
            queues::queue_isolation
            queues::queue_bodies
            queue_stats::queue_depth_fields
            queue_stats::queue_counters
            queues::queue_dedup_keys
            queue_cleanup::queue_dead_letters
            queue_cleanup::queue_redrive_and_purge_dead
            queue_cleanup::queue_purge
            queue_stats::queue_samples
            catalog::queue_and_limiter_records
            docs::categories
            docs::category_placement
            docs::docs_put_get_replace_delete
            docs::docs_versions
            docs::docs_scan_order
            docs::docs_atomicity
            docs::docs_write_order
            docs::delete_category_removes_everything
            docs::delete_category_if_empty
            docs::docs_category_isolation
            queues::queue_keys
            queues::queue_keys_with_own_limits
            jobs::jobs_fan_in_once
            jobs::jobs_nested_and_cancel
            jobs::jobs_list_newest_first
            kv::kv_get_set_versions
            kv::kv_set_conditions
            kv::kv_compare_and_set
            kv::kv_ttl_expiry
            kv::kv_set_without_ttl_clears_ttl
            kv::kv_incr
            kv::kv_delete
            kv::kv_versions_never_reused
            kv::kv_list
            kv::kv_sweep
            blobs::blob_upload_and_read
            blobs::blob_ranges_across_chunks
            blobs::blob_dropped_upload_leaves_nothing
            blobs::blob_replace_and_delete
            blobs::blob_list
            blobs::blob_fixed_operations
            blobs::blob_fixed_batches_are_all_or_nothing
            channels::channel_offsets_and_epoch
            channels::channel_concurrent_publishes
            channels::channel_history_bounds
            channels::channel_settings_apply
            channels::channel_list
            channels::channel_binary_payloads
            channels::channel_publish_with_blob
            usage::usage_rollups_once_per_final_record
            usage::usage_rollups_of_combined_writes
            usage::usage_count_indexed
        ] }
    };
}

/// Every case, as `area::case`, in the order `run_all` runs them.
pub const CASES: &[&str] = crate::__conformance_cases!(@names ());

/// Runs every case, one after the other, against one backend. Cases use
/// unique names, so this may run several times against one store; an
/// adapter's tests do it once to check exactly that.
pub async fn run_all(backend: &Backend) {
    crate::__conformance_cases!(@run (backend));
}

/// A base time for the queue tests. Queue names are unique, so a fixed clock is fine.
const T: u64 = 1_700_000_000_000;

/// A name no other run uses: `prefix-<pid>-<nanos>-<counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A function name the suite uses (valid by construction).
pub fn name(s: &str) -> shoal_types::FunctionName {
    shoal_types::FunctionName::parse(s).expect("the suite uses valid function names")
}

/// A function record with plausible fields; `version` is deliberately wrong
/// (the store must replace it).
pub fn sample_function(name: &str, handler: &str) -> FunctionRecord {
    FunctionRecord {
        name: self::name(name),
        version: 999,
        runtime: "python3".to_string(),
        handler: handler.to_string(),
        timeout_ms: 30_000,
        memory_mb: 128,
        concurrency: 4,
        retries: 2,
        retry_delay_ms: 1000,
        code_dir: format!("code/{name}/{handler}"),
        env_dir: Some(format!("envs/{handler}")),
        code_sha256: "ab".repeat(32),
        deployed_at_ms: T,
        subscribe: None,
        limiter: None,
        concurrency_key: None,
        network: shoal_types::Network::Host,
        code_digest: Some("cd".repeat(32)),
        env: [("GREETING".to_string(), "héllo \"x\"".to_string())].into(),
        secrets: vec!["API_KEY".to_string()],
        deployed_by: Some(crate::DeployedBy {
            token_id: "tok-1".to_string(),
            token_name: "ci".to_string(),
            user: Some("ana".to_string()),
        }),
        cache: Some(crate::CacheSettings {
            ttl_ms: 60_000,
            max_bytes: 64 << 20,
        }),
        max_invocations_per_worker: Some(1000),
        max_jobs_in_flight: Some(2),
        routes: vec![crate::RouteRecord {
            method: "POST".to_string(),
            path: "/api/pixel/{id}".to_string(),
            public: true,
            rate_limit: Some(crate::RouteRate {
                per_second: 2.5,
                burst: 5,
            }),
            cors: Some(crate::RouteCors {
                origins: vec!["*".to_string()],
                methods: vec!["GET".to_string(), "POST".to_string()],
                headers: vec!["content-type".to_string()],
                credentials: false,
                max_age_s: 600,
            }),
        }],
        schedules: vec![crate::ScheduleRecord {
            every_ms: None,
            cron: Some("*/5 * * * * *".to_string()),
            timezone: Some("Europe/Paris".to_string()),
            event: r#"{"kind":"tick"}"#.to_string(),
            catch_up: true,
        }],
        triggers: vec![
            crate::TriggerRecord::Docs {
                category: "photos".to_string(),
                batch_size: 100,
                batch_window_ms: 500,
            },
            crate::TriggerRecord::Outcome {
                function: "resize".to_string(),
                when: crate::OutcomeWhen::Failure,
            },
        ],
    }
}

/// A queued invocation record.
pub fn sample_invocation(id: &str, function: &str) -> InvocationRecord {
    InvocationRecord {
        id: id.to_string(),
        function: self::name(function),
        version: 1,
        mode: InvocationMode::Async,
        status: InvocationStatus::Queued,
        input: r#"{"n":1,"s":"é\u0000\"x"}"#.to_string(),
        output: None,
        error: None,
        attempts: 0,
        max_attempts: 3,
        created_at_ms: T,
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

fn msg(id: &str, body: &[u8], due_ms: u64) -> NewMessage {
    NewMessage {
        id: id.to_string(),
        body: body.to_vec(),
        due_ms,
        sent_ms: due_ms,
        dedup: None,
        key: None,
    }
}

async fn lease(backend: &Backend, queue: &str, now_ms: u64, max: usize, vis: u64) -> Leased {
    backend
        .queues
        .lease(queue, now_ms, max, vis)
        .await
        .expect("lease")
}

/// Deliveries by id, asserting no id is delivered twice in one lease.
fn by_id(leased: &Leased) -> BTreeMap<String, Delivery> {
    let mut out = BTreeMap::new();
    for d in &leased.deliveries {
        let dup = out.insert(d.id.clone(), d.clone());
        assert!(
            dup.is_none(),
            "message {} delivered twice in one lease",
            d.id
        );
    }
    out
}

fn ids(leased: &Leased) -> Vec<String> {
    by_id(leased).into_keys().collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The waiting and in-flight counts of a queue.
async fn depth(backend: &Backend, queue: &str) -> QueueDepth {
    let d = backend.queues.depth(queue).await.expect("depth");
    depth_of(d.waiting, d.in_flight)
}

fn depth_of(waiting: u64, in_flight: u64) -> QueueDepth {
    QueueDepth {
        waiting,
        in_flight,
        ..QueueDepth::default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::CASES;

    /// A case added to an area module but not to `__conformance_cases!`
    /// would silently never run: every `pub async fn` of an area module is
    /// a case, and the list names exactly those, once each.
    #[test]
    fn the_macro_lists_every_case() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("src/conformance") {
            let path = entry.expect("directory entry").path();
            let area = path.file_stem().and_then(|s| s.to_str()).expect("name");
            if path.extension().is_none_or(|e| e != "rs") || area == "mod" {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("area source");
            for line in source.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let case = rest.split(['(', '<']).next().expect("a name");
                    found.push(format!("{area}::{case}"));
                }
            }
        }
        let unlisted: Vec<&String> = found
            .iter()
            .filter(|c| !CASES.contains(&c.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "add {unlisted:?} to __conformance_cases!"
        );
        let gone: Vec<&&str> = CASES
            .iter()
            .filter(|c| !found.iter().any(|f| f == *c))
            .collect();
        assert!(
            gone.is_empty(),
            "{gone:?} listed in __conformance_cases! but not found"
        );
        assert_eq!(found.len(), CASES.len(), "a case is listed twice");

        // Tests are named after the case alone, so names must not repeat.
        let mut names: Vec<&str> = CASES
            .iter()
            .map(|c| c.rsplit("::").next().unwrap())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len(), "two cases share a name");
    }
}
