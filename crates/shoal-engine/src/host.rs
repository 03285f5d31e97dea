//! The engine's answers to host calls from running handlers (`ctx.call`):
//! `spawn` (an asynchronous invocation of a function), `send` (messages on
//! a queue), `map` (a job: fan-out with fan-in, see `jobs`), `job` (a job's
//! progress), `job_results` (a page of its children's results), `put_docs`
//! and `get_doc` (documents in categories, durable when the call returns),
//! `kv_get`, `kv_set`, `kv_incr`, `kv_delete` and `kv_list` (the key-value
//! store, see `kv`), `blob_open`, `blob_read`, `blob_apply`, `blob_create`
//! and `blob_put` (blobs, see `blobs`), `map_ranges` and `job_wait` (see
//! `ranges`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;

use shoal_runtime::{Host, HostCall, HostError};

use crate::blobs::Blobs;
use crate::categories::NewDoc;
use crate::dispatch::Dispatcher;
use crate::error::{Conflict, Entity, Error};
use crate::jobs::{Caller, JobSpec};
use crate::kv::{Kv, KvWhen};
use crate::queues::OutMessage;
use crate::ranges::{RangeJob, Records};

/// Host calls of one invocation.
pub(crate) struct EngineHost {
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) caller: Caller,
}

/// Results per `job_results` call at most (and by default).
const RESULTS_PAGE: usize = 1000;
/// Bytes one `blob_read` answers at most.
pub const MAX_BLOB_READ: u64 = 4 << 20;

impl Host for EngineHost {
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<String, HostError>> {
        let engine = self.dispatcher.clone();
        let caller = self.caller.clone();
        Box::pin(async move { answer(&engine, &caller, call).await })
    }
}

/// Operation specs as sent by a worker, parsed; the first bad one fails the
/// call, which changes nothing.
fn parse_ops(
    raw: &[Box<serde_json::value::RawValue>],
) -> Result<Vec<shoal_store::BlobOp>, HostError> {
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            serde_json::from_str::<shoal_store::OpSpec>(raw.get())
                .map_err(|e| e.to_string())
                .and_then(|spec| spec.parse())
                .map_err(|why| {
                    HostError::new(
                        "invalid_input",
                        format!("ops[{i}]: {why}; nothing was changed"),
                    )
                })
        })
        .collect()
}

