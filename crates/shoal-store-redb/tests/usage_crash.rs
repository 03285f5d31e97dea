//! Usage rollups under `kill -9`: a child process (this test binary, run
//! again with an env var) makes invocation records final in a loop — each
//! written queued, then running, then final, and then final again (a
//! redelivery) — from many tasks at once, and is killed with SIGKILL. After
//! each kill the file must hold, per function, exactly as many invocations
//! in its rollups as it holds final records, and as many as the child
//! acknowledged at least: the rollups change in the records' transaction,
//! and a record final already adds nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_store::conformance::sample_invocation;
use shoal_store::usage::{Grain, RollupQuery, Usage};
use shoal_store::{InvocationFilter, InvocationRecord, Invocations};
use shoal_store_redb::RedbStore;
use shoal_types::{FunctionName, InvocationStatus};

const CHILD_ENV: &str = "SHOAL_REDB_USAGE_CRASH_CHILD";
const ROUND_ENV: &str = "SHOAL_REDB_USAGE_CRASH_ROUND";
const WORKERS: u64 = 16;
const FUNCTIONS: u64 = 3;
const T: u64 = 1_700_000_000_000;

fn function(i: u64) -> String {
    format!("use-f{}", i % FUNCTIONS)
}

/// The child: does nothing unless started by the test below.
#[test]
fn usage_crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round = std::env::var(ROUND_ENV).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(Path::new(&path)).unwrap();
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let store = store.clone();
            let round = round.clone();
            #[allow(clippy::disallowed_methods)] // the test awaits every handle
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let id = format!("r{round}-w{w}-{i}");
                    let f = function(w + i);
                    // Spread over a few minutes and hours.
                    let at = T + (i % 200) * 37_000;
                    let queued = InvocationRecord {
                        created_at_ms: at,
                        ..sample_invocation(&id, &f)
                    };
                    let running = InvocationRecord {
                        status: InvocationStatus::Running,
                        ..queued.clone()
                    };
                    let done = InvocationRecord {
                        status: if i % 4 == 0 {
                            InvocationStatus::Failed
                        } else {
                            InvocationStatus::Succeeded
                        },
                        finished_at_ms: Some(at + 5),
                        duration_ms: Some(4.0),
                        billed_gb_s: 0.001,
                        ..queued.clone()
                    };
                    // Not awaited in between: issued in order, as the
                    // dispatcher does; the last one is awaited.
                    drop(store.put_invocations(vec![queued]));
                    drop(store.put_invocations(vec![running]));
                    store.put_invocations(vec![done.clone()]).await.unwrap();
                    store.put_invocations(vec![done]).await.unwrap();
                    println!("ACK {f}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn run_child_and_kill(path: &Path, round: usize, kill_after: usize) -> BTreeMap<String, u64> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "usage_crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while n < kill_after {
        assert!(Instant::now() < deadline, "the child is too slow");
        let line = lines.next().expect("the child exited early").unwrap();
        if let Some(f) = line.strip_prefix("ACK ") {
            *acked.entry(f.to_string()).or_default() += 1;
            n += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for line in lines {
        if let Some(f) = line.unwrap().strip_prefix("ACK ") {
            *acked.entry(f.to_string()).or_default() += 1;
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_rollups_equal_to_final_records() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for (round, kill_after) in [200, 1_500, 600].into_iter().enumerate() {
        for (f, n) in run_child_and_kill(&path, round, kill_after) {
            *acked.entry(f).or_default() += n;
        }
        let store = RedbStore::open(&path).unwrap();
        for i in 0..FUNCTIONS {
            let f = function(i);
            let name = FunctionName::parse(&f).unwrap();
            let mut finals = 0;
            for status in [InvocationStatus::Succeeded, InvocationStatus::Failed] {
                finals += store
                    .count_indexed(&InvocationFilter {
                        function: Some(name.clone()),
                        status: Some(status),
                        ..InvocationFilter::default()
                    })
                    .await
                    .unwrap();
            }
            for grain in Grain::ALL {
                let rows = store
                    .rollups(&RollupQuery {
                        grain,
                        since_ms: 0,
                        until_ms: u64::MAX,
                        function: Some(f.clone()),
                        each_function: false,
                        token: None,
                    })
                    .await
                    .unwrap();
                let counted: u64 = rows.iter().map(|r| r.rollup.invocations()).sum();
                let gb_ns: u64 = rows
                    .iter()
                    .map(|r| r.rollup.fields[shoal_store::usage::GB_NS])
                    .sum();
                assert_eq!(counted, finals, "round {round}, {f}, {grain:?}");
                assert_eq!(gb_ns, finals * 1_000_000, "round {round}, {f}, {grain:?}");
            }
            let want = acked.get(&f).copied().unwrap_or(0);
            assert!(
                finals >= want,
                "round {round}, {f}: {finals} final < {want} acknowledged"
            );
        }
        store.close();
        println!("round {round}: {acked:?} acknowledged");
    }
}
