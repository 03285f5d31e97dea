//! End to end: subtasks over byte ranges (`ctx.map_ranges`) on a real
//! `shoal serve` with python3 workers, on the embedded store and on a real
//! `redis-server`. A synchronous invocation fans out over a blob and
//! answers the fan-in's result (`.wait()`); every record is read exactly
//! once — lines that straddle range edges included — while a child killed
//! with SIGKILL is retried; `max_in_flight` is never exceeded (each child
//! logs when it starts and ends); `ctx.blob` reads and bit operations work
//! inside handlers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{TestNode, deploy};
use serde_json::json;
use shoal_client::Client;
use shoal_store_redis::testing::RedisServer;

/// A child: counts its records and sums their numbers, logging each
/// record's id (to prove each is read once) and its start and end (to
/// observe how many run at once). The child of range 2 kills its own
/// worker on its first attempt: the retry must still count it once.
fn child_py(log: &Path) -> String {
    format!(
        r#"
import os, struct, time

LOG = {log:?}

def handler(event, ctx):
    with open(LOG, "a") as f:
        f.write("start %d %d %d\n" % (event["index"], ctx.attempt, time.monotonic_ns()))
    if event["index"] == 2 and ctx.attempt == 1:
        # Its end is logged as it dies: the kill takes its slot with it.
        with open(LOG, "a") as f:
            f.write("end %d %d %d\n" % (event["index"], ctx.attempt, time.monotonic_ns()))
        os.kill(os.getpid(), 9)
    ids, total = [], 0
    if event["records"] == "lines":
        for line in ctx.range_records(event):
            rid, value = line.split(b",")[:2]
            ids.append(int(rid))
            total += int(value)
    else:
        for rec in ctx.range_records(event):
            rid, value = struct.unpack("<qq", rec)
            ids.append(rid)
            total += value
    time.sleep(0.05)
    with open(LOG, "a") as f:
        f.write("ids %s\n" % " ".join(map(str, ids)))
        f.write("end %d %d %d\n" % (event["index"], ctx.attempt, time.monotonic_ns()))
    return {{"count": len(ids), "sum": total}}
"#,
        log = log.to_str().unwrap()
    )
}

const REDUCE: &str = r#"
def handler(event, ctx):
    count = total = 0
    for r in ctx.results(event["job"]):
        assert r["status"] == "succeeded", r
        count += r["output"]["count"]
        total += r["output"]["sum"]
    return {"children": event["count"], "count": count, "sum": total}
"#;

const START: &str = r#"
def handler(event, ctx):
    job = ctx.map_ranges(event["key"], "part", chunk_bytes=event["chunk"],
                         records=event["records"], then="reduce", max_in_flight=3)
    return job.wait(timeout=120)
"#;

/// Lines `id,value` of varying lengths, so range edges fall inside lines.
fn lines_blob(n: usize) -> (Vec<u8>, i64) {
    let mut out = Vec::new();
    let mut sum = 0i64;
    for i in 0..n {
        let value = (i as i64 * 7919) % 100_003 - 50_000;
        sum += value;
        // Every 97th line is longer than a range (4 KiB), so some ranges
        // hold no line start at all.
        let pad = if i % 97 == 0 {
            "x".repeat(5000)
        } else {
            "y".repeat(i % 23)
        };
        out.extend_from_slice(format!("{i},{value},{pad}\n").as_bytes());
    }
    (out, sum)
}