async fn answer(engine: &Dispatcher, caller: &Caller, call: HostCall) -> Result<String, HostError> {
    match call {
        HostCall::Spawn(a) => {
            let event = a
                .event
                .map_or_else(|| "{}".to_string(), |e| e.get().to_string());
            let id = engine
                .invoke_async_by(&caller.origin, &a.function, event)
                .await
                .map_err(host_error)?;
            Ok(json!({ "id": id }).to_string())
        }
        HostCall::Send(a) => {
            let msg = OutMessage {
                body: a.body.get().to_string(),
                delay: Duration::from_millis(a.delay_ms.unwrap_or(0)),
                dedup_id: a.dedup_id,
            };
            let ids = engine
                .queues
                .send(&a.queue, vec![msg])
                .await
                .map_err(host_error)?;
            Ok(json!({ "id": ids.first() }).to_string())
        }
        HostCall::Map(a) => {
            let spec = JobSpec {
                function: a.function,
                events: a.events.into_iter().map(|e| e.get().to_string()).collect(),
                then: a.then,
                max_in_flight: None,
            };
            let id = engine
                .jobs
                .start(spec, Some(caller), &caller.origin)
                .await
                .map_err(host_error)?;
            Ok(json!({ "job": id }).to_string())
        }
        HostCall::PutDocs(a) => {
            for (i, d) in a.docs.iter().enumerate() {
                crate::documents::check_document(d.doc.get().as_bytes()).map_err(|why| {
                    HostError::new(
                        "invalid_input",
                        format!("document {i} {why}; nothing was written"),
                    )
                })?;
            }
            let docs = a
                .docs
                .into_iter()
                .map(|d| NewDoc {
                    id: d.id,
                    body: d.doc.get().as_bytes().to_vec(),
                })
                .collect();
            let ids = engine
                .categories
                .write(&a.category, docs)
                .await
                .map_err(host_error)?;
            Ok(json!({ "ids": ids }).to_string())
        }
        HostCall::GetDoc(a) => match engine.categories.get_doc(&a.category, &a.id).await {
            Ok(body) => Ok(format!("{{\"doc\":{}}}", String::from_utf8_lossy(&body))),
            Err(Error::NotFound {
                entity: Entity::Document,
                ..
            }) => Ok("{\"doc\":null}".to_string()),
            Err(e) => Err(host_error(e)),
        },
        HostCall::KvGet(a) => {
            let kv = Kv::new(engine.env.clone());
            match kv.get(&a.key).await {
                Ok(e) => Ok(format!("{{\"entry\":{}}}", entry_json(&e)?.get())),
                Err(Error::NotFound {
                    entity: Entity::Key,
                    ..
                }) => Ok("{\"entry\":null}".to_string()),
                Err(e) => Err(host_error(e)),
            }
        }
        HostCall::KvSet(a) => {
            let when = match (a.nx, a.xx, a.version) {
                (false, false, None) => KvWhen::Always,
                (true, false, None) => KvWhen::Absent,
                (false, true, None) => KvWhen::Present,
                (false, false, Some(v)) => KvWhen::Version(v),
                _ => {
                    return Err(HostError::new(
                        "invalid_input",
                        "nx, xx and version are exclusive: give at most one",
                    ));
                }
            };
            let ttl = a.ttl_ms.map(Duration::from_millis);
            let kv = Kv::new(engine.env.clone());
            let (entry, written) = match kv
                .set_if(&a.key, a.value.get().as_bytes(), ttl, when)
                .await
                .map_err(host_error)?
            {
                Ok(e) => (Some(e), true),
                Err(current) => (current, false),
            };
            let entry = match &entry {
                Some(e) => entry_json(e)?.get().to_string(),
                None => "null".to_string(),
            };
            Ok(format!("{{\"entry\":{entry},\"written\":{written}}}"))
        }
        HostCall::KvIncr(a) => {
            let kv = Kv::new(engine.env.clone());
            let e = kv.incr(&a.key, a.by).await.map_err(host_error)?;
            Ok(format!("{{\"entry\":{}}}", entry_json(&e)?.get()))
        }
        HostCall::KvDelete(a) => {
            let kv = Kv::new(engine.env.clone());
            let deleted = kv.delete_if(&a.key, a.version).await.map_err(host_error)?;
            Ok(json!({ "deleted": deleted }).to_string())
        }
        HostCall::KvList(a) => {
            let kv = Kv::new(engine.env.clone());
            let limit = a.limit.unwrap_or(100);
            let page = kv
                .list(&a.prefix, a.cursor.as_deref(), limit)
                .await
                .map_err(host_error)?;
            let entries = page
                .entries
                .iter()
                .map(|e| entry_json(e).map(|raw| raw.get().to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!(
                "{{\"entries\":[{}],\"next\":{}}}",
                entries.join(","),
                json!(page.next)
            ))
        }
        HostCall::Job(a) => {
            let view = engine.jobs.view(&a.job).await.map_err(host_error)?;
            let c = &view.counts;
            Ok(json!({
                "job": view.record.id,
                "status": view.status,
                "total": c.total,
                "succeeded": c.succeeded,
                "failed": c.failed,
                "cancelled": c.cancelled,
                "pending": c.pending,
            })
            .to_string())
        }
        HostCall::BlobOpen(a) => {
            let blobs = Blobs::new(engine.env.clone());
            let length = a.length.unwrap_or(u64::MAX);
            // A store without files answers the metadata alone.
            let found = match blobs.files(&a.key, a.offset, length).await {
                Ok(Some(files)) => Ok((files.meta, files.pieces)),
                Ok(None) => blobs.meta(&a.key).await.map(|meta| (meta, None)),
                Err(e) => Err(e),
            };
            match found {
                Ok((meta, pieces)) => {
                    let pieces = pieces.map(|ps| {
                        ps.iter()
                            .map(|p| json!({"length": p.len, "offset": p.file_offset, "path": p.path}))
                            .collect::<Vec<_>>()
                    });
                    Ok(json!({"blob": blob_json(&meta), "pieces": pieces}).to_string())
                }
                Err(Error::NotFound {
                    entity: Entity::Blob,
                    ..
                }) => Ok("{\"blob\":null,\"pieces\":null}".to_string()),
                Err(e) => Err(host_error(e)),
            }
        }
        HostCall::BlobRead(a) => {
            use base64::Engine as _;
            use futures_util::StreamExt;
            if a.length > MAX_BLOB_READ {
                return Err(HostError::new(
                    "invalid_input",
                    format!(
                        "a blob_read answers at most {MAX_BLOB_READ} bytes, not {}; read in pieces",
                        a.length
                    ),
                ));
            }
            let read = Blobs::new(engine.env.clone())
                .read(&a.key, a.offset, a.length)
                .await
                .map_err(host_error)?;
            let etag = read.meta.etag();
            if a.etag.as_ref().is_some_and(|want| *want != etag) {
                return Err(blob_changed(&a.key));
            }
            let mut data = Vec::new();
            let mut body = read.body;
            while let Some(piece) = body.next().await {
                data.extend_from_slice(&piece.map_err(|e| host_error(e.into()))?);
            }
            let data = base64::engine::general_purpose::STANDARD.encode(&data);
            Ok(json!({"data": data, "etag": etag}).to_string())
        }
        HostCall::BlobApply(a) => {
            let ops = parse_ops(&a.ops)?;
            let done = Blobs::new(engine.env.clone())
                .apply(&a.key, ops)
                .await
                .map_err(host_error)?;
            Ok(json!({"etag": done.meta.etag(), "results": done.results, "version": done.meta.version}).to_string())
        }
        HostCall::Publish(a) => {
            let blob = match (a.blob, a.ops) {
                (Some(key), Some(ops)) => Some((key, parse_ops(&ops)?)),
                (None, None) => None,
                _ => {
                    return Err(HostError::new(
                        "invalid_input",
                        "pass `blob` and `ops` together, or neither; nothing was published",
                    ));
                }
            };
            let message = shoal_store::NewChannelMessage {
                binary: false,
                data: a.data.get().as_bytes().to_vec(),
            };
            let done = engine
                .channels
                .publish(&a.channel, vec![message], blob)
                .await
                .map_err(host_error)?;
            let mut answer = json!({"epoch": done.epoch, "offset": done.last});
            if let Some(applied) = done.applied {
                answer["results"] = json!(applied.results);
            }
            Ok(answer.to_string())
        }
        HostCall::ChannelPosition(a) => {
            let at = engine
                .channels
                .position(&a.channel)
                .await
                .map_err(host_error)?;
            Ok(json!({"epoch": at.epoch, "offset": at.offset}).to_string())
        }
        HostCall::BlobCreate(a) => {
            let created = Blobs::new(engine.env.clone())
                .create_fixed(&a.key, a.size, !a.if_absent)
                .await
                .map_err(host_error)?;
            let (meta, created) = match created {
                Ok(meta) => (meta, true),
                Err(meta) => (meta, false),
            };
            Ok(json!({"blob": blob_json(&meta), "created": created}).to_string())
        }
        HostCall::BlobPut(a) => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&a.data)
                .map_err(|e| {
                    HostError::new("invalid_input", format!("`data` is not base64: {e}"))
                })?;
            let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                bytes::Bytes::from(data),
            )]);
            let meta = Blobs::new(engine.env.clone())
                .upload(&a.key, a.content_type, body)
                .await
                .map_err(host_error)?;
            Ok(json!({"blob": blob_json(&meta)}).to_string())
        }
        HostCall::MapRanges(a) => {
            let records = match serde_json::from_str::<serde_json::Value>(a.records.get()) {
                Ok(serde_json::Value::String(s)) if s == "lines" => Records::Lines,
                Ok(serde_json::Value::Number(n)) if n.as_u64().is_some() => {
                    Records::Fixed(n.as_u64().unwrap_or(0))
                }
                _ => {
                    return Err(HostError::new(
                        "invalid_input",
                        format!(
                            "records must be a record size in bytes or \"lines\", not {}",
                            a.records.get()
                        ),
                    ));
                }
            };
            let spec = RangeJob {
                key: a.key,
                function: a.function,
                chunk_bytes: a.chunk_bytes,
                records,
                then: a.then,
                max_in_flight: a.max_in_flight,
                args: a.args.map(|r| r.get().to_string()),
                windows: a.windows,
            };
            let (job, children) = crate::ranges::start(engine, spec, Some(caller))
                .await
                .map_err(host_error)?;
            Ok(json!({"children": children, "job": job}).to_string())
        }
        HostCall::JobWait(a) => {
            // At most a day: the invocation's own timeout ends it sooner.
            let timeout = Duration::from_millis(a.timeout_ms.unwrap_or(86_400_000).min(86_400_000));
            match crate::ranges::wait(engine, &a.job, timeout)
                .await
                .map_err(host_error)?
            {
                Some(w) => {
                    let output = w.output.as_deref().unwrap_or("null");
                    let raw = serde_json::value::RawValue::from_string(output.to_string())
                        .map_err(|e| {
                            HostError::new(
                                "unavailable",
                                format!("the fan-in's output is not JSON: {e}"),
                            )
                        })?;
                    Ok(
                        json!({"error": w.error, "job": a.job, "output": raw, "status": w.status})
                            .to_string(),
                    )
                }
                None => Err(HostError::new(
                    "timeout",
                    format!(
                        "job {} did not finish within {} ms",
                        a.job,
                        timeout.as_millis()
                    ),
                )),
            }
        }
        HostCall::JobResults(a) => {
            let limit = a.limit.unwrap_or(RESULTS_PAGE);
            let results = engine
                .jobs
                .results(&a.job, a.offset, limit)
                .await
                .map_err(host_error)?;
            Ok(results_json(&results))
        }
    }
}

