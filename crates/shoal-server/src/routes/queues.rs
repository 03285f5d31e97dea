//! `/v1/queues`: named durable queues, their messages, dead letters and
//! statistics.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use shoal_engine::manifest::parse_duration;
use shoal_engine::{OutMessage, QueueCounters, QueueDepth, QueueInfo, QueueSettings, Removal};
use shoal_protocol::{
    Count, DeadLetterPage, DeadLetterSelection, DeadLetterView, Deleted, ErrorBody, PutQueue,
    QueueCountersView, QueueDepthView, QueueList, QueueSampleView, QueueStats, QueueView,
    SendRequest, Sent,
};

use crate::AppState;
use crate::auth::{Auth, Developer, Invoker, Reader};
use crate::error::ApiError;

/// Creates a queue, or changes its settings at run time.
#[utoipa::path(put, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path)), request_body = PutQueue,
    responses((status = 200, body = QueueView), (status = 400, body = ErrorBody)))]
pub(crate) async fn put(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PutQueue>, JsonRejection>,
) -> Result<Json<QueueView>, ApiError> {
    let Json(req) = body?;
    let settings = QueueSettings {
        max_attempts: req.max_attempts,
        visibility: duration("visibility_timeout", req.visibility_timeout.as_deref())?,
        retry_delay: duration("retry_delay", req.retry_delay.as_deref())?,
        dedup_window: duration("dedup_window", req.dedup_window.as_deref())?,
    };
    let info = state.handle.put_queue(&name, settings).await?;
    Ok(Json(view(&info, state.handle.now_ms())))
}

/// Lists queues with their depth and counters.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", responses((status = 200, body = QueueList)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<QueueList>, ApiError> {
    let now = state.handle.now_ms();
    let queues = state.handle.queues().await?;
    Ok(Json(QueueList {
        queues: queues
            .iter()
            .filter(|q| auth.allows(shoal_engine::Resource::Queue(&q.record.name)))
            .map(|q| view(q, now))
            .collect(),
    }))
}

/// A queue's settings, depth, counters and subscriber.
#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path)),
    responses((status = 200, body = QueueView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    let info = state.handle.queue(&name).await?;
    Ok(Json(view(&info, state.handle.now_ms())))
}

/// `?force=true`: a removal that loses data (messages, documents, a
/// subscription) is refused without it (409 `force_required`).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForceParams {
    /// Remove even what holds data (default false).
    force: Option<bool>,
}

impl ForceParams {
    pub(crate) fn removal(&self) -> Removal {
        if self.force == Some(true) {
            Removal::Force
        } else {
            Removal::IfEmpty
        }
    }
}

/// Deletes a queue. One with messages, dead letters or a subscribed
/// function only with `?force=true` (409 `force_required` otherwise).
#[utoipa::path(delete, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path), ForceParams),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ForceParams>, QueryRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let Query(p) = params?;
    state.handle.delete_queue(&name, p.removal()).await?;
    Ok(Json(Deleted { deleted: true }))
}

/// Sends one message (`{"body", "delay"?, "dedup_id"?}`) or a batch
/// (`{"messages": [...]}`); answers once they are durable.
#[utoipa::path(post, path = "/v1/queues/{name}/messages", tag = "queues",
    params(("name" = String, Path)), request_body = SendRequest,
    responses((status = 200, body = Sent), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn send(
    auth: Auth<Invoker>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Result<Json<Sent>, ApiError> {
    let Json(req) = body?;
    // New work: refused past the token's enforced budget.
    state
        .handle
        .usage()
        .admit(auth.origin().token.as_deref())
        .await?;
    let messages = match req {
        SendRequest::Batch { messages } => messages,
        SendRequest::One(m) => vec![m],
    };
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        out.push(OutMessage {
            body: m.body.to_string(),
            delay: duration("delay", m.delay.as_deref())?.unwrap_or_default(),
            dedup_id: m.dedup_id,
        });
    }
    let sent = state.handle.send_messages(&name, out).await?;
    let duplicates: Vec<usize> = (0..sent.len()).filter(|i| sent[*i].duplicate).collect();
    Ok(Json(Sent {
        ids: sent.into_iter().map(|s| s.id).collect(),
        duplicate: !duplicates.is_empty(),
        duplicates,
    }))
}

/// Deletes every waiting message (not those being handled, not dead
/// letters); when there are any, only with `?force=true` (409
/// `force_required` otherwise).
#[utoipa::path(post, path = "/v1/queues/{name}/purge", tag = "queues",
    params(("name" = String, Path), ForceParams),
    responses((status = 200, body = Count), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn purge(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ForceParams>, QueryRejection>,
) -> Result<Json<Count>, ApiError> {
    let Query(p) = params?;
    Ok(Json(Count {
        count: state.handle.purge_queue(&name, p.removal()).await?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageParams {
    /// The `next` of the previous page.
    after: Option<String>,
    /// At most this many (1 to 1000; default 100).
    limit: Option<usize>,
}

/// Lists the queue's dead letters, with the error that sent each there.
#[utoipa::path(get, path = "/v1/queues/{name}/dead-letters", tag = "queues",
    params(("name" = String, Path), PageParams),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = ErrorBody)))]
pub(crate) async fn dead_letters(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(100);
    let dead = state
        .handle
        .dead_letters(&name, p.after.as_deref(), limit)
        .await?;
    let next = (dead.len() == limit)
        .then(|| dead.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeadLetterPage {
        dead_letters: dead
            .into_iter()
            .map(|d| DeadLetterView {
                id: d.id,
                body: serde_json::from_slice(&d.body).unwrap_or(Value::Null),
                // `failures` counts the retried deliveries; the last one failed too.
                attempts: d.failures + 1,
                sent_at_ms: d.sent_ms,
                dead_at_ms: d.dead_at_ms,
                reason: d.reason,
            })
            .collect(),
        next,
    }))
}

/// Puts dead letters back on the queue (all, or `ids`), with fresh attempts.
#[utoipa::path(post, path = "/v1/queues/{name}/dead-letters/redrive", tag = "queues",
    params(("name" = String, Path)), request_body = DeadLetterSelection,
    responses((status = 200, body = Count), (status = 404, body = ErrorBody)))]
