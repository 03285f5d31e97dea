//! A lean HTTP/1.1 keep-alive client for the load generator.
//!
//! One `Conn` is one TCP connection driven by hyper's low-level client: no
//! pool, no redirects, no per-request header map rebuilt from strings. The
//! bearer and host headers are parsed once; the body is a shared `Bytes`.
//! `shoal_client::Client` (reqwest) stays in charge of everything off the hot
//! path (deploys, reading invocation records).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use shoal_client::protocol::{FUNCTION_ERROR_HEADER, INVOCATION_ID_HEADER};

/// What the bench needs to connect: address and bearer header.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
    auth: HeaderValue,
}

impl Target {
    pub fn new(addr: SocketAddr, token: &str) -> Result<Target> {
        Ok(Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            auth: HeaderValue::from_str(&format!("Bearer {}", token.trim())).context("token is not a header value")?,
        })
    }

    pub async fn connect(&self) -> Result<Conn> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; errors surface on the sender.
            let _ = conn.await;
        });
        Ok(Conn {
            tx,
            host: self.host.clone(),
            auth: self.auth.clone(),
        })
    }
}

/// One keep-alive connection.
pub struct Conn {
    tx: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    auth: HeaderValue,
}

/// The parts of an answer the bench looks at.
pub struct Reply {
    pub status: StatusCode,
    /// The `Shoal-Invocation-Id` header.
    pub invocation_id: Option<HeaderValue>,
    /// True when the `Shoal-Function-Error` header is set.
    pub function_error: bool,
    pub body: Bytes,
}

impl Reply {
    pub fn id(&self) -> Option<&str> {
        self.invocation_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Conn {
    pub async fn post(&mut self, uri: &Uri, body: &Bytes) -> Result<Reply> {
        self.send(Method::POST, uri, body.clone()).await
    }

    pub async fn get(&mut self, uri: &Uri) -> Result<Reply> {
        self.send(Method::GET, uri, Bytes::new()).await
    }

    async fn send(&mut self, method: Method, uri: &Uri, body: Bytes) -> Result<Reply> {
        let has_body = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(AUTHORIZATION, self.auth.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, JSON);
        }
        self.tx.ready().await.context("connection closed")?;
        let resp = self.tx.send_request(req).await.context("request failed")?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading the answer")?.to_bytes();
        Ok(Reply {
            status: parts.status,
            invocation_id: parts.headers.get(INVOCATION_ID_HEADER).cloned(),
            function_error: parts.headers.contains_key(FUNCTION_ERROR_HEADER),
            body,
        })
    }

    /// A synchronous invocation that must succeed; returns its id.
    pub async fn invoke_ok(&mut self, uri: &Uri, body: &Bytes) -> Result<Reply> {
        let reply = self.post(uri, body).await?;
        if !reply.status.is_success() {
            bail!("invoke answered HTTP {}: {}", reply.status, String::from_utf8_lossy(&reply.body));
        }
        if reply.function_error {
            bail!("the function failed: {}", String::from_utf8_lossy(&reply.body));
        }
        Ok(reply)
    }
}

/// `/v1/functions/{name}/invoke` (names are `[a-z0-9-]`, no escaping needed).
pub fn invoke_uri(name: &str, is_async: bool) -> Uri {
    let mode = if is_async { "?mode=async" } else { "" };
    Uri::try_from(format!("/v1/functions/{name}/invoke{mode}")).expect("valid path")
}
