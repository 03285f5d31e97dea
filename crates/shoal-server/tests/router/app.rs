//! `App`: the real router over a real engine `Handle` on an in-memory store
//! and the fake runtime, driven with `tower::ServiceExt::oneshot` — no
//! socket, no python3. Plus the table runner the other modules share.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use shoal_engine::{Parts, TokioClock};
use shoal_runtime::fake::FakeRuntime;
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::Role;

/// The limits every `App` runs with: small, so tests of them stay small.
pub const MAX_BODY: usize = 4096;
pub const MAX_ARCHIVE: usize = 65_536;
pub const MAX_WRITE: usize = 32_768;
pub const MAX_DOC: usize = 1000;

pub const JSON: Option<&str> = Some("application/json");
pub const TAR: Option<&str> = Some("application/x-tar");

/// Who calls: a bearer token of a role, or something that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No `Authorization` header.
    Nobody,
    /// `Authorization: Basic ...`.
    NotBearer,
    /// `Authorization: Bearer ` with nothing after it.
    EmptyBearer,
    /// A well-formed secret the node never issued.
    Unknown,
    /// A token that was issued and then revoked.
    Revoked,
    As(Role),
}

pub struct App {
    pub router: Router,
    pub data_dir: tempfile::TempDir,
    pub runtime: FakeRuntime,
    secrets: Vec<(Role, String)>,
    revoked: String,
    shutdown: CancellationToken,
}

/// One answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub content_type: String,
    pub text: String,
    /// The body as it came.
    pub bytes: Vec<u8>,
}

impl Reply {
    /// `(code, message)` of a JSON error body, or why it is not one.
    pub fn error(&self) -> Result<(String, String), String> {
        let v: Value =
            serde_json::from_str(&self.text).map_err(|_| format!("not JSON: {:?}", self.text))?;
        let obj = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("error"))
            .and_then(Value::as_object)
            .ok_or_else(|| format!("not {{\"error\": {{...}}}}: {}", self.text))?;
        let code = obj.get("code").and_then(Value::as_str);
        let message = obj.get("message").and_then(Value::as_str);
        match (code, message) {
            (Some(c), Some(m)) => Ok((c.to_string(), m.to_string())),
            _ => Err(format!("error without a code and a message: {}", self.text)),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }
}

impl App {
    /// A fresh node: empty store, one token per role.
    pub async fn new() -> App {
        App::with(|_| {}).await
    }

    /// A fresh node whose engine options `set` changes first.
    pub async fn with(set: impl FnOnce(&mut shoal_engine::Options)) -> App {
        App::build(set, None, false).await
    }

    /// A fresh node that serves `/metrics` (from a recorder of its own),
    /// behind a reader token unless `public`.
    pub async fn with_metrics(public: bool) -> App {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        App::build(|_| {}, Some(recorder.handle()), public).await
    }

    async fn build(
        set: impl FnOnce(&mut shoal_engine::Options),
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        metrics_public: bool,
    ) -> App {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut opts = shoal_engine::Options::new(data_dir.path().to_path_buf());
        opts.categories.max_doc_bytes = MAX_DOC;
        // Nothing in these tests waits for a sample or a poll.
        opts.sample_interval = Duration::from_secs(3600);
        set(&mut opts);
        let runtime = FakeRuntime::new();
        let shutdown = CancellationToken::new();
        let handle = shoal_engine::start_with(Parts {
            opts,
            backend: Backend::from_adapter(Arc::new(MemoryStore::new())),
            runtime: Arc::new(runtime.clone()),
            clock: Arc::new(TokioClock::starting_at(1_700_000_000_000)),
            random: None,
            shutdown: shutdown.clone(),
            webhook: None,
        })
        .await
        .expect("engine starts");
        let router = shoal_server::router(
            handle.clone(),
            &shoal_server::Options {
                max_body_bytes: MAX_BODY,
                max_archive_bytes: MAX_ARCHIVE,
                max_write_bytes: MAX_WRITE,
                max_site_bytes: 1024 * 1024,
                metrics_public,
                sandbox: "on: the router tier's fake runtime".into(),
            },
            metrics,
        );
        let mut secrets = Vec::new();
        for role in Role::ALL {
            let (_, secret) = handle
                .create_token(role, role.as_str(), Vec::new())
                .await
                .unwrap();
            secrets.push((role, secret));
        }
        let (gone, revoked) = handle
            .create_token(Role::Admin, "gone", Vec::new())
            .await
            .unwrap();
        handle.revoke_token(&gone.id).await.unwrap();
        App {
            router,
            data_dir,
            runtime,
            secrets,
            revoked,
            shutdown,
        }
    }