/// Fixed 16-byte records (id, value), little endian.
fn records_blob(n: usize) -> (Vec<u8>, i64) {
    let mut out = Vec::with_capacity(n * 16);
    let mut sum = 0i64;
    for i in 0..n {
        let value = (i as i64 * 104_729) % 1_000_003;
        sum += value;
        out.extend_from_slice(&(i as i64).to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    (out, sum)
}

/// Reads the children's log: every id once, and the most children that
/// ran at once (by their start and end times).
fn check_log(log: &Path, records: usize) -> usize {
    let text = std::fs::read_to_string(log).expect("the children's log");
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    // (index, attempt) -> (start, end)
    let mut spans: BTreeMap<(u64, u64), (u128, Option<u128>)> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("ids") => {
                for id in parts.filter(|p| !p.is_empty()) {
                    *seen.entry(id.parse().unwrap()).or_default() += 1;
                }
            }
            Some(what @ ("start" | "end")) => {
                let index: u64 = parts.next().unwrap().parse().unwrap();
                let attempt: u64 = parts.next().unwrap().parse().unwrap();
                let at: u128 = parts.next().unwrap().parse().unwrap();
                let span = spans.entry((index, attempt)).or_insert((at, None));
                if what == "end" {
                    span.1 = Some(at);
                }
            }
            other => panic!("unexpected log line {other:?}"),
        }
    }
    assert_eq!(seen.len(), records, "every record read");
    assert!(
        seen.values().all(|&n| n == 1),
        "records read twice: {:?}",
        seen.iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(seen.keys().next(), Some(&0));
    assert_eq!(seen.keys().last(), Some(&(records as i64 - 1)));
    let mut events: Vec<(u128, i32)> = Vec::new();
    for (&(index, attempt), &(start, end)) in &spans {
        let end = end.unwrap_or_else(|| panic!("child {index} attempt {attempt} never ended"));
        events.push((start, 1));
        events.push((end, -1));
    }
    // At equal times an end comes first (-1 sorts before 1).
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn run_ranges(c: &Client) {
    // In the system's temporary directory: functions may write there.
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("part.log");
    deploy(
        c,
        "name = \"part\"\nconcurrency = 8\nretries = 2",
        &child_py(&log),
    )
    .await;
    deploy(c, "name = \"reduce\"\nretries = 0", REDUCE).await;
    deploy(
        c,
        "name = \"start\"\nretries = 0\ntimeout = \"150s\"",
        START,
    )
    .await;

    // Lines in ranges of 40,000 bytes: many lines cut by range edges, and
    // (the blob being over 2 MiB) ranges across the Redis store's 1 MiB
    // chunk edges.
    let lines = 120_000;
    let (data, sum) = lines_blob(lines);
    assert!(data.len() > 2 << 20);
    c.put_blob("scan/lines.txt", data.clone(), Some("text/plain"))
        .await
        .expect("upload");
    let got = c
        .invoke(
            "start",
            &json!({"key": "scan/lines.txt", "chunk": 40_000, "records": "lines"}).to_string(),
        )
        .await
        .expect("invoke")
        .result
        .expect("the fan-in's result");
    let children = data.len().div_ceil(40_000) as u64;
    assert_eq!(
        got,
        json!({"children": children, "count": lines, "sum": sum})
    );
    let most = check_log(&log, lines);
    assert!(most <= 3, "{most} children ran at once; max_in_flight is 3");
    assert!(
        most >= 2,
        "children never overlapped: the limit is not exercised"
    );
    std::fs::remove_file(&log).unwrap();

    // Fixed-size records, a chunk that is not a multiple of 16 bytes.
    let (data, sum) = records_blob(50_000);
    c.put_blob("scan/recs.bin", data, None)
        .await
        .expect("upload");
    let got = c
        .invoke(
            "start",
            &json!({"key": "scan/recs.bin", "chunk": 99_999, "records": 16}).to_string(),
        )
        .await
        .expect("invoke")
        .result
        .expect("the fan-in's result");
    // 99,999 rounds down to 99,984 bytes (6,249 records) per child.
    assert_eq!(
        got,
        json!({"children": 50_000usize.div_ceil(6_249), "count": 50_000, "sum": sum})
    );
    let most = check_log(&log, 50_000);
    assert!(most <= 3, "{most} children ran at once; max_in_flight is 3");

    // Bad calls come back as the handler's failure, saying why.
    let bad = c
        .invoke(
            "start",
            &json!({"key": "scan/recs.bin", "chunk": 1000, "records": 7}).to_string(),
        )
        .await
        .expect("invoke")
        .result
        .expect_err("a record size that does not divide the blob");
    assert!(
        bad.error.message.contains("whole number of 7-byte records"),
        "{bad:?}"
    );
    let bad = c
        .invoke(
            "start",
            &json!({"key": "scan/none", "chunk": 1000, "records": "lines"}).to_string(),
        )
        .await
        .expect("invoke")
        .result
        .expect_err("an absent blob");
    assert!(
        bad.error.message.contains("blob_not_found") || bad.error.message.contains("not found"),
        "{bad:?}"
    );
}

const BLOB_USER: &str = r##"
import hashlib

def handler(event, ctx):
    b = ctx.blob(event["key"])
    whole = bytes(b.read())
    with b.open() as f:
        f.seek(5)
        head = f.read(10)
    board = ctx.blob_create("board", 500000, if_absent=True)
    ctx.blob("board").bitfield([{"op": "set", "type": "u4", "offset": "#%d" % event["pixel"], "value": 9}])
    pixel = ctx.blob("board").bitfield([{"op": "get", "type": "u4", "offset": "#%d" % event["pixel"]}])[0]
    put = ctx.blob_put("out/copy.bin", whole[:100], content_type="application/x-test")
    # A range of 2.5 MB the way a map_ranges child reads it.
    ranged = ctx.range_bytes({"key": event["key"], "offset": 7, "length": 2500000, "etag": b.etag})
    return {"size": b.size, "etag": b.etag, "sha": hashlib.sha256(whole).hexdigest(),
            "slice": head.hex(), "pixel": pixel, "board": board["size"], "put": put["size"],
            "ranged_sha": hashlib.sha256(ranged).hexdigest(), "ranged_type": type(ranged).__name__}
"##;

/// `mapped`: whether the store keeps the blob in one file on the node, so
/// that `range_bytes` maps it instead of copying.
async fn run_blob_user(c: &Client, mapped: bool) {
    deploy(c, "name = \"blob-user\"\nretries = 0", BLOB_USER).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let meta = c
        .put_blob("in/data.bin", data.clone(), None)
        .await
        .expect("upload");
    let got = c
        .invoke(
            "blob-user",
            &json!({"key": "in/data.bin", "pixel": 12345}).to_string(),
        )
        .await
        .expect("invoke")
        .result
        .expect("the handler's result");
    use sha2::Digest;
    let sha = hex_of(&sha2::Sha256::digest(&data));
    assert_eq!(got["size"], json!(3_000_000));
    assert_eq!(got["etag"], json!(meta.etag));
    assert_eq!(got["sha"], json!(sha));
    assert_eq!(got["slice"], json!(hex_of(&data[5..15])));
    assert_eq!(got["pixel"], json!(9));
    assert_eq!(got["board"], json!(500_000));
    assert_eq!(got["put"], json!(100));
    assert_eq!(
        got["ranged_sha"],
        json!(hex_of(&sha2::Sha256::digest(&data[7..2_500_007])))
    );
    let ranged_type = if mapped { "memoryview" } else { "bytearray" };
    assert_eq!(got["ranged_type"], json!(ranged_type));
    let bytes = c
        .blob_bytes("board", shoal_client::ByteRange::at(6172, 1))
        .await
        .expect("read the board");
    // Pixel 12345 is the low nibble of byte 6172.
    assert_eq!(bytes, vec![0x09]);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_ranges_on_the_embedded_store() {
    let node = TestNode::start();
    let c = node.client();
    run_ranges(&c).await;
    run_blob_user(&c, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_ranges_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    let c = node.client();
    run_ranges(&c).await;
    // Over 1 MiB chunks, the range is three cached chunk files: copied.
    run_blob_user(&c, false).await;
}

/// A child of the `max_jobs_in_flight` test: logs its job's label when it
/// starts and ends.
fn gated_py(log: &Path) -> String {
    format!(
        r#"
import time

def handler(event, ctx):
    with open({log:?}, "a") as f:
        f.write("start %s %d\n" % (event["job"], time.monotonic_ns()))
    time.sleep(0.1)
    with open({log:?}, "a") as f:
        f.write("end %s %d\n" % (event["job"], time.monotonic_ns()))
    return 1
"#,
        log = log.to_str().unwrap()
    )
}

/// `max_jobs_in_flight = 1`: three jobs sent at once run one after the
/// other, in the order they were made, each with its children in parallel.
async fn run_gated_jobs(c: &Client) {
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("gated.log");
    deploy(
        c,
        "name = \"gated\"\nconcurrency = 4\nretries = 0\nmax_jobs_in_flight = 1",
        &gated_py(&log),
    )
    .await;
    let mut jobs = Vec::new();
    for label in ["A", "B", "C"] {
        let events = (0..4).map(|i| json!({"job": label, "i": i})).collect();
        jobs.push(
            c.start_job("gated", events, None)
                .await
                .expect("start a job"),
        );
    }
    for job in &jobs {
        let view = common::wait_job(c, job, std::time::Duration::from_secs(60)).await;
        assert_eq!(view.counts.succeeded, 4, "{view:?}");
    }
    let text = std::fs::read_to_string(&log).expect("the log");
    // (first start, last end, most at once) per job.
    let mut spans: BTreeMap<String, (u128, u128)> = BTreeMap::new();
    let mut events: Vec<(u128, i32)> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let at: u128 = parts[2].parse().unwrap();
        let span = spans.entry(parts[1].to_string()).or_insert((u128::MAX, 0));
        if parts[0] == "start" {
            span.0 = span.0.min(at);
            events.push((at, 1));
        } else {
            span.1 = span.1.max(at);
            events.push((at, -1));
        }
    }
    let (a, b, cc) = (spans["A"], spans["B"], spans["C"]);
    assert!(a.1 <= b.0, "job B started before job A finished: {spans:?}");
    assert!(
        b.1 <= cc.0,
        "job C started before job B finished: {spans:?}"
    );
    // The children of one job still ran side by side.
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert!(most >= 2, "children of a job never overlapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_flight_are_bounded_on_the_embedded_store() {
    let node = TestNode::start();
    run_gated_jobs(&node.client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_flight_are_bounded_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    run_gated_jobs(&node.client()).await;
}

/// A child that hangs on its first attempt of job `a` (so the node running
/// it can be killed mid-job), logging its job's label when it starts and
/// ends, on every node alike.
fn hanging_py(log: &Path) -> String {
    format!(
        r#"
import time

def handler(event, ctx):
    with open({log:?}, "a") as f:
        f.write("start %s %d\n" % (event["job"], time.monotonic_ns()))
    if event["job"] == "a" and ctx.attempt == 1:
        time.sleep(60)
    time.sleep(0.1)
    with open({log:?}, "a") as f:
        f.write("end %s %d\n" % (event["job"], time.monotonic_ns()))
    return 1
"#,
        log = log.to_str().unwrap()
    )
}

/// Two nodes on one Redis, `max_jobs_in_flight = 1`: the node the jobs were
/// made on (which takes the first job's gate) is killed with SIGKILL while
/// that job's children hang. Its leases lapse, the other node takes over
/// the gate and the children, and the second job still starts only after
/// the first has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gate_outlives_the_node_holding_it() {
    let redis = RedisServer::start(&["--appendfsync", "always"]);
    let node = || TestNode::start_with(&["--store", &redis.url(), "--lease-margin", "2s"]);
    let mut first = node();
    let second = node();
    let (c1, c2) = (first.client(), second.client());
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("gated.log");
    deploy(
        &c1,
        "name = \"gated\"\nconcurrency = 4\nretries = 2\nretry_delay = \"1s\"\ntimeout = \"5s\"\nmax_jobs_in_flight = 1",
        &hanging_py(&log),
    )
    .await;
    let spec = |label: &str| (0..4).map(|i| json!({"job": label, "i": i})).collect();
    let a = c1.start_job("gated", spec("a"), None).await.expect("job a");
    let b = c1.start_job("gated", spec("b"), None).await.expect("job b");
    // Job a's children are running (and hanging) somewhere: kill the node
    // that made both jobs.
    common::until(
        "job a's children to start",
        std::time::Duration::from_secs(30),
        async || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().filter(|l| l.starts_with("start a")).count() >= 4)
                .unwrap_or(false)
        },
    )
    .await;
    first.kill9();
    for job in [&a, &b] {
        let view = common::wait_job(&c2, job, std::time::Duration::from_secs(90)).await;
        assert_eq!(view.counts.succeeded, 4, "{view:?}");
    }
    let text = std::fs::read_to_string(&log).expect("the log");
    let times = |what: &str| -> Vec<u128> {
        text.lines()
            .filter(|l| l.starts_with(what))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let a_end = times("end a").into_iter().max().expect("job a ended");
    let b_start = times("start b").into_iter().min().expect("job b started");
    assert_eq!(
        times("end a").len(),
        4,
        "each of a's children finished once"
    );
    assert!(a_end <= b_start, "job b started before job a finished");
}
