//! A minimal HTTP/1.1 keep-alive client for the load generator.
//!
//! Everywhere else Shoal speaks HTTP through `shoal_client` (reqwest). The
//! load generator is the one exception, because it shares the cores with the
//! node it measures: a `Conn` owns one TCP connection and writes each request
//! from a reused buffer with one `write`, reads the answer into a reused
//! buffer and parses its head with `httparse`, in the calling task. No
//! connection task, no channel hop, no allocation per call. Only what the
//! node answers is supported: `Content-Length` or chunked bodies, keep-alive.
//! (It costs about a third of the CPU per call of hyper's client connection
//! on this workload; `scripts/bench` reports the client's CPU per call.)

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
            body: Vec::new(),
            closed: false,
        })
    }
}

/// One keep-alive connection. A failed call closes it for good.
pub struct Conn {
    stream: TcpStream,
    fixed_headers: String,
    out: Vec<u8>,
    /// Read buffer; an answer's head and body are read into it.
    buf: Vec<u8>,
    /// De-chunked body, only used for chunked answers.
    body: Vec<u8>,
    closed: bool,
}

/// An answer, borrowing the connection's buffers until the next call.
pub struct Reply<'a> {
    pub status: u16,
    /// The `Shoal-Invocation-Id` header.
    pub invocation_id: Option<&'a str>,
    /// True when the `Shoal-Function-Error` header is set.
    pub function_error: bool,
    pub body: &'a [u8],
}

impl Reply<'_> {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body)
            .chars()
            .take(500)
            .collect()
    }
}

/// Where an answer's parts sit in `Conn::buf`.
struct Parsed {
    status: u16,
    id: Option<(usize, usize)>,
    function_error: bool,
    head_len: usize,
    body: BodyKind,
}

enum BodyKind {
    Length(usize),
    Chunked,
}

