//! The HTTP edge: accepts connections and serves the router on them, with
//! the limits a node needs against slow, idle and too many clients.
//!
//! - A **connection cap**: at most `max_connections` are served at once.
//!   One more is answered `503 unavailable` (JSON) and closed; beyond a
//!   small overflow budget for those answers, extra connections are closed
//!   at once, so the process never runs out of file descriptors.
//! - **Idle timeout**: a connection with no request in progress, and no
//!   byte of a next one, is closed after `idle_timeout`.
//! - **Header timeout**: a request's head (request line and headers) must
//!   arrive complete within `header_timeout` of its first byte (slowloris).
//! - **Body timeout**: a request body that sends nothing for `body_timeout`
//!   fails (`408 request_timeout` for document writes; the read fails).
//! - **Minimum body rate**: once a body has been waited for longer than
//!   `body_timeout` in all, it must have averaged `min_body_rate` bytes per
//!   second of waiting, or it fails the same way (a client trickling a byte
//!   now and then). Only the time the node waits for the client counts, not
//!   time the handler spends between reads (committing a batch).
//!
//! Requests in progress are never cut by the idle or header timeout: a long
//! invocation or a streaming query keeps its connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of the HTTP edge.
#[derive(Debug, Clone, Copy)]
pub struct EdgeOptions {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// Longest silence inside a request body.
    pub body_timeout: Duration,
    /// Slowest average a body may arrive at (bytes per second of waiting),
    /// checked once it has been waited for `body_timeout`; 0 turns it off.
    pub min_body_rate: u64,
    /// Longest wait for the next request on an open connection.
    pub idle_timeout: Duration,
}

