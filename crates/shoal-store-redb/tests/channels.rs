//! Channels on the embedded store, beyond the conformance cases: what
//! survives a reopen and a SIGKILL (acknowledged messages together with
//! their blob changes, the epoch), trimming that really removes rows, and
//! concurrent publishes sharing commits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use redb::{ReadableDatabase, TableDefinition};
use shoal_store::{
    Applied, BitType, BlobOp, BlobWrite, Blobs, ChannelSettings, Channels, NewChannelMessage,
    Overflow, Published,
};
use shoal_store_redb::RedbStore;

const T: u64 = 1_700_000_000_000;
const CHILD_ENV: &str = "SHOAL_REDB_CHANNEL_CRASH_CHILD";
const CHANNEL: &str = "board";
const BOARD: &str = "crash/board";
const WORKERS: u64 = 8;

// The adapter's private layout, read directly to check that trimmed
// messages are really gone.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("channel_messages");

fn json(text: &str) -> NewChannelMessage {
    NewChannelMessage {
        binary: false,
        data: text.as_bytes().to_vec(),
    }
}

fn ty(bits: u8) -> BitType {
    BitType {
        signed: false,
        bits,
    }
}

async fn publish(store: &RedbStore, name: &str, texts: &[&str], now_ms: u64) -> (String, u64) {
    let messages = texts.iter().map(|t| json(t)).collect();
    match store
        .channel_publish(name, messages, None, now_ms)
        .await
        .unwrap()
    {
        Published::Done { epoch, last, .. } => (epoch, last),
        other => panic!("{other:?}"),
    }
}

async fn blob_bytes(store: &RedbStore, key: &str) -> Vec<u8> {
    let read = store.blob_read(key, 0, u64::MAX).await.unwrap().unwrap();
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

/// Rows stored for `name`, read from the file of a closed store.
fn stored_offsets(path: &Path, name: &str) -> Vec<u64> {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(MESSAGES).unwrap();
    table
        .range((name, 0)..=(name, u64::MAX))
        .unwrap()
        .map(|row| row.unwrap().0.value().1)
        .collect()
}

/// Epoch, head, settings and messages survive a reopen; publishing goes on
/// from the head under the same epoch; each channel has its own epoch.
#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let store = RedbStore::open(&path).unwrap();
    let settings = ChannelSettings {
        public: true,
        history_len: 100,
        history_age_ms: 0,
        coalesce_ms: 10,
    };
    store
        .channel_configure("a", settings.clone())
        .await
        .unwrap();
    let (epoch, head) = publish(&store, "a", &["1", "2", "3"], T).await;
    let (other, _) = publish(&store, "b", &["1"], T).await;
    assert_ne!(epoch, other, "epochs are random per channel");
    let before = store.channel_read("a", 0, 10, T).await.unwrap();
    store.close();
    drop(store);

    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.channel_read("a", 0, 10, T).await.unwrap(), before);
    assert_eq!(store.channel_settings("a").await.unwrap(), Some(settings));
    let (again, last) = publish(&store, "a", &["4"], T).await;
    assert_eq!((again, last), (epoch, head + 1));
    let list = store.channel_list("", None, 10).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|c| (c.name.as_str(), c.head))
            .collect::<Vec<_>>(),
        vec![("a", 4), ("b", 1)]
    );
}

/// Messages beyond the length, or older than the age, leave the file, not
/// just the reads: at the publish, and at a configure that shortens the
/// history.
#[tokio::test]
async fn trimming_removes_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let store = RedbStore::open(&path).unwrap();
    let texts: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    publish(&store, "len", &texts, T).await;
    store
        .channel_configure(
            "len",
            ChannelSettings {
                history_len: 5,
                ..ChannelSettings::default()
            },
        )
        .await
        .unwrap();
    publish(&store, "len", &["51"], T).await;

    let age = ChannelSettings {
        history_len: 1000,
        history_age_ms: 1000,
        ..ChannelSettings::default()
    };
    store.channel_configure("age", age).await.unwrap();
    publish(&store, "age", &["1", "2"], T).await;
    publish(&store, "age", &["3"], T + 600).await;
    publish(&store, "age", &["4"], T + 1000).await;
    store.close();
    drop(store);
    assert_eq!(stored_offsets(&path, "len"), vec![47, 48, 49, 50, 51]);
    assert_eq!(stored_offsets(&path, "age"), vec![3, 4]);
}

