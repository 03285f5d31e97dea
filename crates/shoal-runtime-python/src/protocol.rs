//! The wire format between Rust and the runner (`_shoal_runner`), both
//! directions.
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
//!   which Rust sends on a timeout before killing the worker). A `result`
//!   may carry `"fatal":true`: the handler returned while one of its threads
//!   was still waiting for a host call, so the worker exits after the reply.
//!
//! **Host calls** (while an invocation runs; `ctx.call` in Python), version
//! `shoal_runtime::HOST_PROTOCOL_VERSION`, which the template states in its
//! first message (`host_protocol`):
//!
//! - worker → Rust: `{"kind":"host","seq":n,"op":"...","args":<JSON>}`.
//!   `seq` is unique within the worker; several calls may be in flight at
//!   once (from threads of the handler). `args` is at most
//!   `max_result_bytes` of JSON text (the worker checks before sending, Rust
//!   again before decoding). `op` and `args` decode into a
//!   `shoal_runtime::HostCall`, whose golden files
//!   (`crates/shoal-runtime/tests/golden/host/`) hold the exact frames.
//! - Rust → worker, in any order: `{"kind":"host_reply","seq":n,
//!   "result":<JSON>}` or `{"kind":"host_reply","seq":n,"error":{"code":..,
//!   "message":..}}`. Codes Rust makes itself: `no_host` (the request has no
//!   `Host`), `too_large`, `bad_answer` (the host answered with invalid JSON),
//!   `unknown_op` and `invalid_input` (the call does not decode).
//!
//!   Rust sends nothing else on the socket while an invocation runs, so the
//!   worker reads only replies until its `result`/`error`. Calls still
//!   pending when the invocation ends (result, timeout, crash, cancellation)
//!   are dropped, futures and all.
//!
//! **Template control socket** (`SOCK_SEQPACKET`, the template's fd 0): one JSON
//! object per message (same optional tail). Rust → template: `{"kind":"fork",
//! "req":n}` with two fds attached (`SCM_RIGHTS`: the worker's protocol socket
//! and log pipe). Template → Rust: `ready {host_protocol,pid,handler_error,
//! query}`, `load_failed {host_protocol,..}` (+ import-time output), `forked
//! {req,pid,ns_pid}` (sent by the new worker itself: `pid` as the node sees
//! it, `ns_pid` as the template does), `fork_failed {req,message}`, `exit {pid, code |
//! signal + signal_name, maxrss_kb}`.
//!
//! **Query frames** share the worker socket and its framing. Rust → worker: a
//! compact JSON object on one line, then, for frames that carry data, `\n`
//! and a tail (Python splits at the first newline; the header never holds
//! one, and invoke frames are told apart by their prefix):
//!
//! - `{"kind":"query","reduce":bool,"skip":bool,"report_ms":n,"drop":[[dataset,
//!   shard,version],...]}` starts a query (no reply); `drop` names resident
//!   shards the cache evicted.
//! - `{"kind":"run","unit":i,"key":[dataset,shard],"version":v}`: map the
//!   resident shard. Reply `done`, or `miss` when the worker does not hold it.
//! - `{"kind":"batch","unit":i,"key":..,"version":v,"keep":bytes}` + tail
//!   `[[id,...],[doc,...]]` (built by concatenation, decoded by one
//!   `json.loads`): map a batch streamed from storage; keep the shard's
//!   documents resident while they fit in `keep` bytes (0: do not keep; -1:
//!   keep for now, the size is being measured). Reply `ack`, whose `per_doc`
//!   is the measured size of a decoded document.
//! - `{"kind":"end","unit":i,"key":..,"version":v,"keep":bytes}`: the shard is
//!   complete. Reply `done`.
//! - `{"kind":"combine"}` + tail `[partial,...]`: reduce partial results in
//!   order. Reply `combined`.
//! - `{"kind":"drop","keys":[[dataset,shard,version],...]}` (no reply).
//! - `{"kind":"abort"}`, sent after SIGINT: reply `aborted` once every earlier
//!   frame has been answered or dropped.
//!
//! Worker → Rust (JSON object, optional raw tail, as above): `progress
//! {unit,docs}`, `values {unit}` + tail `[value,...]`, and the final replies
//! `ack {unit,docs,kept,per_doc}`, `done {unit,docs,errors,kept,failures,
//! has,partial}`, `miss`, `skipped` (a later frame of a failed shard),
//! `failed {unit,doc_id,failure,exception,message,traceback,fatal}`,
//! `combined {result}`, `aborted`. `docs` counts are deltas since the last
//! report of that shard.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use shoal_runtime::{HostError, Request};

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
    /// `host`: the call's number, operation and arguments.
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub args: Option<&'a RawValue>,
}

