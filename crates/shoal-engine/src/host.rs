//! The engine's answers to host calls from running handlers (`ctx.call`):
//! `spawn` (an asynchronous invocation of a function) and `send` (messages
//! on a queue). `map` with fan-in (jobs) comes next.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;

use shoal_runtime::{Host, HostError};

use crate::dispatch;
use crate::engine::Inner;
use crate::error::Error;
use crate::queues::{self, OutMessage};

/// Host calls of one invocation.
pub(crate) struct EngineHost {
    pub(crate) inner: Arc<Inner>,
}

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
        Box::pin(async move {
            match op.as_str() {
                "spawn" => {
                    let a: SpawnArgs = parse(&args)?;
                    let event = a.event.map_or_else(|| "{}".to_string(), |e| e.get().to_string());
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
                    let ids = queues::send(&inner, &a.queue, vec![msg]).await.map_err(host_error)?;
                    Ok(serde_json::json!({ "id": ids.first() }).to_string())
                }
                "map" => Err(HostError {
                    code: "not_available".into(),
                    message: "ctx.map with fan-in is not available on this node yet; use ctx.spawn per child".into(),
                }),
                other => Err(HostError {
                    code: "unknown_op".into(),
                    message: format!("no host call named {other:?}; use spawn or send"),
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