    /// A node with something of every kind, for the tables to refer to:
    /// function `ok` (`main:handler`), category `cat` (2 shards) holding
    /// document `keep`, queue `jobs` fed to function `worker`, queue
    /// `measured`, limiter `vendor` used by function `limited`.
    pub async fn seeded() -> App {
        let app = App::new().await;
        app.deploy_ok("name = \"ok\"").await;
        app.deploy_ok("name = \"worker\"\n[subscribe]\nqueue = \"jobs\"")
            .await;
        app.put_ok("/v1/limiters/vendor", r#"{"per_second": 5, "burst": 2}"#)
            .await;
        app.deploy_ok("name = \"limited\"\nlimiter = \"vendor\"")
            .await;
        app.put_ok("/v1/queues/measured", "{}").await;
        let r = app
            .call(
                "POST",
                "/v1/categories",
                JSON,
                br#"{"name": "cat", "shards": 2}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = app
            .call(
                "POST",
                "/v1/categories/cat/docs",
                JSON,
                br#"[{"id": "keep", "v": 1}]"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        app
    }

    pub async fn deploy_ok(&self, manifest: &str) {
        let r = self
            .call(
                "POST",
                "/v1/functions",
                TAR,
                tar_of(&[
                    ("shoal.toml", manifest),
                    ("main.py", "def handler(e, ctx):\n    return e\n"),
                ]),
            )
            .await;
        assert_eq!(r.status, 201, "deploy {manifest}: {}", r.text);
    }

    async fn put_ok(&self, path: &str, body: &str) {
        let r = self.call("PUT", path, JSON, body.as_bytes().to_vec()).await;
        assert_eq!(r.status, 200, "PUT {path}: {}", r.text);
    }

    pub fn secret(&self, role: Role) -> &str {
        &self.secrets.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// A request as the admin.
    pub async fn call(&self, method: &str, path: &str, ct: Option<&str>, body: Vec<u8>) -> Reply {
        self.call_as(Caller::As(Role::Admin), method, path, ct, body)
            .await
    }

    pub async fn call_as(
        &self,
        caller: Caller,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = ct.map(|ct| ("content-type", ct)).into_iter().collect();
        self.call_with(caller, method, path, &headers, body).await
    }

    /// A request with any headers.
    pub async fn call_with(
        &self,
        caller: Caller,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path);
        let auth = match caller {
            Caller::Nobody => None,
            Caller::NotBearer => Some("Basic YWRtaW46YWRtaW4=".to_string()),
            Caller::EmptyBearer => Some("Bearer ".to_string()),
            Caller::Unknown => Some(format!("Bearer {}nope", shoal_engine::SECRET_PREFIX)),
            Caller::Revoked => Some(format!("Bearer {}", self.revoked)),
            Caller::As(role) => Some(format!("Bearer {}", self.secret(role))),
        };
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::from(body)).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let headers = resp.headers().clone();
        // An event stream stays open: its body is not read.
        let bytes = if content_type == "text/event-stream" {
            axum::body::Bytes::new()
        } else {
            axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body")
        };
        Reply {
            status,
            headers,
            content_type,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes: bytes.to_vec(),
        }
    }

    /// The latest versions of every function: `(name, version)`.
    pub async fn functions(&self) -> Vec<(String, u64)> {
        let list = self.call("GET", "/v1/functions", None, vec![]).await.json();
        list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["version"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One row of an error table: a request and the error it must get.
pub struct Case {
    pub method: &'static str,
    pub path: String,
    pub ct: Option<&'static str>,
    pub body: Vec<u8>,
    pub status: u16,
    pub code: &'static str,
    /// A piece of the message that tells the caller what is wrong or what
    /// to do ("" checks only that there is a message).
    pub says: &'static str,
}

/// A row: `case(method, path, ct, body, status, code, says)`.
pub fn case(
    method: &'static str,
    path: impl Into<String>,
    ct: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    says: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        ct,
        body: body.into(),
        status,
        code,
        says,
    }
}

/// Sends every row as the admin; fails listing every row that got another
/// answer. Returns the number of rows.
pub async fn run_table(app: &App, table: &str, cases: Vec<Case>) -> usize {
    let n = cases.len();
    let mut failures = String::new();
    for (i, c) in cases.into_iter().enumerate() {
        let body_len = c.body.len();
        let r = app.call(c.method, &c.path, c.ct, c.body).await;
        let row = format!(
            "{table} row {i}: {} {} ({body_len} bytes)",
            c.method, c.path
        );
        if let Err(why) = check(&r, c.status, c.code, c.says) {
            let _ = writeln!(failures, "{row}: {why}");
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
    n
}

/// The reply is `status` with a JSON error body of `code` whose message is
/// not empty and contains `says`.
pub fn check(r: &Reply, status: u16, code: &str, says: &str) -> Result<(), String> {
    let (got_code, message) = r.error().map_err(|e| format!("{} {e}", r.status))?;
    if r.status != status || got_code != code {
        return Err(format!(
            "want {status} {code}, got {} {got_code}: {message}",
            r.status
        ));
    }
    if !r.content_type.starts_with("application/json") {
        return Err(format!("content type {:?}", r.content_type));
    }
    if message.trim().is_empty() {
        return Err("empty message".into());
    }
    if !message.contains(says) {
        return Err(format!("message {message:?} does not say {says:?}"));
    }
    Ok(())
}

/// A tar archive of `(path, contents)`, the path written as given (so that
/// unsafe paths such as `../x` can be built).
pub fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_bytes()).expect("append");
    }
    b.into_inner().expect("tar")
}
