//! Crash safety: a child process (this test binary, re-run with an env var)
//! writes in a loop and prints every acknowledged write; it is killed with
//! SIGKILL; the file must then pass redb's integrity check and hold every
//! acknowledged write, with every acknowledged queue message deliverable.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_store::conformance::{sample_function, sample_invocation};
use shoal_store::{Catalog, Invocations, NewMessage, Queues};
use shoal_store_redb::RedbStore;

const CHILD_ENV: &str = "SHOAL_REDB_CRASH_CHILD";
const CHILD_ROUND_ENV: &str = "SHOAL_REDB_CRASH_ROUND";
const QUEUE: &str = "crash-q";
const T: u64 = 1_700_000_000_000;

/// The child: does nothing unless started by `sigkill_keeps_acknowledged_writes`.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round = std::env::var(CHILD_ROUND_ENV).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(Path::new(&path)).unwrap();
        let mut tasks = Vec::new();
        for w in 0..32 {
            let store = store.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let id = format!("r{round}-w{w}-{i}");
                    match i % 4 {
                        0 | 1 => {
                            let mut rec = sample_invocation(&id, "f");
                            rec.input = "x".repeat((i % 7 * 300) as usize);
                            store.put_invocations(vec![rec]).await.unwrap();
                            println!("ACK inv {id}");
                        }
                        2 => {
                            let m = NewMessage {
                                id: id.clone(),
                                body: id.as_bytes().to_vec(),
                                due_ms: T,
                            };
                            store.send(QUEUE, vec![m]).await.unwrap();
                            println!("ACK msg {id}");
                        }
                        _ => {
                            let name = format!("fn-w{w}");
                            let v = store
                                .deploy_function(sample_function(&name, &id))
                                .await
                                .unwrap();
                            println!("ACK fn {name} {v} {id}");
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[derive(Default)]
struct Acked {
    invocations: BTreeSet<String>,
    messages: BTreeSet<String>,
    /// (name, version, handler)
    functions: BTreeSet<(String, u64, String)>,
}

impl Acked {
    fn record(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("ACK ") else {
            return;
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        match parts[..] {
            ["inv", id] => {
                self.invocations.insert(id.to_string());
            }
            ["msg", id] => {
                self.messages.insert(id.to_string());
            }
            ["fn", name, v, handler] => {
                self.functions
                    .insert((name.to_string(), v.parse().unwrap(), handler.to_string()));
            }
            _ => panic!("unexpected child line {line:?}"),
        }
    }

    fn len(&self) -> usize {
        self.invocations.len() + self.messages.len() + self.functions.len()
    }
}

/// Runs the child until it has acknowledged `kill_after` writes, then SIGKILLs it.
fn run_child_and_kill(path: &Path, round: usize, kill_after: usize, acked: &mut Acked) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, path)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let start = acked.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() - start < kill_after {
        assert!(Instant::now() < deadline, "the child is too slow");
        match lines.next() {
            Some(line) => acked.record(&line.unwrap()),
            None => panic!("the child exited early: {:?}", child.wait()),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Every line already in the pipe was printed after its write was acknowledged.
    for line in lines {
        acked.record(&line.unwrap());
    }
}

#[test]
fn sigkill_keeps_acknowledged_writes() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let mut acked = Acked::default();
    for (round, kill_after) in [300, 3_000, 1_000].into_iter().enumerate() {
        run_child_and_kill(&path, round, kill_after, &mut acked);

        // redb's own integrity check (it repairs on open after a crash).
        {
            let mut db = redb::Database::open(&path).expect("reopen after SIGKILL");
            assert!(db.check_integrity().expect("integrity check"), "integrity");
        }
        verify(&path, &acked);
    }
    println!(
        "crash test: {} invocations, {} messages, {} deploys acknowledged over 3 kills",
        acked.invocations.len(),
        acked.messages.len(),
        acked.functions.len()
    );
}

fn verify(path: &Path, acked: &Acked) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbStore::open(path).unwrap();
        for id in &acked.invocations {
            let rec = store.invocation(id).await.unwrap();
            assert!(rec.is_some(), "acknowledged invocation {id} lost");
        }
        for (name, version, handler) in &acked.functions {
            let f = store.function_version(name, *version).await.unwrap();
            assert_eq!(
                f.map(|f| f.handler).as_deref(),
                Some(handler.as_str()),
                "{name} v{version}"
            );
        }
        // Leases are not durable: every stored message is deliverable now.
        let leased = store.lease(QUEUE, T, usize::MAX, 1).await.unwrap();
        let delivered: BTreeSet<String> = leased
            .deliveries
            .iter()
            .map(|d| {
                assert_eq!(d.body, d.id.as_bytes(), "body of {}", d.id);
                d.id.clone()
            })
            .collect();
        let lost: Vec<_> = acked.messages.difference(&delivered).collect();
        assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
        store.close();
    });
}