/// A frame from a worker running a query, borrowed from the read buffer.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryReply<'a> {
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub unit: Option<usize>,
    #[serde(default)]
    pub docs: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub kept: u64,
    #[serde(default)]
    pub per_doc: u64,
    #[serde(default)]
    pub has: bool,
    #[serde(borrow, default)]
    pub partial: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(default)]
    pub failures: Vec<WireFailure>,
    #[serde(default)]
    pub doc_id: Option<String>,
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

/// A failed document in a `done` frame (`skip_errors`).
#[derive(Debug, Deserialize)]
pub(crate) struct WireFailure {
    pub id: String,
    pub failure: String,
    #[serde(default)]
    pub exception: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
}

/// A message from a template.
#[derive(Debug, Deserialize)]
pub(crate) struct Control {
    pub kind: String,
    #[serde(default)]
    pub req: Option<u64>,
    #[serde(default)]
    pub pid: Option<i32>,
    /// `forked`: the worker's pid in the template's pid namespace (the one
    /// its `exit` names); `pid` is the node's.
    #[serde(default)]
    pub ns_pid: Option<i32>,
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
    /// `ready`: why invocations cannot run (the module has no handler).
    #[serde(default)]
    pub handler_error: Option<HandlerError>,
    /// `ready`: which query functions the module defines.
    #[serde(default)]
    pub query: Option<QueryFunctions>,
    /// `ready`, `load_failed`: the host-call protocol the runner speaks.
    #[serde(default)]
    pub host_protocol: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct HandlerError {
    #[serde(default)]
    pub exception: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub traceback: Option<String>,
}

/// The query functions a module defines.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct QueryFunctions {
    #[serde(default)]
    pub map: bool,
    #[serde(default)]
    pub map_batch: bool,
    #[serde(default)]
    pub reduce: bool,
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

/// Appends the reply to host call `seq` (a complete frame, header included)
/// to `out`. The host's answer is JSON text; it is checked (a worker must
/// never receive a frame it cannot decode) and spliced in as is.
pub(crate) fn host_reply_frame(
    out: &mut Vec<u8>,
    seq: u64,
    answer: std::result::Result<String, HostError>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(br#"{"kind":"host_reply","seq":"#);
    out.extend_from_slice(seq.to_string().as_bytes());
    let error = match answer {
        Ok(result) => match serde_json::from_str::<&RawValue>(&result) {
            Ok(value) => {
                out.extend_from_slice(br#","result":"#);
                out.extend_from_slice(value.get().as_bytes());
                None
            }
            Err(e) => Some(HostError {
                code: "bad_answer".into(),
                message: format!("the node answered the host call with invalid JSON: {e}"),
            }),
        },
        Err(error) => Some(error),
    };
    if let Some(error) = error {
        out.extend_from_slice(br#","error":{"code":"#);
        push_json_str(out, &error.code);
        out.extend_from_slice(br#","message":"#);
        push_json_str(out, &error.message);
        out.push(b'}');
    }
    out.push(b'}');
    let len = u32::try_from(out.len() - start - HEADER).unwrap_or(u32::MAX);
    out[start..start + HEADER].copy_from_slice(&len.to_be_bytes());
}

/// The control message asking a template to fork a worker, with its memory
/// limit in MiB.
pub(crate) fn fork_message(req: u64, memory_mb: u64) -> Vec<u8> {
    format!(r#"{{"kind":"fork","req":{req},"memory_mb":{memory_mb}}}"#).into_bytes()
}

/// A resident shard's name in a worker: `(dataset, shard)`.
pub(crate) type ShardKey = (String, u32);

/// Starts a frame: header space, then the JSON line.
fn start_frame(capacity: usize, header: &serde_json::Value) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + 128 + capacity);
    buf.extend_from_slice(&[0; HEADER]);
    // Serializing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut buf, header);
    buf
}

/// Writes the length into the header space.
fn finish_frame(mut buf: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(buf.len() - HEADER).unwrap_or(u32::MAX);
    buf[..HEADER].copy_from_slice(&len.to_be_bytes());
    buf
}

fn drop_list(drops: &[(ShardKey, u64)]) -> serde_json::Value {
    drops
        .iter()
        .map(|((dataset, shard), version)| serde_json::json!([dataset, shard, version]))
        .collect()
}

pub(crate) fn query_start_frame(
    reduce: bool,
    skip_errors: bool,
    report: Duration,
    drops: &[(ShardKey, u64)],
) -> Vec<u8> {
    let header = serde_json::json!({
        "kind": "query",
        "reduce": reduce,
        "skip": skip_errors,
        "report_ms": report.as_millis() as u64,
        "drop": drop_list(drops),
    });
    finish_frame(start_frame(0, &header))
}

pub(crate) fn drop_frame(drops: &[(ShardKey, u64)]) -> Vec<u8> {
    let header = serde_json::json!({"kind": "drop", "keys": drop_list(drops)});
    finish_frame(start_frame(0, &header))
}

pub(crate) fn run_frame(unit: usize, key: &ShardKey, version: u64) -> Vec<u8> {
    let header =
        serde_json::json!({"kind": "run", "unit": unit, "key": [key.0, key.1], "version": version});
    finish_frame(start_frame(0, &header))
}

pub(crate) fn end_frame(unit: usize, key: &ShardKey, version: u64, keep: i64) -> Vec<u8> {
    let header = serde_json::json!({
        "kind": "end", "unit": unit, "key": [key.0, key.1], "version": version, "keep": keep,
    });
    finish_frame(start_frame(0, &header))
}

/// A batch of documents as `[[id,...],[doc,...]]`: the documents' JSON text
/// is copied in, never parsed here.
pub(crate) fn batch_frame(
    unit: usize,
    key: &ShardKey,
    version: u64,
    keep: i64,
    docs: &[(String, Vec<u8>)],
) -> Vec<u8> {
    let header = serde_json::json!({
        "kind": "batch", "unit": unit, "key": [key.0, key.1], "version": version, "keep": keep,
    });
    let size: usize = docs.iter().map(|(id, doc)| id.len() + doc.len() + 4).sum();
    let mut buf = start_frame(size + 8, &header);
    buf.extend_from_slice(b"\n[[");
    for (i, (id, _)) in docs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json_str(&mut buf, id);
    }
    buf.extend_from_slice(b"],[");
    for (i, (_, doc)) in docs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(doc);
    }
    buf.extend_from_slice(b"]]");
    finish_frame(buf)
}

/// Partial results (JSON texts) to reduce, in document order.
pub(crate) fn combine_frame(partials: &[String]) -> Vec<u8> {
    let size: usize = partials.iter().map(|p| p.len() + 1).sum();
    let mut buf = start_frame(size + 4, &serde_json::json!({"kind": "combine"}));
    buf.extend_from_slice(b"\n[");
    for (i, p) in partials.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(p.as_bytes());
    }
    buf.push(b']');
    finish_frame(buf)
}

pub(crate) fn abort_frame() -> Vec<u8> {
    finish_frame(start_frame(0, &serde_json::json!({"kind": "abort"})))
}

/// Turns a compact JSON array (as Python's encoder writes it) into NDJSON:
/// one element per line. Only the top-level commas are touched; strings are
/// skipped over with their escapes.
pub(crate) fn array_to_lines(array: &[u8]) -> Option<Vec<u8>> {
    let inner = array.strip_prefix(b"[")?.strip_suffix(b"]")?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::with_capacity(inner.len() + 1);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in inner.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                out.extend_from_slice(&inner[start..i]);
                out.push(b'\n');
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return None;
    }
    out.extend_from_slice(&inner[start..]);
    out.push(b'\n');
    Some(out)
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
            host: None,