fn host_error(e: Error) -> HostError {
    let code = match &e {
        Error::NotFound { entity, .. } => format!("{entity}_not_found"),
        Error::Invalid(_) => "invalid_input".into(),
        Error::Unavailable(_) | Error::ShuttingDown => "unavailable".into(),
        Error::StorageFull(_) => "insufficient_storage".into(),
        Error::QueueFull(_) => "queue_full".into(),
        Error::BudgetExceeded(_) => "budget_exceeded".into(),
        Error::Conflict {
            kind: Conflict::KeyVersion,
            ..
        } => "key_conflict".into(),
        Error::Conflict {
            kind: Conflict::NotAnInteger,
            ..
        } => "not_an_integer".into(),
        Error::Conflict {
            kind: Conflict::NotFixedSize,
            ..
        } => "not_fixed_size".into(),
        Error::InvalidFunction(_)
        | Error::DeployFailed(_)
        | Error::Conflict { .. }
        | Error::TooLarge(_) => "failed".into(),
    };
    HostError {
        code,
        message: e.to_string(),
    }
}

/// A blob's metadata as host calls answer it.
fn blob_json(m: &shoal_store::BlobMeta) -> serde_json::Value {
    json!({
        "content_type": m.content_type,
        "etag": m.etag(),
        "fixed_size": m.mutable,
        "key": m.key,
        "size": m.size,
        "version": m.version,
    })
}

