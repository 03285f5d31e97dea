//! Channels on a real `redis-server`, beyond the conformance cases:
//! `channel_wait` (woken by another node's publish, timing out otherwise,
//! never holding up the shared connection, surviving a wait dropped
//! mid-block), the keys a channel uses (stream ids are the offsets), new
//! epochs when a channel's history is lost, and a restart of Redis.

use std::time::{Duration, Instant};

use shoal_store::{
    BitType, BlobOp, BlobWrite, Blobs, ChannelSettings, Channels, NewChannelMessage, Overflow,
    Published, conformance::unique,
};
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

const T: u64 = 1_700_000_000_000;
const NS: &str = "shoal-test";

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0
}

/// A plain connection to look at (and tamper with) the keys.
fn redis(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("a client")
        .get_connection()
        .expect("a connection")
}

fn json(text: &str) -> NewChannelMessage {
    NewChannelMessage {
        binary: false,
        data: text.as_bytes().to_vec(),
    }
}

async fn publish(store: &RedisStore, name: &str, text: &str) -> (String, u64, u64) {
    match store
        .channel_publish(name, vec![json(text)], None, T)
        .await
        .unwrap()
    {
        Published::Done {
            epoch, first, last, ..
        } => (epoch, first, last),
        other => panic!("{other:?}"),
    }
}

