//! Channels end to end, on real nodes: Server-Sent Events and WebSocket
//! subscriptions (ready, messages with `EPOCH:N` ids in order, binary
//! messages), resuming with `Last-Event-ID` or `?since=` without gaps or
//! repeats (also while publishes go on), the explicit `reset` past the
//! history, who may subscribe and publish (public channels, scoped and
//! reader tokens, bad names and bodies), presence, `ctx.publish` with blob
//! operations from a Python function, a `kill -9` of a node on the embedded
//! store (the history and its epoch survive), and two nodes on one
//! `redis-server` delivering each other's messages with the same offsets.
//!
//! SSE is parsed here from the raw stream (`reqwest`), WebSocket frames
//! through `tokio-tungstenite`: the wire formats are what is under test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{TestNode, deploy, until};
use shoal_store_redis::testing::RedisServer;

/// How long any one expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long a stream must stay quiet to show nothing more comes.
const QUIET: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------- HTTP

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// What the node answered: status and body (JSON, or the text as a string).
async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("the answer's body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts a refusal: `status` and the JSON error shape.
fn refused(got: (u16, Value), status: u16, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert!(
        got.1["error"]["message"].is_string() && got.1["error"]["code"].is_string(),
        "{what}: not a JSON error: {}",
        got.1
    );
}

/// `PUT /v1/channels/{name}` with the node's admin token.
async fn configure(node: &TestNode, name: &str, settings: Value) -> Value {
    let got = answer(
        http()
            .put(format!("{}/v1/channels/{name}", node.url))
            .bearer_auth(&node.token)
            .json(&settings)
            .send()
            .await
            .expect("configure"),
    )
    .await;
    assert_eq!(got.0, 200, "configure {name}: {}", got.1);
    got.1
}

/// `GET /v1/channels/{name}` with the node's admin token.
async fn channel(node: &TestNode, name: &str) -> Value {
    let got = answer(
        http()
            .get(format!("{}/v1/channels/{name}", node.url))
            .bearer_auth(&node.token)
            .send()
            .await
            .expect("channel"),
    )
    .await;
    assert_eq!(got.0, 200, "GET channel {name}: {}", got.1);
    got.1
}

/// Publishes a JSON value with `token`; the node's answer, whatever it is.
async fn try_publish(url: &str, token: Option<&str>, name: &str, value: &Value) -> (u16, Value) {
    let mut req = http()
        .post(format!("{url}/v1/channels/{name}/messages"))
        .json(value);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.expect("publish")).await
}

/// Publishes a JSON value; answers `(epoch, offset)`.
async fn publish_at(url: &str, token: &str, name: &str, value: &Value) -> (String, u64) {
    let got = try_publish(url, Some(token), name, value).await;
    assert_eq!(got.0, 200, "publish on {name}: {}", got.1);
    position_of(&got.1)
}

async fn publish(node: &TestNode, name: &str, value: &Value) -> (String, u64) {
    publish_at(&node.url, &node.token, name, value).await
}

/// Publishes bytes (`application/octet-stream`).
async fn publish_bytes(node: &TestNode, name: &str, bytes: &[u8]) -> (String, u64) {
    let got = answer(
        http()
            .post(format!("{}/v1/channels/{name}/messages", node.url))
            .bearer_auth(&node.token)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("publish bytes"),
    )
    .await;
    assert_eq!(got.0, 200, "publish bytes on {name}: {}", got.1);
    position_of(&got.1)
}

fn position_of(v: &Value) -> (String, u64) {
    let epoch = v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {v}"));
    let offset = v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {v}"));
    assert!(!epoch.is_empty(), "an empty epoch after a publish: {v}");
    (epoch.to_string(), offset)
}

/// Runs a publisher beside the test.
#[allow(clippy::disallowed_methods)] // every caller awaits the handle
fn spawn<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(f)
}

// ---------------------------------------------------------------- SSE

#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// The offset of the `EPOCH:N` id, checking the epoch.
    fn offset_in(&self, epoch: &str) -> u64 {
        let id = self
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("no id: {self:?}"));
        let (e, n) = id
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("id `{id}` is not EPOCH:N"));
        assert_eq!(e, epoch, "the epoch of {self:?}");
        n.parse()
            .unwrap_or_else(|_| panic!("id `{id}` is not EPOCH:N"))
    }
}

/// An open `text/event-stream`, parsed by hand.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

