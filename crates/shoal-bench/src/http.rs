//! A minimal HTTP/1.1 keep-alive client for the phases that drive the node as
//! fast as it answers: warm latency, sync throughput and the asynchronous
//! submissions (`invoke.rs`). Every other request goes through
//! `shoal_client` (reqwest).
//!
//! Why it is kept: the client shares the node's cores, so its CPU per call is
//! taken from what it measures. Measured on 2026-12-04 (docs/benchmarks.md,
//! 2 AMD EPYC cores), driving one node back to back in 3 rounds:
//! `shoal-client` used 31-41 µs of CPU per call against 13-18 µs here. The
//! node's measured sync throughput was 11-30 % lower in all 9 pairs (best
//! 9,194/s against 11,785/s), and the latency p50 was 0.03-0.08 ms higher.
//!
//! A `Conn` owns one TCP connection. It writes each request from a reused
//! buffer with one `write`, reads the answer into a reused buffer and parses
//! its head with `httparse`, all in the calling task: no connection task, no
//! channel hop, no allocation per call. Only what the invoke route answers
//! is supported: POST, `Content-Length` bodies, keep-alive.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shoal_client::protocol::{FUNCTION_ERROR_HEADER, INVOCATION_ID_HEADER};

/// Where to connect and the headers every request carries.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host: ...\r\nAuthorization: Bearer ...\r\n`
    fixed_headers: String,
}

/// One keep-alive connection. A failed call closes it for good.
pub struct Conn {
    stream: TcpStream,
    fixed_headers: String,
    out: Vec<u8>,
    /// Read buffer; an answer's head and body are read into it.
    buf: Vec<u8>,
    closed: bool,
}

/// An answer, borrowing the connection's buffer until the next call.
pub struct Reply<'a> {
    pub status: u16,
    /// The `Shoal-Invocation-Id` header.
    pub invocation_id: Option<&'a str>,
    /// True when the `Shoal-Function-Error` header is set.
    pub function_error: bool,
    pub body: &'a [u8],
}

/// Where an answer's parts sit in `Conn::buf`.
struct Head {
    status: u16,
    id: Option<(usize, usize)>,
    function_error: bool,
    len: usize,
    body_len: usize,
}

impl Target {
    pub fn new(addr: SocketAddr, token: &str) -> Result<Target> {
        let token = token.trim();
        if token.bytes().any(|b| b.is_ascii_control()) {
            bail!("the token contains control characters");
        }
        Ok(Target {
            addr,
            fixed_headers: format!("Host: {addr}\r\nAuthorization: Bearer {token}\r\n"),
        })
    }

    pub async fn connect(&self) -> Result<Conn> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            fixed_headers: self.fixed_headers.clone(),
            out: Vec::with_capacity(512),
            buf: vec![0; 16 * 1024],
            closed: false,
        })
    }
}

impl Reply<'_> {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body)
            .chars()
            .take(500)
            .collect()
    }
}

impl Conn {
    /// True once the connection is unusable (a call on it failed).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A synchronous invocation that must succeed.
    pub async fn invoke_ok(&mut self, path: &str, body: &[u8]) -> Result<Reply<'_>> {
        let reply = self.post(path, body).await?;
        if !(200..300).contains(&reply.status) {
            bail!(
                "invoke answered HTTP {}: {}",
                reply.status,
                reply.body_text()
            );
        }
        if reply.function_error {
            bail!("the function failed: {}", reply.body_text());
        }
        Ok(reply)
    }

    /// A POST of JSON.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Reply<'_>> {
        if self.closed {
            bail!("the connection is closed");
        }
        self.closed = true; // until this call completes cleanly
        self.out.clear();
        write!(
            self.out,
            "POST {path} HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.fixed_headers,
            body.len()
        )?;
        self.out.extend_from_slice(body);
        self.stream
            .write_all(&self.out)
            .await
            .context("sending the request")?;
        let mut filled = 0;
        let head = loop {
            if filled == self.buf.len() {
                if self.buf.len() >= 1024 * 1024 {
                    bail!("the answer's head is larger than 1 MiB");
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            filled += self.read(filled, self.buf.len()).await?;
            if let Some(h) = parse_head(&self.buf[..filled])? {
                break h;
            }
        };
        let end = head.len + head.body_len;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        while filled < end {
            filled += self.read(filled, end).await?;
        }
        if filled != end {
            bail!("the node sent more than one answer");
        }
        self.closed = false;
        Ok(Reply {
            status: head.status,
            invocation_id: head
                .id
                .and_then(|(a, b)| std::str::from_utf8(&self.buf[a..b]).ok()),
            function_error: head.function_error,
            body: &self.buf[head.len..end],
        })
    }

    /// Reads into `buf[from..to]`; an end of stream is an error.
    async fn read(&mut self, from: usize, to: usize) -> Result<usize> {
        let n = self
            .stream
            .read(&mut self.buf[from..to])
            .await
            .context("reading the answer")?;
        if n == 0 {
            bail!("the node closed the connection");
        }
        Ok(n)
    }
}

