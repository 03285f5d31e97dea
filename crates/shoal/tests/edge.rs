//! End to end: the HTTP edge under hostile or heavy clients — big streamed
//! writes, many idle connections, slow headers, connections over the cap,
//! and queries whose client goes away.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TestNode, deploy};

/// The node's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM kB");
    kb * 1024
}

/// About `bytes` of NDJSON documents with ids.
fn ndjson_of(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 1024);
    let mut i = 0u64;
    while out.len() < bytes {
        let line = format!(
            "{{\"id\":\"d{i:08}\",\"n\":{i},\"name\":\"item number {i}\",\"tags\":[\"a\",\"b\",\"c\"],\"pad\":\"{}\"}}\n",
            "x".repeat(40 + (i % 50) as usize)
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_mb_ndjson_write_keeps_the_node_small() {
    let node = TestNode::start();
    let c = node.client();
    let body = ndjson_of(30 * 1024 * 1024);
    let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
    let before = peak_rss(node.pid());
    let written = c.write_docs("big", body, true, false).await.expect("write");
    assert_eq!(written.written, lines);
    let peak = peak_rss(node.pid());
    eprintln!(
        "30 MB NDJSON write: {lines} documents; node peak RSS {} MiB (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
    let cat = c.category("big").await.unwrap();
    assert_eq!(cat.docs, lines);

    // 30 MB of the smallest documents (~3.9 million): a write holds its
    // documents until it commits, so more than --max-write-docs is refused
    // as soon as the body passes the limit, and nothing is written.
    let tiny = b"{\"a\":1}\n".repeat(30 * 1024 * 1024 / 8);
    let err = c
        .write_docs("tiny", tiny, true, false)
        .await
        .expect_err("3.9 million documents in one write");
    assert_eq!(err.status(), Some(413), "{err}");
    assert!(err.to_string().contains("500000 documents"), "{err}");
    // A write at the limit: half a million documents.
    let most = b"{\"a\":1}\n".repeat(500_000);
    let written = c.write_docs("tiny", most, true, false).await.unwrap();
    assert_eq!(written.written, 500_000);
    let peak = peak_rss(node.pid());
    eprintln!(
        "then 30 MB of tiny documents (refused) and 500,000 tiny documents: node peak RSS {} MiB",
        peak >> 20
    );
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
}

fn addr(node: &TestNode) -> SocketAddr {
    node.url
        .trim_start_matches("http://")
        .parse()
        .expect("node address")
}

/// Sends one request on a new connection and reads the whole answer
/// (`Connection: close`): (status, body, time taken).
fn raw_request(addr: SocketAddr, request: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read answer");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body, took)
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";

/// Lets this test process open many sockets.
fn raise_own_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(c), Some(m)) = (limit.current, limit.maximum)
        && c < m
    {
        limit.current = Some(m);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

#[test]
fn healthz_answers_fast_beside_5000_idle_connections() {
    raise_own_file_limit();
    let node = TestNode::start_with(&["--max-connections", "6000"]);
    let addr = addr(&node);
    let idle: Vec<TcpStream> = (0..5000)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // Let the node accept them all.
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for _ in 0..20 {
        let (status, body, took) = raw_request(addr, HEALTHZ);
        assert_eq!(status, 200, "{body}");
        times.push(took);
    }
    times.sort();
    eprintln!(
        "/healthz beside {} idle connections: median {:?}, max {:?}",
        idle.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(
        times[times.len() / 2] < Duration::from_millis(50),
        "{times:?}"
    );
    assert!(
        times[times.len() - 1] < Duration::from_millis(250),
        "{times:?}"
    );
    // The idle connections are still open (none was refused or cut).
    let mut probe = [0u8; 1];
    let mut open = 0;
    for s in &idle {
        s.set_nonblocking(true).unwrap();
        if matches!((&*s).read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    assert_eq!(open, idle.len());
}

/// How long until the node closes `s` (reads until EOF or reset).
fn time_to_close(mut s: &TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn slow_heads_and_idle_connections_are_cut_off() {
    let node = TestNode::start_with(&["--header-timeout", "2s", "--http-idle-timeout", "5s"]);
    let addr = addr(&node);

    // Slowloris: a request head sent one byte per second.
    let slow = TcpStream::connect(addr).unwrap();
    let writer = slow.try_clone().unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        for b in b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if w.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    let closed =
        time_to_close(&slow, Duration::from_secs(20)).expect("the slow head was not cut off");
    eprintln!("slowloris cut off after {closed:?}");
    assert!(closed >= Duration::from_millis(1500), "{closed:?}");
    assert!(closed < Duration::from_millis(3500), "{closed:?}");
    let _ = started;
    drop(slow);
    let _ = trickle.join();

    // An idle connection (nothing sent) lasts the idle timeout, not less.
    let idle = TcpStream::connect(addr).unwrap();
    let closed = time_to_close(&idle, Duration::from_secs(20)).expect("the idle connection stayed");
    eprintln!("idle connection closed after {closed:?}");
    assert!(closed >= Duration::from_millis(4500), "{closed:?}");
    assert!(closed < Duration::from_secs(8), "{closed:?}");

    // A keep-alive connection between requests is idle too; while a request
    // is answered it is not.
    let mut ka = TcpStream::connect(addr).unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = ka.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed =
        time_to_close(&ka, Duration::from_secs(20)).expect("the kept-alive connection stayed");
    assert!(closed >= Duration::from_millis(4500), "{closed:?}");
    assert!(closed < Duration::from_secs(8), "{closed:?}");

    // Meanwhile the node answers normally.
    assert_eq!(raw_request(addr, HEALTHZ).0, 200);
}

#[test]
fn a_silent_body_times_out() {
    let node = TestNode::start_with(&["--body-timeout", "1s"]);
    let addr = addr(&node);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "POST /v1/categories/slow/docs HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100\r\n\r\n{{\"id\": \"a\"}}\n",
        node.token
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("nothing was written"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn connections_over_the_cap_get_503() {
    let node = TestNode::start_with(&["--max-connections", "20"]);
    let addr = addr(&node);
    let held: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let (status, body, _) = raw_request(addr, HEALTHZ);
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(v["error"]["code"], "unavailable", "{body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("20 connections"),
            "{body}"
        );
    }
    // Room again once connections close.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = raw_request(addr, HEALTHZ);
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_whose_client_goes_away_stops_within_a_second() {
    let node = TestNode::start();
    let c = node.client();
    let trace = tempfile::NamedTempFile::new().unwrap();
    let path = trace.path().canonicalize().unwrap();
    // Slow map, one line per document in the trace file; reduce-only, so
    // nothing is sent to the client until the end.
    let code = format!(
        "import time\n\ndef map(doc):\n    with open({:?}, 'a') as f:\n        f.write('x\\n')\n    time.sleep(0.02)\n    return 1\n\ndef reduce(a, b):\n    return a + b\n",
        path.display().to_string()
    );
    deploy(&c, "name = \"slow\"", &code).await;
    c.create_category("many", Some(2)).await.unwrap();
    let mut body = Vec::new();
    for i in 0..4000 {
        body.extend_from_slice(format!("{{\"id\": \"d{i}\"}}\n").as_bytes());
    }
    c.write_docs("many", body, true, false).await.unwrap();

    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for sse in [false, true] {
        std::fs::write(&path, "").unwrap();
        let q = c.query("many", "slow", false, sse).await.unwrap();
        // Wait until the map runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines(&path) < 20 {
            assert!(Instant::now() < deadline, "the query never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // /healthz answers while the query runs.
        let mut times: Vec<Duration> = (0..5)
            .map(|_| raw_request(addr(&node), HEALTHZ).2)
            .collect();
        times.sort();
        assert!(
            times[2] < Duration::from_millis(50),
            "/healthz during a query: {times:?}"
        );
        drop(q);
        let dropped = Instant::now();
        // The trace stops growing within a second.
        let mut last = lines(&path);
        let mut stopped_at = dropped;
        while dropped.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let n = lines(&path);
            if n != last {
                last = n;
                stopped_at = Instant::now();
            }
        }
        let stopped = stopped_at - dropped;
        eprintln!(
            "sse={sse}: the query stopped {stopped:?} after its client went away ({last} documents mapped of 4000)"
        );
        assert!(
            stopped < Duration::from_secs(1),
            "still mapping {stopped:?} after the client left"
        );
        assert!(last < 1000, "{last}");
        assert_eq!(raw_request(addr(&node), HEALTHZ).0, 200);
    }
    // The workers are still usable.
    c.write_docs("few", b"{\"id\": 1}\n{\"id\": 2}\n".to_vec(), true, false)
        .await
        .unwrap();
    let mut q = c.query("few", "slow", false, false).await.unwrap();
    let line = q.next_line().await.unwrap().expect("a line");
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["done"]["result"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_query_output_read_slowly_holds_little_in_the_node() {
    let node = TestNode::start();
    let c = node.client();
    // 20,000 documents, each mapped to 10 KB: 200 MB of output.
    deploy(
        &c,
        "name = \"wide\"",
        "def map(doc):\n    return 'x' * 10000\n",
    )
    .await;
    let mut body = Vec::new();
    for i in 0..20_000 {
        body.extend_from_slice(format!("{{\"id\": \"d{i:05}\"}}\n").as_bytes());
    }
    c.write_docs("wide", body, true, false).await.unwrap();
    let before = peak_rss(node.pid());
    let mut q = c.query("wide", "wide", false, false).await.unwrap();
    // The client stalls: the node must not buffer the output meanwhile.
    let first = q.next_line().await.unwrap().expect("a value");
    assert!(first.len() > 10_000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stalled = peak_rss(node.pid());
    // Then reads it all.
    let mut values = 1u64;
    let mut last = Vec::new();
    while let Some(line) = q.next_line().await.unwrap() {
        if line.starts_with(b"{\"value\"") {
            values += 1;
        } else {
            last = line;
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(v["done"]["values"], 20_000, "{v}");
    assert_eq!(values, 20_000);
    let peak = peak_rss(node.pid());
    eprintln!(
        "200 MB of query output: node peak RSS {} MiB before, {} MiB while the client stalled, {} MiB after reading it all",
        before >> 20,
        stalled >> 20,
        peak >> 20
    );
    assert!(peak < before + (100 << 20), "peak {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_with_atomic_false_holds_one_batch_at_a_time() {
    let node = TestNode::start();
    let c = node.client();
    // 1.3 million tiny documents: over the atomic cap, fine in batches.
    let tiny = b"{\"a\":1}\n".repeat(10 * 1024 * 1024 / 8);
    let n = tiny.len() / 8;
    let before = peak_rss(node.pid());
    let (status, text) = c
        .raw(
            "POST",
            "/v1/categories/bulk/docs?atomic=false",
            Some("application/x-ndjson"),
            tiny,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["written"], n as u64, "{text}");
    assert!(v.get("ids").is_none_or(|ids| ids.is_null()), "{text}");
    assert_eq!(c.category("bulk").await.unwrap().docs, n as u64);
    let peak = peak_rss(node.pid());
    eprintln!(
        "10 MB of {n} tiny documents with atomic=false: node peak RSS {} MiB (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(peak < 150 << 20, "peak RSS {} MiB", peak >> 20);

    // A bad document: the batches before it stay, and the answer says so.
    let mut body = Vec::new();
    for i in 0..25_000 {
        if i == 22_000 {
            body.extend_from_slice(b"{\"id\": [1]}\n");
        } else {
            body.extend_from_slice(format!("{{\"id\": \"p{i}\"}}\n").as_bytes());
        }
    }
    let (status, text) = c
        .raw(
            "POST",
            "/v1/categories/part/docs?atomic=false",
            Some("application/x-ndjson"),
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 22001 (document 22001)"), "{text}");
    // Whole batches of at least 10,000 documents each, all before the bad one.
    let said: u64 = text
        .split("the first ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of written documents: {text}"));
    assert!((20_000..22_000).contains(&said), "{text}");
    assert_eq!(c.category("part").await.unwrap().docs, said);
    // The same body written atomically writes nothing.
    let (status, text) = c
        .raw(
            "POST",
            "/v1/categories/whole/docs",
            Some("application/x-ndjson"),
            body,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("nothing was written") || !text.contains("were written"),
        "{text}"
    );
    assert!(c.category("whole").await.is_err());
}