fn blob_changed(key: &str) -> HostError {
    HostError::new(
        "blob_changed",
        format!("blob `{key}` was replaced while it was being read; read it again from the start"),
    )
}

/// A key-value entry as host calls answer it: `{"expires_at_ms", "key",
/// "updated_at_ms", "value", "version"}`, the value spliced in as the JSON
/// text stored (no number changes on its way).
#[derive(serde::Serialize)]
struct EntryOut<'a> {
    expires_at_ms: Option<u64>,
    key: &'a str,
    updated_at_ms: u64,
    value: &'a serde_json::value::RawValue,
    version: u64,
}

fn entry_json(e: &shoal_store::KvEntry) -> Result<Box<serde_json::value::RawValue>, HostError> {
    let value = serde_json::from_slice(&e.value).map_err(|err| {
        HostError::new(
            "unavailable",
            format!("the stored value of key `{}` is not JSON: {err}", e.key),
        )
    })?;
    let out = EntryOut {
        expires_at_ms: e.expires_at_ms,
        key: &e.key,
        updated_at_ms: e.updated_at_ms,
        value,
        version: e.version,
    };
    serde_json::value::to_raw_value(&out)
        .map_err(|err| HostError::new("unavailable", format!("encoding key `{}`: {err}", e.key)))
}

/// `{"results": [{"index", "invocation", "status", "output", "error"}]}`,
/// outputs inlined as the JSON they are.
pub(crate) fn results_json(results: &[shoal_store::ChildResult]) -> String {
    let items: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let output = r
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok());
            serde_json::json!({
                "index": r.index,
                "invocation": r.invocation,
                "status": r.status,
                "output": output,
                "error": r.error.as_ref().map(|e| serde_json::json!({
                    "type": e.kind,
                    "exception": e.exception,
                    "message": e.message,
                })),
            })
        })
        .collect();
    serde_json::json!({ "results": items }).to_string()
}