/// Where to subscribe from.
#[derive(Clone, Copy)]
enum From<'a> {
    Live,
    LastEventId(&'a str),
    Since(&'a str),
}

/// The request of an SSE subscription.
fn sse_request(url: &str, name: &str, auth: Auth<'_>, from: From<'_>) -> reqwest::RequestBuilder {
    let mut query: Vec<String> = Vec::new();
    if let From::Since(s) = from {
        query.push(format!("since={s}"));
    }
    if let Auth::Query(t) = auth {
        query.push(format!("token={t}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let mut req = http()
        .get(format!("{url}/v1/channels/{name}/events{query}"))
        .header("accept", "text/event-stream");
    if let Auth::Bearer(t) = auth {
        req = req.bearer_auth(t);
    }
    if let From::LastEventId(id) = from {
        req = req.header("last-event-id", id);
    }
    req
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Query(&'a str),
}

/// Subscribes over SSE; fails the test unless the node answers a stream.
async fn sse_at(url: &str, token: &str, name: &str, from: From<'_>) -> Sse {
    sse_with(url, name, Auth::Bearer(token), from).await
}

async fn sse(node: &TestNode, name: &str, from: From<'_>) -> Sse {
    sse_at(&node.url, &node.token, name, from).await
}

async fn sse_with(url: &str, name: &str, auth: Auth<'_>, from: From<'_>) -> Sse {
    let resp = sse_request(url, name, auth, from)
        .send()
        .await
        .expect("subscribe");
    if resp.status() != 200 {
        let got = answer(resp).await;
        panic!("subscribing to {name}: {} {}", got.0, got.1);
    }
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    Sse {
        resp,
        buf: Vec::new(),
    }
}

/// What a refused SSE subscription answers.
async fn sse_refused(url: &str, name: &str, auth: Auth<'_>) -> (u16, Value) {
    answer(
        sse_request(url, name, auth, From::Live)
            .send()
            .await
            .expect("subscribe"),
    )
    .await
}

impl Sse {
    async fn next(&mut self) -> SseEvent {
        match self.next_within(WAIT).await {
            Some(e) => e,
            None => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next dispatched event (comments and `retry:` alone are not
    /// events), or `None` when none comes within `within`.
    async fn next_within(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(event) = parse_block(&block) {
                    return Some(event);
                }
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => panic!("the event stream ended"),
                Ok(Err(e)) => panic!("the event stream failed: {e}"),
            }
        }
    }

    /// Asserts nothing more arrives for a while.
    async fn quiet(&mut self) {
        if let Some(e) = self.next_within(QUIET).await {
            panic!("expected no more events, got {e:?}");
        }
    }

    /// The `ready` event: answers its `(epoch, offset)`.
    async fn ready(&mut self) -> (String, u64) {
        let e = self.next().await;
        assert_eq!(e.event, "ready", "the first event: {e:?}");
        let v = e.json();
        let epoch = v["epoch"].as_str().expect("ready epoch").to_string();
        let offset = v["offset"].as_u64().expect("ready offset");
        assert_eq!(
            e.id.as_deref(),
            Some(format!("{epoch}:{offset}").as_str()),
            "{e:?}"
        );
        (epoch, offset)
    }

    /// Reads `count` message events, checking their ids are `epoch`:
    /// `after + 1`, `after + 2`, ... in order; answers their data.
    async fn messages(&mut self, epoch: &str, after: u64, count: u64) -> Vec<Value> {
        let mut out = Vec::new();
        for n in after + 1..=after + count {
            let e = self.next().await;
            assert_eq!(e.event, "message", "expected message {n}: {e:?}");
            assert_eq!(e.offset_in(epoch), n, "out of order or repeated: {e:?}");
            out.push(e.json());
        }
        out
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut id = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.split('\n') {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "id" => id = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => {}
            other => panic!("unknown SSE field `{other}` in {block:?}"),
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event: event.unwrap_or_else(|| "message".into()),
        id,
        data: data.join("\n"),
    })
}

/// `{"n": n}` for n in the range.
fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<Value> {
    range.map(|n| json!({ "n": n })).collect()
}

// ---------------------------------------------------------------- WebSocket

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug)]
enum Frame {
    Text(Value),
    Binary(Vec<u8>),
}

fn ws_url(url: &str, name: &str, query: &str) -> String {
    let base = url.replacen("http://", "ws://", 1);
    format!("{base}/v1/channels/{name}/ws{query}")
}

/// Connects a WebSocket subscription (a bearer token in the header when
/// given); `Err` carries the refused handshake's status.
async fn ws_try(url: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().expect("a WebSocket request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket connect to {url}: {e}"),
    }
}

async fn ws_connect(url: &str, token: Option<&str>) -> Ws {
    match ws_try(url, token).await {
        Ok(ws) => ws,
        Err(status) => panic!("WebSocket connect to {url}: refused with {status}"),
    }
}

async fn ws_next_within(ws: &mut Ws, within: Duration) -> Option<Frame> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the WebSocket closed"),
            Ok(Some(Err(e))) => panic!("the WebSocket failed: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                return Some(Frame::Text(
                    serde_json::from_str(t.as_str()).expect("a JSON text frame"),
                ));
            }
            Message::Binary(b) => return Some(Frame::Binary(b.to_vec())),
            Message::Close(c) => panic!("the WebSocket closed: {c:?}"),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

async fn ws_next(ws: &mut Ws) -> Frame {
    match ws_next_within(ws, WAIT).await {
        Some(f) => f,
        None => panic!("no WebSocket frame within {WAIT:?}"),
    }
}

async fn ws_text(ws: &mut Ws) -> Value {
    match ws_next(ws).await {
        Frame::Text(v) => v,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads `count` text message frames `after + 1`...; answers their data.
async fn ws_messages(ws: &mut Ws, epoch: &str, after: u64, count: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for n in after + 1..=after + count {
        let v = ws_text(ws).await;
        assert_eq!(v["type"], "message", "expected message {n}: {v}");
        assert_eq!(v["epoch"], epoch, "{v}");
        assert_eq!(v["offset"], n, "out of order or repeated: {v}");
        out.push(v["data"].clone());
    }
    out
}

// ---------------------------------------------------------------- tests

/// A live subscriber gets `ready`, then every message with `EPOCH:N` ids in
/// order; a reconnect with `Last-Event-ID` or `?since=` gets exactly the
/// missed ones, then goes on live.
#[tokio::test(flavor = "multi_thread")]
async fn sse_delivers_in_order_and_resumes_exactly_the_missed_messages() {
    let node = TestNode::start();
    let mut live = sse(&node, "news", From::Live).await;
    let (epoch0, head0) = live.ready().await;
    assert_eq!(head0, 0, "a channel never published on");
    assert_eq!(epoch0, "", "a channel never published on has no epoch yet");
    // A browser that got only that `ready` (id `:0`) resumes with it.
    let mut first_id = sse(&node, "news", From::LastEventId(":0")).await;
    assert_eq!(first_id.ready().await, (String::new(), 0));

    let mut epoch = String::new();
    for (i, v) in numbered(1..=10).iter().enumerate() {
        let (e, offset) = publish(&node, "news", v).await;
        assert_eq!(offset, i as u64 + 1);
        if epoch.is_empty() {
            epoch = e;
        } else {
            assert_eq!(e, epoch, "one epoch");
        }
    }
    assert_eq!(live.messages(&epoch, 0, 10).await, numbered(1..=10));
    live.quiet().await;
    drop(live);
    assert_eq!(first_id.messages(&epoch, 0, 10).await, numbered(1..=10));
    drop(first_id);
    let mut from_empty = sse(&node, "news", From::LastEventId(":0")).await;
    assert_eq!(from_empty.ready().await, (epoch.clone(), 0));
    assert_eq!(from_empty.messages(&epoch, 0, 10).await, numbered(1..=10));
    drop(from_empty);

    // Missed while away: 11..=20.
    for v in numbered(11..=20) {
        publish(&node, "news", &v).await;
    }
    let id = format!("{epoch}:10");
    let mut back = sse(&node, "news", From::LastEventId(&id)).await;
    assert_eq!(back.ready().await, (epoch.clone(), 10));
    assert_eq!(back.messages(&epoch, 10, 10).await, numbered(11..=20));
    back.quiet().await;
    // ... then live.
    publish(&node, "news", &json!({"n": 21})).await;
    assert_eq!(back.messages(&epoch, 20, 1).await, numbered(21..=21));
    back.quiet().await;

    // `?since=` the same, from elsewhere in the history.
    let since = format!("{epoch}:15");
    let mut s = sse(&node, "news", From::Since(&since)).await;
    assert_eq!(s.ready().await, (epoch.clone(), 15));
    assert_eq!(s.messages(&epoch, 15, 6).await, numbered(16..=21));
    s.quiet().await;

    // A bare offset is one of the current epoch; 0 is the whole history.
    let mut all = sse(&node, "news", From::Since("0")).await;
    assert_eq!(all.ready().await, (epoch.clone(), 0));
    assert_eq!(all.messages(&epoch, 0, 21).await, numbered(1..=21));
    all.quiet().await;

    // At the head: nothing missed, live from there.
    let head = format!("{epoch}:21");
    let mut at_head = sse(&node, "news", From::Since(&head)).await;
    assert_eq!(at_head.ready().await, (epoch.clone(), 21));
    at_head.quiet().await;

    // The Last-Event-ID header wins over `?since=`.
    let mut both = sse_with(
        &node.url,
        "news",
        Auth::Bearer(&node.token),
        From::LastEventId(&format!("{epoch}:19")),
    )
    .await;
    assert_eq!(both.ready().await, (epoch.clone(), 19));
    assert_eq!(both.messages(&epoch, 19, 2).await, numbered(20..=21));

    // A live subscriber starts at the head.
    let mut late = sse(&node, "news", From::Live).await;
    assert_eq!(late.ready().await, (epoch.clone(), 21));
    publish(&node, "news", &json!({"n": 22})).await;
    assert_eq!(late.messages(&epoch, 21, 1).await, numbered(22..=22));
    assert_eq!(at_head.messages(&epoch, 21, 1).await, numbered(22..=22));

    // A resume point that is no position: 400.
    let got = answer(
        sse_request(
            &node.url,
            "news",
            Auth::Bearer(&node.token),
            From::Since("e:notanumber"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    refused(got, 400, "a bad ?since=");
}

/// Subscribers joining at many points while one publisher goes on, and a
/// live subscriber under several concurrent publishers: each gets a run of
/// consecutive offsets, none missing, none twice, each with the data its
/// publish stored.
#[tokio::test(flavor = "multi_thread")]
async fn resumes_during_publishing_and_concurrent_publishers_leave_no_gap_and_no_repeat() {
    let node = TestNode::start();
    let mut epoch = String::new();
    for v in numbered(1..=20) {
        epoch = publish(&node, "busy", &v).await.0;
    }
    const LAST: u64 = 300;
    let (url, token) = (node.url.clone(), node.token.clone());
    let publisher = spawn(async move {
        for n in 21..=LAST {
            let (_, offset) = publish_at(&url, &token, "busy", &json!({ "n": n })).await;
            assert_eq!(offset, n, "one publisher's offsets");
        }
    });
    let mut subs = Vec::new();
    for k in [0u64, 5, 10, 15, 20] {
        let since = format!("{epoch}:{k}");
        subs.push((k, sse(&node, "busy", From::Since(&since)).await));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut live = sse(&node, "busy", From::Live).await;
    let (_, live_from) = live.ready().await;
    for (k, mut s) in subs {
        assert_eq!(s.ready().await, (epoch.clone(), k));
        assert_eq!(
            s.messages(&epoch, k, LAST - k).await,
            numbered(k + 1..=LAST)
        );
        s.quiet().await;
    }
    assert_eq!(
        live.messages(&epoch, live_from, LAST - live_from).await,
        numbered(live_from + 1..=LAST)
    );
    publisher.await.expect("the publisher");

    // Four publishers at once.
    let mut live = sse(&node, "race", From::Live).await;
    live.ready().await;
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let (url, token) = (node.url.clone(), node.token.clone());
        tasks.push(spawn(async move {
            let mut stored = Vec::new();
            for i in 0..50u64 {
                let v = json!({"p": p, "i": i});
                let (e, offset) = publish_at(&url, &token, "race", &v).await;
                stored.push((e, offset, v));
            }
            stored
        }));
    }
    let mut by_offset = BTreeMap::new();
    let mut race_epoch = None;
    for t in tasks {
        for (e, offset, v) in t.await.expect("a publisher") {
            assert_eq!(race_epoch.get_or_insert(e.clone()), &e);
            assert!(
                by_offset.insert(offset, v).is_none(),
                "offset {offset} twice"
            );
        }
    }
    let race_epoch = race_epoch.unwrap();
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let got = live.messages(&race_epoch, 0, 200).await;
    assert_eq!(got, by_offset.into_values().collect::<Vec<_>>());
    live.quiet().await;
}

/// Resuming from before the history (`history_len` 5), or from another
/// epoch, is an explicit `reset` naming the head; the stream goes on live
/// after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_resume_past_the_history_is_an_explicit_reset() {
    let node = TestNode::start();
    let shown = configure(&node, "short", json!({"history_len": 5})).await;
    assert_eq!(shown["history_len"], 5, "{shown}");
    let mut epoch = String::new();
    for v in numbered(1..=20) {
        epoch = publish(&node, "short", &v).await.0;
    }
    let info = channel(&node, "short").await;
    assert_eq!(
        (info["epoch"].as_str(), info["offset"].as_u64()),
        (Some(epoch.as_str()), Some(20)),
        "{info}"
    );

    // 16..=20 are kept: resuming after 15 is whole.
    let since = format!("{epoch}:15");
    let mut whole = sse(&node, "short", From::Since(&since)).await;
    assert_eq!(whole.ready().await, (epoch.clone(), 15));
    assert_eq!(whole.messages(&epoch, 15, 5).await, numbered(16..=20));

    // After 14 needs 15, which left: a reset, not a partial run. Each case
    // publishes once more, so the head moves on: 20, 21, 22, 23.
    let cases = [
        (format!("{epoch}:14"), "just before the history"),
        (format!("{epoch}:3"), "long before the history"),
        ("another-epoch:3".to_string(), "another epoch"),
        (format!("{epoch}:99"), "past the head"),
    ];
    for (head, (from, what)) in (20u64..).zip(cases) {
        let mut s = sse(&node, "short", From::LastEventId(&from)).await;
        let e = s.next().await;
        assert_eq!(e.event, "reset", "{what}: {e:?}");
        let v = e.json();
        assert_eq!(v["epoch"], epoch.as_str(), "{what}: {v}");
        assert_eq!(v["offset"], head, "{what}: {v}");
        assert!(
            v["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(
            e.id.as_deref(),
            Some(format!("{epoch}:{head}").as_str()),
            "{what}"
        );
        // Nothing of the history after the reset: live from the head.
        s.quiet().await;
        let (_, offset) = publish(&node, "short", &json!({ "after": what })).await;
        assert_eq!(offset, head + 1);
        let next = s.next().await;
        assert_eq!(next.event, "message", "{what}: {next:?}");
        assert_eq!(next.offset_in(&epoch), head + 1, "{what}");
        assert_eq!(next.json(), json!({ "after": what }));
        s.quiet().await;
    }
}

/// Bytes published as `application/octet-stream` arrive as `binary`
/// events, base64, in order with JSON messages; on resume too.
#[tokio::test(flavor = "multi_thread")]
async fn binary_messages_are_base64_binary_events() {
    let node = TestNode::start();
    let mut live = sse(&node, "bin", From::Live).await;
    live.ready().await;
    let bytes: Vec<u8> = vec![0, 1, 2, b'\n', b'\r', 0x80, 0xfe, 0xff, b':', b'\n', b'\n'];
    let (epoch, first) = publish_bytes(&node, "bin", &bytes).await;
    let (_, second) = publish(&node, "bin", &json!({"text": "line\nbreak"})).await;
    let (_, third) = publish_bytes(&node, "bin", b"").await;
    assert_eq!((first, second, third), (1, 2, 3));

    let check = async |s: &mut Sse| {
        let e = s.next().await;
        assert_eq!(e.event, "binary", "{e:?}");
        assert_eq!(e.offset_in(&epoch), 1);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&e.data)
            .unwrap_or_else(|err| panic!("not base64 ({err}): {e:?}"));
        assert_eq!(decoded, bytes);
        let e = s.next().await;
        assert_eq!((e.event.as_str(), e.offset_in(&epoch)), ("message", 2));
        assert_eq!(e.json(), json!({"text": "line\nbreak"}));
    };
    check(&mut live).await;
    // An empty binary message has empty data: per the SSE rules a `data:`
    // line with nothing is still an event (data ""), so it must come.
    let e = live.next().await;
    assert_eq!(
        (e.event.as_str(), e.offset_in(&epoch)),
        ("binary", 3),
        "{e:?}"
    );
    assert_eq!(e.data, "");

    let mut again = sse(&node, "bin", From::Since("0")).await;
    assert_eq!(again.ready().await, (epoch.clone(), 0));
    check(&mut again).await;
}

/// WebSocket: a `ready` text frame, JSON messages as text frames, binary
/// messages as binary frames (8-byte big-endian offset, then the bytes),
/// resume with `?since=`; a plain GET is told to upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_and_resume() {
    let node = TestNode::start();
    let mut ws = ws_connect(&ws_url(&node.url, "wsc", ""), Some(&node.token)).await;
    let ready = ws_text(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["offset"], 0, "{ready}");

    let (epoch, _) = publish(&node, "wsc", &json!({"n": 1})).await;
    publish_bytes(&node, "wsc", &[9, 8, 7]).await;
    publish(&node, "wsc", &json!("three")).await;
    assert_eq!(
        ws_messages(&mut ws, &epoch, 0, 1).await,
        vec![json!({"n": 1})]
    );
    match ws_next(&mut ws).await {
        Frame::Binary(b) => {
            assert_eq!(b.len(), 11, "{b:?}");
            assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), 2);
            assert_eq!(&b[8..], &[9, 8, 7]);
        }
        other => panic!("expected a binary frame, got {other:?}"),
    }
    assert_eq!(
        ws_messages(&mut ws, &epoch, 2, 1).await,
        vec![json!("three")]
    );
    // Pings are answered and change nothing.
    ws.send(Message::Ping(vec![1, 2].into())).await.unwrap();
    assert!(ws_next_within(&mut ws, QUIET).await.is_none());
    ws.close(None).await.expect("close");
    drop(ws);

    for v in numbered(4..=8) {
        publish(&node, "wsc", &v).await;
    }
    // `?token=` instead of the header, resuming after 3.
    let query = format!("?since={epoch}:3&token={}", node.token);
    let mut back = ws_connect(&ws_url(&node.url, "wsc", &query), None).await;
    let ready = ws_text(&mut back).await;
    assert_eq!(ready, json!({"type": "ready", "epoch": epoch, "offset": 3}));
    assert_eq!(ws_messages(&mut back, &epoch, 3, 5).await, numbered(4..=8));
    assert!(ws_next_within(&mut back, QUIET).await.is_none());
    publish(&node, "wsc", &json!({"n": 9})).await;
    assert_eq!(ws_messages(&mut back, &epoch, 8, 1).await, numbered(9..=9));

    // From the whole history, binary frame included.
    let mut all = ws_connect(&ws_url(&node.url, "wsc", "?since=0"), Some(&node.token)).await;
    assert_eq!(ws_text(&mut all).await["offset"], 0);
    assert_eq!(ws_messages(&mut all, &epoch, 0, 1).await, numbered(1..=1));
    assert!(matches!(ws_next(&mut all).await, Frame::Binary(b) if b[..8] == 2u64.to_be_bytes()));

    // Past the history: a reset frame.
    configure(&node, "wsc", json!({"history_len": 2})).await;
    let query = format!("?since={epoch}:1");
    let mut reset = ws_connect(&ws_url(&node.url, "wsc", &query), Some(&node.token)).await;
    let v = ws_text(&mut reset).await;
    assert_eq!(v["type"], "reset", "{v}");
    assert_eq!(
        (v["epoch"].as_str(), v["offset"].as_u64()),
        (Some(epoch.as_str()), Some(9)),
        "{v}"
    );

    // The largest messages (1 MiB) go through both transports.
    let mut big_ws = ws_connect(&ws_url(&node.url, "big", ""), Some(&node.token)).await;
    ws_text(&mut big_ws).await;
    let mut big_sse = sse(&node, "big", From::Live).await;
    big_sse.ready().await;
    let text = json!("y".repeat((1 << 20) - 2));
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let (big, _) = publish(&node, "big", &text).await;
    publish_bytes(&node, "big", &bytes).await;
    assert_eq!(
        ws_messages(&mut big_ws, &big, 0, 1).await,
        vec![text.clone()]
    );
    match ws_next(&mut big_ws).await {
        Frame::Binary(b) => {
            assert_eq!(b[..8], 2u64.to_be_bytes());
            assert!(b[8..] == bytes[..], "the 1 MiB binary frame differs");
        }
        other => panic!(
            "expected a binary frame, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    assert_eq!(big_sse.messages(&big, 0, 1).await, vec![text]);
    let e = big_sse.next().await;
    assert_eq!(e.event, "binary");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&e.data)
        .unwrap();
    assert!(decoded == bytes, "the 1 MiB binary event differs");

    // A plain GET on the WebSocket route: 400 with a JSON error.
    let got = answer(
        http()
            .get(format!("{}/v1/channels/wsc/ws", node.url))
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(got, 400, "a GET without the upgrade");
}

/// Who may subscribe and publish: private channels need a token (401
/// without), public ones none; a token scoped to `subscribe:board.*` (made
/// with the CLI) subscribes to `board.1` only and can do nothing else; a
/// reader cannot publish; bad names, settings and bodies are 400s.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_scopes_public_channels_and_bad_input() {
    let node = TestNode::start();
    let url = node.url.as_str();

    // Private (the default): 401 without a token, on both transports.
    refused(
        sse_refused(url, "chat", Auth::None).await,
        401,
        "SSE without a token",
    );
    assert_eq!(
        ws_try(&ws_url(url, "chat", ""), None).await.err(),
        Some(401)
    );
    refused(
        sse_refused(url, "chat", Auth::Query("not-a-token")).await,
        401,
        "an unknown token",
    );
    refused(
        try_publish(url, None, "chat", &json!(1)).await,
        401,
        "publishing without a token",
    );

    // Public: no token needed to subscribe, one still needed to publish.
    let shown = configure(&node, "lobby", json!({"public": true})).await;
    assert_eq!(shown["public"], true, "{shown}");
    let mut open = sse_with(url, "lobby", Auth::None, From::Live).await;
    open.ready().await;
    let mut open_ws = ws_connect(&ws_url(url, "lobby", ""), None).await;
    assert_eq!(ws_text(&mut open_ws).await["type"], "ready");
    refused(
        try_publish(url, None, "lobby", &json!(1)).await,
        401,
        "publishing on a public channel without a token",
    );
    let (epoch, n) = publish(&node, "lobby", &json!({"hi": 1})).await;
    assert_eq!(
        open.messages(&epoch, n - 1, 1).await,
        vec![json!({"hi": 1})]
    );
    assert_eq!(
        ws_messages(&mut open_ws, &epoch, n - 1, 1).await,
        vec![json!({"hi": 1})]
    );

    // A scoped token, made with the CLI.
    let out = node.cli(&[
        "tokens",
        "create",
        "--role",
        "reader",
        "--channel",
        "subscribe:board.*",
    ]);
    assert!(
        out.status.success(),
        "shoal tokens create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!scoped.is_empty() && !scoped.contains('\n'), "{scoped:?}");

    let mut board = sse_with(url, "board.1", Auth::Query(&scoped), From::Live).await;
    board.ready().await;
    let (epoch, n) = publish(&node, "board.1", &json!({"px": 1})).await;
    assert_eq!(
        board.messages(&epoch, n - 1, 1).await,
        vec![json!({"px": 1})]
    );
    let query = format!("?token={scoped}");
    let mut board_ws = ws_connect(&ws_url(url, "board.1", &query), None).await;
    assert_eq!(ws_text(&mut board_ws).await["type"], "ready");
    // In the header works as well.
    sse_with(url, "board.2", Auth::Bearer(&scoped), From::Live)
        .await
        .ready()
        .await;
    for name in ["chat", "board", "boardx", "_invocations.f"] {
        refused(
            sse_refused(url, name, Auth::Query(&scoped)).await,
            403,
            &format!("the scoped token subscribing to {name}"),
        );
    }
    assert_eq!(
        ws_try(&ws_url(url, "chat", &query), None).await.err(),
        Some(403)
    );
    refused(
        try_publish(url, Some(&scoped), "board.1", &json!(1)).await,
        403,
        "the scoped token publishing",
    );
    for path in ["/v1/functions", "/v1/channels/board.1", "/v1/channels"] {
        let got = answer(
            http()
                .get(format!("{url}{path}"))
                .bearer_auth(&scoped)
                .send()
                .await
                .unwrap(),
        )
        .await;
        refused(got, 403, &format!("the scoped token on GET {path}"));
    }

    // A publish scope publishes (on its channels only).
    let publisher = node
        .client()
        .create_scoped_token("invoker", None, vec!["publish:board.*".into()])
        .await
        .expect("a publish-scoped token")
        .token;
    let got = try_publish(url, Some(&publisher), "board.1", &json!({"px": 2})).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(board.messages(&epoch, n, 1).await, vec![json!({"px": 2})]);
    refused(
        try_publish(url, Some(&publisher), "chat", &json!(1)).await,
        403,
        "a publish scope on another channel",
    );
    refused(
        sse_refused(url, "board.1", Auth::Bearer(&publisher)).await,
        403,
        "a publish scope subscribing",
    );

    // A reader subscribes to private channels but cannot publish.
    let reader = node
        .client()
        .create_token("reader", None)
        .await
        .expect("a reader token")
        .token;
    sse_with(url, "chat", Auth::Bearer(&reader), From::Live)
        .await
        .ready()
        .await;
    refused(
        try_publish(url, Some(&reader), "chat", &json!(1)).await,
        403,
        "a reader publishing",
    );
    // Nor change settings.
    let got = answer(
        http()
            .put(format!("{url}/v1/channels/chat"))
            .bearer_auth(&reader)
            .json(&json!({"public": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(got, 403, "a reader configuring");
    // An invoker publishes.
    let invoker = node
        .client()
        .create_token("invoker", None)
        .await
        .unwrap()
        .token;
    assert_eq!(
        try_publish(url, Some(&invoker), "chat", &json!(1)).await.0,
        200
    );

    // Bad names: 400, subscribing and publishing.
    let long = "a".repeat(201);
    for name in ["bad%20name", "caf%C3%A9", "a%2Fb", long.as_str()] {
        refused(
            sse_refused(url, name, Auth::Bearer(&node.token)).await,
            400,
            &format!("subscribing to `{name}`"),
        );
        refused(
            try_publish(url, Some(&node.token), name, &json!(1)).await,
            400,
            &format!("publishing on `{name}`"),
        );
    }
    // A message over 1 MiB: 413, and not stored.
    let big = json!("x".repeat(1 << 20));
    let got = try_publish(url, Some(&node.token), "chat", &big).await;
    refused(got, 413, "a message over 1 MiB");
    // Every allowed character, through both transports.
    let odd = "Aa0_.:-z";
    let mut odd_sse = sse(&node, odd, From::Live).await;
    odd_sse.ready().await;
    let mut odd_ws = ws_connect(&ws_url(url, odd, ""), Some(&node.token)).await;
    ws_text(&mut odd_ws).await;
    let (e, n) = publish(&node, odd, &json!("odd")).await;
    assert_eq!(odd_sse.messages(&e, n - 1, 1).await, vec![json!("odd")]);
    assert_eq!(
        ws_messages(&mut odd_ws, &e, n - 1, 1).await,
        vec![json!("odd")]
    );
    assert_eq!(channel(&node, odd).await["name"], odd);
    let ok = "a".repeat(200);
    assert_eq!(
        try_publish(url, Some(&node.token), &ok, &json!(1)).await.0,
        200
    );
    // The node's feeds take no publishes.
    refused(
        try_publish(url, Some(&node.token), "_invocations.f", &json!(1)).await,
        400,
        "publishing on a feed",
    );
    // A body that is not JSON.
    let got = answer(
        http()
            .post(format!("{url}/v1/channels/chat/messages"))
            .bearer_auth(&node.token)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(got, 400, "a body that is not JSON");
    let got = answer(
        http()
            .post(format!("{url}/v1/channels/chat/messages"))
            .bearer_auth(&node.token)
            .body("")
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(got, 400, "an empty body");
    // Bad settings.
    for body in [
        json!({"history_len": 0}),
        json!({"coalesce_ms": 60000}),
        json!({"public": "yes"}),
    ] {
        let got = answer(
            http()
                .put(format!("{url}/v1/channels/chat"))
                .bearer_auth(&node.token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            got.0 == 400 || got.0 == 422,
            "settings {body}: {} {}",
            got.0,
            got.1
        );
    }
    // Nothing of that reached the channel: one message (the invoker's).
    assert_eq!(channel(&node, "chat").await["offset"], 1);
    // The listing shows the channels used.
    let list = answer(
        http()
            .get(format!("{url}/v1/channels?prefix=board."))
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.0, 200, "{}", list.1);
    let names: Vec<&str> = list.1["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["board.1"], "{}", list.1);
}

/// Presence: two subscribers (SSE and WebSocket) show as 2 within a few
/// presence writes; after both disconnect, 0.
#[tokio::test(flavor = "multi_thread")]
async fn presence_counts_connected_subscribers() {
    let node = TestNode::start();
    assert_eq!(channel(&node, "room").await["presence"], 0);
    let s = sse(&node, "room", From::Live).await;
    let mut ws = ws_connect(&ws_url(&node.url, "room", ""), Some(&node.token)).await;
    assert_eq!(ws_text(&mut ws).await["type"], "ready");
    let presence = async || channel(&node, "room").await["presence"].as_u64();
    until("presence 2", Duration::from_secs(10), async || {
        presence().await == Some(2)
    })
    .await;
    // One leaves (the WebSocket, closed properly).
    ws.close(None).await.unwrap();
    drop(ws);
    until("presence 1", Duration::from_secs(10), async || {
        presence().await == Some(1)
    })
    .await;
    // The SSE client goes away (its connection dropped).
    drop(s);
    let started = std::time::Instant::now();
    until("presence 0", Duration::from_secs(30), async || {
        presence().await == Some(0)
    })
    .await;
    eprintln!(
        "presence fell to 0 {:?} after the SSE client left",
        started.elapsed()
    );
}

const PAINTER: &str = "name = \"painter\"\nhandler = \"main:handler\"\n";
const PAINTER_PY: &str = r##"
def handler(event, ctx):
    op = event.get("op")
    if op == "position":
        return ctx.channel_position(event["channel"])
    if op == "plain":
        return ctx.publish("board", event["data"])
    if op == "bad":
        before = ctx.channel_position("board")
        try:
            ctx.publish("board", {"bad": True}, blob="b",
                        ops=[{"op": "set", "type": "u8", "offset": "#1", "value": 1},
                             {"op": "set", "type": "u8", "offset": "#999", "value": 1}])
            return {"published": True}
        except Exception as e:
            return {"error": str(e), "before": before, "after": ctx.channel_position("board")}
    x, c = event["x"], event["c"]
    published = ctx.publish("board", {"x": x, "c": c}, blob="b",
                            ops=[{"op": "set", "type": "u8", "offset": "#%d" % x, "value": c}])
    return {"published": published, "position": ctx.channel_position("board")}
"##;

/// A Python function publishes with `ctx.publish(..., blob=, ops=)`: the
/// subscribers get each message, the fixed-size blob holds each change,
/// `ctx.channel_position` answers the offset, and a publish whose ops fail
/// leaves both the blob and the channel as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_publishes_with_blob_operations() {
    let node = TestNode::start();
    let client = node.client();
    let got = answer(
        http()
            .put(format!("{}/v1/blobs/b?fixed_size=16", node.url))
            .bearer_auth(&node.token)
            .body(Vec::new())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        got.0 == 200 || got.0 == 201,
        "creating blob b: {} {}",
        got.0,
        got.1
    );
    deploy(&client, PAINTER, PAINTER_PY).await;
    let call = async |event: Value| -> Value {
        let done = client
            .invoke("painter", &event.to_string())
            .await
            .expect("invoke painter");
        match done.result {
            Ok(v) => v,
            Err(e) => panic!("painter failed on {event}: {e:?}"),
        }
    };

    let none = call(json!({"op": "position", "channel": "board"})).await;
    assert_eq!(none["offset"], 0, "{none}");

    let mut sub = sse(&node, "board", From::Live).await;
    sub.ready().await;
    let mut ws = ws_connect(&ws_url(&node.url, "board", ""), Some(&node.token)).await;
    ws_text(&mut ws).await;

    let mut expected = vec![0u8; 16];
    let mut epoch = String::new();
    for (i, (x, c, old)) in [(3u64, 7u64, 0u64), (5, 9, 0), (3, 11, 7)]
        .into_iter()
        .enumerate()
    {
        let r = call(json!({"x": x, "c": c})).await;
        let offset = i as u64 + 1;
        let published = &r["published"];
        assert_eq!(published["offset"], offset, "{r}");
        assert_eq!(published["results"], json!([old]), "{r}");
        epoch = published["epoch"].as_str().expect("epoch").to_string();
        assert_eq!(
            r["position"],
            json!({"epoch": epoch, "offset": offset}),
            "{r}"
        );
        expected[x as usize] = c as u8;
        // The change is in the blob as soon as the publish answered.
        assert_eq!(
            client.blob_bytes("b", None).await.unwrap(),
            expected,
            "after {r}"
        );
        assert_eq!(
            sub.messages(&epoch, offset - 1, 1).await,
            vec![json!({"x": x, "c": c})]
        );
        assert_eq!(
            ws_messages(&mut ws, &epoch, offset - 1, 1).await,
            vec![json!({"x": x, "c": c})]
        );
    }

    // Ops that cannot apply (past the blob's end): neither the change of
    // the first op nor the message.
    let r = call(json!({"op": "bad"})).await;
    assert!(r["error"].is_string(), "{r}");
    assert_eq!(r["before"], r["after"], "{r}");
    assert_eq!(r["after"]["offset"], 3, "{r}");
    assert_eq!(client.blob_bytes("b", None).await.unwrap(), expected);
    sub.quiet().await;

    // A publish without ops answers no results; its subscribers get it.
    let r = call(json!({"op": "plain", "data": [1, "two", {"three": null}]})).await;
    assert_eq!(r["offset"], 4, "{r}");
    assert!(r.get("results").is_none(), "{r}");
    assert_eq!(
        sub.messages(&epoch, 3, 1).await,
        vec![json!([1, "two", {"three": null}])]
    );

    // The snapshot rule: position, then the blob; a later subscriber
    // resuming from that position misses nothing.
    let at = call(json!({"op": "position", "channel": "board"})).await;
    assert_eq!(at, json!({"epoch": epoch, "offset": 4}));
    let from = format!("{epoch}:{}", at["offset"]);
    let mut after = sse(&node, "board", From::Since(&from)).await;
    assert_eq!(after.ready().await, (epoch.clone(), 4));
    call(json!({"x": 0, "c": 1})).await;
    assert_eq!(
        after.messages(&epoch, 4, 1).await,
        vec![json!({"x": 0, "c": 1})]
    );

    // A bad channel name fails the host call.
    let done = client
        .invoke(
            "painter",
            &json!({"op": "position", "channel": "bad name"}).to_string(),
        )
        .await
        .expect("invoke");
    assert!(
        done.result.is_err(),
        "a bad channel name answered {:?}",
        done.result
    );
}

/// `kill -9` after acknowledged publishes (some while publishers were
/// still going): on restart every acknowledged message is in the history,
/// offsets consecutive, the epoch the same; a subscriber resuming from its
/// last id gets the rest and no reset.
#[tokio::test(flavor = "multi_thread")]
async fn the_history_and_its_epoch_survive_kill_9() {
    let mut node = TestNode::start();
    configure(&node, "durable", json!({"history_len": 100000})).await;
    let mut sub = sse(&node, "durable", From::Live).await;
    sub.ready().await;
    let mut epoch = String::new();
    for v in numbered(1..=10) {
        epoch = publish(&node, "durable", &v).await.0;
    }
    assert_eq!(sub.messages(&epoch, 0, 10).await, numbered(1..=10));
    let last_id = format!("{epoch}:10");
    for v in numbered(11..=30) {
        publish(&node, "durable", &v).await;
    }

    // Publishers racing the kill: what they were told is stored must be.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for p in 0..3u64 {
        let (url, token, acked) = (node.url.clone(), node.token.clone(), acked.clone());
        tasks.push(spawn(async move {
            for i in 0u64.. {
                let v = json!({"p": p, "i": i});
                match try_publish(&url, Some(&token), "durable", &v).await {
                    (200, answer) => {
                        let (e, offset) = position_of(&answer);
                        acked.lock().unwrap().insert(offset, (e, v));
                    }
                    _ => return,
                }
            }
        }));
    }
    until(
        "some racing publishes",
        Duration::from_secs(10),
        async || acked.lock().unwrap().len() >= 20,
    )
    .await;
    node.kill9();
    drop(sub);
    for t in tasks {
        // A publisher ends on its first failure (or panics on a transport
        // error, which is the kill too).
        let _ = t.await;
    }
    node.kill9_and_restart();

    let info = channel(&node, "durable").await;
    assert_eq!(
        info["epoch"],
        epoch.as_str(),
        "the epoch after a restart: {info}"
    );
    assert_eq!(info["history_len"], 100000, "settings survive: {info}");
    let head = info["offset"].as_u64().unwrap();
    let acked = acked.lock().unwrap().clone();
    let top = *acked.keys().last().unwrap();
    assert!(
        head >= top,
        "head {head} below an acknowledged offset {top}"
    );

    let mut back = sse(&node, "durable", From::LastEventId(&last_id)).await;
    assert_eq!(back.ready().await, (epoch.clone(), 10), "resume, not reset");
    assert_eq!(back.messages(&epoch, 10, 20).await, numbered(11..=30));
    let rest = back.messages(&epoch, 30, head - 30).await;
    for (offset, (e, v)) in &acked {
        assert_eq!(e, &epoch);
        assert_eq!(
            &rest[(*offset - 31) as usize],
            v,
            "acknowledged offset {offset}"
        );
    }
    back.quiet().await;
    // And on from there.
    let (e, offset) = publish(&node, "durable", &json!("after")).await;
    assert_eq!((e.as_str(), offset), (epoch.as_str(), head + 1));
    assert_eq!(back.messages(&epoch, head, 1).await, vec![json!("after")]);
}

/// A node on `redis`.
fn node_on(redis: &RedisServer) -> TestNode {
    TestNode::start_with(&["--store", &redis.url(), "--redis-namespace", "chan"])
}

/// Two nodes on one redis-server: subscribers on either node get every
/// message published on both, with the same offsets, in order; a resume
/// on one node from an id seen on the other is whole; presence adds up
/// both nodes' subscribers.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_on_redis_deliver_each_others_messages() {
    let redis = RedisServer::start(&[]);
    let mut a = node_on(&redis);
    let b = node_on(&redis);
    configure(&a, "shared", json!({"history_len": 1000})).await;
    assert_eq!(channel(&b, "shared").await["history_len"], 1000);

    let mut on_a = sse(&a, "shared", From::Live).await;
    let mut on_b = sse(&b, "shared", From::Live).await;
    let mut ws_a = ws_connect(&ws_url(&a.url, "shared", ""), Some(&a.token)).await;
    assert_eq!(on_a.ready().await.1, 0);
    assert_eq!(on_b.ready().await.1, 0);
    assert_eq!(ws_text(&mut ws_a).await["offset"], 0);

    // One message from B first: A's subscribers learn the epoch from it.
    let (epoch, first) = publish(&b, "shared", &json!({"from": "b", "i": -1})).await;
    assert_eq!(first, 1);
    assert_eq!(
        on_a.messages(&epoch, 0, 1).await,
        vec![json!({"from": "b", "i": -1})]
    );

    // Then both nodes at once.
    let mut tasks = Vec::new();
    for (node, from) in [(&a, "a"), (&b, "b")] {
        let (url, token) = (node.url.clone(), node.token.clone());
        tasks.push(spawn(async move {
            let mut stored = Vec::new();
            for i in 0..40 {
                let v = json!({"from": from, "i": i});
                let (e, offset) = publish_at(&url, &token, "shared", &v).await;
                stored.push((e, offset, v));
            }
            stored
        }));
    }
    let mut by_offset = BTreeMap::new();
    by_offset.insert(1, json!({"from": "b", "i": -1}));
    for t in tasks {
        for (e, offset, v) in t.await.expect("a publisher") {
            assert_eq!(e, epoch, "one epoch on both nodes");
            assert!(
                by_offset.insert(offset, v).is_none(),
                "offset {offset} twice"
            );
        }
    }
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=81).collect::<Vec<_>>()
    );
    let want: Vec<Value> = by_offset.values().cloned().collect();
    assert_eq!(on_a.messages(&epoch, 1, 80).await, want[1..].to_vec());
    assert_eq!(on_b.messages(&epoch, 0, 81).await, want);
    assert_eq!(ws_messages(&mut ws_a, &epoch, 0, 81).await, want);
    on_a.quiet().await;
    on_b.quiet().await;

    // The same position on both nodes.
    for node in [&a, &b] {
        let info = channel(node, "shared").await;
        assert_eq!(
            (info["epoch"].as_str(), info["offset"].as_u64()),
            (Some(epoch.as_str()), Some(81)),
            "{info}"
        );
    }

    // An id seen on A resumes on B.
    let id = format!("{epoch}:40");
    let mut resumed = sse(&b, "shared", From::LastEventId(&id)).await;
    assert_eq!(resumed.ready().await, (epoch.clone(), 40));
    assert_eq!(resumed.messages(&epoch, 40, 41).await, want[40..].to_vec());

    // Presence: 2 subscribers on A (SSE, WebSocket) and 2 on B.
    for node in [&a, &b] {
        until(
            "presence 4 on both nodes",
            Duration::from_secs(10),
            async || channel(node, "shared").await["presence"] == 4,
        )
        .await;
    }

    // Live again, each way.
    publish(&a, "shared", &json!("from a")).await;
    publish(&b, "shared", &json!("from b")).await;
    assert_eq!(
        on_b.messages(&epoch, 81, 2).await,
        vec![json!("from a"), json!("from b")]
    );
    assert_eq!(
        on_a.messages(&epoch, 81, 2).await,
        vec![json!("from a"), json!("from b")]
    );
    assert_eq!(
        resumed.messages(&epoch, 81, 2).await,
        vec![json!("from a"), json!("from b")]
    );

    // A is killed: its subscriber comes back on B from its last id and
    // gets what B published meanwhile.
    a.kill9();
    drop((on_a, ws_a));
    for v in numbered(84..=90) {
        publish(&b, "shared", &v).await;
    }
    let id = format!("{epoch}:83");
    let mut moved = sse(&b, "shared", From::LastEventId(&id)).await;
    assert_eq!(moved.ready().await, (epoch.clone(), 83));
    assert_eq!(moved.messages(&epoch, 83, 7).await, numbered(84..=90));
    moved.quiet().await;
}

/// `history_age_s`: a message older than that has left the history, so a
/// resume needing it is a reset; `coalesce_ms`: a burst still arrives as
/// every message, each with its own id, in order.
#[tokio::test(flavor = "multi_thread")]
async fn history_age_and_coalescing() {
    let node = TestNode::start();
    let shown = configure(&node, "aging", json!({"history_age_s": 1})).await;
    assert_eq!(shown["history_age_s"], 1, "{shown}");
    let mut epoch = String::new();
    for v in numbered(1..=3) {
        epoch = publish(&node, "aging", &v).await.0;
    }
    let mut young = sse(&node, "aging", From::Since("0")).await;
    assert_eq!(young.ready().await, (epoch.clone(), 0));
    assert_eq!(young.messages(&epoch, 0, 3).await, numbered(1..=3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut old = sse(&node, "aging", From::Since("0")).await;
    let e = old.next().await;
    assert_eq!(e.event, "reset", "messages older than history_age_s: {e:?}");
    assert_eq!(e.json()["offset"], 3, "{e:?}");
    // A newer one is kept: resuming right before it is whole.
    publish(&node, "aging", &json!({"n": 4})).await;
    let since = format!("{epoch}:3");
    let mut fresh = sse(&node, "aging", From::Since(&since)).await;
    assert_eq!(fresh.ready().await, (epoch.clone(), 3));
    assert_eq!(fresh.messages(&epoch, 3, 1).await, numbered(4..=4));
    assert_eq!(old.messages(&epoch, 3, 1).await, numbered(4..=4));

    configure(&node, "burst", json!({"coalesce_ms": 200})).await;
    let mut sub = sse(&node, "burst", From::Live).await;
    sub.ready().await;
    let mut ws = ws_connect(&ws_url(&node.url, "burst", ""), Some(&node.token)).await;
    ws_text(&mut ws).await;
    let mut tasks = Vec::new();
    for p in 0..2u64 {
        let (url, token) = (node.url.clone(), node.token.clone());
        tasks.push(spawn(async move {
            let mut stored = Vec::new();
            for i in 0..25u64 {
                let v = json!({"p": p, "i": i});
                let (e, offset) = publish_at(&url, &token, "burst", &v).await;
                stored.push((e, offset, v));
            }
            stored
        }));
    }
    let mut by_offset = BTreeMap::new();
    let mut burst_epoch = String::new();
    for t in tasks {
        for (e, offset, v) in t.await.expect("a publisher") {
            burst_epoch = e;
            by_offset.insert(offset, v);
        }
    }
    let want: Vec<Value> = by_offset.into_values().collect();
    assert_eq!(want.len(), 50);
    assert_eq!(sub.messages(&burst_epoch, 0, 50).await, want);
    assert_eq!(ws_messages(&mut ws, &burst_epoch, 0, 50).await, want);
    sub.quiet().await;
}

const COUNTER: &str = "name = \"counter\"\nhandler = \"main:handler\"\n";
const COUNTER_PY: &str = r##"
def handler(event, ctx):
    return ctx.publish("counted", {"who": event["who"]}, blob="ctr",
                       ops=[{"op": "incrby", "type": "u32", "offset": "#0", "by": 1}])
"##;

/// Concurrent `ctx.publish` calls with ops on one blob, through `nodes`:
/// messages are stored in the order their ops were applied, so the k-th
/// message saw the counter go to k; the blob ends at the count; a
/// subscriber on each node gets them all in order.
async fn concurrent_function_publishes_keep_op_order(nodes: &[&TestNode]) {
    let got = answer(
        http()
            .put(format!("{}/v1/blobs/ctr?fixed_size=4", nodes[0].url))
            .bearer_auth(&nodes[0].token)
            .body(Vec::new())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        got.0 == 200 || got.0 == 201,
        "creating blob ctr: {} {}",
        got.0,
        got.1
    );
    deploy(&nodes[0].client(), COUNTER, COUNTER_PY).await;
    let mut subs = Vec::new();
    for node in nodes {
        let mut s = sse(node, "counted", From::Live).await;
        s.ready().await;
        subs.push(s);
    }
    const EACH: u64 = 12;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..2 {
            let client = node.client();
            let who = format!("{n}.{t}");
            tasks.push(spawn(async move {
                // The function may still be arriving on another node.
                let mut out = Vec::new();
                for i in 0..EACH {
                    let event = json!({ "who": format!("{who}.{i}") });
                    let done = loop {
                        match client.invoke("counter", &event.to_string()).await {
                            Ok(done) => break done,
                            Err(e) if e.status() == Some(404) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("invoke counter: {e}"),
                        }
                    };
                    let r = done
                        .result
                        .unwrap_or_else(|e| panic!("counter failed: {e:?}"));
                    out.push((event, r));
                }
                out
            }));
        }
    }
    let mut by_offset = BTreeMap::new();
    let mut epoch = None;
    for t in tasks {
        for (event, r) in t.await.expect("an invoker") {
            let (e, offset) = position_of(&r);
            assert_eq!(epoch.get_or_insert(e.clone()), &e);
            // The op's answer is the counter after it: its place in order.
            assert_eq!(
                r["results"],
                json!([offset]),
                "ops applied out of message order: {r}"
            );
            assert!(
                by_offset.insert(offset, event).is_none(),
                "offset {offset} twice"
            );
        }
    }
    let total = EACH * 2 * nodes.len() as u64;
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let bytes = nodes[0].client().blob_bytes("ctr", None).await.unwrap();
    assert_eq!(bytes, (total as u32).to_be_bytes().to_vec());
    let epoch = epoch.unwrap();
    let want: Vec<Value> = by_offset.into_values().collect();
    for s in &mut subs {
        assert_eq!(s.messages(&epoch, 0, total).await, want);
        s.quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_function_publishes_keep_op_order_embedded() {
    let node = TestNode::start();
    concurrent_function_publishes_keep_op_order(&[&node]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_function_publishes_keep_op_order_on_redis() {
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    concurrent_function_publishes_keep_op_order(&[&a, &b]).await;
}

/// Runs `redis-cli` against `redis`; answers its output.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(redis.port().to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("redis-cli output")
}

/// Redis lost a channel's history (its keys deleted, as a flush or a
/// partial restore would): the next publish starts a new epoch at offset
/// 1, live subscribers on both nodes are told with a `reset` of the new
/// epoch without waiting for a further message, and resuming from the old
/// epoch is a reset too.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_redis_history_is_a_new_epoch_and_an_explicit_reset() {
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    let mut subs = vec![
        sse(&a, "lost", From::Live).await,
        sse(&b, "lost", From::Live).await,
    ];
    for s in &mut subs {
        s.ready().await;
    }
    let mut old = String::new();
    for v in numbered(1..=5) {
        old = publish(&a, "lost", &v).await.0;
    }
    for s in &mut subs {
        assert_eq!(s.messages(&old, 0, 5).await, numbered(1..=5));
    }

    let keys = redis_cli(&redis, &["--scan", "--pattern", "*ch:*:lost"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 2, "the channel's hash and stream: {keys:?}");
    let mut del = vec!["DEL"];
    del.extend(&keys);
    assert_eq!(redis_cli(&redis, &del).trim(), "2");

    let (new, offset) = publish(&b, "lost", &json!({"after": "the loss"})).await;
    assert_ne!(new, old, "a lost history must start a new epoch");
    assert_eq!(offset, 1);
    for (s, node) in subs.iter_mut().zip(["a", "b"]) {
        let e = s.next().await;
        assert_eq!(e.event, "reset", "on node {node}: {e:?}");
        let v = e.json();
        assert_eq!(v["epoch"], new.as_str(), "on node {node}: {v}");
        match v["offset"].as_u64() {
            // Reset to before the new history: its first message follows.
            Some(0) => {
                assert_eq!(
                    s.messages(&new, 0, 1).await,
                    vec![json!({"after": "the loss"})]
                );
            }
            // Reset to the head: a snapshot taken now has the message.
            Some(1) => {}
            other => panic!("on node {node}: reset to {other:?}: {v}"),
        }
        s.quiet().await;
    }
    for node in [&a, &b] {
        let id = format!("{old}:5");
        let mut s = sse(node, "lost", From::LastEventId(&id)).await;
        let e = s.next().await;
        assert_eq!(e.event, "reset", "{e:?}");
        assert_eq!(e.json()["epoch"], new.as_str());
        assert_eq!(e.json()["offset"], 1);
    }
    publish(&a, "lost", &json!("two")).await;
    for s in &mut subs {
        assert_eq!(s.messages(&new, 1, 1).await, vec![json!("two")]);
    }
}

/// A node stopping (SIGTERM) ends its subscriptions, SSE and WebSocket, so
/// a graceful shutdown is not held up by them until its deadline (which
/// would also leave no time to drain invocations).
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_shutdown_ends_subscriptions_at_once() {
    let node = TestNode::start();
    let mut s = sse(&node, "open", From::Live).await;
    s.ready().await;
    let mut ws = ws_connect(&ws_url(&node.url, "open", ""), Some(&node.token)).await;
    assert_eq!(ws_text(&mut ws).await["type"], "ready");
    let pid = node.pid();
    let started = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    // The SSE stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.resp.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the SSE stream still open 10 s after SIGTERM"
    );
    // The WebSocket closes.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(_) = m {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the WebSocket still open 10 s after SIGTERM"
    );
    // The process exits (a zombie until the node is dropped).
    until("the node exits", Duration::from_secs(10), async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
    })
    .await;
    eprintln!("the node exited {:?} after SIGTERM", started.elapsed());
}

/// Checks a subscriber's events up to offset `last`: each message is the
/// next offset with the data stored there, except right after a `reset`,
/// which may skip ahead (never back). Answers how many resets came.
async fn follow_to(s: &mut Sse, epoch: &str, last: u64, stored: &BTreeMap<u64, Value>) -> usize {
    let mut next = 1;
    let mut resets = 0;
    while next <= last {
        let e = s.next().await;
        match e.event.as_str() {
            "message" => {
                assert_eq!(
                    e.offset_in(epoch),
                    next,
                    "a gap or a repeat without a reset"
                );
                assert_eq!(&e.json(), &stored[&next], "offset {next}");
                next += 1;
            }
            "reset" => {
                let v = e.json();
                assert_eq!(v["epoch"], epoch, "{v}");
                let head = v["offset"].as_u64().expect("reset offset");
                assert!(head + 1 >= next, "a reset back to {head} when at {next}");
                next = head + 1;
                resets += 1;
            }
            other => panic!("unexpected {other} event: {e:?}"),
        }
    }
    resets
}

/// A subscriber that reads nothing while thousands of large messages go by
/// falls behind the node's buffer (and the short history): reading again,
/// it gets messages in order, an explicit reset, then the rest — never a
/// silent gap. One that kept up got every message.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_left_behind_gets_a_reset_never_a_gap() {
    let node = TestNode::start();
    configure(&node, "flood", json!({"history_len": 50})).await;
    let mut slow = sse(&node, "flood", From::Live).await;
    assert_eq!(slow.ready().await.1, 0);
    let mut keeping_up = sse(&node, "flood", From::Live).await;
    keeping_up.ready().await;
    const TOTAL: u64 = 5600;
    const TASKS: u64 = 8;
    let pad = "x".repeat(16 * 1024);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for p in 0..TASKS {
        let (url, token, pad) = (node.url.clone(), node.token.clone(), pad.clone());
        tasks.push(spawn(async move {
            let mut stored = Vec::new();
            for i in 0..TOTAL / TASKS {
                let v = json!({"p": p, "i": i, "pad": pad});
                let (e, offset) = publish_at(&url, &token, "flood", &v).await;
                stored.push((e, offset, v));
            }
            stored
        }));
    }
    // The one keeping up reads as the messages come.
    let mut kept = Vec::new();
    let mut epoch = String::new();
    while (kept.len() as u64) < TOTAL {
        let e = keeping_up.next().await;
        assert_eq!(e.event, "message", "{e:?}");
        if epoch.is_empty() {
            epoch =
                e.id.clone()
                    .unwrap()
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .to_string();
        }
        assert_eq!(e.offset_in(&epoch), kept.len() as u64 + 1);
        kept.push(e.json());
    }
    let mut stored = BTreeMap::new();
    for t in tasks {
        for (e, offset, v) in t.await.expect("a publisher") {
            assert_eq!(e, epoch);
            stored.insert(offset, v);
        }
    }
    eprintln!("published {TOTAL} messages in {:?}", started.elapsed());
    assert_eq!(kept, stored.values().cloned().collect::<Vec<_>>());
    let resets = follow_to(&mut slow, &epoch, TOTAL, &stored).await;
    eprintln!("the slow subscriber got {resets} reset(s)");
    assert!(
        resets >= 1,
        "the slow subscriber never fell behind: the test needs more messages"
    );
    slow.quiet().await;
}

/// Redis restarting (killed, its append-only file fsynced on every write)
/// under two nodes: the channel keeps its epoch and offsets, and a
/// subscriber on one node gets the other's publishes from before and after
/// the restart, in order, with no reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_keeps_the_epoch_and_delivery_goes_on() {
    let mut redis = RedisServer::start(&["--appendfsync", "always"]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    let mut sub = sse(&a, "steady", From::Live).await;
    sub.ready().await;
    let mut epoch = String::new();
    for v in numbered(1..=10) {
        epoch = publish(&b, "steady", &v).await.0;
    }
    assert_eq!(sub.messages(&epoch, 0, 10).await, numbered(1..=10));

    redis.restart();
    // Wait until B reads the store again, then publish once each.
    until(
        "node b reads Redis again",
        Duration::from_secs(30),
        async || {
            let got = http()
                .get(format!("{}/v1/channels/steady", b.url))
                .bearer_auth(&b.token)
                .send()
                .await;
            got.is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    for (i, v) in numbered(11..=20).iter().enumerate() {
        let (e, offset) = publish(&b, "steady", v).await;
        assert_eq!((e.as_str(), offset), (epoch.as_str(), 11 + i as u64));
    }
    assert_eq!(sub.messages(&epoch, 10, 10).await, numbered(11..=20));
    sub.quiet().await;
}

const HELLO: &str = "name = \"hello\"\nhandler = \"main:handler\"\n";
const HELLO_PY: &str = "def handler(event, ctx):\n    return {'ok': True}\n";

/// The node's feeds across two Redis nodes: a subscriber on A to
/// `_invocations.hello` hears of each invocation finished on either node,
/// and to `_docs.orders` of each document put or deleted through either.
#[tokio::test(flavor = "multi_thread")]
async fn feeds_tell_invocations_and_documents_from_every_node() {
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    deploy(&a.client(), HELLO, HELLO_PY).await;
    let (ca, cb) = (a.client(), b.client());
    let reader = ca.create_token("reader", None).await.unwrap().token;
    let mut inv = sse_with(
        &a.url,
        "_invocations.hello",
        Auth::Bearer(&reader),
        From::Live,
    )
    .await;
    inv.ready().await;

    // A feed is recorded once every node knows it is wanted: call until
    // one message comes, then let any stragglers arrive.
    let mut first = None;
    for _ in 0..40 {
        let done = loop {
            match cb.invoke("hello", "{}").await {
                Ok(done) => break done,
                Err(e) if e.status() == Some(404) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("invoke hello on b: {e}"),
            }
        };
        assert!(done.result.is_ok());
        if let Some(e) = inv.next_within(Duration::from_millis(300)).await {
            first = Some(e);
            break;
        }
    }
    let first = first.expect("no _invocations.hello message within 40 calls");
    assert_eq!(first.event, "message", "{first:?}");
    let v = first.json();
    assert_eq!(v["function"], "hello", "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(v["id"].is_string() && v["duration_ms"].is_number(), "{v}");
    let epoch = first
        .id
        .as_deref()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    let mut next = first.offset_in(&epoch) + 1;
    while let Some(e) = inv.next_within(Duration::from_secs(3)).await {
        assert_eq!(e.offset_in(&epoch), next, "{e:?}");
        next += 1;
    }

    // From now on every call is told, whichever node ran it.
    let mut ids = std::collections::BTreeSet::new();
    for c in [&ca, &cb, &ca, &cb, &cb] {
        ids.insert(c.invoke("hello", "{}").await.unwrap().id);
    }
    let told: std::collections::BTreeSet<String> = inv
        .messages(&epoch, next - 1, 5)
        .await
        .into_iter()
        .map(|v| {
            assert_eq!(v["status"], "succeeded", "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(told, ids);
    inv.quiet().await;

    // Documents.
    ca.create_category("orders", None).await.unwrap();
    let mut docs = sse_with(&a.url, "_docs.orders", Auth::Bearer(&reader), From::Live).await;
    docs.ready().await;
    let mut got = None;
    for i in 0..40 {
        cb.put_doc("orders", &format!("w{i}"), &json!({"i": i}))
            .await
            .unwrap();
        if let Some(e) = docs.next_within(Duration::from_millis(300)).await {
            got = Some(e);
            break;
        }
    }
    let got = got.expect("no _docs.orders message within 40 puts");
    assert_eq!(got.json()["op"], "put", "{got:?}");
    let epoch = got
        .id
        .as_deref()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    let mut next = got.offset_in(&epoch) + 1;
    while let Some(e) = docs.next_within(Duration::from_secs(3)).await {
        assert_eq!(e.offset_in(&epoch), next, "{e:?}");
        next += 1;
    }
    ca.put_doc("orders", "o1", &json!({"x": 1})).await.unwrap();
    cb.delete_doc("orders", "o1").await.unwrap();
    assert_eq!(
        docs.messages(&epoch, next - 1, 2).await,
        vec![
            json!({"op": "put", "id": "o1"}),
            json!({"op": "delete", "id": "o1"})
        ]
    );
}

/// Many subscribers at once on one channel (SSE and WebSocket): each gets
/// every message, in order.
#[tokio::test(flavor = "multi_thread")]
async fn many_subscribers_each_get_every_message() {
    let node = TestNode::start();
    let mut sses = Vec::new();
    for _ in 0..100 {
        let mut s = sse(&node, "crowd", From::Live).await;
        s.ready().await;
        sses.push(s);
    }
    let mut wss = Vec::new();
    for _ in 0..30 {
        let mut ws = ws_connect(&ws_url(&node.url, "crowd", ""), Some(&node.token)).await;
        ws_text(&mut ws).await;
        wss.push(ws);
    }
    until("presence 130", Duration::from_secs(10), async || {
        channel(&node, "crowd").await["presence"] == 130
    })
    .await;
    let mut epoch = String::new();
    for v in numbered(1..=40) {
        epoch = publish(&node, "crowd", &v).await.0;
    }
    for s in &mut sses {
        assert_eq!(s.messages(&epoch, 0, 40).await, numbered(1..=40));
    }
    for ws in &mut wss {
        assert_eq!(ws_messages(ws, &epoch, 0, 40).await, numbered(1..=40));
    }
}

/// On Redis, a shorter `history_len` (set through one node) applies at once
/// to the messages already kept, seen from the other node: a resume
/// needing a message beyond it is a reset; one within it is whole. An age
/// bound likewise.
#[tokio::test(flavor = "multi_thread")]
async fn redis_history_bounds_apply_to_kept_messages_at_once() {
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    let mut epoch = String::new();
    for v in numbered(1..=20) {
        epoch = publish(&a, "bounded", &v).await.0;
    }
    let since = format!("{epoch}:10");
    let mut whole = sse(&b, "bounded", From::Since(&since)).await;
    assert_eq!(whole.ready().await, (epoch.clone(), 10));
    assert_eq!(whole.messages(&epoch, 10, 10).await, numbered(11..=20));

    configure(&a, "bounded", json!({"history_len": 5})).await;
    let mut cut = sse(&b, "bounded", From::Since(&since)).await;
    let e = cut.next().await;
    assert_eq!(e.event, "reset", "history_len 5 keeps 16..=20: {e:?}");
    assert_eq!(e.json()["offset"], 20);
    let since = format!("{epoch}:15");
    let mut kept = sse(&b, "bounded", From::Since(&since)).await;
    assert_eq!(kept.ready().await, (epoch.clone(), 15));
    assert_eq!(kept.messages(&epoch, 15, 5).await, numbered(16..=20));

    configure(&b, "bounded", json!({"history_age_s": 1})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut aged = sse(&a, "bounded", From::Since(&since)).await;
    let e = aged.next().await;
    assert_eq!(
        e.event, "reset",
        "every kept message is over 1 s old: {e:?}"
    );
    assert_eq!(e.json()["offset"], 20);
    // The live stream after the reset goes on.
    publish(&b, "bounded", &json!("new")).await;
    assert_eq!(aged.messages(&epoch, 20, 1).await, vec![json!("new")]);
}

/// Settings changed through one node reach the other node's deliveries
/// (hubs read them again every 2 s): with `coalesce_ms` lowered from 5 s
/// to 0 through A, a subscriber that was already on B gets B's next
/// message without the old 5 s hold.
#[tokio::test(flavor = "multi_thread")]
async fn settings_changed_on_one_node_apply_on_the_other() {
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    configure(&a, "held", json!({"coalesce_ms": 5000})).await;
    let mut on_b = sse(&b, "held", From::Live).await;
    on_b.ready().await;
    configure(&a, "held", json!({"coalesce_ms": 0})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    let (epoch, _) = publish(&b, "held", &json!("now")).await;
    assert_eq!(on_b.messages(&epoch, 0, 1).await, vec![json!("now")]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "delivered after {took:?}: node B still holds messages for the coalesce_ms set before"
    );
}

/// Subscriptions outlive the node's HTTP idle and header timeouts: a
/// subscriber quiet for longer than both still gets the next message.
#[tokio::test(flavor = "multi_thread")]
async fn quiet_subscriptions_outlive_http_timeouts() {
    let node = TestNode::start_with(&["--http-idle-timeout", "1s", "--header-timeout", "1s"]);
    let mut s = sse(&node, "quiet", From::Live).await;
    s.ready().await;
    let mut ws = ws_connect(&ws_url(&node.url, "quiet", ""), Some(&node.token)).await;
    ws_text(&mut ws).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (epoch, n) = publish(&node, "quiet", &json!("still here")).await;
    assert_eq!(
        s.messages(&epoch, n - 1, 1).await,
        vec![json!("still here")]
    );
    assert_eq!(
        ws_messages(&mut ws, &epoch, n - 1, 1).await,
        vec![json!("still here")]
    );
}

/// `_queues.<name>` across two Redis nodes: a subscriber on A sees the
/// depth of messages sent through B, each state once (one node publishes
/// a feed at a time), ending at the true depth.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_feed_tells_the_depth_once_per_change() {
    use shoal_client::protocol::{PutQueue, SendMessage};
    let redis = RedisServer::start(&[]);
    let a = node_on(&redis);
    let b = node_on(&redis);
    a.client()
        .put_queue("work", &PutQueue::default())
        .await
        .unwrap();
    let mut feed = sse(&a, "_queues.work", From::Live).await;
    feed.ready().await;
    let mut seen: Vec<Value> = Vec::new();
    let mut epoch = String::new();
    for i in 0..5 {
        b.client()
            .send(
                "work",
                vec![SendMessage {
                    body: json!({ "i": i }),
                    delay: None,
                    dedup_id: None,
                }],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    while let Some(e) = feed.next_within(Duration::from_secs(4)).await {
        assert_eq!(e.event, "message", "{e:?}");
        if epoch.is_empty() {
            epoch =
                e.id.as_deref()
                    .unwrap()
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .to_string();
        }
        let v = e.json();
        assert_eq!(v["queue"], "work", "{v}");
        assert_ne!(seen.last(), Some(&v), "the same state twice: {seen:?}");
        seen.push(v);
        if seen.last().unwrap()["waiting"] == 5 {
            break;
        }
    }
    let last = seen
        .last()
        .unwrap_or_else(|| panic!("no _queues.work message"));
    assert_eq!(last["waiting"], 5, "{seen:?}");
    let waiting: Vec<u64> = seen
        .iter()
        .map(|v| v["waiting"].as_u64().unwrap())
        .collect();
    assert!(waiting.windows(2).all(|w| w[0] < w[1]), "{waiting:?}");
    feed.quiet().await;
}

/// `kill -9` while functions publish with blob operations: after the
/// restart the blob and the channel agree — the counter the ops raised
/// equals the channel's head (each publish raised it by one), every
/// acknowledged publish is there, and the history reads whole.
#[tokio::test(flavor = "multi_thread")]
async fn publishes_with_blob_ops_stay_atomic_through_kill_9() {
    let mut node = TestNode::start();
    let got = answer(
        http()
            .put(format!("{}/v1/blobs/ctr?fixed_size=4", node.url))
            .bearer_auth(&node.token)
            .body(Vec::new())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        got.0 == 200 || got.0 == 201,
        "creating blob ctr: {} {}",
        got.0,
        got.1
    );
    deploy(&node.client(), COUNTER, COUNTER_PY).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (client, acked) = (node.client(), acked.clone());
        tasks.push(spawn(async move {
            for i in 0u64.. {
                let event = json!({ "who": format!("{t}.{i}") });
                let Ok(done) = client.invoke("counter", &event.to_string()).await else {
                    return;
                };
                let Ok(r) = done.result else { return };
                let (_, offset) = position_of(&r);
                acked.lock().unwrap().insert(offset, event);
            }
        }));
    }
    until("some publishes", Duration::from_secs(20), async || {
        acked.lock().unwrap().len() >= 20
    })
    .await;
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    node.kill9_and_restart();

    let info = channel(&node, "counted").await;
    let head = info["offset"].as_u64().unwrap();
    let epoch = info["epoch"].as_str().unwrap().to_string();
    let bytes = node.client().blob_bytes("ctr", None).await.unwrap();
    let counter = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    assert_eq!(
        u64::from(counter),
        head,
        "the blob and the channel disagree"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(head >= *acked.keys().last().unwrap());
    let mut all = sse(&node, "counted", From::Since("0")).await;
    assert_eq!(all.ready().await, (epoch.clone(), 0));
    let messages = all.messages(&epoch, 0, head).await;
    for (offset, event) in &acked {
        assert_eq!(&messages[(*offset - 1) as usize], event, "offset {offset}");
    }
    all.quiet().await;
}

/// Revoking a token ends the subscriptions opened with it (SSE and
/// WebSocket) within the recheck period; a reconnect is refused.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_ends_its_subscriptions() {
    let node = TestNode::start();
    let url = node.url.as_str();
    let created = node
        .client()
        .create_scoped_token("reader", Some("viewer"), vec!["subscribe:room".into()])
        .await
        .expect("a scoped token");
    let mut sse = sse_with(url, "room", Auth::Query(&created.token), From::Live).await;
    sse.ready().await;
    let mut ws = ws_connect(&ws_url(url, "room", ""), Some(&created.token)).await;
    assert_eq!(ws_text(&mut ws).await["type"], "ready");
    publish(&node, "room", &json!("before")).await;
    assert_eq!(sse.next().await.json(), json!("before"));
    assert_eq!(ws_text(&mut ws).await["data"], json!("before"));

    node.client()
        .revoke_token(&created.id)
        .await
        .expect("revoke");
    // The SSE stream ends; the WebSocket is closed with 1008.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = sse.resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived its revoked token");
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the WebSocket outlived its revoked token");
    assert_eq!(closed, Some(1008));
    refused(
        sse_refused(url, "room", Auth::Query(&created.token)).await,
        401,
        "a revoked token",
    );
}