impl Conn {
    /// True once the connection is unusable (a call on it failed).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Reply<'_>> {
        self.call("POST", path, "application/json", body).await
    }

    /// A POST with another content type (e.g. NDJSON documents).
    pub async fn post_as(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Reply<'_>> {
        self.call("POST", path, content_type, body).await
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply<'_>> {
        self.call("GET", path, "", &[]).await
    }

    /// A synchronous invocation that must succeed.
    pub async fn invoke_ok(&mut self, path: &str, body: &[u8]) -> Result<Reply<'_>> {
        let reply = self.post(path, body).await?;
        if !reply.is_success() {
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

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Reply<'_>> {
        if self.closed {
            bail!("the connection is closed");
        }
        self.closed = true; // until this call completes cleanly
        self.out.clear();
        write!(self.out, "{method} {path} HTTP/1.1\r\n")?;
        self.out.extend_from_slice(self.fixed_headers.as_bytes());
        if !body.is_empty() {
            write!(
                self.out,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            )?;
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        self.stream
            .write_all(&self.out)
            .await
            .context("sending the request")?;

        // Read until the head parses.
        let mut filled = 0;
        let parsed = loop {
            if filled == self.buf.len() {
                if self.buf.len() >= 1024 * 1024 {
                    bail!("the answer's head is larger than 1 MiB");
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self
                .stream
                .read(&mut self.buf[filled..])
                .await
                .context("reading the answer")?;
            if n == 0 {
                bail!("the node closed the connection");
            }
            filled += n;
            if let Some(p) = parse_head(&self.buf[..filled])? {
                break p;
            }
        };
        let body_range = match parsed.body {
            BodyKind::Length(len) => {
                let end = parsed.head_len + len;
                if self.buf.len() < end {
                    self.buf.resize(end, 0);
                }
                while filled < end {
                    let n = self
                        .stream
                        .read(&mut self.buf[filled..end])
                        .await
                        .context("reading the body")?;
                    if n == 0 {
                        bail!("the node closed the connection mid-body");
                    }
                    filled += n;
                }
                if filled != end {
                    bail!("the node sent more than one answer");
                }
                Some((parsed.head_len, end))
            }
            BodyKind::Chunked => {
                self.read_chunked(parsed.head_len, filled).await?;
                None
            }
        };
        self.closed = false;
        let id = parsed
            .id
            .and_then(|(a, b)| std::str::from_utf8(&self.buf[a..b]).ok());
        let body = match body_range {
            Some((a, b)) => &self.buf[a..b],
            None => &self.body[..],
        };
        Ok(Reply {
            status: parsed.status,
            invocation_id: id,
            function_error: parsed.function_error,
            body,
        })
    }

    /// Decodes a chunked body that starts at `buf[start..filled]` into `body`.
    async fn read_chunked(&mut self, start: usize, mut filled: usize) -> Result<()> {
        self.body.clear();
        let mut pos = start;
        loop {
            // Make sure a full chunk-size line is buffered.
            let line_end = loop {
                if let Some(i) = self.buf[pos..filled].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                filled = self.fill(filled).await?;
            };
            let line = std::str::from_utf8(&self.buf[pos..line_end]).context("bad chunk size")?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("bad chunk size {size_hex:?}"))?;
            pos = line_end + 2;
            // The chunk and its CRLF (or, for the last chunk, the final CRLF).
            while filled < pos + size + 2 {
                filled = self.fill(filled).await?;
            }
            self.body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
            if size == 0 {
                // No trailers from the node: the answer ends here.
                return Ok(());
            }
        }
    }

    /// Reads more bytes after `filled`, growing the buffer when full.
    async fn fill(&mut self, filled: usize) -> Result<usize> {
        if filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self
            .stream
            .read(&mut self.buf[filled..])
            .await
            .context("reading the body")?;
        if n == 0 {
            bail!("the node closed the connection mid-body");
        }
        Ok(filled + n)
    }
}

fn parse_head(data: &[u8]) -> Result<Option<Parsed>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(data).context("unreadable answer head")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let mut id = None;
    let mut function_error = false;
    let mut body = None;
    let base = data.as_ptr() as usize;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("bad Content-Length")?;
            body = Some(BodyKind::Length(len));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                body = Some(BodyKind::Chunked);
            }
        } else if h.name.eq_ignore_ascii_case(INVOCATION_ID_HEADER) {
            let start = h.value.as_ptr() as usize - base;
            id = Some((start, start + h.value.len()));
        } else if h.name.eq_ignore_ascii_case(FUNCTION_ERROR_HEADER) {
            function_error = true;
        }
    }
    let body = match body {
        Some(b) => b,
        // 204/304 and friends have no body.
        None if status == 204 || status == 304 || (100..200).contains(&status) => {
            BodyKind::Length(0)
        }
        None => bail!("the answer has neither Content-Length nor chunked encoding"),
    };
    Ok(Some(Parsed {
        status,
        id,
        function_error,
        head_len,
        body,
    }))
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
        let p = parse_head(data).unwrap().unwrap();
        assert_eq!(p.status, 200);
        let (a, b) = p.id.unwrap();
        assert_eq!(&data[a..b], b"abc-1");
        assert!(!p.function_error);
        assert!(matches!(p.body, BodyKind::Length(7)));
        assert_eq!(&data[p.head_len..], b"{\"n\":1}");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn talks_to_a_keep_alive_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let answers: [&[u8]; 2] = [
                b"HTTP/1.1 202 Accepted\r\nshoal-invocation-id: id-7\r\ncontent-length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            ];
            for answer in answers {
                let mut got = 0;
                // Requests here are small: read until the blank line and body.
                loop {
                    let n = s.read(&mut buf[got..]).await.unwrap();
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if got >= i + 4 + len {
                            assert!(text.contains("Authorization: Bearer tok\r\n"));
                            break;
                        }
                    }
                }
                s.write_all(answer).await.unwrap();
            }
        });
        let target = Target::new(addr, "tok\n").unwrap();
        let mut conn = target.connect().await.unwrap();
        let r = conn
            .post("/v1/functions/x/invoke?mode=async", b"{}")
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.invocation_id, r.body),
            (202, Some("id-7"), &b"{}"[..])
        );
        let r = conn.get("/metrics").await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"abcde"[..]));
        server.await.unwrap();
    }
}
