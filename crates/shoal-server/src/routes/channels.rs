//! `/v1/channels`: settings, publishing, and subscribing over Server-Sent
//! Events and WebSocket with gap-free resume (see `docs/channels.md`).
//!
//! Who may do what: settings need an admin token, reading them a reader's;
//! publishing needs an invoker's token or one scoped to `publish:PATTERN`;
//! subscribing needs nothing on a public channel, else a reader's token or
//! one scoped to `subscribe:PATTERN` — in the `Authorization` header or,
//! for browsers' `EventSource` and `WebSocket` (which cannot set headers),
//! in `?token=`. The node's feeds (`_…`) are never public.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use utoipa::IntoParams;

use shoal_engine::{
    ChannelEvent, ChannelMessage, ChannelSettings, ChannelView, NewChannelMessage, Position,
    Subscription,
};
use shoal_protocol::{
    ChannelInfoView, ChannelList, ChannelSettingsBody, ErrorBody, ErrorCode, PublishedView,
};
use shoal_types::Role;

use crate::AppState;
use crate::auth::{Admin, Auth, Reader};
use crate::error::ApiError;

/// An SSE comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn view(v: ChannelView) -> ChannelInfoView {
    ChannelInfoView {
        name: v.name,
        public: v.settings.public,
        history_len: v.settings.history_len,
        history_age_s: v.settings.history_age_ms / 1000,
        coalesce_ms: v.settings.coalesce_ms,
        epoch: v.position.epoch,
        offset: v.position.offset,
        presence: v.presence,
    }
}

/// Sets a channel's settings; fields left out keep their current values.
#[utoipa::path(put, path = "/v1/channels/{name}", tag = "channels",
    params(("name" = String, Path)),
    request_body = ChannelSettingsBody,
    responses((status = 200, body = ChannelInfoView), (status = 400, body = ErrorBody)))]
pub(crate) async fn configure(
    _: Auth<Admin>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ChannelSettingsBody>, JsonRejection>,
) -> Result<Json<ChannelInfoView>, ApiError> {
    let Path(name) = name?;
    let Json(body) = body?;
    let current = state.handle.channel_settings(&name).await?;
    let settings = ChannelSettings {
        public: body.public.unwrap_or(current.public),
        history_len: body.history_len.unwrap_or(current.history_len),
        history_age_ms: body
            .history_age_s
            .map_or(current.history_age_ms, |s| s.saturating_mul(1000)),
        coalesce_ms: body.coalesce_ms.unwrap_or(current.coalesce_ms),
    };
    state.handle.configure_channel(&name, settings).await?;
    Ok(Json(view(state.handle.channel(&name).await?)))
}

/// A channel's settings, position (epoch and last offset) and presence.
#[utoipa::path(get, path = "/v1/channels/{name}", tag = "channels",
    params(("name" = String, Path)),
    responses((status = 200, body = ChannelInfoView), (status = 400, body = ErrorBody)))]