pub(crate) async fn redrive(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<DeadLetterSelection>, JsonRejection>,
) -> Result<Json<Count>, ApiError> {
    let Json(sel) = body?;
    Ok(Json(Count {
        count: state.handle.redrive(&name, sel.ids).await?,
    }))
}

/// Deletes dead letters (all, or `ids`).
#[utoipa::path(post, path = "/v1/queues/{name}/dead-letters/purge", tag = "queues",
    params(("name" = String, Path)), request_body = DeadLetterSelection,
    responses((status = 200, body = Count), (status = 404, body = ErrorBody)))]
pub(crate) async fn purge_dead(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<DeadLetterSelection>, JsonRejection>,
) -> Result<Json<Count>, ApiError> {
    let Json(sel) = body?;
    Ok(Json(Count {
        count: state.handle.purge_dead(&name, sel.ids).await?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsParams {
    /// Samples at or after this time (ms since the epoch); default the last hour.
    since: Option<u64>,
}

/// The queue's history: depth, in flight, oldest message age, and
/// sent/acked/failed rates, sampled every few seconds (a day is kept).
#[utoipa::path(get, path = "/v1/queues/{name}/stats", tag = "queues",
    params(("name" = String, Path), StatsParams),
    responses((status = 200, body = QueueStats), (status = 404, body = ErrorBody)))]
pub(crate) async fn stats(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Json<QueueStats>, ApiError> {
    let Query(p) = params?;
    let since = p
        .since
        .unwrap_or_else(|| state.handle.now_ms().saturating_sub(3600 * 1000));
    let history = state.handle.queue_history(&name, since).await?;
    let out = history
        .iter()
        .map(|p| QueueSampleView {
            at_ms: p.sample.at_ms,
            depth: depth_view(&p.sample.depth, p.sample.at_ms),
            counters: counters_view(&p.sample.counters),
            sent_per_s: p.sent_per_s,
            acked_per_s: p.acked_per_s,
            failed_per_s: p.failed_per_s,
        })
        .collect();
    Ok(Json(QueueStats { name, samples: out }))
}

fn duration(field: &str, v: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
            ApiError::invalid(format!(
                "{field}: {s:?} is not a duration; use e.g. \"500ms\", \"30s\", \"5m\""
            ))
        }),
    }
}

fn depth_view(d: &QueueDepth, now: u64) -> QueueDepthView {
    QueueDepthView {
        waiting: d.waiting,
        in_flight: d.in_flight,
        dead: d.dead,
        oldest_age_ms: d.oldest_sent_ms.map(|t| now.saturating_sub(t)),
    }
}

fn counters_view(c: &QueueCounters) -> QueueCountersView {
    QueueCountersView {
        sent: c.sent,
        acked: c.acked,
        retried: c.nacked,
        dead_lettered: c.dead_lettered,
    }
}

pub(crate) fn view(q: &QueueInfo, now: u64) -> QueueView {
    QueueView {
        name: q.record.name.clone(),
        max_attempts: q.record.max_attempts,
        visibility_timeout_ms: q.record.visibility_ms,
        retry_delay_ms: q.record.retry_delay_ms,
        dedup_window_ms: q.record.dedup_window_ms,
        created_at_ms: q.record.created_at_ms,
        subscriber: q.subscriber.clone(),
        depth: depth_view(&q.depth, now),
        counters: counters_view(&q.counters),
    }
}
