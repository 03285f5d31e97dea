//! The HTTP edge on a loopback socket: the connection cap's 503, the body
//! timeout's 408 and the idle timeout, on the real router (in-memory store,
//! fake runtime).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use shoal_server::EdgeOptions;
use shoal_types::Role;

use crate::app::App;

struct Edge {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Edge {
    async fn start(app: &App, opts: EdgeOptions) -> Edge {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        #[allow(clippy::disallowed_methods)] // awaited in `stop`
        let server = tokio::spawn(shoal_server::serve(
            listener,
            app.router.clone(),
            opts,
            shutdown.clone(),
        ));
        Edge {
            addr,
            shutdown,
            server,
        }
    }

    /// Stops accepting; returns once every connection is closed.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

/// Sends `request` on a new connection and reads the answer to the end.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn over_the_cap_is_503_unavailable_and_room_comes_back() {
    let app = App::new().await;
    let edge = Edge::start(
        &app,
        EdgeOptions {
            max_connections: 3,
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(edge.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(edge.addr, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{body}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );

    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = exchange(edge.addr, HEALTHZ).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    edge.stop().await;
}

#[tokio::test]
async fn a_silent_write_body_is_408_and_writes_nothing() {
    let app = App::new().await;
    let edge = Edge::start(
        &app,
        EdgeOptions {
            body_timeout: Duration::from_millis(300),
            ..EdgeOptions::default()
        },
    )
    .await;
    let request = format!(
        "POST /v1/categories/quiet/docs HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{{\"id\": \"a\"}}\n",
        app.secret(Role::Admin)
    );
    let started = Instant::now();
    let answer = exchange(edge.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("nothing was written"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let r = app
        .call("GET", "/v1/categories/quiet/docs/a", None, Vec::new())
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    edge.stop().await;
}

/// A client that never goes silent but sends a byte every 50 ms (20 B/s)
/// is cut once it has been waited for the body timeout, not after the
/// 1000 bytes it announced (50 s).
#[tokio::test]
async fn a_trickling_write_body_is_408_once_below_the_minimum_rate() {
    let app = App::new().await;
    let edge = Edge::start(
        &app,
        EdgeOptions {
            body_timeout: Duration::from_millis(300),
            min_body_rate: 1000,
            ..EdgeOptions::default()
        },
    )
    .await;
    let head = format!(
        "POST /v1/categories/slow/docs HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n",
        app.secret(Role::Admin)
    );
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = async move {
        for _ in 0..1000 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out));
    tokio::select! {
        _ = trickle => panic!("the trickle was never cut"),
        r = read => { r.expect("an answer within 10 s").unwrap(); }
    }
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("arrived slower than 1000 bytes per second"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    edge.stop().await;
}

#[tokio::test]
async fn idle_connections_close_and_shutdown_waits_for_none() {
    let app = App::new().await;
    let edge = Edge::start(
        &app,
        EdgeOptions {
            idle_timeout: Duration::from_millis(300),
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut idle = TcpStream::connect(edge.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Shutdown closes idle keep-alive connections at once.
    let mut kept = TcpStream::connect(edge.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
        .await
        .unwrap();
    let n = kept.read(&mut [0u8; 1024]).await.unwrap();
    assert!(n > 0);
    edge.stop().await;
}