/// Many concurrent publishes (some with blob operations) share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    store.blob_create_fixed("b", 8, false, T).await.unwrap();
    let before = store.stats().commits;
    const N: u64 = 400;
    let publishes = (0..N).map(|i| {
        let blob = (i % 2 == 0).then(|| BlobWrite {
            key: "b".to_string(),
            ops: vec![BlobOp::IncrBy {
                ty: ty(32),
                offset: 0,
                by: 1,
                overflow: Overflow::Wrap,
            }],
        });
        store.channel_publish("c", vec![json(&i.to_string())], blob, T)
    });
    let done = join_all(publishes).await;
    let commits = store.stats().commits - before;
    assert!(commits < N / 4, "{N} publishes took {commits} commits");
    let mut offsets = Vec::new();
    let mut counters = Vec::new();
    for d in done {
        match d.unwrap() {
            Published::Done {
                first,
                last,
                applied,
                ..
            } => {
                assert_eq!(first, last);
                offsets.push(first);
                if let Some((results, _)) = applied {
                    counters.push((first, results[0].unwrap()));
                }
            }
            other => panic!("{other:?}"),
        }
    }
    offsets.sort();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    // The blob's counter went up in the order of the offsets.
    counters.sort();
    let values: Vec<i64> = counters.iter().map(|c| c.1).collect();
    assert_eq!(values, (1..=N as i64 / 2).collect::<Vec<_>>());
    assert_eq!(
        blob_bytes(&store, "b").await[..4],
        (N as u32 / 2).to_be_bytes()
    );
}