            gate: None,
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
    fn arrays_become_lines() {
        let lines = array_to_lines(br#"[1,"a,b",{"x":[1,2]},"q\"],",null]"#).unwrap();
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "1\n\"a,b\"\n{\"x\":[1,2]}\n\"q\\\"],\"\nnull\n"
        );
        assert_eq!(array_to_lines(b"[]").unwrap(), b"");
        assert!(array_to_lines(b"[1,").is_none());
        assert!(array_to_lines(b"[\"x]").is_none());
    }

    #[test]
    fn batch_frames_hold_ids_and_docs() {
        let docs = vec![
            ("a\"1".to_string(), br#"{"x":1}"#.to_vec()),
            ("b".to_string(), b"[2]".to_vec()),
        ];
        let frame = batch_frame(3, &("ds".into(), 7), 9, 100, &docs);
        assert_eq!(frame_len(&frame), Some(frame.len() - HEADER));
        let body = &frame[HEADER..];
        let nl = body.iter().position(|&b| b == b'\n').unwrap();
        let head: serde_json::Value = serde_json::from_slice(&body[..nl]).unwrap();
        assert_eq!(
            head,
            serde_json::json!({"kind": "batch", "unit": 3, "key": ["ds", 7], "version": 9, "keep": 100})
        );
        let tail: serde_json::Value = serde_json::from_slice(&body[nl + 1..]).unwrap();
        assert_eq!(tail, serde_json::json!([["a\"1", "b"], [{"x": 1}, [2]]]));
    }

    #[test]
    fn host_frames_parse() {
        let body = br#"{"kind":"host","seq":7,"op":"map","args":{"events":[1,{"a":"}"}]}}"#;
        let (reply, tail): (Reply<'_>, &[u8]) = split(body).unwrap();
        assert_eq!(reply.kind, "host");
        assert_eq!(reply.seq, Some(7));
        assert_eq!(reply.op.as_deref(), Some("map"));
        assert_eq!(reply.args.unwrap().get(), r#"{"events":[1,{"a":"}"}]}"#);
        assert!(tail.is_empty());
    }

    #[test]
    fn host_replies_carry_results_and_errors() {
        let mut out = Vec::new();
        host_reply_frame(&mut out, 3, Ok(" {\"ids\": [1, 2]}\n".into()));
        let first = out.len();
        host_reply_frame(
            &mut out,
            4,
            Err(HostError {
                code: "nope".into(),
                message: "no \"such\" queue".into(),
            }),
        );
        host_reply_frame(&mut out, 5, Ok("{not json".into()));
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let len = frame_len(rest).unwrap();
            frames.push(
                serde_json::from_slice::<serde_json::Value>(&rest[HEADER..HEADER + len]).unwrap(),
            );
            rest = &rest[HEADER + len..];
        }
        assert_eq!(frame_len(&out), Some(first - HEADER));
        assert_eq!(
            frames[0],
            serde_json::json!({"kind": "host_reply", "seq": 3, "result": {"ids": [1, 2]}})
        );
        assert_eq!(
            frames[1],
            serde_json::json!({"kind": "host_reply", "seq": 4,
                "error": {"code": "nope", "message": "no \"such\" queue"}})
        );
        assert_eq!(frames[2]["error"]["code"], "bad_answer");
        assert_eq!(frames.len(), 3);
    }

    /// The golden replies of the host-call protocol (crate shoal-runtime,
    /// `tests/golden/host/`) are exactly what `host_reply_frame` writes.
    #[test]
    fn host_replies_are_the_golden_ones() {
        #[derive(Deserialize)]
        struct Golden {
            cases: Vec<Case>,
        }
        #[derive(Deserialize)]
        struct Case {
            reply: String,
        }
        #[derive(Deserialize)]
        struct GoldenReply<'a> {
            seq: u64,
            #[serde(borrow, default)]
            result: Option<&'a RawValue>,
            #[serde(default)]
            error: Option<GoldenError>,
        }
        #[derive(Deserialize)]
        struct GoldenError {
            code: String,
            message: String,
        }

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shoal-runtime/tests/golden/host");
        let mut replies = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let golden: Golden = serde_json::from_str(&text).unwrap();
            for case in golden.cases {
                let reply: GoldenReply<'_> = serde_json::from_str(&case.reply).unwrap();
                let answer = match (reply.result, reply.error) {
                    (Some(result), None) => Ok(result.get().to_string()),
                    (None, Some(e)) => Err(HostError::new(e.code, e.message)),
                    _ => panic!("{:?}: {}", entry.path(), case.reply),
                };
                let mut out = Vec::new();
                host_reply_frame(&mut out, reply.seq, answer);
                assert_eq!(frame_len(&out), Some(out.len() - HEADER));
                assert_eq!(
                    std::str::from_utf8(&out[HEADER..]).unwrap(),
                    case.reply,
                    "{:?}",
                    entry.path()
                );
                replies += 1;
            }
        }
        assert!(replies > 20, "{replies} golden replies");
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
