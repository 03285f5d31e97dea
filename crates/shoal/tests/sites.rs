//! End to end: static sites on a real `shoal serve`, deployed with the
//! `shoal sites` CLI from temporary directories and read over raw HTTP:
//! content types, strong entity tags and 304, `.br`/`.gz` siblings chosen
//! by `Accept-Encoding`, `Cache-Control`, `index.html` and directory
//! redirects, `--spa`, mount paths (longest prefix wins, taken paths and
//! reserved prefixes refused), the atomic switch of a redeploy under a
//! polling reader, versions and rollback, removal, bad archives (400) and
//! archives over the node's limit (413), and a deploy on one node served by
//! another over Redis.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestNode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_client::protocol::ErrorCode;

/// One HTTP answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads
/// the answer to its end.
fn request(
    node: &TestNode,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let addr = node.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        body = unchunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

fn get(node: &TestNode, path: &str) -> Answer {
    request(node, "GET", path, &[], b"")
}

fn get_with(node: &TestNode, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(node, "GET", path, headers, b"")
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, data) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

fn site_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    dir
}

/// `shoal --json sites ARGS...`: the parsed output, or the error JSON.
fn cli(node: &TestNode, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["--json", "sites"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "`shoal {all:?}` printed no JSON ({e}): stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

fn deploy(node: &TestNode, name: &str, dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["deploy", name, dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, v) = cli(node, &args);
    assert!(ok, "deploy {name} failed: {v}");
    v
}

/// The error code of a failed CLI call.
fn error_code(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

fn etag_of(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(data)))
}

#[test]
fn files_are_served_with_types_tags_encodings_and_cache_control() {
    let node = TestNode::start();
    let js = b"console.log('plain');".as_slice();
    let png = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 255];
    let dir = site_dir(&[
        ("index.html", b"<h1>home</h1>"),
        ("app.js", js),
        ("app.js.gz", b"GZIP-BYTES"),
        ("app.js.br", b"BROTLI-BYTES"),
        ("only-gz.css", b"body{}"),
        ("only-gz.css.gz", b"GZ-CSS"),
        ("data.json", b"{\"a\":1}"),
        ("img/logo.png", &png),
        ("lib.wasm", b"\0asm"),
        ("notes.unknownext", b"?"),
        ("a b.txt", b"spaced"),
        ("docs/index.html", b"<h1>docs</h1>"),
        (".well-known/security.txt", b"contact"),
    ]);
    let v = deploy(&node, "www", dir.path(), &[]);
    assert_eq!(v["live"], 1);
    assert_eq!(v["path"], "/");
    assert_eq!(v["files"], 13);

    // index.html for `/`, HTML revalidated every time.
    let a = get(&node, "/");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.text(), "<h1>home</h1>");
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(a.header("cache-control"), Some("no-cache"));
    assert_eq!(a.header("etag"), Some(etag_of(b"<h1>home</h1>").as_str()));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("vary"), None, "no siblings: nothing varies");
    assert_eq!(get(&node, "/index.html").text(), "<h1>home</h1>");

    // Types by extension.
    for (path, ct) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/only-gz.css", "text/css; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/img/logo.png", "image/png"),
        ("/lib.wasm", "application/wasm"),
        ("/notes.unknownext", "application/octet-stream"),
        ("/a%20b.txt", "text/plain; charset=utf-8"),
        ("/.well-known/security.txt", "text/plain; charset=utf-8"),
    ] {
        let a = get(&node, path);
        assert_eq!(a.status, 200, "{path}: {a:?}");
        assert_eq!(a.header("content-type"), Some(ct), "{path}");
        assert_eq!(
            a.header("cache-control"),
            Some("public, max-age=3600"),
            "{path}"
        );
    }
    assert_eq!(get(&node, "/img/logo.png").body, png);
    assert_eq!(get(&node, "/a%20b.txt").text(), "spaced");

    // Compressed siblings, by what the client accepts.
    let plain = get(&node, "/app.js");
    assert_eq!(plain.body, js);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("etag"), Some(etag_of(js).as_str()));
    let gz = get_with(&node, "/app.js", &[("Accept-Encoding", "gzip")]);
    assert_eq!(
        (gz.text().as_str(), gz.header("content-encoding")),
        ("GZIP-BYTES", Some("gzip"))
    );
    assert_eq!(
        gz.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(gz.header("etag"), Some(etag_of(b"GZIP-BYTES").as_str()));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    let br = get_with(
        &node,
        "/app.js",
        &[("Accept-Encoding", "gzip, deflate, br")],
    );
    assert_eq!(
        (br.text().as_str(), br.header("content-encoding")),
        ("BROTLI-BYTES", Some("br"))
    );
    let no_br = get_with(&node, "/app.js", &[("Accept-Encoding", "br;q=0, gzip")]);
    assert_eq!(no_br.text(), "GZIP-BYTES");
    let identity = get_with(&node, "/app.js", &[("Accept-Encoding", "identity")]);
    assert_eq!(identity.body, js);
    let css = get_with(&node, "/only-gz.css", &[("Accept-Encoding", "br, gzip")]);
    assert_eq!(
        (css.text().as_str(), css.header("content-encoding")),
        ("GZ-CSS", Some("gzip"))
    );
    // The sibling is a file of its own too.
    assert_eq!(
        get(&node, "/app.js.gz").header("content-type"),
        Some("application/gzip")
    );

    // 304 on a matching If-None-Match; 200 on another tag.
    let tag = etag_of(js);
    let nm = get_with(&node, "/app.js", &[("If-None-Match", &tag)]);
    assert_eq!(nm.status, 304, "{nm:?}");
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), Some(tag.as_str()));
    assert_eq!(nm.header("cache-control"), Some("public, max-age=3600"));
    let listed = format!("\"nope\", W/{tag}");
    assert_eq!(
        get_with(&node, "/app.js", &[("If-None-Match", &listed)]).status,
        304
    );
    let other = get_with(&node, "/app.js", &[("If-None-Match", "\"nope\"")]);
    assert_eq!((other.status, other.body.as_slice()), (200, js));
    // The tag of the gzip body does not match the plain one.
    let gz_tag = etag_of(b"GZIP-BYTES");
    assert_eq!(
        get_with(&node, "/app.js", &[("If-None-Match", &gz_tag)]).status,
        200
    );
    assert_eq!(
        get_with(
            &node,
            "/app.js",
            &[("If-None-Match", &gz_tag), ("Accept-Encoding", "gzip")]
        )
        .status,
        304
    );

    // HEAD: the headers, no body.
    let head = request(&node, "HEAD", "/data.json", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("7"));
    assert!(head.body.is_empty());

    // A directory without its slash is redirected; with it, its index.
    let r = get(&node, "/docs?x=1");
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/docs/?x=1"));
    assert_eq!(get(&node, "/docs/").text(), "<h1>docs</h1>");

    // No such file (no --spa): 404, a JSON error.
    let missing = get(&node, "/missing.js");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("route_not_found"),
        "{}",
        missing.text()
    );
    assert_eq!(get(&node, "/img/../index.html").status, 404);
    // Other methods are not the site's.
    assert_ne!(request(&node, "POST", "/index.html", &[], b"x").status, 200);
    // The API keeps its prefixes.
    assert_eq!(get(&node, "/healthz").status, 200);

    // The CLI lists it; its files are not user blobs or keys.
    let (ok, ls) = cli(&node, &["ls"]);
    assert!(ok);
    assert_eq!(ls[0]["name"], "www");
    assert_eq!(ls[0]["bytes"], v["bytes"]);
    let out = node.cli(&["--json", "blobs", "ls"]);
    assert!(out.status.success());
    let blobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        blobs.as_array().map(Vec::len),
        Some(0),
        "site files are not user blobs: {blobs}"
    );
    let out = node.cli(&["--json", "kv", "ls"]);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().map(Vec::len), Some(0), "{keys}");

    // The same deploy again changes nothing.
    let again = deploy(&node, "www", dir.path(), &[]);
    assert_eq!(
        (again["live"].as_u64(), again["unchanged"].as_bool()),
        (Some(1), Some(true))
    );
}