/// The child: publishes with blob operations from several tasks until it
/// is killed, printing each acknowledged publish.
#[test]
fn channel_crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(Path::new(&path)).unwrap();
        store.blob_create_fixed(BOARD, 64, false, T).await.unwrap();
        store
            .channel_configure(
                CHANNEL,
                ChannelSettings {
                    history_len: 1_000_000,
                    history_age_ms: 0,
                    ..ChannelSettings::default()
                },
            )
            .await
            .unwrap();
        let round = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let store = store.clone();
            #[allow(clippy::disallowed_methods)] // runs until the kill
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    // The board: a publish counter at byte 0, each
                    // worker's last `i` (mod 256) at byte 4 + w.
                    let ops = vec![
                        BlobOp::IncrBy {
                            ty: ty(32),
                            offset: 0,
                            by: 1,
                            overflow: Overflow::Wrap,
                        },
                        BlobOp::Set {
                            ty: ty(8),
                            offset: (4 + w) * 8,
                            value: (i % 256) as i64,
                            overflow: Overflow::Wrap,
                        },
                    ];
                    let text = format!("{{\"r\":\"{round:x}\",\"w\":{w},\"i\":{i}}}");
                    let blob = BlobWrite {
                        key: BOARD.to_string(),
                        ops,
                    };
                    match store
                        .channel_publish(CHANNEL, vec![json(&text)], Some(blob), T + i)
                        .await
                        .unwrap()
                    {
                        Published::Done {
                            epoch,
                            first,
                            applied: Some((results, _)),
                            ..
                        } => println!("ACK {epoch} {first} {} {text}", results[0].unwrap()),
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Acknowledged publishes: offset → (epoch, counter after it, message).
type Acked = BTreeMap<u64, (String, i64, String)>;

fn run_child_and_kill(path: &Path, kill_after: usize, acked: &mut Acked) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "channel_crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = |line: String, acked: &mut Acked| -> bool {
        let Some(rest) = line.strip_prefix("ACK ") else {
            return false;
        };
        let mut parts = rest.splitn(4, ' ');
        let epoch = parts.next().unwrap().to_string();
        let offset: u64 = parts.next().unwrap().parse().unwrap();
        let counter: i64 = parts.next().unwrap().parse().unwrap();
        let text = parts.next().unwrap().to_string();
        let dup = acked.insert(offset, (epoch, counter, text));
        assert!(dup.is_none(), "offset {offset} acknowledged twice");
        true
    };
    let mut seen = 0;
    while seen < kill_after {
        assert!(Instant::now() < deadline, "the child is too slow");
        match lines.next() {
            Some(line) => seen += usize::from(record(line.unwrap(), acked)),
            None => panic!("the child exited early: {:?}", child.wait()),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Every line already in the pipe was printed after its publish was acknowledged.
    for line in lines {
        record(line.unwrap(), acked);
    }
}

/// Killed mid-publish, twice: every acknowledged message is there after the
/// reopen, under the same epoch, and the blob holds exactly the changes of
/// the stored messages (its counter is the head; each worker's byte is its
/// last stored message's), never one without the other.
#[test]
fn sigkill_keeps_acknowledged_publishes() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let mut acked = Acked::new();
    for kill_after in [500, 1_500] {
        run_child_and_kill(&path, kill_after, &mut acked);
        {
            let mut db = redb::Database::open(&path).expect("reopen after SIGKILL");
            assert!(db.check_integrity().expect("integrity check"), "integrity");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(verify(&path, &acked));
    }
}

async fn verify(path: &Path, acked: &Acked) {
    let store = RedbStore::open(path).unwrap();
    let read = store.channel_read(CHANNEL, 0, 10_000_000, T).await.unwrap();
    assert!(!read.gap);
    assert_eq!(read.messages.len() as u64, read.head);
    let epochs: std::collections::BTreeSet<&String> = acked.values().map(|a| &a.0).collect();
    assert_eq!(epochs.into_iter().collect::<Vec<_>>(), vec![&read.epoch]);
    for (offset, (_, counter, text)) in acked {
        assert_eq!(
            *counter as u64, *offset,
            "the counter moved with the offsets"
        );
        let m = &read.messages[*offset as usize - 1];
        assert_eq!((m.offset, m.data.as_slice()), (*offset, text.as_bytes()));
    }
    let board = blob_bytes(&store, BOARD).await;
    assert_eq!(
        u32::from_be_bytes(board[..4].try_into().unwrap()) as u64,
        read.head,
        "the blob's counter counts the stored messages"
    );
    for w in 0..WORKERS {
        let key = format!("\"w\":{w},");
        let last = read
            .messages
            .iter()
            .rev()
            .find(|m| std::str::from_utf8(&m.data).unwrap().contains(&key))
            .expect("each worker published");
        let text = std::str::from_utf8(&last.data).unwrap();
        let i: u64 = text
            .rsplit("\"i\":")
            .next()
            .unwrap()
            .trim_end_matches('}')
            .parse()
            .unwrap();
        assert_eq!(u64::from(board[4 + w as usize]), i % 256, "worker {w}");
    }
    // A refused batch after all that still changes nothing.
    let refused = store
        .channel_publish(
            CHANNEL,
            vec![json("0")],
            Some(BlobWrite {
                key: BOARD.to_string(),
                ops: vec![BlobOp::Get {
                    ty: ty(8),
                    offset: 64 * 8,
                }],
            }),
            T,
        )
        .await
        .unwrap();
    assert!(matches!(
        refused,
        Published::BlobRefused(Applied::Invalid(_))
    ));
    assert_eq!(
        store.channel_read(CHANNEL, 0, 1, T).await.unwrap().head,
        read.head
    );
}