impl Default for EdgeOptions {
    fn default() -> EdgeOptions {
        EdgeOptions {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            min_body_rate: 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections beyond the cap that are still answered 503 (each holds a
/// descriptor for at most [`REFUSE_TIME`]); more than that are closed at once.
const OVERFLOW: usize = 64;
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets requests in progress finish and returns once every
/// connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: EdgeOptions,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Ok(permit) = slots.clone().try_acquire_owned() {
                        conns.spawn(connection(stream, peer, router.clone(), opts, permit, shutdown.clone()));
                    } else if let Ok(permit) = overflow.clone().try_acquire_owned() {
                        metrics::counter!("shoal_http_connections_refused_total").increment(1);
                        conns.spawn(refuse(stream, opts.max_connections, permit));
                    } else {
                        metrics::counter!("shoal_http_connections_refused_total").increment(1);
                        drop(stream);
                    }
                }
                Err(e) => {
                    // Out of descriptors (or a connection reset before it
                    // was accepted): back off instead of spinning.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The canned answer to a connection over the cap.
fn unavailable(max: usize) -> Vec<u8> {
    let body = format!(
        "{{\"error\":{{\"code\":\"unavailable\",\"message\":\"the node is serving its maximum of {max} connections; retry shortly\"}}}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers 503 and closes. The request is read first (what arrives within a
/// moment), so that closing does not reset the connection before the
/// client has read the answer.
async fn refuse(mut stream: TcpStream, max: usize, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSE_TIME, async {
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        stream.write_all(&unavailable(max)).await?;
        stream.shutdown().await?;
        // Drain until the client closes its side, or the time is up.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// What the watchdog of one connection knows.
struct ConnState {
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    /// Wakes the watchdog when a head starts (its deadline moves).
    head: tokio::sync::Notify,
}

struct Times {
    /// When the connection last became free of requests.
    idle_since: Instant,
    /// When the first byte of the next request arrived, if one did.
    head_started: Option<Instant>,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                head_started: None,
            }),
            head: tokio::sync::Notify::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived from the client.
    fn read_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut t = self.times();
            if t.head_started.is_none() {
                t.head_started = Some(Instant::now());
                self.head.notify_one();
            }
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.times().head_started = None;
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing changes; `None` while
    /// a request is in progress.
    fn deadline(&self, opts: &EdgeOptions) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let t = self.times();
        Some(match t.head_started {
            Some(started) => started + opts.header_timeout,
            None => t.idle_since + opts.idle_timeout,
        })
    }
}

/// A request in progress; dropped when its response body is done (or
/// dropped because the client went away).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.0.times();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            t.idle_since = Instant::now();
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    opts: EdgeOptions,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    // Held by the connection, and by a WebSocket it is upgraded to: an
    // upgraded connection still counts against the cap and the gauge.
    let slot = ConnSlot(Arc::new((permit, OpenConnection::new())));
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = svc_state.request_started();
        let router = router.clone();
        let mut req = req.map(|b| Body::new(TimedBody::new(b, &opts)));
        // The client's address, for function routes' per-client limits.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        async move {
            let resp = router.oneshot(req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                Body::new(Guarded {
                    inner: b,
                    _guard: guard,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // The watchdog below times heads; hyper's own timer stays off.
        .header_read_timeout(None)
        .serve_connection(io, svc)
        // WebSocket (channel subscriptions): the connection is handed over
        // to the upgrade once the 101 answer is written.
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    // One timer for the connection's life, moved rather than made anew.
    let timer = tokio::time::sleep(opts.idle_timeout);
    let mut timer = std::pin::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let wake = match state.deadline(&opts) {
            Some(at) if Instant::now() >= at => return, // idle or slow head: close
            Some(at) => at,
            // A request is in progress: look again later.
            None => Instant::now() + opts.idle_timeout.min(opts.header_timeout),
        };
        if armed != Some(wake) {
            timer.as_mut().reset(wake.into());
            armed = Some(wake);
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = timer.as_mut() => { armed = None; }
            _ = state.head.notified() => {}
        }
    }
}

/// A served connection's place under the connection cap (and in the
/// gauge), as long as any clone lives. Requests carry one, so a handler
/// that takes the connection over (a WebSocket) keeps the place.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, OpenConnection)>);

/// Counts a served connection in `shoal_http_connections` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        metrics::gauge!("shoal_http_connections").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("shoal_http_connections").decrement(1.0);
    }
}

/// The connection's socket, telling the watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that marks its request done when it is dropped.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that may not be silent for longer than its timeout, nor
/// arrive slower than the minimum rate.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    min_rate: u64,
    /// Made at the first wait only: most bodies (empty, or already read
    /// with the head) never wait, and never register a timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Since when the node waits for the client, while it does. A handler
    /// busy elsewhere between two frames does not count as the client's.
    waiting_since: Option<tokio::time::Instant>,
    /// Time waited for the client before the current wait.
    waited: Duration,
    /// Bytes received so far.
    received: u64,
}

impl TimedBody {
    fn new(inner: Incoming, opts: &EdgeOptions) -> TimedBody {
        TimedBody {
            inner,
            timeout: opts.body_timeout,
            min_rate: opts.min_body_rate,
            sleep: None,
            waiting_since: None,
            waited: Duration::ZERO,
            received: 0,
        }
    }

    /// When the current wait fails: at the silence timeout, or when the
    /// waited time exceeds what the bytes received so far pay for.
    fn deadline(&self, since: tokio::time::Instant) -> (tokio::time::Instant, BodyTimedOut) {
        let silence = since + self.timeout;
        if self.min_rate == 0 {
            return (silence, BodyTimedOut::Silent(self.timeout));
        }
        let paid = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        let allowed = paid.max(self.timeout);
        let rate = since + allowed.saturating_sub(self.waited);
        if rate < silence {
            (
                rate,
                BodyTimedOut::TooSlow {
                    min_rate: self.min_rate,
                },
            )
        } else {
            (silence, BodyTimedOut::Silent(self.timeout))
        }
    }
}

/// The error of a request body that went silent or arrived too slowly
/// (see [`EdgeOptions`]).
#[derive(Debug)]
pub enum BodyTimedOut {
    Silent(Duration),
    TooSlow { min_rate: u64 },
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyTimedOut::Silent(d) => write!(
                f,
                "the request body sent nothing for {d:?}; the connection is closed"
            ),
            BodyTimedOut::TooSlow { min_rate } => write!(
                f,
                "the request body arrived slower than {min_rate} bytes per second; the connection is closed"
            ),
        }
    }
}

impl std::error::Error for BodyTimedOut {}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    self.received += data.len() as u64;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let since = match self.waiting_since {
                    Some(since) => since,
                    None => {
                        let since = tokio::time::Instant::now();
                        self.waiting_since = Some(since);
                        let (deadline, _) = self.deadline(since);
                        match &mut self.sleep {
                            Some(sleep) => sleep.as_mut().reset(deadline),
                            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        since
                    }
                };
                let sleep = self.sleep.as_mut().expect("set above");
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let (_, why) = self.deadline(since);
                        Poll::Ready(Some(Err(Box::new(why))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body-reading error is a body timeout.
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        cur = err.source();
    }
    false
}