pub(crate) async fn show(
    _: Auth<Reader>,
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ChannelInfoView>, ApiError> {
    let Path(name) = name?;
    Ok(Json(view(state.handle.channel(&name).await?)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only channels whose name starts with this.
    #[serde(default)]
    prefix: String,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
}

/// Channels that have messages or settings, by name.
#[utoipa::path(get, path = "/v1/channels", tag = "channels", params(ListParams),
    responses((status = 200, body = ChannelList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ChannelList>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid(format!(
            "limit is {limit}; ask for 1 to 1000 channels"
        )));
    }
    let channels = state
        .handle
        .list_channels(&params.prefix, params.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (channels.len() == limit)
        .then(|| channels.last().map(|c| c.name.clone()))
        .flatten();
    Ok(Json(ChannelList {
        channels: channels.into_iter().map(view).collect(),
        next_cursor,
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Subscribe,
    Publish,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
        }
    }
}

/// How often an open subscription checks its token is still valid.
const RECHECK: Duration = Duration::from_secs(5);

/// A subscription's token, checked again every [`RECHECK`]: revoking a
/// token ends the subscriptions opened with it.
struct TokenWatch {
    state: AppState,
    /// `None` on a public channel.
    secret: Option<String>,
    next: tokio::time::Instant,
}

impl TokenWatch {
    fn new(state: &AppState, secret: Option<String>) -> TokenWatch {
        TokenWatch {
            state: state.clone(),
            secret,
            next: tokio::time::Instant::now() + RECHECK,
        }
    }

    /// Resolves when a check is due (never on a public channel).
    async fn due(&self) {
        match self.secret {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    /// False once the token is unknown or revoked (a store that cannot
    /// answer keeps the subscription: it is checked again later).
    async fn still_valid(&mut self) -> bool {
        self.next = tokio::time::Instant::now() + RECHECK;
        let Some(secret) = &self.secret else {
            return true;
        };
        !matches!(self.state.handle.caller(secret).await, Ok(None))
    }
}

/// Admits `action` on channel `name`, or says why not; answers the token
/// it was admitted with (`None` on a public channel).
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
    action: Action,
    name: &str,
) -> Result<Option<String>, ApiError> {
    shoal_engine::check_channel_name(name)?;
    if action == Action::Subscribe
        && !shoal_engine::is_feed(name)
        && state.handle.channel_settings(name).await?.public
    {
        return Ok(None);
    }
    let unauthorized =
        |m: String| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m);
    let secret = match headers.get(AUTHORIZATION) {
        Some(h) => h
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`".into()))?
            .to_string(),
        None => query_token.map(str::to_string).ok_or_else(|| {
            unauthorized(match action {
                Action::Subscribe => format!(
                    "missing `Authorization: Bearer <token>` header: channel `{name}` is not public, so subscribing needs a token (in the header, or in `?token=` where headers cannot be set)"
                ),
                Action::Publish => format!(
                    "missing `Authorization: Bearer <token>` header: publishing on `{name}` needs a token with invoker rights or a `publish:` channel scope"
                ),
            })
        })?,
    };
    let caller = state
        .handle
        .caller(&secret)
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked token".into()))?;
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m);
    if caller.scoped() {
        if caller.scope_allows(action.as_str(), name) {
            return Ok(Some(secret));
        }
        return Err(forbidden(format!(
            "this token's channel scopes {:?} do not allow {} on `{name}`",
            caller.channels,
            action.as_str()
        )));
    }
    let needs = match action {
        Action::Subscribe => Role::Reader,
        Action::Publish => Role::Invoker,
    };
    if caller.role.allows(needs) {
        Ok(Some(secret))
    } else {
        Err(forbidden(format!(
            "this needs a {needs} token; yours is {} (to {} on a channel)",
            caller.role,
            action.as_str()
        )))
    }
}

/// Publishes one message: a JSON body, or bytes sent as
/// `application/octet-stream`. Answers where it is in the channel.
#[utoipa::path(post, path = "/v1/channels/{name}/messages", tag = "channels",
    params(("name" = String, Path)),
    request_body(content = Object, description = "any JSON value, or bytes as application/octet-stream"),
    responses((status = 200, body = PublishedView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishedView>, ApiError> {
    let Path(name) = name?;
    admit(&state, &headers, None, Action::Publish, &name).await?;
    let body = body?;
    let binary = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    let data = if binary {
        body.to_vec()
    } else {
        // Stored compact: one line, whatever the client's layout.
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the body is not JSON ({e}); send a JSON value, or bytes with `Content-Type: application/octet-stream`"
            ))
        })?;
        serde_json::to_vec(&value).map_err(|e| ApiError::invalid(e.to_string()))?
    };
    let done = state
        .handle
        .publish(&name, vec![NewChannelMessage { binary, data }], None)
        .await?;
    Ok(Json(PublishedView {
        epoch: done.epoch,
        offset: done.last,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeParams {
    /// Resume after this position, `EPOCH:OFFSET` (the `id` of the last
    /// event received), or a bare offset of the current epoch (`0`: the
    /// whole history). A `Last-Event-ID` header wins over it.
    since: Option<String>,
    /// A token, for clients that cannot set headers.
    token: Option<String>,
}

/// Parses a resume point; a bare offset takes the current epoch.
async fn since(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Position>, ApiError> {
    let text = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("the Last-Event-ID header is not text"))?
                .to_string(),
        ),
        None => query.map(str::to_string),
    };
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(format!(
            "`{text}` is not a resume point; pass `EPOCH:OFFSET` (the id of the last event you received) or a bare offset"
        ))
    };
    match text.rsplit_once(':') {
        Some((epoch, offset)) => Ok(Some(Position {
            epoch: epoch.to_string(),
            offset: offset.parse().map_err(|_| bad())?,
        })),
        None => {
            let offset = text.parse().map_err(|_| bad())?;
            let epoch = state.handle.channel_position(name).await?.epoch;
            Ok(Some(Position { epoch, offset }))
        }
    }
}

/// Opens an admitted subscriber's subscription at its resume point, with
/// the watch of the token it was admitted with.
async fn open(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    since_query: Option<&str>,
    secret: Option<String>,
) -> Result<(Subscription, TokenWatch), ApiError> {
    let since = since(state, name, headers, since_query).await?;
    let sub = state.handle.subscribe(name, since).await?;
    Ok((sub, TokenWatch::new(state, secret)))
}

/// Subscribes over Server-Sent Events: `ready`, then `message` (or
/// `binary`, base64) events with `id: EPOCH:OFFSET`, and `reset` when a
/// resume cannot be answered whole.
#[utoipa::path(get, path = "/v1/channels/{name}/events", tag = "channels",
    params(("name" = String, Path), SubscribeParams),
    responses((status = 200, description = "text/event-stream"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<SubscribeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let Query(params) = params?;
    let secret = admit(
        &state,
        &headers,
        params.token.as_deref(),
        Action::Subscribe,
        &name,
    )
    .await?;
    let (sub, watch) = open(&state, &name, &headers, params.since.as_deref(), secret).await?;
    let first = Some(Bytes::from_static(b"retry: 1000\n\n"));
    let stream = futures_util::stream::unfold(
        (sub, watch, first),
        |(mut sub, mut watch, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::convert::Infallible>(first), (sub, watch, None)));
            }
            let keep_alive = tokio::time::sleep(KEEP_ALIVE);
            tokio::pin!(keep_alive);
            loop {
                tokio::select! {
                    event = sub.next() => {
                        let event = event?;
                        return Some((Ok(sse_burst(&event, &mut sub)), (sub, watch, None)));
                    }
                    _ = &mut keep_alive => {
                        return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (sub, watch, None)));
                    }
                    _ = watch.due() => {
                        if !watch.still_valid().await {
                            // Revoked: the stream ends (a reconnect gets 401).
                            return None;
                        }
                    }
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Events a subscriber has ready are written together, up to this many
/// bytes: under load a subscriber writes a burst in one go, not one write
/// per message.
const BURST_BYTES: usize = 64 << 10;

/// `first` and whatever else the subscription has ready, in the SSE wire
/// form.
fn sse_burst(first: &ChannelEvent, sub: &mut Subscription) -> Bytes {
    let first = sse(first);
    if first.len() >= BURST_BYTES {
        return first;
    }
    let Some(next) = sub.try_next() else {
        return first;
    };
    let mut out = bytes::BytesMut::from(&first[..]);
    out.extend_from_slice(&sse(&next));
    while out.len() < BURST_BYTES {
        let Some(next) = sub.try_next() else { break };
        out.extend_from_slice(&sse(&next));
    }
    out.freeze()
}

/// One event (or a run of messages) in the SSE wire form; a run shared by
/// several subscribers is encoded once.
fn sse(event: &ChannelEvent) -> Bytes {
    if let ChannelEvent::Messages { encoded, .. } = event {
        return encoded.get_or_init(|| sse_text(event));
    }
    sse_text(event)
}

fn sse_text(event: &ChannelEvent) -> Bytes {
    let mut out = String::new();
    match event {
        ChannelEvent::Ready { epoch, offset } => {
            out.push_str(&format!(
                "id: {epoch}:{offset}\nevent: ready\ndata: {}\n\n",
                serde_json::json!({"epoch": epoch, "offset": offset})
            ));
        }
        ChannelEvent::Reset {
            epoch,
            offset,
            reason,
        } => {
            out.push_str(&format!(
                "id: {epoch}:{offset}\nevent: reset\ndata: {}\n\n",
                serde_json::json!({"epoch": epoch, "offset": offset, "reason": reason})
            ));
        }
        ChannelEvent::Messages {
            epoch, messages, ..
        } => {
            for m in messages.iter() {
                let (kind, data) = payload(m);
                out.push_str(&format!("id: {epoch}:{}\nevent: {kind}\ndata: ", m.offset));
                // JSON from the store is one line; guard the framing anyway.
                out.push_str(&data.replace('\n', "\ndata: "));
                out.push_str("\n\n");
            }
        }
    }
    Bytes::from(out)
}

/// A message's event kind and text: JSON as stored, bytes as base64.
fn payload(m: &ChannelMessage) -> (&'static str, String) {
    if m.binary {
        (
            "binary",
            base64::engine::general_purpose::STANDARD.encode(&m.data),
        )
    } else {
        ("message", String::from_utf8_lossy(&m.data).into_owned())
    }
}

/// Subscribes over WebSocket: text frames `{"type": "ready" | "reset" |
/// "message", "epoch", "offset", "data"}`; binary messages as binary frames
/// (8-byte big-endian offset, then the bytes).
#[utoipa::path(get, path = "/v1/channels/{name}/ws", tag = "channels",
    params(("name" = String, Path), SubscribeParams),
    responses((status = 101, description = "switching to WebSocket"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn ws(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<SubscribeParams>, QueryRejection>,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::edge::ConnSlot>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let Query(params) = params?;
    let secret = admit(
        &state,
        &headers,
        params.token.as_deref(),
        Action::Subscribe,
        &name,
    )
    .await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::invalid(format!(
            "{e}; connect with a WebSocket client, or use /v1/channels/{name}/events for Server-Sent Events"
        ))
    })?;
    let (sub, watch) = open(&state, &name, &headers, params.since.as_deref(), secret).await?;
    Ok(upgrade
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            // The connection keeps its place under the node's cap.
            let _slot = slot;
            follow(socket, sub, watch).await
        })
        .into_response())
}

/// Sends a subscription's events until either side ends.
async fn follow(mut socket: WebSocket, mut sub: Subscription, mut watch: TokenWatch) {
    loop {
        tokio::select! {
            _ = watch.due() => {
                if !watch.still_valid().await {
                    // Revoked: 1008, policy violation.
                    let close = axum::extract::ws::CloseFrame {
                        code: 1008,
                        reason: "the token was revoked".into(),
                    };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
            }
            event = sub.next() => {
                let Some(event) = event else { break };
                for frame in ws_frames(&event) {
                    if socket.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; other frames ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

fn ws_frames(event: &ChannelEvent) -> Vec<Message> {
    match event {
        ChannelEvent::Ready { epoch, offset } => vec![Message::Text(
            serde_json::json!({"type": "ready", "epoch": epoch, "offset": offset})
                .to_string()
                .into(),
        )],
        ChannelEvent::Reset {
            epoch,
            offset,
            reason,
        } => vec![Message::Text(
            serde_json::json!({"type": "reset", "epoch": epoch, "offset": offset, "reason": reason})
                .to_string()
                .into(),
        )],
        ChannelEvent::Messages {
            epoch, messages, ..
        } => messages
            .iter()
            .map(|m| {
                if m.binary {
                    let mut frame = Vec::with_capacity(8 + m.data.len());
                    frame.extend_from_slice(&m.offset.to_be_bytes());
                    frame.extend_from_slice(&m.data);
                    Message::Binary(frame.into())
                } else {
                    Message::Text(
                        format!(
                            "{{\"type\":\"message\",\"epoch\":{},\"offset\":{},\"data\":{}}}",
                            serde_json::Value::String(epoch.to_string()),
                            m.offset,
                            String::from_utf8_lossy(&m.data)
                        )
                        .into(),
                    )
                }
            })
            .collect(),
    }
}