#[test]
fn spa_mounts_cache_control_and_not_found_pages() {
    let node = TestNode::start();
    let app = site_dir(&[("index.html", b"<div id=app></div>"), ("main.js", b"app()")]);
    let v = deploy(
        &node,
        "app",
        app.path(),
        &[
            "--path",
            "/app/",
            "--spa",
            "--cache-control",
            "public, max-age=60",
        ],
    );
    assert_eq!(
        (v["path"].as_str(), v["spa"].as_bool()),
        (Some("/app"), Some(true))
    );
    let root = site_dir(&[("index.html", b"root"), ("404.html", b"<h1>lost</h1>")]);
    deploy(&node, "root", root.path(), &[]);

    // --spa: any missing path under the mount is the index, 200.
    for path in ["/app/", "/app/users/42", "/app/deep/er/path"] {
        let a = get(&node, path);
        assert_eq!(
            (a.status, a.text().as_str()),
            (200, "<div id=app></div>"),
            "{path}"
        );
        assert_eq!(a.header("cache-control"), Some("public, max-age=60"));
    }
    assert_eq!(get(&node, "/app/main.js").text(), "app()");
    assert_eq!(get(&node, "/app").status, 301);
    // The longest prefix wins; `/application` is not under `/app`.
    assert_eq!(get(&node, "/").text(), "root");
    let lost = get(&node, "/application");
    assert_eq!((lost.status, lost.text().as_str()), (404, "<h1>lost</h1>"));
    assert_eq!(
        lost.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    // A path another site holds, and the node's own prefixes, are refused.
    let (ok, e) = cli(
        &node,
        &[
            "deploy",
            "other",
            app.path().to_str().unwrap(),
            "--path",
            "/app",
        ],
    );
    assert!(!ok);
    assert_eq!(error_code(&e), "site_path_taken", "{e}");
    for bad in ["/v1", "/v1/x", "/ui", "/healthz", "no-slash", "/a/../b"] {
        let (ok, e) = cli(
            &node,
            &[
                "deploy",
                "other",
                app.path().to_str().unwrap(),
                "--path",
                bad,
            ],
        );
        assert!(!ok, "{bad}");
        assert_eq!(error_code(&e), "invalid_input", "{bad}: {e}");
    }
    let (ok, e) = cli(&node, &["deploy", "Bad Name", app.path().to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(error_code(&e), "invalid_name", "{e}");

    // Moving the spa elsewhere frees /app for another site.
    deploy(&node, "app", app.path(), &["--path", "/spa", "--spa"]);
    assert_eq!(get(&node, "/spa/x").text(), "<div id=app></div>");
    assert_eq!(get(&node, "/app/x").text(), "<h1>lost</h1>");
    deploy(&node, "other", root.path(), &["--path", "/app"]);
    assert_eq!(get(&node, "/app/").text(), "root");
}

/// Two files that name each other's version: `index.html` names
/// `app-N.js`, which holds N.
fn version_files(n: u64) -> tempfile::TempDir {
    let index = format!("<script src=\"app-{n}.js\"></script><!--v{n}-->");
    let js = format!("{n}");
    site_dir(&[
        ("index.html", index.as_bytes()),
        (&format!("app-{n}.js"), js.as_bytes()),
        ("big.bin", &vec![n as u8; 300_000]),
    ])
}

fn index_version(text: &str) -> u64 {
    let start = text.find("app-").expect("names its script") + 4;
    let end = text[start..].find(".js").unwrap() + start;
    text[start..end].parse().unwrap()
}

#[test]
fn a_redeploy_switches_every_file_at_once_and_rolls_back() {
    let node = Arc::new(TestNode::start());
    let v1 = version_files(1);
    deploy(&node, "live", v1.path(), &[]);

    // A reader polls the index and the script it names, and the big file,
    // while versions 2..=5 are deployed: it never sees a mix, and never
    // goes back to an older version.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (node, stop, reads) = (node.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut newest = 1;
            while !stop.load(Ordering::Relaxed) {
                let index = get(&node, "/");
                assert_eq!(index.status, 200, "{index:?}");
                let n = index_version(&index.text());
                assert!(n >= newest, "went back from version {newest} to {n}");
                newest = n;
                let js = get(&node, &format!("/app-{n}.js"));
                if js.status == 404 {
                    // Switched in between: the index is newer now.
                    let again = index_version(&get(&node, "/").text());
                    assert!(
                        again > n,
                        "app-{n}.js is gone while version {again} is live"
                    );
                    newest = again;
                } else {
                    assert_eq!((js.status, js.text()), (200, n.to_string()));
                }
                let big = get(&node, "/big.bin");
                assert_eq!(big.status, 200);
                assert_eq!(big.body.len(), 300_000);
                let b = big.body[0] as u64;
                assert!(big.body.iter().all(|x| *x as u64 == b), "a torn big.bin");
                assert!(b >= n, "big.bin of version {b} after index of {n}");
                reads.fetch_add(1, Ordering::Relaxed);
            }
            newest
        })
    };
    let mut dirs = Vec::new();
    for n in 2..=5u64 {
        std::thread::sleep(Duration::from_millis(150));
        let dir = version_files(n);
        let v = deploy(&node, "live", dir.path(), &[]);
        assert_eq!(v["live"], n);
        // Live on this node as soon as the deploy answered.
        assert_eq!(index_version(&get(&node, "/").text()), n);
        dirs.push(dir);
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    let newest = reader.join().expect("the reader saw only whole versions");
    assert_eq!(newest, 5);
    assert!(
        reads.load(Ordering::Relaxed) >= 5,
        "the reader read during the deploys"
    );

    // Versions, oldest first; rollback to the one before, then to one named.
    let (_, vs) = cli(&node, &["versions", "live"]);
    let listed: Vec<u64> = vs["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2, 3, 4, 5]);
    assert_eq!(vs["live"], 5);
    let (ok, r) = cli(&node, &["rollback", "live"]);
    assert!(ok, "{r}");
    assert_eq!(r["live"], 4);
    assert_eq!(index_version(&get(&node, "/").text()), 4);
    assert_eq!(get(&node, "/app-4.js").text(), "4");
    assert_eq!(get(&node, "/app-5.js").status, 404);
    let (ok, r) = cli(&node, &["rollback", "live", "--to", "2"]);
    assert!(ok, "{r}");
    assert_eq!(index_version(&get(&node, "/").text()), 2);
    assert_eq!(get(&node, "/big.bin").body[0], 2);
    let (ok, e) = cli(&node, &["rollback", "live", "--to", "9"]);
    assert!(!ok);
    assert_eq!(error_code(&e), "invalid_input", "{e}");
    let (_, vs) = cli(&node, &["versions", "live"]);
    let live: Vec<bool> = vs["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["live"].as_bool().unwrap())
        .collect();
    assert_eq!(live, [false, true, false, false, false]);

    // After a restart the live version is the same.
    drop(dirs);
}

#[test]
fn removal_bad_archives_and_the_size_limit() {
    let mut node = TestNode::start_with(&["--max-site-bytes", "100000"]);
    let dir = site_dir(&[("index.html", b"hello"), ("x.txt", b"x")]);
    deploy(&node, "gone", dir.path(), &["--path", "/gone"]);
    assert_eq!(get(&node, "/gone/").text(), "hello");

    // Over the node's limit: 413, with what to do.
    let big = site_dir(&[("index.html", b"big"), ("huge.bin", &vec![7u8; 150_000])]);
    let (ok, e) = cli(&node, &["deploy", "big", big.path().to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(error_code(&e), "payload_too_large", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-site-bytes"),
        "{e}"
    );
    let (ok, e) = cli(&node, &["versions", "big"]);
    assert!(!ok);
    assert_eq!(error_code(&e), "site_not_found", "{e}");

    // Bad archives over HTTP: not a tar, a path out of the directory, an
    // absolute path, a link, no files, the wrong content type.
    let auth = format!("Bearer {}", node.token);
    let put = |name: &str, ct: &str, body: &[u8]| {
        let a = request(
            &node,
            "PUT",
            &format!("/v1/sites/{name}"),
            &[("Authorization", &auth), ("Content-Type", ct)],
            body,
        );
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        (
            a.status,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
            v,
        )
    };
    let garbage = vec![b'x'; 2048];
    let (status, code, v) = put("bad", "application/x-tar", &garbage);
    assert_eq!((status, code.as_str()), (400, "invalid_input"), "{v}");
    assert!(v.to_string().contains("not a valid tar"), "{v}");
    for (path, why) in [
        ("../evil.html", "`..`"),
        ("/etc/passwd", "absolute"),
        ("a/../../b", "`..`"),
    ] {
        let (status, code, v) = put("bad", "application/x-tar", &raw_tar(path, b"pwn", b'0'));
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_input"),
            "{path}: {v}"
        );
        assert!(v.to_string().contains(why), "{path}: {v}");
    }
    let (status, _, v) = put("bad", "application/x-tar", &raw_tar("link", b"", b'2'));
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("not a regular file"), "{v}");
    let (status, _, v) = put("bad", "application/x-tar", &[0u8; 1024]);
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("no files"), "{v}");
    let (status, code, _) = put("bad", "text/plain", &raw_tar("a.html", b"a", b'0'));
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    let (status, _, _) = request_unauthorized(&node);
    assert_eq!(status, 401);
    let (ok, ls) = cli(&node, &["ls"]);
    assert!(ok);
    assert_eq!(
        ls.as_array().unwrap().len(),
        1,
        "nothing bad was recorded: {ls}"
    );
    // A well-formed archive by hand works.
    let (status, _, v) = put(
        "byhand",
        "application/x-tar",
        &raw_tar("./page.html", b"<p>", b'0'),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(get(&node, "/page.html").text(), "<p>");

    // Removed: not served, not listed, not found.
    let (ok, r) = cli(&node, &["rm", "gone"]);
    assert!(ok, "{r}");
    let a = get(&node, "/gone/");
    assert_eq!(a.status, 404);
    let (ok, e) = cli(&node, &["versions", "gone"]);
    assert!(!ok);
    assert_eq!(error_code(&e), "site_not_found");
    let (ok, e) = cli(&node, &["rm", "gone"]);
    assert!(!ok);
    assert_eq!(error_code(&e), "site_not_found");
    // Deployed again from nothing: version 1.
    let v = deploy(&node, "gone", dir.path(), &["--path", "/gone"]);
    assert_eq!(v["live"], 1);
    assert_eq!(get(&node, "/gone/x.txt").text(), "x");

    // The sites are served again after a kill -9.
    node.kill9_and_restart();
    assert_eq!(get(&node, "/gone/x.txt").text(), "x");
    assert_eq!(get(&node, "/page.html").text(), "<p>");
}

fn request_unauthorized(node: &TestNode) -> (u16, String, Value) {
    let a = request(
        node,
        "PUT",
        "/v1/sites/nope",
        &[("Content-Type", "application/x-tar")],
        &raw_tar("a.html", b"a", b'0'),
    );
    (a.status, String::new(), Value::Null)
}

/// A tar archive of one entry, its name written as given (the tar crate
/// refuses to write `..` and absolute paths).
fn raw_tar(name: &str, data: &[u8], kind: u8) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", data.len());
    header[124..136].copy_from_slice(size.as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = kind;
    if kind == b'2' {
        header[157..163].copy_from_slice(b"target");
    }
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn a_deploy_on_one_node_is_served_by_another_over_redis() {
    let redis = shoal_store_redis::testing::RedisServer::start(&[]);
    let a = TestNode::start_with(&["--store", &redis.url()]);
    let b = TestNode::start_with(&["--store", &redis.url()]);
    let v1 = site_dir(&[("index.html", b"one")]);
    deploy(&a, "shared", v1.path(), &["--path", "/shared"]);
    let until = |node: &TestNode, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get(node, "/shared/");
            if got.status == 200 && got.text() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node never served {want:?}: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until(&b, "one");
    // The site's keys and files are the node's own: not in user listings.
    for what in ["kv", "blobs"] {
        let out = b.cli(&["--json", what, "ls"]);
        assert!(out.status.success(), "{what} ls");
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed, serde_json::json!([]), "{what} ls on Redis");
    }
    let v2 = site_dir(&[("index.html", b"two")]);
    deploy(&b, "shared", v2.path(), &["--path", "/shared"]);
    assert_eq!(get(&b, "/shared/").text(), "two");
    until(&a, "two");
    let (ok, r) = cli(&a, &["rollback", "shared"]);
    assert!(ok, "{r}");
    until(&b, "one");
    let (ok, _) = cli(&b, &["rm", "shared"]);
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&a, "/shared/").status != 404 {
        assert!(
            Instant::now() < deadline,
            "node a still serves a removed site"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, e) = cli(&a, &["versions", "shared"]);
    assert!(!ok);
    assert_eq!(error_code(&e), "site_not_found");
    let _ = ErrorCode::SiteNotFound;
}