/// A wait wakes as soon as another connection (another node) publishes on
/// one of its channels, answering that channel's position; with nothing
/// published it answers nothing after its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_another_nodes_publish() {
    let server = RedisServer::start(&[]);
    let (a, b) = (store(&server).await, store(&server).await);
    let (one, two) = (unique("wait"), unique("wait"));
    let (epoch, _, head) = publish(&a, &one, "1").await;
    let positions = vec![
        (one.clone(), epoch.clone(), head),
        (two.clone(), String::new(), 0),
    ];

    // Nothing happens: empty after about the timeout.
    let started = Instant::now();
    let woke = a
        .channel_wait(positions.clone(), 300)
        .unwrap()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(woke.is_empty(), "{woke:?}");
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Another node publishes while it waits.
    #[allow(clippy::disallowed_methods)] // the handle is awaited below
    let waiting = tokio::spawn({
        let a = a.clone();
        let positions = positions.clone();
        async move {
            let started = Instant::now();
            let woke = a.channel_wait(positions, 10_000).unwrap().await.unwrap();
            (woke, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, _, new_head) = publish(&b, &one, "2").await;
    let (woke, took) = waiting.await.unwrap();
    assert_eq!(woke, vec![(one.clone(), epoch.clone(), new_head)]);
    assert!(took < Duration::from_secs(5), "woken late: {took:?}");

    // A channel never published on, published on now: a new epoch.
    #[allow(clippy::disallowed_methods)] // the handle is awaited below
    let waiting = tokio::spawn({
        let a = a.clone();
        let positions = vec![
            (one.clone(), epoch.clone(), new_head),
            (two.clone(), String::new(), 0),
        ];
        async move { a.channel_wait(positions, 10_000).unwrap().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (epoch_two, _, head_two) = publish(&b, &two, "x").await;
    assert_eq!(
        waiting.await.unwrap(),
        vec![(two.clone(), epoch_two, head_two)]
    );

    // Already behind: answered at once.
    let started = Instant::now();
    let woke = a
        .channel_wait(vec![(one.clone(), epoch.clone(), 0)], 10_000)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(woke, vec![(one.clone(), epoch.clone(), new_head)]);
    assert!(started.elapsed() < Duration::from_secs(2));
    let woke = a
        .channel_wait(vec![(one.clone(), "another".into(), new_head)], 10_000)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(woke, vec![(one, epoch, new_head)]);
}

/// A blocked wait does not hold up the store's other calls, and a wait
/// dropped mid-block leaves nothing behind that confuses the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_waits_hold_nothing_up() {
    let server = RedisServer::start(&[]);
    let a = store(&server).await;
    let name = unique("blocked");
    let (epoch, _, head) = publish(&a, &name, "1").await;
    let positions = vec![(name.clone(), epoch.clone(), head)];

    #[allow(clippy::disallowed_methods)] // the handle is awaited below
    let blocked = tokio::spawn({
        let a = a.clone();
        let positions = positions.clone();
        async move { a.channel_wait(positions, 3_000).unwrap().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for i in 0..20 {
        a.channel_read(&name, 0, 10, T).await.unwrap();
        a.channel_settings(&name).await.unwrap();
        if i == 0 {
            assert!(started.elapsed() < Duration::from_millis(1_000));
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "calls waited for the blocked XREAD: {:?}",
        started.elapsed()
    );
    // Its own publish wakes it.
    let (_, _, h2) = publish(&a, &name, "2").await;
    assert_eq!(
        blocked.await.unwrap(),
        vec![(name.clone(), epoch.clone(), h2)]
    );

    // Waits dropped mid-block, several times.
    for _ in 0..5 {
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            a.channel_wait(vec![(name.clone(), epoch.clone(), h2)], 5_000)
                .unwrap(),
        )
        .await;
        assert!(cut.is_err(), "the wait should still be blocked");
    }
    // The next waits still see exactly what happens.
    let woke = a
        .channel_wait(vec![(name.clone(), epoch.clone(), h2)], 200)
        .unwrap()
        .await
        .unwrap();
    assert!(woke.is_empty(), "{woke:?}");
    #[allow(clippy::disallowed_methods)] // the handle is awaited below
    let waiting = tokio::spawn({
        let a = a.clone();
        let positions = vec![(name.clone(), epoch.clone(), h2)];
        async move { a.channel_wait(positions, 10_000).unwrap().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, _, h3) = publish(&a, &name, "3").await;
    assert_eq!(waiting.await.unwrap(), vec![(name, epoch, h3)]);
}

/// Stream ids are the offsets; a channel whose stream or hash was lost
/// (a flush, a partial restore) starts a new epoch at offset 1.
#[tokio::test]
async fn lost_history_starts_a_new_epoch() {
    let server = RedisServer::start(&[]);
    let a = store(&server).await;
    let mut con = redis(&server);
    let name = unique("lost");
    let stream = format!("{NS}:{{blobs}}:ch:s:{name}");
    let hash = format!("{NS}:{{blobs}}:ch:m:{name}");
    let (epoch, ..) = publish(&a, &name, "1").await;
    publish(&a, &name, "2").await;
    let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let ids: Vec<&str> = ids.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(ids, vec!["0-1", "0-2"]);

    // The stream is lost.
    let _: i64 = redis::cmd("DEL").arg(&stream).query(&mut con).unwrap();
    let (second, first, last) = publish(&a, &name, "a").await;
    assert_ne!(second, epoch);
    assert_eq!((first, last), (1, 1));
    let read = a.channel_read(&name, 0, 10, T).await.unwrap();
    assert_eq!(
        (read.epoch.as_str(), read.head, read.messages.len()),
        (second.as_str(), 1, 1)
    );

    // The hash is lost (settings too); the old stream is not taken for
    // the new history.
    a.channel_configure(
        &name,
        ChannelSettings {
            history_len: 5,
            ..ChannelSettings::default()
        },
    )
    .await
    .unwrap();
    publish(&a, &name, "b").await;
    let _: i64 = redis::cmd("DEL").arg(&hash).query(&mut con).unwrap();
    let read = a.channel_read(&name, 0, 10, T).await.unwrap();
    assert_eq!((read.epoch.as_str(), read.head, read.gap), ("", 0, false));
    assert_eq!(a.channel_settings(&name).await.unwrap(), None);
    let (third, first, _) = publish(&a, &name, "c").await;
    assert!(third != second && third != epoch);
    assert_eq!(first, 1);
    let read = a.channel_read(&name, 0, 10, T).await.unwrap();
    assert_eq!(read.messages.len(), 1);
    assert_eq!(read.messages[0].data, b"c");

    // A stream behind its hash (a restore of an older stream).
    publish(&a, &name, "d").await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let (fourth, first, _) = publish(&a, &name, "e").await;
    assert!(fourth != third);
    assert_eq!(first, 1);
}

/// What a publish acknowledged (a message and its blob change) is there
/// after Redis is killed and restarted (append-only file).
#[tokio::test]
async fn survives_a_redis_restart() {
    let mut server = RedisServer::start(&[]);
    let a = store(&server).await;
    let name = unique("restart");
    let key = unique("restart/board");
    a.blob_create_fixed(&key, 8, false, T).await.unwrap();
    let ops = vec![BlobOp::Set {
        ty: BitType {
            signed: false,
            bits: 8,
        },
        offset: 8,
        value: 42,
        overflow: Overflow::Wrap,
    }];
    let done = a
        .channel_publish(
            &name,
            vec![json("{\"x\":1}")],
            Some(BlobWrite {
                key: key.clone(),
                ops,
            }),
            T,
        )
        .await
        .unwrap();
    let Published::Done { epoch, last, .. } = done else {
        panic!("{done:?}")
    };
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        match a.channel_read(&name, 0, 10, T).await {
            Ok(read) => break read,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!((read.epoch.as_str(), read.head), (epoch.as_str(), last));
    assert_eq!(read.messages[0].data, b"{\"x\":1}");
    let blob = a.blob_read(&key, 1, 1).await.unwrap().unwrap();
    let mut body = blob.body;
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while let Some(piece) = body.next().await {
        got.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(got, vec![42]);
}