fn parse_head(data: &[u8]) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(data).context("unreadable answer head")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut head = Head {
        status: resp.code.unwrap_or(0),
        id: None,
        function_error: false,
        len,
        body_len: 0,
    };
    let mut has_length = false;
    let base = data.as_ptr() as usize;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            head.body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("bad Content-Length")?;
            has_length = true;
        } else if h.name.eq_ignore_ascii_case(INVOCATION_ID_HEADER) {
            let start = h.value.as_ptr() as usize - base;
            head.id = Some((start, start + h.value.len()));
        } else if h.name.eq_ignore_ascii_case(FUNCTION_ERROR_HEADER) {
            head.function_error = true;
        }
    }
    if !has_length && head.status != 204 {
        bail!(
            "HTTP {} without Content-Length (this client reads only invoke answers)",
            head.status
        );
    }
    Ok(Some(head))
}

/// `/v1/functions/{name}/invoke` (names are `[a-z0-9_-]`, no escaping needed).
pub fn invoke_path(name: &str, is_async: bool) -> String {
    let mode = if is_async { "?mode=async" } else { "" };
    format!("/v1/functions/{name}/invoke{mode}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_with_length_and_id() {
        let data = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nshoal-invocation-id: abc-1\r\ncontent-length: 7\r\n\r\n{\"n\":1}";
        let h = parse_head(data).unwrap().unwrap();
        assert_eq!((h.status, h.body_len, h.function_error), (200, 7, false));
        let (a, b) = h.id.unwrap();
        assert_eq!(&data[a..b], b"abc-1");
        assert_eq!(&data[h.len..], b"{\"n\":1}");
        let partial = parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap();
        assert!(partial.is_none());
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn talks_to_a_keep_alive_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let answers: [&[u8]; 2] = [
                b"HTTP/1.1 202 Accepted\r\nshoal-invocation-id: id-7\r\ncontent-length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nshoal-function-error: raised\r\ncontent-length: 5\r\n\r\nabcde",
            ];
            for answer in answers {
                let mut got = 0;
                // Requests here are small: read until the blank line and body.
                loop {
                    got += s.read(&mut buf[got..]).await.unwrap();
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(i) = text.find("\r\n\r\n")
                        && got >= i + 4 + 2
                    {
                        assert!(text.contains("Authorization: Bearer tok\r\n"));
                        break;
                    }
                }
                s.write_all(answer).await.unwrap();
            }
        });
        let target = Target::new(addr, "tok\n").unwrap();
        let mut conn = target.connect().await.unwrap();
        let r = conn.post(&invoke_path("x", true), b"{}").await.unwrap();
        assert_eq!(
            (r.status, r.invocation_id, r.body),
            (202, Some("id-7"), &b"{}"[..])
        );
        let err = conn.invoke_ok(&invoke_path("x", false), b"{}").await;
        assert!(err.is_err_and(|e| e.to_string().contains("abcde")));
        assert!(!conn.is_closed());
        server.join_next().await.unwrap().unwrap();
    }
}
