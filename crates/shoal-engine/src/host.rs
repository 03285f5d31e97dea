//! The engine's answers to host calls from running handlers (`ctx.call`):
//! `spawn` (an asynchronous invocation of a function), `send` (messages on
//! a queue), `map` (a job: fan-out with fan-in, see `jobs`), `job` (a job's
//! progress), `job_results` (a page of its children's results), `put_docs`
//! and `get_doc` (documents in categories, durable when the call returns),
//! `kv_get`, `kv_set`, `kv_incr`, `kv_delete` and `kv_list` (the key-value
//! store, see `kv`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;

use shoal_runtime::{Host, HostCall, HostError};

use crate::categories::NewDoc;
use crate::dispatch::Dispatcher;
use crate::error::{Conflict, Entity, Error};
use crate::jobs::{Caller, JobSpec};
use crate::kv::{Kv, KvWhen};
use crate::queues::OutMessage;

/// Host calls of one invocation.
pub(crate) struct EngineHost {
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) caller: Caller,
}

/// Results per `job_results` call at most (and by default).
const RESULTS_PAGE: usize = 1000;

impl Host for EngineHost {
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<String, HostError>> {
        let engine = self.dispatcher.clone();
        let caller = self.caller.clone();
        Box::pin(async move { answer(&engine, &caller, call).await })
    }
}

async fn answer(engine: &Dispatcher, caller: &Caller, call: HostCall) -> Result<String, HostError> {
    match call {
        HostCall::Spawn(a) => {
            let event = a
                .event
                .map_or_else(|| "{}".to_string(), |e| e.get().to_string());
            let id = engine
                .invoke_async(&a.function, event)
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
            };
            let id = engine
                .jobs
                .start(spec, Some(caller))
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
        Error::Conflict {
            kind: Conflict::KeyVersion,
            ..
        } => "key_conflict".into(),
        Error::Conflict {
            kind: Conflict::NotAnInteger,
            ..
        } => "not_an_integer".into(),
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
