//! `/v1/categories`: categories, documents, scans and map/reduce queries.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use shoal_engine::{Category, QueryEvent, QueryResult, RunningQuery};
use shoal_protocol::{
    CategoryList, CategoryView, CreateCategory, Deleted, DocError, DocPage, ErrorBody, ErrorCode,
    NDJSON_CONTENT_TYPE, QueryDone, QueryFailed, QueryProgress, QueryRequest, ShardView, Written,
};

use crate::auth::{Auth, Developer, Invoker, Reader};
use crate::docsplit::{DocSplitter, SplitError};
use crate::error::ApiError;
use crate::{AppState, convert};
use shoal_engine::Resource;

/// Creates a category with a shard level.
#[utoipa::path(post, path = "/v1/categories", tag = "categories",
    request_body = CreateCategory,
    responses((status = 201, body = CategoryView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    auth: Auth<Developer>,
    State(state): State<AppState>,
    body: Result<Json<CreateCategory>, JsonRejection>,
) -> Result<(StatusCode, Json<CategoryView>), ApiError> {
    let Json(req) = body?;
    auth.check(Resource::Category(&req.name))?;
    let cat = state.handle.create_category(&req.name, req.shards).await?;
    Ok((StatusCode::CREATED, Json(view(&cat))))
}

/// Lists categories with their statistics.
#[utoipa::path(get, path = "/v1/categories", tag = "categories", responses((status = 200, body = CategoryList)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<CategoryList>, ApiError> {
    let cats = state.handle.categories().await?;
    Ok(Json(CategoryList {
        categories: cats
            .iter()
            .filter(|c| auth.allows(Resource::Category(&c.record.name)))
            .map(view)
            .collect(),
    }))
}

