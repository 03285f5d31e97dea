//! Host calls: running user code calling back into the node (`ctx.spawn`,
//! `ctx.map`, `ctx.send`, ...), as one typed, versioned protocol.
//!
//! A runtime carries each call from the worker to the engine's [`Host`] as
//! a [`HostCall`]: one variant per operation, each with its arguments as a
//! serde struct. Event, body and document payloads stay the JSON text the
//! worker sent ([`RawValue`]), so documents are never decoded into a tree
//! and re-encoded on their way to the store.
//!
//! On the wire (Python: `crates/shoal-runtime-python`, `host.py`) a call is
//! the operation's name and its arguments as a JSON object;
//! [`HostCall::decode`] turns the pair into a `HostCall` or into the
//! [`HostError`] the worker gets back (`unknown_op`, `invalid_input`). The
//! exact frames the Python side sends, and the replies it understands, are
//! pinned by the golden files in `tests/golden/host/` (one per operation),
//! which tests on both sides check. [`HOST_PROTOCOL_VERSION`] names this
//! protocol; a worker states the version it speaks before it serves, and a
//! runtime refuses one that speaks another.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The version of the host-call protocol: the operations, their arguments
/// and their answers. Bump it (and the golden files, and `HOST_PROTOCOL` in
/// the Python runner) on any change a worker of the previous version would
/// get wrong.
pub const HOST_PROTOCOL_VERSION: u32 = 1;

/// An error answer to a host call; the Python side raises it as
/// `ctx.HostError(code, message)` (`.code`, `.message`).
///
/// Codes made while decoding a call: `unknown_op` (no such operation) and
/// `invalid_input` (its arguments do not fit). The engine's own codes name
/// what went wrong, e.g. `function_not_found`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub code: String,
    pub message: String,
}

impl HostError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> HostError {
        HostError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Calls from running user code back into the node. The engine implements
/// it; the runtime only carries the calls. The answer is JSON text (each
/// operation's answer is documented on its [`HostCall`] variant).
pub trait Host: Send + Sync + 'static {
    fn call(&self, call: HostCall) -> BoxFuture<'static, std::result::Result<String, HostError>>;
}

