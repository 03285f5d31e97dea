//! The wire format between Rust and `runner.py`, both directions.
//!
//! **Worker protocol socket** (`AF_UNIX`, `SOCK_STREAM`, one per worker): each
//! frame is a 4-byte big-endian length, then that many bytes holding a UTF-8
//! JSON object with a `kind`, optionally followed by raw bytes (the frame's
//! *tail*, for example captured logs), which need no JSON escaping.
//!
//! - Rust → worker: `{"kind":"invoke","id":..,"function":..,"version":..,
//!   "attempt":..,"timeout_ms":..,"event":<the event's JSON text, spliced in>}`.
//! - worker → Rust: `{"kind":"result","result":<JSON>}` + logs;
//!   `{"kind":"error","failure":<FailureKind::as_str or "protocol"/"bad_event">,
//!   "exception":..,"message":..,"traceback":..,"fatal":bool}` + logs (a fatal
//!   error means the worker exits); `{"kind":"logs"}` + logs (answer to SIGUSR2,
//!   which Rust sends on a timeout before killing the worker).
//!
//! **Template control socket** (`SOCK_SEQPACKET`, the template's fd 0): one JSON
//! object per message (same optional tail). Rust → template: `{"kind":"fork",
//! "req":n}` with two fds attached (`SCM_RIGHTS`: the worker's protocol socket
//! and log pipe). Template → Rust: `ready`, `load_failed` (+ import-time
//! output), `forked {req,pid}`, `fork_failed {req,message}`, `exit {pid, code |
//! signal + signal_name, maxrss_kb}`.
//!
//! New frame kinds (batch map/reduce for queries) extend this without changing
//! the framing.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use shoal_runtime::Request;

/// Length of a frame header.
pub(crate) const HEADER: usize = 4;

/// A frame from a worker, borrowed from the read buffer.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply<'a> {
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub failure: Option<Cow<'a, str>>,
    #[serde(default)]
    pub exception: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
    #[serde(default)]
    pub fatal: bool,
}

/// A message from a template.
#[derive(Debug, Deserialize)]
pub(crate) struct Control {
    pub kind: String,
    #[serde(default)]
    pub req: Option<u64>,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub signal_name: Option<String>,
    #[serde(default)]
    pub maxrss_kb: Option<u64>,
    #[serde(default)]
    pub exception: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
}

/// Builds a complete invoke frame (header included). The event's JSON text is
/// spliced in as is: it is decoded once, by the worker.
pub(crate) fn invoke_frame(request: &Request, timeout: Duration) -> Vec<u8> {
    let event = request.event.trim();
    let event = if event.is_empty() { "null" } else { event };
    let mut buf = Vec::with_capacity(
        HEADER + 128 + event.len() + request.invocation_id.len() + request.function.len(),
    );
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(br#"{"kind":"invoke","id":"#);
    push_json_str(&mut buf, &request.invocation_id);
    buf.extend_from_slice(br#","function":"#);
    push_json_str(&mut buf, &request.function);
    buf.extend_from_slice(
        format!(
            r#","version":{},"attempt":{},"timeout_ms":{},"event":"#,
            request.version,
            request.attempt,
            timeout.as_millis()
        )
        .as_bytes(),
    );
    buf.extend_from_slice(event.as_bytes());
    buf.push(b'}');
    let len = u32::try_from(buf.len() - HEADER).unwrap_or(u32::MAX);
    buf[..HEADER].copy_from_slice(&len.to_be_bytes());
    buf
}

/// The control message asking a template to fork a worker.
pub(crate) fn fork_message(req: u64) -> Vec<u8> {
    format!(r#"{{"kind":"fork","req":{req}}}"#).into_bytes()
}

/// Splits a frame body into its JSON object and its raw tail.
pub(crate) fn split<'a, T: Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<(T, &'a [u8])> {
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    let value = match stream.next() {
        Some(value) => value?,
        None => {
            return Err(serde::de::Error::custom("empty frame"));
        }
    };
    let tail = &body[stream.byte_offset()..];
    Ok((value, tail))
}

/// The length announced by a frame header, once `buf` holds one.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    let head: [u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
    Some(u32::from_be_bytes(head) as usize)
}

fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Serializing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(event: &str) -> Request {
        Request {
            invocation_id: "inv-\"1\"".into(),
            function: "hello".into(),
            version: 3,
            attempt: 2,
            event: event.into(),
        }
    }

    #[test]
    fn invoke_frame_splices_the_event() {
        let frame = invoke_frame(&request(r#"{"a": [1, 2]}"#), Duration::from_millis(1500));
        assert_eq!(frame_len(&frame), Some(frame.len() - HEADER));
        let value: serde_json::Value = serde_json::from_slice(&frame[HEADER..]).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "kind": "invoke", "id": "inv-\"1\"", "function": "hello", "version": 3,
                "attempt": 2, "timeout_ms": 1500, "event": {"a": [1, 2]}
            })
        );
    }

    #[test]
    fn empty_event_is_null() {
        let frame = invoke_frame(&request("  "), Duration::from_secs(1));
        let value: serde_json::Value = serde_json::from_slice(&frame[HEADER..]).unwrap();
        assert_eq!(value["event"], serde_json::Value::Null);
    }

    #[test]
    fn split_separates_json_and_tail() {
        let body = b"{\"kind\":\"result\",\"result\":{\"x\":[1,\"}\"]}}log \xff bytes";
        let (reply, tail): (Reply<'_>, &[u8]) = split(body).unwrap();
        assert_eq!(reply.kind, "result");
        assert_eq!(reply.result.unwrap().get(), r#"{"x":[1,"}"]}"#);
        assert_eq!(tail, b"log \xff bytes");
    }

    #[test]
    fn split_without_tail() {
        let (reply, tail): (Reply<'_>, &[u8]) =
            split(br#"{"kind":"error","failure":"raised","message":"boom","fatal":false}"#)
                .unwrap();
        assert_eq!(reply.failure.as_deref(), Some("raised"));
        assert_eq!(reply.message.as_deref(), Some("boom"));
        assert!(tail.is_empty());
    }
}
