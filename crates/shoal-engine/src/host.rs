//! The engine's answers to host calls from running handlers (`ctx.call`):
//! `spawn` (an asynchronous invocation of a function), `send` (messages on
//! a queue), `map` (a job: fan-out with fan-in, see `jobs`), `job` (a job's
//! progress), `job_results` (a page of its children's results), `put_docs`
//! and `get_doc` (documents in categories, durable when the call returns).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;

use shoal_runtime::{Host, HostError};

use crate::categories::{self, NewDoc};
use crate::dispatch;
use crate::engine::Inner;
use crate::error::Error;
use crate::jobs::{self, Caller, JobSpec};
use crate::queues::{self, OutMessage};

/// Host calls of one invocation.
pub(crate) struct EngineHost {
    pub(crate) inner: Arc<Inner>,
    pub(crate) caller: Caller,
}

#[derive(Deserialize)]
struct MapArgs {
    function: String,
    events: Vec<Box<RawValue>>,
    #[serde(default)]
    then: Option<String>,
}

#[derive(Deserialize)]
struct PutDocsArgs {
    category: String,
    docs: Vec<DocArg>,
}

#[derive(Deserialize)]
struct DocArg {
    #[serde(default)]
    id: Option<String>,
    doc: Box<RawValue>,
}

#[derive(Deserialize)]
struct GetDocArgs {
    category: String,
    id: String,
}

#[derive(Deserialize)]
struct JobArgs {
    job: String,
}

#[derive(Deserialize)]
struct ResultsArgs {
    job: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// Results per `job_results` call at most (and by default).
const RESULTS_PAGE: usize = 1000;

#[derive(Deserialize)]
struct SpawnArgs {
    function: String,
    #[serde(default)]
    event: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SendArgs {
    queue: String,
    body: Box<RawValue>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    dedup_id: Option<String>,
}

impl Host for EngineHost {
    fn call(&self, op: &str, args: String) -> BoxFuture<'static, Result<String, HostError>> {
        let inner = self.inner.clone();
        let op = op.to_string();
        let caller = self.caller.clone();
        Box::pin(async move {
            match op.as_str() {
                "spawn" => {
                    let a: SpawnArgs = parse(&args)?;
                    let event = a
                        .event
                        .map_or_else(|| "{}".to_string(), |e| e.get().to_string());
                    let id = dispatch::invoke_async(&inner, &a.function, event)
                        .await
                        .map_err(host_error)?;
                    Ok(serde_json::json!({ "id": id }).to_string())
                }
                "send" => {
                    let a: SendArgs = parse(&args)?;
                    let msg = OutMessage {
                        body: a.body.get().to_string(),
                        delay: Duration::from_millis(a.delay_ms.unwrap_or(0)),
                        dedup_id: a.dedup_id,
                    };
                    let ids = queues::send(&inner, &a.queue, vec![msg])
                        .await
                        .map_err(host_error)?;
                    Ok(serde_json::json!({ "id": ids.first() }).to_string())
                }
                "map" => {
                    let a: MapArgs = parse(&args)?;
                    let spec = JobSpec {
                        function: a.function,
                        events: a.events.into_iter().map(|e| e.get().to_string()).collect(),
                        then: a.then,
                    };
                    let id = jobs::start(&inner, spec, Some(&caller))
                        .await
                        .map_err(host_error)?;
                    Ok(serde_json::json!({ "job": id }).to_string())
                }
                "put_docs" => {
                    let a: PutDocsArgs = parse(&args)?;
                    let docs = a
                        .docs
                        .into_iter()
                        .map(|d| NewDoc {
                            id: d.id,
                            body: d.doc.get().as_bytes().to_vec(),
                        })
                        .collect();
                    let ids = categories::write(&inner, &a.category, docs)
                        .await
                        .map_err(host_error)?;
                    Ok(serde_json::json!({ "ids": ids }).to_string())
                }
                "get_doc" => {
                    let a: GetDocArgs = parse(&args)?;
                    match categories::get_doc(&inner, &a.category, &a.id).await {
                        Ok(body) => Ok(format!("{{\"doc\":{}}}", String::from_utf8_lossy(&body))),
                        Err(Error::NotFound {
                            what: "document", ..
                        }) => Ok("{\"doc\":null}".to_string()),
                        Err(e) => Err(host_error(e)),
                    }
                }
                "job" => {
                    let a: JobArgs = parse(&args)?;
                    let view = jobs::view(&inner, &a.job).await.map_err(host_error)?;
                    let p = &view.progress;
                    Ok(serde_json::json!({
                        "job": view.record.id,
                        "status": jobs::status(p),
                        "total": view.record.total,
                        "succeeded": p.succeeded,
                        "failed": p.failed,
                        "cancelled": p.cancelled,
                        "pending": view.record.total.saturating_sub(p.done()),
                    })
                    .to_string())
                }
                "job_results" => {
                    let a: ResultsArgs = parse(&args)?;
                    let limit = a.limit.unwrap_or(RESULTS_PAGE).min(RESULTS_PAGE);
                    let results = jobs::results(&inner, &a.job, a.offset, limit)
                        .await
                        .map_err(host_error)?;
                    Ok(results_json(&results))
                }
                other => Err(HostError {
                    code: "unknown_op".into(),
                    message: format!(
                        "no host call named {other:?}; use spawn, send, map, job, job_results, put_docs or get_doc"
                    ),
                }),
            }
        })
    }
}

fn parse<'a, T: Deserialize<'a>>(args: &'a str) -> Result<T, HostError> {
    serde_json::from_str(args).map_err(|e| HostError {
        code: "invalid_input".into(),
        message: format!("bad arguments: {e}"),
    })
}

fn host_error(e: Error) -> HostError {
    let code = match &e {
        Error::NotFound { what, .. } => format!("{what}_not_found"),
        Error::Invalid(_) => "invalid_input".into(),
        Error::Unavailable(_) => "unavailable".into(),
        _ => "failed".into(),
    };
    HostError {
        code,
        message: e.to_string(),
    }
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