/// Defines [`HostCall`] and its table of operations from one list, so that
/// the enum, the names on the wire and the decoder cannot disagree.
macro_rules! host_calls {
    ($(
        $(#[$doc:meta])*
        $variant:ident($args:ident) = $op:literal,
    )*) => {
        /// One host call, decoded. See the module docs.
        #[derive(Debug)]
        pub enum HostCall {
            $( $(#[$doc])* $variant($args), )*
        }

        impl HostCall {
            /// Every operation's name on the wire, in declaration order.
            pub const OPS: &'static [&'static str] = &[$($op),*];

            /// Decodes a call from its operation's name and its arguments
            /// (JSON text).
            pub fn decode(op: &str, args: &str) -> std::result::Result<HostCall, HostError> {
                match op {
                    $( $op => decode_args(op, args).map(HostCall::$variant), )*
                    _ => Err(unknown_op(op)),
                }
            }

            /// The operation's name on the wire.
            pub fn op(&self) -> &'static str {
                match self {
                    $( HostCall::$variant(_) => $op, )*
                }
            }

            /// The arguments as compact JSON text, in the field order the
            /// Python runner writes them; payloads are the text received.
            pub fn encode_args(&self) -> String {
                let encoded = match self {
                    $( HostCall::$variant(args) => serde_json::to_string(args), )*
                };
                // Plain structs of strings, numbers and raw JSON: writing
                // them into a string cannot fail.
                encoded.unwrap_or_else(|e| unreachable!("encoding host call arguments: {e}"))
            }
        }
    };
}

host_calls! {
    /// `ctx.spawn(function, event)`: an asynchronous invocation. Answer
    /// `{"id"}`.
    Spawn(SpawnArgs) = "spawn",
    /// `ctx.send(queue, body, delay, dedup_id)`: a message on a queue.
    /// Answer `{"id"}` (the message's id).
    Send(SendArgs) = "send",
    /// `ctx.map(function, events, then)`: a job, one child per event.
    /// Answer `{"job"}`.
    Map(MapArgs) = "map",
    /// `ctx.job(job)`: a job's progress. Answer `{"job", "status", "total",
    /// "succeeded", "failed", "cancelled", "pending"}`.
    Job(JobArgs) = "job",
    /// `ctx.job_results(job, offset, limit)`: a page of a job's results.
    /// Answer `{"results": [{"index", "invocation", "status", "output",
    /// "error"}]}`.
    JobResults(JobResultsArgs) = "job_results",
    /// `ctx.put_docs(category, docs)` and `ctx.put`: documents, durable
    /// when answered. Answer `{"ids"}`.
    PutDocs(PutDocsArgs) = "put_docs",
    /// `ctx.get(category, id)`: one document. Answer `{"doc"}`, `null` when
    /// there is none.
    GetDoc(GetDocArgs) = "get_doc",
    /// `ctx.kv_get(key)` (`ctx.kv.get`, `ctx.kv.entry`): a key's entry.
    /// Answer `{"entry"}`: `{"expires_at_ms", "key", "updated_at_ms",
    /// "value", "version"}`, `null` when the key is absent or expired.
    KvGet(KvGetArgs) = "kv_get",
    /// `ctx.kv_set(key, value, ttl, nx, xx, version)`: a write, when its
    /// condition holds. Answer `{"entry", "written"}`: the new entry, or,
    /// when the condition did not hold, the current one (`null` if absent)
    /// with `"written": false`.
    KvSet(KvSetArgs) = "kv_set",
    /// `ctx.kv_incr(key, by)`: adds to an integer value. Answer
    /// `{"entry"}`; error `not_an_integer`.
    KvIncr(KvIncrArgs) = "kv_incr",
    /// `ctx.kv_delete(key, version)`. Answer `{"deleted"}`: false when the
    /// key was absent or at another version.
    KvDelete(KvDeleteArgs) = "kv_delete",
    /// `ctx.kv_list(prefix, cursor, limit)`: a page of live entries by key
    /// prefix. Answer `{"entries", "next"}`.
    KvList(KvListArgs) = "kv_list",
    /// `ctx.blob_open(key, offset, length)` (`ctx.blob(key)`): a blob's
    /// metadata and where this node's disk holds the range (the worker
    /// reads those files itself). Answer `{"blob", "pieces"}`: `blob` is
    /// `{"content_type", "etag", "fixed_size", "key", "size", "version"}` or
    /// `null` when absent; `pieces` is `[{"length", "offset", "path"}]`, or
    /// `null` when the bytes are not in files here (read them with
    /// `blob_read`).
    BlobOpen(BlobOpenArgs) = "blob_open",
    /// `ctx.blob_read(key, offset, length, etag)`: bytes of a blob through
    /// the node, at most 4 MiB a call. Answer `{"data", "etag"}` (`data`
    /// base64); error `blob_changed` when `etag` is given and the blob's
    /// content is another by now.
    BlobRead(BlobReadArgs) = "blob_read",
    /// `ctx.blob_apply(key, ops)`: a batch of bit and byte operations on a
    /// fixed-size blob, all or nothing (the ops of `POST
    /// /v1/blobs/{key}/bitfield`). Answer `{"etag", "results", "version"}`.
    BlobApply(BlobApplyArgs) = "blob_apply",
    /// `ctx.publish(channel, data, blob, ops)`: one message on a channel;
    /// with `blob` and `ops`, the blob's operations applied in the same
    /// atomic step (both or neither). Answer `{"epoch", "offset"}`, plus
    /// `"results"` (one per op) with ops.
    Publish(PublishArgs) = "publish",
    /// `ctx.channel_position(channel)`: the epoch and offset of the
    /// channel's last message (0 when none). Answer `{"epoch", "offset"}`.
    ChannelPosition(ChannelPositionArgs) = "channel_position",
    /// `ctx.blob_create(key, size, if_absent)`: a zero-filled fixed-size
    /// blob. Answer `{"blob", "created"}` (with `if_absent` and a blob
    /// already there: that blob and `false`).
    BlobCreate(BlobCreateArgs) = "blob_create",
    /// `ctx.blob_put(key, data, content_type)`: a whole blob from a handler
    /// (base64 `data`, within the host call's size limit). Answer `{"blob"}`.
    BlobPut(BlobPutArgs) = "blob_put",
    /// `ctx.map_ranges(key, function, chunk_bytes, records, then,
    /// max_in_flight, args, windows)`: a job with one child per byte range
    /// of a blob (or of some windows of it), aligned to records. Answer
    /// `{"children", "job"}`.
    MapRanges(MapRangesArgs) = "map_ranges",
    /// `ctx.job_wait(job, timeout)`: waits until the job and its fan-in
    /// have finished. Answer `{"error", "job", "output", "status"}`: the
    /// fan-in invocation's status, output and error (the job's own status,
    /// and null output, for a job without one); error `timeout`.
    JobWait(JobWaitArgs) = "job_wait",
}

/// Arguments of [`HostCall::Spawn`].
#[derive(Debug, Deserialize, Serialize)]
pub struct SpawnArgs {
    pub function: String,
    /// The event's JSON text; `None` when the call passed `null` or none.
    #[serde(default)]
    pub event: Option<Box<RawValue>>,
}

/// Arguments of [`HostCall::Send`].
#[derive(Debug, Deserialize, Serialize)]
pub struct SendArgs {
    pub queue: String,
    /// The message body's JSON text.
    pub body: Box<RawValue>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub dedup_id: Option<String>,
}

/// Arguments of [`HostCall::Map`].
#[derive(Debug, Deserialize, Serialize)]
pub struct MapArgs {
    pub function: String,
    /// Each child's event, as JSON text.
    pub events: Vec<Box<RawValue>>,
    /// The function invoked once every child has finished.
    #[serde(default)]
    pub then: Option<String>,
}

/// Arguments of [`HostCall::Job`].
#[derive(Debug, Deserialize, Serialize)]
pub struct JobArgs {
    pub job: String,
}

/// Arguments of [`HostCall::JobResults`].
#[derive(Debug, Deserialize, Serialize)]
pub struct JobResultsArgs {
    pub job: String,
    /// The first child index of the page.
    #[serde(default)]
    pub offset: u64,
    /// Results at most; the node caps it.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Arguments of [`HostCall::PutDocs`].
#[derive(Debug, Deserialize, Serialize)]
pub struct PutDocsArgs {
    pub category: String,
    pub docs: Vec<DocArg>,
}

/// One document of [`PutDocsArgs`].
#[derive(Debug, Deserialize, Serialize)]
pub struct DocArg {
    /// `None`: the node makes an id.
    #[serde(default)]
    pub id: Option<String>,
    /// The document's JSON text, stored as it is.
    pub doc: Box<RawValue>,
}

/// Arguments of [`HostCall::GetDoc`].
#[derive(Debug, Deserialize, Serialize)]
pub struct GetDocArgs {
    pub category: String,
    pub id: String,
}

/// Arguments of [`HostCall::KvGet`].
#[derive(Debug, Deserialize, Serialize)]
pub struct KvGetArgs {
    pub key: String,
}

/// Arguments of [`HostCall::KvSet`].
#[derive(Debug, Deserialize, Serialize)]
pub struct KvSetArgs {
    pub key: String,
    /// The value's JSON text.
    pub value: Box<RawValue>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub nx: bool,
    #[serde(default)]
    pub xx: bool,
    #[serde(default)]
    pub version: Option<u64>,
}

/// Arguments of [`HostCall::KvIncr`].
#[derive(Debug, Deserialize, Serialize)]
pub struct KvIncrArgs {
    pub key: String,
    #[serde(default = "one")]
    pub by: i64,
}

fn one() -> i64 {
    1
}

/// Arguments of [`HostCall::KvDelete`].
#[derive(Debug, Deserialize, Serialize)]
pub struct KvDeleteArgs {
    pub key: String,
    #[serde(default)]
    pub version: Option<u64>,
}

/// Arguments of [`HostCall::KvList`].
#[derive(Debug, Deserialize, Serialize)]
pub struct KvListArgs {
    pub prefix: String,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Arguments of [`HostCall::BlobOpen`].
#[derive(Debug, Deserialize, Serialize)]
pub struct BlobOpenArgs {
    pub key: String,
    #[serde(default)]
    pub offset: u64,
    /// `None`: to the end.
    #[serde(default)]
    pub length: Option<u64>,
}

/// Arguments of [`HostCall::BlobRead`].
#[derive(Debug, Deserialize, Serialize)]
pub struct BlobReadArgs {
    pub key: String,
    pub offset: u64,
    pub length: u64,
    /// The content the caller is reading (from `blob_open`).
    #[serde(default)]
    pub etag: Option<String>,
}

/// Arguments of [`HostCall::BlobApply`].
#[derive(Debug, Deserialize, Serialize)]
pub struct BlobApplyArgs {
    pub key: String,
    /// The operations' JSON objects (see `shoal_store::OpSpec`).
    pub ops: Vec<Box<RawValue>>,
}

/// Arguments of [`HostCall::Publish`].
#[derive(Debug, Deserialize, Serialize)]
pub struct PublishArgs {
    pub channel: String,
    /// The message: any JSON value.
    pub data: Box<RawValue>,
    /// A fixed-size blob to apply `ops` to in the same step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The operations' JSON objects (see `shoal_store::OpSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<Box<RawValue>>>,
}

/// Arguments of [`HostCall::ChannelPosition`].
#[derive(Debug, Deserialize, Serialize)]
pub struct ChannelPositionArgs {
    pub channel: String,
}

/// Arguments of [`HostCall::BlobCreate`].
#[derive(Debug, Deserialize, Serialize)]
pub struct BlobCreateArgs {
    pub key: String,
    pub size: u64,
    #[serde(default)]
    pub if_absent: bool,
}

/// Arguments of [`HostCall::BlobPut`].
#[derive(Debug, Deserialize, Serialize)]
pub struct BlobPutArgs {
    pub key: String,
    /// The bytes, base64.
    pub data: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Arguments of [`HostCall::MapRanges`].
#[derive(Debug, Deserialize, Serialize)]
pub struct MapRangesArgs {
    pub key: String,
    pub function: String,
    /// Bytes per child (rounded down to whole records).
    pub chunk_bytes: u64,
    /// A record size in bytes (a number) or `"lines"`.
    pub records: Box<RawValue>,
    #[serde(default)]
    pub then: Option<String>,
    /// At most this many children of the job run at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// JSON given to every child as `args`.
    #[serde(default)]
    pub args: Option<Box<RawValue>>,
    /// Only these byte windows `[offset, length]` of the blob, each cut into
    /// ranges on its own; `None`: the whole blob.
    #[serde(default)]
    pub windows: Option<Vec<(u64, u64)>>,
}

/// Arguments of [`HostCall::JobWait`].
#[derive(Debug, Deserialize, Serialize)]
pub struct JobWaitArgs {
    pub job: String,
    /// How long to wait at most; `None`: as long as the invocation may run.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn decode_args<'a, T: Deserialize<'a>>(op: &str, args: &'a str) -> Result<T, HostError> {
    let invalid = |why: &dyn std::fmt::Display| {
        HostError::new(
            "invalid_input",
            format!("bad arguments for the host call {op:?}: {why}"),
        )
    };
    // Arguments are an object: serde would also take a struct's fields
    // from an array, in order.
    if !args.trim_start().starts_with('{') {
        return Err(invalid(&"expected a JSON object"));
    }
    serde_json::from_str(args).map_err(|e| invalid(&e))
}

fn unknown_op(op: &str) -> HostError {
    let (last, rest) = HostCall::OPS.split_last().unwrap_or((&"", &[]));
    HostError::new(
        "unknown_op",
        format!(
            "no host call named {op:?}; the calls are {} and {last}",
            rest.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_decode_and_encode_back() {
        let call = HostCall::decode(
            "send",
            r#"{"queue":"q","body":{"a": [1, 2.50]},"delay_ms":null,"dedup_id":"d"}"#,
        )
        .unwrap();
        assert_eq!(call.op(), "send");
        let HostCall::Send(args) = &call else {
            panic!("{call:?}")
        };
        // The body stays the text that came in, spaces and all.
        assert_eq!(args.body.get(), r#"{"a": [1, 2.50]}"#);
        assert_eq!(
            call.encode_args(),
            r#"{"queue":"q","body":{"a": [1, 2.50]},"delay_ms":null,"dedup_id":"d"}"#
        );
    }

    #[test]
    fn options_may_be_left_out() {
        let HostCall::JobResults(args) = HostCall::decode("job_results", r#"{"job":"j"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((args.offset, args.limit), (0, None));
        let HostCall::Spawn(args) =
            HostCall::decode("spawn", r#"{"function":"f","event":null}"#).unwrap()
        else {
            panic!()
        };
        assert!(args.event.is_none());
    }

    #[test]
    fn unknown_ops_and_bad_arguments_are_host_errors() {
        let e = HostCall::decode("echo", "{}").unwrap_err();
        assert_eq!(e.code, "unknown_op");
        assert_eq!(
            e.message,
            "no host call named \"echo\"; the calls are spawn, send, map, job, job_results, put_docs, get_doc, kv_get, kv_set, kv_incr, kv_delete, kv_list, blob_open, blob_read, blob_apply, publish, channel_position, blob_create, blob_put, map_ranges and job_wait"
        );
        let e = HostCall::decode("map", r#"{"function":"f"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert!(e.message.contains("missing field `events`"), "{e:?}");
        let e = HostCall::decode("get_doc", r#"["c", "id"]"#).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert_eq!(
            e.message,
            "bad arguments for the host call \"get_doc\": expected a JSON object"
        );
    }

    #[test]
    fn bad_arguments_name_their_op() {
        for op in HostCall::OPS {
            // Each op's arguments have at least one required field.
            let e = HostCall::decode(op, "{}").unwrap_err();
            assert_eq!(e.code, "invalid_input", "{op}");
            assert!(e.message.contains(&format!("{op:?}")), "{e:?}");
        }
    }
}
