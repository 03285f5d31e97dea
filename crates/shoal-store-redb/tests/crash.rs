//! Crash safety: a child process (this test binary, re-run with an env var)
//! writes in a loop and prints every acknowledged write; it is killed with
//! SIGKILL; the file must then pass redb's integrity check and hold every
//! acknowledged write, with every acknowledged queue message deliverable.
//!
//! Documents too: every acknowledged `put_docs` batch is there in full (and
//! no batch is there in part), the shard stats match the documents, and a
//! category deleted before the kill stays deleted while its documents (often
//! mid-purge at the kill) are purged after the reopen.
//!
//! Queues too: every acknowledged dead letter is in the dead letters, whole,
//! and never deliverable again; the counters and the dead-letter count were
//! committed with the operations (sent = stored messages on a queue nothing
//! is acked from).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
use shoal_store::conformance::{sample_function, sample_invocation};
use shoal_store::{Catalog, DocWrite, Docs, Invocations, NewMessage, Queues};
use shoal_store_redb::RedbStore;

const CHILD_ENV: &str = "SHOAL_REDB_CRASH_CHILD";
const CHILD_ROUND_ENV: &str = "SHOAL_REDB_CRASH_ROUND";
const QUEUE: &str = "crash-q";
/// Per worker: every message sent is dead-lettered right away.
const DEAD_QUEUE: &str = "crash-dead";
const WORKERS: u64 = 32;
const T: u64 = 1_700_000_000_000;
const DOC_CAT: &str = "crash-docs";
const BATCH: usize = 200;
/// Documents of each category deleted by the child.
const GONE_DOCS: usize = 4_000;

fn doc_batch(batch: &str, n: usize, shards: u32) -> Vec<DocWrite> {
    (0..n)
        .map(|j| DocWrite {
            shard: j as u32 % shards,
            id: format!("{batch}-{j:05}"),
            body: format!("{{\"batch\":\"{batch}\",\"j\":{j}}}").into_bytes(),
        })
        .collect()
}

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
        store.create_category(DOC_CAT, 4, 16, T).await.unwrap();
        for w in 0..2 {
            let store = store.clone();
            let round = round.clone();
            #[allow(clippy::disallowed_methods)] // the test awaits every handle
            tasks.push(tokio::spawn(async move {
                for b in 0u64.. {
                    if b >= 40 {
                        // Enough; the other tasks go on until the kill.
                        std::future::pending::<()>().await;
                    }
                    let batch = format!("r{round}-w{w}-b{b}");
                    store
                        .put_docs(DOC_CAT, doc_batch(&batch, BATCH, 4))
                        .await
                        .unwrap();
                    println!("ACK docs {batch}");
                }
            }));
        }
        {
            let store = store.clone();
            let round = round.clone();
            #[allow(clippy::disallowed_methods)] // the test awaits every handle
            tasks.push(tokio::spawn(async move {
                // Each is purged in several chunks; the parent kills right
                // after a delete is acknowledged, so mostly mid-purge.
                for k in 0u64.. {
                    let name = format!("gone-r{round}-{k}");
                    store.create_category(&name, 2, 16, T).await.unwrap();
                    for part in 0..4 {
                        let docs = doc_batch(&format!("p{part}"), GONE_DOCS / 4, 2);
                        store.put_docs(&name, docs).await.unwrap();
                    }
                    assert!(store.delete_category(&name).await.unwrap());
                    println!("ACK gone {name}");
                }
            }));
        }
        for w in 0..WORKERS {
            let store = store.clone();
            let round = round.clone();
            #[allow(clippy::disallowed_methods)] // the test awaits every handle
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let id = format!("r{round}-w{w}-{i}");
                    match i % 5 {
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
                                sent_ms: T + i,
                                dedup: None,
                                key: None,
                            };
                            store.send(QUEUE, vec![m]).await.unwrap();
                            println!("ACK msg {id}");
                        }
                        3 => {
                            let queue = format!("{DEAD_QUEUE}-w{w}");
                            let m = NewMessage {
                                id: id.clone(),
                                body: id.as_bytes().to_vec(),
                                due_ms: T,
                                sent_ms: T + i,
                                dedup: None,
                                key: None,
                            };
                            store.send(&queue, vec![m]).await.unwrap();
                            store.lease(&queue, T, 10, 1).await.unwrap();
                            store
                                .dead_letter(&queue, &id, format!("reason {id}"), T + i + 1)
                                .await
                                .unwrap();
                            println!("ACK dead {w} {i} {id}");
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
    /// (worker, i, id)
    dead: BTreeSet<(u64, u64, String)>,
    /// (name, version, handler)
    functions: BTreeSet<(String, u64, String)>,
    doc_batches: BTreeSet<String>,
    gone: BTreeSet<String>,
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
            ["dead", w, i, id] => {
                self.dead
                    .insert((w.parse().unwrap(), i.parse().unwrap(), id.to_string()));
            }
            ["docs", batch] => {
                self.doc_batches.insert(batch.to_string());
            }
            ["gone", name] => {
                self.gone.insert(name.to_string());
            }
            ["fn", name, v, handler] => {
                self.functions
                    .insert((name.to_string(), v.parse().unwrap(), handler.to_string()));
            }
            _ => panic!("unexpected child line {line:?}"),
        }
    }

    fn len(&self) -> usize {
        self.invocations.len()
            + self.messages.len()
            + self.dead.len()
            + self.functions.len()
            + self.doc_batches.len()
            + self.gone.len()
    }
}