/// A category's statistics: documents, bytes, shards and their placement.
#[utoipa::path(get, path = "/v1/categories/{cat}", tag = "categories",
    params(("cat" = String, Path)),
    responses((status = 200, body = CategoryView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(cat): Path<String>,
) -> Result<Json<CategoryView>, ApiError> {
    Ok(Json(view(&state.handle.category(&cat).await?)))
}

/// Deletes a category with all its documents: one that holds documents
/// only with `?force=true` (409 `force_required` otherwise).
#[utoipa::path(delete, path = "/v1/categories/{cat}", tag = "categories",
    params(("cat" = String, Path), crate::routes::queues::ForceParams),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    _: Auth<Developer>,
    State(state): State<AppState>,
    Path(cat): Path<String>,
    params: Result<Query<crate::routes::queues::ForceParams>, QueryRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let Query(p) = params?;
    state.handle.delete_category(&cat, p.removal()).await?;
    Ok(Json(Deleted { deleted: true }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteParams {
    /// List the written documents' ids in the answer (default true; with
    /// `atomic=false`, default false).
    return_ids: Option<bool>,
    /// `false`: commit the documents in batches as the body streams in, so
    /// the node holds one batch at a time and `max_write_docs` does not
    /// apply. A failure keeps the batches before it, and its answer says how
    /// many documents were written. Default true: all documents or none.
    atomic: Option<bool>,
}

/// With `atomic=false`, a batch is committed once it holds this many
/// documents or bytes of documents.
const BATCH_DOCS: usize = 10_000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Writes documents: a JSON array (`application/json`) or NDJSON
/// (`application/x-ndjson`), streamed. Atomic: all documents or none
/// (unless `atomic=false`: committed in batches as they stream in). An
/// object's `id` field (string or integer) is its id; otherwise one is
/// generated. Creates the category with the default shard level if needed.
#[utoipa::path(post, path = "/v1/categories/{cat}/docs", tag = "documents",
    params(("cat" = String, Path), WriteParams),
    request_body(content = Vec<Object>, description = "JSON array or NDJSON of documents"),
    responses((status = 200, body = Written), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn write(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    Path(cat): Path<String>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Written>, ApiError> {
    let Query(params) = params?;
    check_json_content_type(&headers)?;
    // Check the name before reading a possibly large body.
    shoal_types::validate_name("category name", &cat)
        .map_err(|e| ApiError::from(shoal_engine::Error::from(e)))?;
    let opts = state.handle.category_options();
    if params.atomic.unwrap_or(true) {
        let mut reader = BodyReader::new(&state, body, opts.max_write_docs);
        while reader.feed_next().await? {}
        let docs = reader.splitter.finish().map_err(split_error)?;
        let ids = state.handle.write_docs(&cat, docs).await?;
        return Ok(Json(Written {
            written: ids.len() as u64,
            ids: params.return_ids.unwrap_or(true).then_some(ids),
        }));
    }
    // In batches: parse up to a batch, commit it (the body waits meanwhile,
    // so a fast client is slowed to the store's pace), go on.
    let return_ids = params.return_ids.unwrap_or(false);
    let mut reader = BodyReader::new(&state, body, usize::MAX);
    let mut written = 0u64;
    let mut ids = Vec::new();
    loop {
        let more = reader.feed_next().await.map_err(|e| partly(e, written))?;
        let (docs, bytes) = reader.splitter.held();
        if more && docs < BATCH_DOCS && bytes < BATCH_BYTES {
            continue;
        }
        let batch = if more {
            reader.splitter.take_docs()
        } else {
            let splitter = std::mem::replace(&mut reader.splitter, DocSplitter::new(1, 0));
            splitter
                .finish()
                .map_err(|e| partly(split_error(e), written))?
        };
        if !batch.is_empty() {
            let batch_ids = state
                .handle
                .write_docs(&cat, batch)
                .await
                .map_err(|e| partly(ApiError::from(e), written))?;
            written += batch_ids.len() as u64;
            if return_ids {
                ids.extend(batch_ids);
            }
        }
        if !more {
            break;
        }
    }
    Ok(Json(Written {
        written,
        ids: return_ids.then_some(ids),
    }))
}

/// An error of a write with `atomic=false` after some batches were written.
fn partly(mut e: ApiError, written: u64) -> ApiError {
    if written > 0 {
        let m = e
            .message
            .trim_end_matches("; nothing was written")
            .to_string();
        e.message = format!(
            "{m}; the first {written} documents were written (atomic=false), none after them"
        );
    }
    e
}

/// A document write's body as it streams in, split into documents.
struct BodyReader {
    stream: axum::body::BodyDataStream,
    /// What is left of the last chunk: chunks are split in small steps, so
    /// a batch never overshoots by more than one step's documents.
    pending: Bytes,
    splitter: DocSplitter,
    seen: usize,
    limit: usize,
}

impl BodyReader {
    fn new(state: &AppState, body: Body, max_docs: usize) -> BodyReader {
        BodyReader {
            stream: body.into_data_stream(),
            pending: Bytes::new(),
            splitter: DocSplitter::new(state.handle.category_options().max_doc_bytes, max_docs),
            seen: 0,
            limit: state.max_write_bytes,
        }
    }

    /// Reads and splits the next step of the body; false at its end.
    async fn feed_next(&mut self) -> Result<bool, ApiError> {
        const STEP: usize = 16 * 1024;
        if !self.pending.is_empty() {
            let step = self.pending.split_to(self.pending.len().min(STEP));
            self.splitter.feed(&step).map_err(split_error)?;
            return Ok(true);
        }
        let Some(chunk) = self.stream.next().await else {
            return Ok(false);
        };
        let chunk = chunk.map_err(|e| {
            if crate::edge::is_body_timeout(&e) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::InvalidInput,
                    format!("{e}; nothing was written"),
                )
            } else {
                ApiError::invalid(format!("reading the body failed: {e}"))
            }
        })?;
        self.seen += chunk.len();
        if self.seen > self.limit {
            let limit = self.limit;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!(
                    "a document write may be at most {limit} bytes; split it into several requests (each is atomic)"
                ),
            ));
        }
        self.pending = chunk;
        let step = self.pending.split_to(self.pending.len().min(STEP));
        self.splitter.feed(&step).map_err(split_error)?;
        Ok(true)
    }
}

fn split_error(e: SplitError) -> ApiError {
    match e {
        SplitError::Invalid(m) => ApiError::invalid(m),
        SplitError::TooMany { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "a document write may hold at most {limit} documents; split it into several requests (each is atomic); nothing was written"
            ),
        ),
        SplitError::TooLarge { number, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::DocumentTooLarge,
            format!(
                "document {number} is larger than the {limit}-byte document limit; nothing was written"
            ),
        ),
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.is_empty() || essence == "application/json" || essence == NDJSON_CONTENT_TYPE {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "send documents as application/json (an array) or {NDJSON_CONTENT_TYPE}, not {essence}"
            ),
        ))
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScanParams {
    /// Documents per page (1 to 10,000; default 100).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Scans a category's documents, a page at a time (by shard, then id).
#[utoipa::path(get, path = "/v1/categories/{cat}/docs", tag = "documents",
    params(("cat" = String, Path), ScanParams),
    responses((status = 200, body = DocPage), (status = 404, body = ErrorBody)))]
pub(crate) async fn scan(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path(cat): Path<String>,
    params: Result<Query<ScanParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params?;
    let (docs, next) = state
        .handle
        .scan(&cat, p.cursor.as_deref(), p.limit.unwrap_or(100))
        .await?;
    // Documents are stored as JSON text: splice them in without re-encoding.
    let mut out = Vec::with_capacity(
        docs.iter()
            .map(|d| d.body.len() + d.id.len() + 16)
            .sum::<usize>()
            + 64,
    );
    out.extend_from_slice(b"{\"docs\":[");
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(serde_json::to_string(&d.id).expect("string").as_bytes());
        out.extend_from_slice(b",\"doc\":");
        out.extend_from_slice(&d.body);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    out.extend_from_slice(serde_json::to_string(&next).expect("cursor").as_bytes());
    out.push(b'}');
    Ok(json_bytes(out))
}

