//! End to end: blobs on a real `shoal serve`, on the embedded store and on
//! a real `redis-server`: a multi-MiB upload by the CLI read back whole and
//! by ranges (over raw HTTP, the client and the CLI; suffix ranges, past
//! the end, malformed), uploads cut mid-stream and a `kill -9` mid-upload
//! leave no blob (nor, on the embedded store, a leftover file), fixed-size
//! blobs and bitfield batches (a failing batch changes nothing), listing
//! and deleting with the CLI, the CLI's memory while it streams, and the
//! Python client's blob methods.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestNode, repo_root};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shoal_client::protocol::{BitfieldOp, ErrorCode};
use shoal_client::{ByteRange, Client};
use shoal_store_redis::testing::RedisServer;

/// 5 MiB and a bit: six 1 MiB chunks on Redis, the last one partial.
const BIG: usize = (5 << 20) + 12_345;

/// Bytes that differ from chunk to chunk (a misplaced chunk shows).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stdout of a command that must succeed.
fn ok(out: &Output) -> Vec<u8> {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    out.stdout.clone()
}

fn ok_json(out: &Output) -> Value {
    let stdout = ok(out);
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&stdout)))
}

/// The `{"error": {"code"}}` of a failed `--json` command.
fn err_code(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", text(&out.stderr)));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// Runs the CLI with binary stdin (the node's own `cli` takes text).
fn cli_bytes(node: &TestNode, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("shoal output");
    writer.join().expect("stdin writer");
    out
}

/// Waits until the node is streaming an upload into its store: over a MiB
/// more in Redis than `baseline` (its `used_memory` before), or a temporary
/// file of a MiB or more on the embedded store.
fn wait_until_streaming(node: &TestNode, redis: Option<&RedisServer>, baseline: Option<u64>) {
    match (redis, baseline) {
        (Some(r), Some(b)) => wait_for(
            "the upload's first chunks in Redis",
            Duration::from_secs(30),
            || redis_used_memory(r) > b + (1 << 20),
        ),
        _ => wait_for(
            "the upload's temporary file",
            Duration::from_secs(30),
            || {
                files_under(&tmp_dir(node))
                    .iter()
                    .any(|(_, n)| *n >= 1 << 20)
            },
        ),
    }
}

fn api_error<T: std::fmt::Debug>(r: shoal_client::Result<T>) -> (u16, ErrorCode, String) {
    match r {
        Err(shoal_client::Error::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("want an API error, got {other:?}"),
    }
}

// ---- raw HTTP: exact headers in, exact status and headers out ----

struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON error ({e}): {}", text(&self.body)));
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

fn address(node: &TestNode) -> String {
    node.url.trim_start_matches("http://").to_string()
}

/// One request on its own connection (`Connection: close`), read to the end.
fn raw(node: &TestNode, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
    let mut s = TcpStream::connect(address(node)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
        address(node),
        node.token
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read answer");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {}", text(&answer)));
    let head = text(&answer[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = answer[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(text(&b[..eol]).split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// An upload whose body the test sends by hand, to cut it where it likes.
struct RawUpload {
    stream: TcpStream,
    chunked: bool,
    sent: usize,
}

impl RawUpload {
    /// Sends the head of `PUT /v1/blobs/{key}`: chunked, or announcing
    /// `content_length` bytes.
    fn start(node: &TestNode, path_key: &str, content_length: Option<usize>) -> RawUpload {
        let mut stream = TcpStream::connect(address(node)).expect("connect");
        let mut head = format!(
            "PUT /v1/blobs/{path_key} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n",
            address(node),
            node.token
        );
        match content_length {
            Some(n) => head += &format!("Content-Length: {n}\r\n\r\n"),
            None => head += "Transfer-Encoding: chunked\r\n\r\n",
        }
        stream.write_all(head.as_bytes()).expect("send head");
        RawUpload {
            stream,
            chunked: content_length.is_none(),
            sent: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.chunked {
            let mut piece = format!("{:x}\r\n", bytes.len()).into_bytes();
            piece.extend_from_slice(bytes);
            piece.extend_from_slice(b"\r\n");
            self.stream.write_all(&piece).expect("send chunk");
        } else {
            self.stream.write_all(bytes).expect("send body");
        }
        self.sent += bytes.len();
    }

    /// Closes the connection without finishing the body.
    fn cut(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Files under `dir` (recursively); none when it does not exist.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => out.extend(files_under(&path)),
            Ok(m) => out.push((path, m.len())),
            Err(_) => {}
        }
    }
    out
}

fn tmp_dir(node: &TestNode) -> PathBuf {
    node.data_dir.join("blobs").join("tmp")
}

/// The content files of uploaded blobs on the embedded store (not the
/// uploads in progress).
fn content_files(node: &TestNode) -> Vec<PathBuf> {
    let tmp = tmp_dir(node);
    files_under(&node.data_dir.join("blobs"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.starts_with(&tmp))
        .collect()
}

fn redis_used_memory(redis: &RedisServer) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "info", "memory"])
        .output()
        .expect("run redis-cli");
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in {}", text(&out.stdout)))
}

/// Polls `done` until it holds, failing after `within`.
fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the scenarios ----

/// A multi-MiB upload by the CLI, read back whole and by ranges.
async fn uploads_and_ranges(node: &TestNode) {
    let c = node.client();
    let dir = tempfile::tempdir().unwrap();
    let big = data(BIG, 1);
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &big).unwrap();
    let out = node.cli(&[
        "--json",
        "blobs",
        "put",
        "big/data.bin",
        src.to_str().unwrap(),
        "--content-type",
        "application/x-rec",
    ]);
    let view = ok_json(&out);
    assert_eq!(text(&out.stderr), "", "no progress bar on a pipe");
    assert_eq!(view["key"], "big/data.bin");
    assert_eq!(view["size"], BIG as u64);
    assert_eq!(view["sha256"], sha256_hex(&big));
    assert_eq!(view["etag"], view["sha256"]);
    assert_eq!(view["fixed_size"], false);
    assert_eq!(view["content_type"], "application/x-rec");
    let etag = view["etag"].as_str().unwrap().to_string();

    // Whole, by the client, in memory and into a file.
    assert!(c.blob_bytes("big/data.bin", None).await.unwrap() == big);
    let copy = dir.path().join("copy.bin");
    let n = c
        .download_blob("big/data.bin", None, &copy, None)
        .await
        .unwrap();
    assert_eq!(n, BIG as u64);
    assert!(std::fs::read(&copy).unwrap() == big);
    let head = c.blob_head("big/data.bin").await.unwrap();
    assert_eq!(
        (head.size, head.etag.as_str(), head.content_type.as_str()),
        (BIG as u64, etag.as_str(), "application/x-rec")
    );
    let meta = c.blob_meta("big/data.bin").await.unwrap();
    assert_eq!(meta.sha256.as_deref(), Some(etag.as_str()));

    // Ranges over HTTP, header by header.
    let path = "/v1/blobs/big%2Fdata.bin";
    let size = BIG as u64;
    let mib = 1u64 << 20;
    let cases: Vec<(String, u64, u64)> = vec![
        ("bytes=0-99".into(), 0, 99),
        // Across two chunk edges (1 MiB and 2 MiB).
        (
            format!("bytes={}-{}", mib - 10, 2 * mib + 10),
            mib - 10,
            2 * mib + 10,
        ),
        // One byte on each side of an edge.
        (format!("bytes={}-{}", mib - 1, mib), mib - 1, mib),
        (format!("bytes={}-", size - 100), size - 100, size - 1),
        (
            format!("bytes={}-{}", size - 5, size + 1000),
            size - 5,
            size - 1,
        ),
        ("bytes=-1000".into(), size - 1000, size - 1),
        ("bytes=-99999999".into(), 0, size - 1),
    ];
    for (range, start, end) in &cases {
        let r = raw(node, "GET", path, &[("Range", range)], b"");
        assert_eq!(r.status, 206, "{range}: {}", text(&r.body));
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert!(
            r.body == big[*start as usize..=*end as usize],
            "{range}: wrong bytes"
        );
        assert_eq!(r.header("etag"), Some(format!("\"{etag}\"").as_str()));
    }
    // Past the end: 416 naming the size.
    for range in [
        format!("bytes={size}-"),
        format!("bytes={size}-{}", size + 10),
        "bytes=-0".to_string(),
    ] {
        let r = raw(node, "GET", path, &[("Range", &range)], b"");
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
        assert_eq!(r.code(), "range_not_satisfiable");
    }
    // Malformed, or several ranges: 400.
    for range in [
        "bytes=abc",
        "bytes=9-2",
        "bytes=0-1,5-6",
        "bytes=1",
        "bytes=--5",
    ] {
        let r = raw(node, "GET", path, &[("Range", range)], b"");
        assert_eq!(r.status, 400, "{range}: {}", text(&r.body));
        assert_eq!(r.code(), "invalid_input");
    }
    // If-Range: the range only while the tag matches; If-None-Match: 304.
    let quoted = format!("\"{etag}\"");
    let r = raw(
        node,
        "GET",
        path,
        &[("Range", "bytes=0-9"), ("If-Range", &quoted)],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (206, 10));
    let r = raw(
        node,
        "GET",
        path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.body == big, "If-Range not matching: the whole blob");
    let r = raw(node, "GET", path, &[("If-None-Match", &quoted)], b"");
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = raw(node, "HEAD", path, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));

    // Ranges by the client.
    let last = c
        .blob_bytes("big/data.bin", Some(ByteRange::Last(10)))
        .await
        .unwrap();
    assert!(last == big[BIG - 10..]);
    let d = c
        .get_blob("big/data.bin", ByteRange::at(3 * mib - 3, 7))
        .await
        .unwrap();
    assert_eq!(
        (d.size, d.length, d.range),
        (size, 7, Some((3 * mib - 3, 3 * mib + 3)))
    );
    assert!(d.bytes().await.unwrap() == big[(3 * mib - 3) as usize..(3 * mib + 4) as usize]);
    let (status, code, _) = api_error(
        c.get_blob("big/data.bin", Some(ByteRange::From(size)))
            .await
            .map(|_| ()),
    );
    assert_eq!((status, code), (416, ErrorCode::RangeNotSatisfiable));
    let (status, code, _) = api_error(c.get_blob("no/such", None).await.map(|_| ()));
    assert_eq!((status, code), (404, ErrorCode::BlobNotFound));
    let (status, code, _) = api_error(c.blob_head("no/such").await);
    assert_eq!((status, code), (404, ErrorCode::BlobNotFound));

    // Ranges by the CLI: into a file, to stdout, --offset/--length.
    let part = dir.path().join("part.bin");
    let range = format!("{}-{}", mib - 7, 4 * mib + 7);
    let v = ok_json(&node.cli(&[
        "--json",
        "blobs",
        "get",
        "big/data.bin",
        part.to_str().unwrap(),
        "--range",
        &range,
    ]));
    assert_eq!(v["bytes"], 3 * mib + 15);
    assert_eq!(v["size"], size);
    assert!(std::fs::read(&part).unwrap() == big[(mib - 7) as usize..=(4 * mib + 7) as usize]);
    let whole = ok(&node.cli(&["blobs", "get", "big/data.bin"]));
    assert!(whole == big, "get to stdout: the whole blob");
    // A reader that goes away early (`| head -c 10`): exit 0, quietly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["blobs", "get", "big/data.bin"])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    let mut first = [0u8; 10];
    let mut reader = child.stdout.take().expect("stdout");
    reader.read_exact(&mut first).expect("the first bytes");
    drop(reader);
    let out = child.wait_with_output().expect("shoal output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    assert!(first[..] == big[..10]);
    let piece = ok(&node.cli(&[
        "blobs",
        "get",
        "big/data.bin",
        "-",
        "--offset",
        "5000000",
        "--length",
        "50",
    ]));
    assert!(piece == big[5_000_000..5_000_050]);
    let tail = ok(&node.cli(&["blobs", "get", "big/data.bin", "-", "--range", "-3"]));
    assert!(tail == big[BIG - 3..]);
    // Errors: past the end, malformed, missing blob, missing file.
    let past = format!("{size}-");
    let out = node.cli(&[
        "--json",
        "blobs",
        "get",
        "big/data.bin",
        "-",
        "--range",
        &past,
    ]);
    assert_eq!(err_code(&out), "range_not_satisfiable");
    let out = node.cli(&["blobs", "get", "big/data.bin", "-", "--range", &past]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("({size} bytes)")),
        "{}",
        text(&out.stderr)
    );
    let out = node.cli(&[
        "--json",
        "blobs",
        "get",
        "big/data.bin",
        "-",
        "--range",
        "x-1",
    ]);
    assert_eq!(err_code(&out), "invalid_input");
    let nowhere = dir.path().join("nowhere.bin");
    let out = node.cli(&[
        "--json",
        "blobs",
        "get",
        "no/such",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(err_code(&out), "blob_not_found");
    assert!(!nowhere.exists(), "a failed download writes no file");
    let out = node.cli(&["blobs", "put", "x", "/no/such/file.bin"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot open"),
        "{}",
        text(&out.stderr)
    );
    let (status, code, _) = api_error(c.blob_meta("x").await);
    assert_eq!((status, code), (404, ErrorCode::BlobNotFound));

    // From stdin, binary, with a key that needs escaping.
    let small = data(300_000, 2);
    let v = ok_json(&cli_bytes(
        node,
        &["--json", "blobs", "put", "stdin/a b?#%.bin", "-"],
        &small,
    ));
    assert_eq!(v["key"], "stdin/a b?#%.bin");
    assert_eq!(v["sha256"], sha256_hex(&small));
    assert!(c.blob_bytes("stdin/a b?#%.bin", None).await.unwrap() == small);
    // The same bytes again: a new version, the same ETag.
    let again = c
        .put_blob("stdin/a b?#%.bin", small.clone(), None)
        .await
        .unwrap();
    assert_eq!(again.etag, v["etag"].as_str().unwrap());
    assert!(again.version > v["version"].as_u64().unwrap());
}

/// Uploads cut mid-stream store nothing, and keep the blob they would
/// have replaced.
async fn cut_uploads_store_nothing(node: &TestNode, redis: Option<&RedisServer>) {
    let c = node.client();
    let old = data(10_000, 3);
    c.put_blob("cut/replaced", old.clone(), None).await.unwrap();
    let piece = data(256 << 10, 4);
    for (key, path_key, length) in [
        ("cut/chunked", "cut%2Fchunked", None),
        ("cut/replaced", "cut%2Freplaced", None),
        ("cut/short", "cut%2Fshort", Some(10 << 20)),
    ] {
        let baseline = redis.map(redis_used_memory);
        let mut up = RawUpload::start(node, path_key, length);
        for _ in 0..12 {
            up.send(&piece);
        }
        // The node is streaming it into the store (3 MiB sent).
        wait_until_streaming(node, redis, baseline);
        up.cut();
        // The node drops the upload, and what it wrote goes with it.
        match (redis, baseline) {
            (Some(r), Some(b)) => wait_for(
                "the cut upload's chunks removed from Redis",
                Duration::from_secs(30),
                || redis_used_memory(r) < b + (512 << 10),
            ),
            _ => wait_for(
                "the cut upload's temporary file removed",
                Duration::from_secs(30),
                || files_under(&tmp_dir(node)).is_empty(),
            ),
        }
        // Nothing appears, now or a little later.
        for _ in 0..10 {
            match key {
                "cut/replaced" => {
                    assert!(c.blob_bytes(key, None).await.unwrap() == old, "{key}");
                }
                _ => {
                    let (status, _, _) = api_error(c.blob_meta(key).await);
                    assert_eq!(status, 404, "{key} exists after a cut upload");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let listed: Vec<String> = c
        .list_blobs("cut/", None, 100)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(listed, vec!["cut/replaced".to_string()]);
    if redis.is_none() {
        assert_eq!(content_files(node).len(), 1, "{:?}", content_files(node));
    }
}

/// `kill -9` of the node while an upload streams: after a restart, no
/// blob, the blob uploaded before intact, and (embedded) no file left.
async fn kill9_mid_upload(node: &mut TestNode, redis: Option<&RedisServer>) {
    let keep = data(2 << 20, 5);
    node.client()
        .put_blob("k/keep", keep.clone(), Some("text/plain"))
        .await
        .unwrap();
    let baseline = redis.map(redis_used_memory);
    let mut up = RawUpload::start(node, "k%2Fdoomed", None);
    let piece = data(256 << 10, 6);
    for _ in 0..12 {
        up.send(&piece);
    }
    wait_until_streaming(node, redis, baseline);
    node.kill9_and_restart();
    drop(up);
    let c = node.client();
    let (status, code, _) = api_error(c.blob_meta("k/doomed").await);
    assert_eq!((status, code), (404, ErrorCode::BlobNotFound));
    let (status, _, _) = api_error(c.get_blob("k/doomed", None).await.map(|_| ()));
    assert_eq!(status, 404);
    assert!(c.blob_bytes("k/keep", None).await.unwrap() == keep);
    let listed: Vec<String> = c
        .list_blobs("k/", None, 100)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(listed, vec!["k/keep".to_string()]);
    if redis.is_none() {
        assert_eq!(
            files_under(&tmp_dir(node)),
            vec![],
            "uploads in progress at the kill are removed at restart"
        );
        assert_eq!(content_files(node).len(), 1, "{:?}", content_files(node));
    }
    // The node takes uploads again.
    let after = data(1 << 20, 7);
    c.put_blob("k/doomed", after.clone(), None).await.unwrap();
    assert!(c.blob_bytes("k/doomed", None).await.unwrap() == after);
}

fn op(v: Value) -> BitfieldOp {
    serde_json::from_value(v).expect("an operation")
}

/// The pixel board of seed 001: 1000×1000, 4 bits a pixel.
fn pixel(x: u64, y: u64) -> String {
    format!("#{}", y * 1000 + x)
}

/// Fixed-size blobs and bitfield batches through the HTTP client.
async fn fixed_size_over_http(c: &Client) {
    let b = c.create_fixed_blob("board", 500_000, false).await.unwrap();
    assert_eq!(
        (b.size, b.fixed_size, b.sha256.as_deref()),
        (500_000, true, None)
    );
    assert_eq!(b.etag, format!("v{}", b.version));
    let r = c
        .bitfield(
            "board",
            vec![
                op(json!({"op": "set", "type": "u4", "offset": pixel(3, 2), "value": 7})),
                op(json!({"op": "get", "type": "u4", "offset": pixel(3, 2)})),
                op(json!({"op": "incrby", "type": "u4", "offset": pixel(3, 2), "by": 100, "overflow": "sat"})),
                op(json!({"op": "incrby", "type": "u4", "offset": pixel(3, 2), "by": 1, "overflow": "fail"})),
                op(json!({"op": "set", "type": "u4", "offset": pixel(999, 999), "value": 9})),
                op(json!({"op": "incrby", "type": "i8", "offset": 0, "by": -3})),
                op(json!({"op": "write_at", "offset": 10, "data_base64": "AQID"})),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        r.results,
        vec![Some(0), Some(7), Some(15), None, Some(0), Some(-3), None]
    );
    assert!(r.version > b.version);
    assert_eq!(r.etag, format!("v{}", r.version));
    // The bytes: pixel 2003 is the low nibble of byte 1001, pixel 999999
    // that of the last byte; i8 at bit 0 is byte 0.
    let bytes = c.blob_bytes("board", None).await.unwrap();
    assert_eq!(bytes.len(), 500_000);
    assert_eq!(bytes[1001], 0x0F);
    assert_eq!(bytes[499_999], 0x09);
    assert_eq!(bytes[0], 0xFD);
    assert_eq!(&bytes[10..13], &[1, 2, 3]);
    assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 6);
    assert_eq!(
        c.blob_bytes("board", Some(ByteRange::at(1001, 1).unwrap()))
            .await
            .unwrap(),
        vec![0x0F]
    );

    // A failing batch changes nothing: neither its valid first op nor the
    // version.
    for bad in [
        vec![
            op(json!({"op": "set", "type": "u4", "offset": "#5", "value": 3})),
            op(json!({"op": "set", "type": "u4", "offset": "#1000000", "value": 1})),
        ],
        vec![
            op(json!({"op": "set", "type": "u4", "offset": "#5", "value": 3})),
            op(json!({"op": "write_at", "offset": 499_999, "data_base64": "AQI="})),
        ],
        vec![
            op(json!({"op": "set", "type": "u4", "offset": "#5", "value": 3})),
            op(json!({"op": "set", "type": "u64", "offset": 0, "value": 1})),
        ],
    ] {
        let (status, code, message) = api_error(c.bitfield("board", bad).await);
        assert_eq!((status, code), (400, ErrorCode::InvalidInput), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        let meta = c.blob_meta("board").await.unwrap();
        assert_eq!(meta.version, r.version, "a refused batch made a version");
        assert_eq!(c.blob_bytes("board", None).await.unwrap(), bytes);
    }

    // If absent: kept, 412; bitfield on an uploaded or missing blob.
    let (status, code, _) = api_error(c.create_fixed_blob("board", 10, true).await);
    assert_eq!((status, code), (412, ErrorCode::PreconditionFailed));
    assert_eq!(c.blob_bytes("board", None).await.unwrap(), bytes);
    c.put_blob("plain", b"abc".to_vec(), None).await.unwrap();
    let get = || vec![op(json!({"op": "get", "type": "u4", "offset": 0}))];
    let (status, code, _) = api_error(c.bitfield("plain", get()).await);
    assert_eq!((status, code), (409, ErrorCode::NotFixedSize));
    let (status, code, _) = api_error(c.bitfield("no-board", get()).await);
    assert_eq!((status, code), (404, ErrorCode::BlobNotFound));
    // Created again without if_absent: zero-filled anew.
    c.create_fixed_blob("board", 500_000, false).await.unwrap();
    assert!(
        c.blob_bytes("board", None)
            .await
            .unwrap()
            .iter()
            .all(|b| *b == 0)
    );
}

/// The same through the CLI.
fn fixed_size_over_the_cli(node: &TestNode) {
    let v = ok_json(&node.cli(&["--json", "blobs", "create", "board2", "--size", "500000"]));
    assert_eq!(
        (v["size"].as_u64(), v["fixed_size"].as_bool()),
        (Some(500_000), Some(true))
    );
    let out = node.cli(&[
        "--json",
        "blobs",
        "create",
        "board2",
        "--size",
        "10",
        "--if-absent",
    ]);
    assert_eq!(err_code(&out), "precondition_failed");
    let at = pixel(1, 1);
    let set = format!("set u4 {at} 7");
    let incr = format!("overflow sat incrby u4 {at} 100");
    let get = format!("get u4 {at}");
    let out = ok(&node.cli(&[
        "blobs",
        "bitfield",
        "board2",
        "--op",
        &set,
        "--op",
        &incr,
        "--op",
        &get,
        "--op",
        "write_at 0 hex:abcd",
    ]));
    assert_eq!(text(&out), "0\n15\n15\nnull\n");
    let dir = tempfile::tempdir().unwrap();
    let ops = dir.path().join("ops.json");
    std::fs::write(
        &ops,
        json!({"ops": [{"op": "get", "type": "u8", "offset": 0}, {"op": "get", "type": "u4", "offset": at}]})
            .to_string(),
    )
    .unwrap();
    let v = ok_json(&node.cli(&[
        "--json",
        "blobs",
        "bitfield",
        "board2",
        "--ops-json",
        ops.to_str().unwrap(),
    ]));
    assert_eq!(v["results"], json!([0xAB, 15]));
    let version = v["version"].as_u64().unwrap();
    // A failing batch: non-zero exit, nothing changed.
    let out = node.cli(&[
        "--json",
        "blobs",
        "bitfield",
        "board2",
        "--op",
        "set u4 #5 3",
        "--op",
        "set u4 #1000000 1",
    ]);
    assert_eq!(err_code(&out), "invalid_input");
    let v = ok_json(&node.cli(&["--json", "blobs", "bitfield", "board2", "--op", "get u4 #5"]));
    assert_eq!(v["results"], json!([0]));
    assert!(
        v["version"].as_u64().unwrap() > version,
        "a get is a write too"
    );
    let after = ok_json(&node.cli(&["--json", "blobs", "stat", "board2"]));
    assert_eq!(after["version"], v["version"]);
    // Bad syntax is refused before anything is sent.
    for bad in ["frob u4 1", "set u4 #1", "overflow never"] {
        let out = node.cli(&["--json", "blobs", "bitfield", "board2", "--op", bad]);
        assert_eq!(err_code(&out), "invalid_input", "{bad}");
    }
}

/// Listing, stat and delete through the CLI (and list paging by the client).
async fn list_and_delete(node: &TestNode) {
    let c = node.client();
    let mut want = Vec::new();
    for i in 0..12 {
        let key = format!("page/{i:02}");
        c.put_blob(&key, vec![i as u8; i + 1], None).await.unwrap();
        want.push(key);
    }
    let (mut got, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = c.list_blobs("page/", cursor.as_deref(), 5).await.unwrap();
        pages += 1;
        assert!(page.blobs.len() <= 5);
        got.extend(page.blobs.into_iter().map(|b| b.key));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want);
    assert!(pages >= 3, "{pages} pages");

    let listed = ok_json(&node.cli(&["--json", "blobs", "ls", "page/"]));
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, want);
    let first = ok_json(&node.cli(&["--json", "blobs", "ls", "page/", "--limit", "1"]));
    assert_eq!(first.as_array().unwrap().len(), 1);
    let human = text(&ok(&node.cli(&["blobs", "ls", "page/"])));
    assert!(human.starts_with("KEY"), "{human}");
    assert!(
        human.contains("page/11") && human.contains("uploaded"),
        "{human}"
    );
    let stat = ok_json(&node.cli(&["--json", "blobs", "stat", "page/03"]));
    assert_eq!(stat["size"], 4);
    let human = text(&ok(&node.cli(&["blobs", "head", "page/03"])));
    assert!(human.contains("size:         4"), "{human}");

    let out = text(&ok(&node.cli(&["blobs", "rm", "page/03"])));
    assert_eq!(out, "Deleted page/03.\n");
    let out = node.cli(&["--json", "blobs", "rm", "page/03"]);
    assert_eq!(err_code(&out), "blob_not_found");
    let out = node.cli(&["blobs", "stat", "page/03"]);
    assert!(!out.status.success());
    let listed = ok_json(&node.cli(&["--json", "blobs", "ls", "page/"]));
    assert_eq!(listed.as_array().unwrap().len(), 11);
    let none = text(&ok(&node.cli(&["blobs", "ls", "nothing/"])));
    assert!(none.starts_with("No blobs."), "{none}");
}

/// `python/tests/test_blobs.py` against the node.
fn python_client(node: &TestNode) {
    let cwd = tempfile::tempdir().unwrap();
    let script = repo_root().join("python/tests/test_blobs.py");
    let out = Command::new("python3")
        .arg(&script)
        .current_dir(cwd.path())
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .env("PYTHONPATH", repo_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stderr = text(&out.stderr);
    let shown = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        text(&out.stdout)
    );
    assert!(out.status.success(), "python blob tests failed\n{shown}");
    assert!(stderr.contains("\nOK"), "{shown}");
    assert!(!stderr.contains("skipped"), "tests were skipped\n{shown}");
}

/// The peak resident memory of a running process, in bytes (`VmHWM`);
/// `None` once it has exited.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `shoal blobs put KEY -` and `shoal blobs get KEY` move 128 MiB through
/// pipes while the CLI's memory stays far below that.
fn the_cli_streams(node: &TestNode) {
    const TOTAL: usize = 128 << 20;
    const BOUND: u64 = 64 << 20;
    let piece = data(1 << 20, 8);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--json", "blobs", "put", "stream/big", "-"])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    let mut peak = 0;
    let mut sha = Sha256::new();
    for _ in 0..TOTAL / piece.len() {
        input.write_all(&piece).expect("feed the upload");
        sha.update(&piece);
        peak = peak.max(peak_rss(pid).unwrap_or(0));
    }
    drop(input);
    peak = peak.max(peak_rss(pid).unwrap_or(0));
    let out = child.wait_with_output().expect("shoal output");
    let v = ok_json(&out);
    assert_eq!(v["size"], TOTAL as u64);
    assert_eq!(v["sha256"], hex::encode(sha.finalize()));
    assert!(peak > 0, "no reading of the CLI's memory");
    assert!(peak < BOUND, "the upload's CLI peaked at {peak} bytes");

    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["blobs", "get", "stream/big"])
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    let pid = child.id();
    let mut output = child.stdout.take().expect("stdout");
    let (mut got, mut peak) = (0usize, 0);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = output.read(&mut buf).expect("read the download");
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        got += n;
        peak = peak.max(peak_rss(pid).unwrap_or(0));
    }
    let out = child.wait_with_output().expect("shoal output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(got, TOTAL);
    assert_eq!(hex::encode(sha.finalize()), v["sha256"].as_str().unwrap());
    assert!(
        peak > 0 && peak < BOUND,
        "the download's CLI peaked at {peak} bytes"
    );
}

// ---- the tests: each scenario on both stores ----

#[tokio::test(flavor = "multi_thread")]
async fn uploads_ranges_bitfields_and_the_cli_on_the_embedded_store() {
    let node = TestNode::start();
    uploads_and_ranges(&node).await;
    fixed_size_over_http(&node.client()).await;
    fixed_size_over_the_cli(&node);
    list_and_delete(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_ranges_bitfields_and_the_cli_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    uploads_and_ranges(&node).await;
    fixed_size_over_http(&node.client()).await;
    fixed_size_over_the_cli(&node);
    list_and_delete(&node).await;
}

#[test]
fn the_cli_streams_in_constant_memory() {
    let node = TestNode::start();
    the_cli_streams(&node);
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_uploads_leave_no_blob_on_the_embedded_store() {
    let node = TestNode::start();
    cut_uploads_store_nothing(&node, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_uploads_leave_no_blob_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    cut_uploads_store_nothing(&node, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_upload_leaves_no_blob_on_the_embedded_store() {
    let mut node = TestNode::start();
    kill9_mid_upload(&mut node, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_upload_leaves_no_blob_on_redis() {
    let redis = RedisServer::start(&[]);
    let mut node = TestNode::start_with(&["--store", &redis.url()]);
    kill9_mid_upload(&mut node, Some(&redis)).await;
}

#[test]
fn the_python_client_on_the_embedded_store() {
    let node = TestNode::start();
    python_client(&node);
}

#[test]
fn the_python_client_on_redis() {
    let redis = RedisServer::start(&[]);
    let node = TestNode::start_with(&["--store", &redis.url()]);
    python_client(&node);
}