/// Runs the child until it has acknowledged `kill_after` writes, then
/// SIGKILLs it right after its next acknowledged category delete.
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
    let mut gone_before = None;
    loop {
        assert!(Instant::now() < deadline, "the child is too slow");
        match lines.next() {
            Some(line) => acked.record(&line.unwrap()),
            None => panic!("the child exited early: {:?}", child.wait()),
        }
        if acked.len() - start < kill_after {
            continue;
        }
        // Then kill right after the next acknowledged category delete.
        match gone_before {
            None => gone_before = Some(acked.gone.len()),
            Some(n) if acked.gone.len() > n => break,
            Some(_) => {}
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
        let pending_purges = {
            let mut db = redb::Database::open(&path).expect("reopen after SIGKILL");
            assert!(db.check_integrity().expect("integrity check"), "integrity");
            let txn = db.begin_read().unwrap();
            txn.open_table(DOC_GARBAGE).unwrap().len().unwrap()
        };
        println!("round {round}: {pending_purges} deleted categories were mid-purge at the kill");
        verify(&path, &acked);
    }
    println!(
        "crash test: {} invocations, {} messages, {} dead letters, {} deploys, \
         {} document batches, {} deleted categories acknowledged over 3 kills",
        acked.invocations.len(),
        acked.messages.len(),
        acked.dead.len(),
        acked.functions.len(),
        acked.doc_batches.len(),
        acked.gone.len(),
    );
}

// The adapter's private layout, read directly to check that purged
// documents are really gone.
const DOCS_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const DOC_GARBAGE: TableDefinition<u64, &str> = TableDefinition::new("doc_garbage");

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
        // Nothing is acked from this queue: every accepted send is stored,
        // counted in the same commit.
        let counters = store.counters(QUEUE).await.unwrap();
        assert_eq!(counters.sent, delivered.len() as u64, "sent counter");

        // Dead letters: every acknowledged one is there, whole, and not on
        // the queue; totals match what is stored.
        for w in 0..WORKERS {
            let queue = format!("{DEAD_QUEUE}-w{w}");
            let dead = store.dead_letters(&queue, None, usize::MAX).await.unwrap();
            let stored: BTreeMap<&str, _> = dead.iter().map(|d| (d.id.as_str(), d)).collect();
            for (_, i, id) in acked.dead.iter().filter(|(dw, _, _)| *dw == w) {
                let d = stored
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("acknowledged dead letter {id} lost"));
                assert_eq!(d.body, id.as_bytes(), "dead letter body of {id}");
                assert_eq!(d.reason, format!("reason {id}"));
                assert_eq!((d.sent_ms, d.dead_at_ms, d.failures), (T + i, T + i + 1, 0));
            }
            let leased = store.lease(&queue, T, usize::MAX, 1).await.unwrap();
            for d in &leased.deliveries {
                assert!(
                    !stored.contains_key(d.id.as_str()),
                    "{} is dead and queued",
                    d.id
                );
            }
            let depth = store.depth(&queue).await.unwrap();
            let counters = store.counters(&queue).await.unwrap();
            assert_eq!(depth.dead, dead.len() as u64, "{queue} dead count");
            assert_eq!(counters.dead_lettered, depth.dead, "{queue} dead_lettered");
            assert_eq!(
                counters.sent,
                depth.dead + depth.waiting + depth.in_flight,
                "{queue} sent"
            );
        }

        // Documents: whole batches only, every acknowledged one, stats exact.
        let mut batches: BTreeMap<String, usize> = BTreeMap::new();
        let stats = store.shard_stats(DOC_CAT).await.unwrap();
        for (shard, s) in stats.iter().enumerate() {
            let docs = store
                .scan_shard(DOC_CAT, shard as u32, None, usize::MAX)
                .await
                .unwrap();
            assert_eq!(s.docs, docs.len() as u64, "shard {shard} doc count");
            let bytes: usize = docs.iter().map(|d| d.body.len()).sum();
            assert_eq!(s.bytes, bytes as u64, "shard {shard} bytes");
            for d in docs {
                let (batch, _) = d.id.rsplit_once('-').unwrap();
                *batches.entry(batch.to_string()).or_default() += 1;
            }
        }
        for (batch, n) in &batches {
            assert_eq!(*n, BATCH, "batch {batch} is partly written");
        }
        for batch in &acked.doc_batches {
            assert!(
                batches.contains_key(batch),
                "acknowledged batch {batch} lost"
            );
        }
        for name in &acked.gone {
            assert_eq!(
                store.category(name).await.unwrap(),
                None,
                "{name} came back"
            );
        }
        // Deleted categories' documents are purged after the reopen.
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.stats().purge_backlog > 0 {
            assert!(Instant::now() < deadline, "purge did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut live_docs = 0;
        for c in store.categories().await.unwrap() {
            let stats = store.shard_stats(&c.name).await.unwrap();
            live_docs += stats.iter().map(|s| s.docs).sum::<u64>();
        }
        store.close();
        drop(store);
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(DOCS_TABLE).unwrap().len().unwrap(),
            live_docs,
            "documents left over from deleted categories"
        );
        assert_eq!(txn.open_table(DOC_GARBAGE).unwrap().len().unwrap(), 0);
    });
}