/// Reads one document.
#[utoipa::path(get, path = "/v1/categories/{cat}/docs/{id}", tag = "documents",
    params(("cat" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_doc(
    _: Auth<Reader>,
    State(state): State<AppState>,
    Path((cat, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(json_bytes(state.handle.doc(&cat, &id).await?))
}

/// Writes one document under the id in the path (replacing it if present).
#[utoipa::path(put, path = "/v1/categories/{cat}/docs/{id}", tag = "documents",
    params(("cat" = String, Path), ("id" = String, Path)),
    request_body(content = Object),
    responses((status = 200, body = Written), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn put_doc(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    Path((cat, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Written>, ApiError> {
    check_json_content_type(&headers)?;
    let body = body?;
    // The body is whole already; the splitter keeps up to all of it.
    let mut splitter = DocSplitter::new(state.handle.category_options().max_doc_bytes, usize::MAX);
    splitter.feed(&body).map_err(split_error)?;
    let mut docs = splitter.finish().map_err(split_error)?;
    if docs.len() != 1 {
        return Err(ApiError::invalid(format!(
            "send exactly one document; got {}",
            docs.len()
        )));
    }
    let mut doc = docs.remove(0);
    if let Some(inner_id) = &doc.id
        && inner_id != &id
    {
        return Err(ApiError::invalid(format!(
            "the document's id field ({inner_id:?}) differs from the id in the path ({id:?})"
        )));
    }
    doc.id = Some(id);
    let ids = state.handle.write_docs(&cat, vec![doc]).await?;
    Ok(Json(Written {
        written: 1,
        ids: Some(ids),
    }))
}

/// Deletes one document.
#[utoipa::path(delete, path = "/v1/categories/{cat}/docs/{id}", tag = "documents",
    params(("cat" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_doc(
    _: Auth<Invoker>,
    State(state): State<AppState>,
    Path((cat, id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    state.handle.delete_doc(&cat, &id).await?;
    Ok(Json(Deleted { deleted: true }))
}

/// Maps a function over every document of the category, in parallel over
/// its shards, next to the data; reduces when the module defines `reduce`.
///
/// The answer streams as NDJSON: `{"value": v}` lines (modules without
/// `reduce`, in document order: shard by shard, by id within a shard), then
/// one `{"done": QueryDone}` or `{"error": QueryFailed}` line. With
/// `Accept: text/event-stream` it streams SSE instead: `progress`, `value`,
/// then `done` or `error` events.
#[utoipa::path(post, path = "/v1/categories/{cat}/query", tag = "queries",
    params(("cat" = String, Path)),
    request_body = QueryRequest,
    responses(
        (status = 200, content_type = "application/x-ndjson", body = QueryDone, description = "value lines, then a done or error line"),
        (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub(crate) async fn query(
    auth: Auth<Invoker>,
    State(state): State<AppState>,
    Path(cat): Path<String>,
    headers: HeaderMap,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    // The query runs a function: a scoped token needs it too.
    auth.check(Resource::Function(&req.function))?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let running = state
        .handle
        .query(&cat, &req.function, req.skip_errors)
        .await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    state.handle.spawn(stream_query(running, tx, sse));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        NDJSON_CONTENT_TYPE
    };
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Turns a running query's events and outcome into NDJSON or SSE. Stops
/// (dropping the query, which stops the workers) as soon as the client goes
/// away: the answer's body holds the receiver, and the connection drops it
/// when the client closes. Back-pressure: `tx` holds a few chunks; a slow
/// reader stalls this task, which stops taking the runtime's events, which
/// stalls the workers.
async fn stream_query(mut q: RunningQuery, tx: mpsc::Sender<Bytes>, sse: bool) {
    let mut docs_done = 0u64;
    let mut values = 0u64;
    let mut outcome = std::pin::pin!(q.outcome);
    let mut last_progress = std::time::Instant::now();
    if sse {
        let p = progress(0, q.docs_total, q.shards);
        if tx.send(sse_event("progress", &p)).await.is_err() {
            return;
        }
    }
    let result = loop {
        tokio::select! {
            biased;
            // The client went away (the connection closed and dropped the
            // answer's body): stop now, whether or not values are flowing.
            _ = tx.closed() => return,
            ev = q.events.recv() => match ev {
                Some(QueryEvent::Values(ndjson)) => {
                    if tx.send(value_lines(&ndjson, sse, &mut values)).await.is_err() {
                        return;
                    }
                }
                Some(QueryEvent::Progress { docs, .. }) => {
                    docs_done += docs;
                    if sse && last_progress.elapsed().as_millis() >= 100 {
                        last_progress = std::time::Instant::now();
                        let p = progress(docs_done, q.docs_total, q.shards);
                        if tx.send(sse_event("progress", &p)).await.is_err() {
                            return;
                        }
                    }
                }
                None => tokio::select! {
                    _ = tx.closed() => return,
                    out = &mut outcome => break out,
                },
            },
            out = &mut outcome => {
                // Drain values sent before the end.
                while let Ok(ev) = q.events.try_recv() {
                    if let QueryEvent::Values(ndjson) = ev
                        && tx.send(value_lines(&ndjson, sse, &mut values)).await.is_err()
                    {
                        return;
                    }
                }
                break out;
            }
        }
    };
    if sse {
        // The bar ends full, however fast the query was.
        let p = progress(docs_done, q.docs_total.max(docs_done), q.shards);
        if tx.send(sse_event("progress", &p)).await.is_err() {
            return;
        }
    }
    let duration_ms = q.started.elapsed().as_secs_f64() * 1000.0;
    let (name, line) = match result {
        Ok(o) => match o.result {
            QueryResult::Failed { doc_id, failure } => {
                let message = match &doc_id {
                    Some(id) => format!("map failed on document {id:?}: {}", failure.message),
                    None => failure.message.clone(),
                };
                let code = if failure.kind == shoal_types::FailureKind::LoadFailed {
                    ErrorCode::NotAQueryFunction
                } else if doc_id.is_some() {
                    ErrorCode::MapFailed
                } else {
                    ErrorCode::QueryFailed
                };
                (
                    "error",
                    serde_json::to_value(QueryFailed {
                        code,
                        message,
                        doc_id,
                        error: Some(convert::failure(&failure)),
                    }),
                )
            }
            result => {
                let (reduced, value) = match result {
                    QueryResult::Reduced(v) => (
                        true,
                        Some(
                            v.and_then(|t| serde_json::from_str(&t).ok())
                                .unwrap_or_default(),
                        ),
                    ),
                    _ => (false, None),
                };
                (
                    "done",
                    serde_json::to_value(QueryDone {
                        docs: o.docs,
                        reduced,
                        result: value,
                        values,
                        errors: o.errors,
                        failures: o
                            .failures
                            .iter()
                            .map(|f| DocError {
                                id: f.id.clone(),
                                error: convert::failure(&f.failure),
                            })
                            .collect(),
                        cached_shards: o.cached_shards,
                        shards: q.shards,
                        duration_ms,
                    }),
                )
            }
        },
        Err(e) => {
            let api = ApiError::from(e);
            (
                "error",
                serde_json::to_value(QueryFailed {
                    code: api.code,
                    message: api.message,
                    doc_id: None,
                    error: None,
                }),
            )
        }
    };
    let inner = line.unwrap_or_default();
    let bytes = if sse {
        sse_event(name, &inner)
    } else {
        let mut v = serde_json::to_vec(&serde_json::json!({ name: inner })).expect("json");
        v.push(b'\n');
        Bytes::from(v)
    };
    let _ = tx.send(bytes).await;
}

/// Wraps each NDJSON value line as a `{"value": v}` line or a `value` event.
fn value_lines(ndjson: &[u8], sse: bool, count: &mut u64) -> Bytes {
    let mut buf = Vec::with_capacity(ndjson.len() * 2);
    for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        *count += 1;
        if sse {
            buf.extend_from_slice(b"event: value\ndata: ");
            buf.extend_from_slice(line);
            buf.extend_from_slice(b"\n\n");
        } else {
            buf.extend_from_slice(b"{\"value\":");
            buf.extend_from_slice(line);
            buf.extend_from_slice(b"}\n");
        }
    }
    Bytes::from(buf)
}

fn progress(docs_done: u64, docs_total: u64, shards: u32) -> serde_json::Value {
    serde_json::to_value(QueryProgress {
        docs_done,
        docs_total,
        shards,
    })
    .unwrap_or_default()
}

fn sse_event<T: serde::Serialize>(name: &str, data: &T) -> Bytes {
    let mut out = format!("event: {name}\ndata: ").into_bytes();
    out.extend_from_slice(&serde_json::to_vec(data).expect("json"));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn json_bytes(body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn view(c: &Category) -> CategoryView {
    CategoryView {
        name: c.record.name.clone(),
        shards: c.record.shards,
        docs: c.stats.iter().map(|s| s.docs).sum(),
        bytes: c.stats.iter().map(|s| s.bytes).sum(),
        created_at_ms: c.record.created_at_ms,
        shard_stats: c
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| ShardView {
                shard: i as u32,
                slot: c.record.slots.get(i).copied().unwrap_or(0),
                docs: s.docs,
                bytes: s.bytes,
            })
            .collect(),
    }
}
