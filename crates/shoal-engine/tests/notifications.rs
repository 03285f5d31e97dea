//! Notifications on the engine tier: events become signed webhook
//! deliveries through a recording fake, retried with backoff on tokio's
//! paused clock (no real sleeping), logged, deduplicated.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{BASE_MS, Jitter, archive, secs, within};
use shoal_engine::notifications::{self, signature};
use shoal_engine::{
    DeliveryLog, DeliveryStatus, Handle, JobSpec, NotificationEvent, NotificationSpec, OutMessage,
    OutcomeSink, Parts, QueueSettings, RecordingWebhook, TokioClock, WebhookRequest,
};
use shoal_runtime::fake::{FakeRuntime, Script};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::{FailureKind, InvocationStatus};

struct Node {
    engine: Handle,
    fake: FakeRuntime,
    hook: RecordingWebhook,
    t0: Instant,
    _shutdown: CancellationToken,
    _data: TempDir,
}

async fn node() -> Node {
    let data = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let hook = RecordingWebhook::default();
    let shutdown = CancellationToken::new();
    let engine = shoal_engine::start_with(Parts {
        opts: shoal_engine::Options::new(data.path().to_path_buf()),
        backend: Backend::from_adapter(Arc::new(MemoryStore::new())),
        runtime: Arc::new(fake.clone()),
        clock: Arc::new(TokioClock::starting_at(BASE_MS)),
        random: Some(Arc::new(Jitter(1.0))),
        shutdown: shutdown.clone(),
        webhook: Some(Arc::new(hook.clone())),
    })
    .await
    .unwrap();
    Node {
        engine,
        fake,
        hook,
        t0: Instant::now(),
        _shutdown: shutdown,
        _data: data,
    }
}

impl Node {
    async fn deploy(&self, manifest: &str) {
        self.engine.deploy(archive(manifest)).await.unwrap();
    }

    /// Creates a notification; answers its generated secret.
    async fn notify(&self, name: &str, events: &[&str], functions: &[&str]) -> String {
        let (_, secret) = self
            .engine
            .put_notification(
                name,
                NotificationSpec {
                    url: format!("http://hooks.test/{name}"),
                    events: Some(events.iter().map(|s| s.to_string()).collect()),
                    functions: functions.iter().map(|s| s.to_string()).collect(),
                    secret: None,
                },
            )
            .await
            .unwrap();
        secret.expect("a generated secret is answered once")
    }

    async fn requests(&self, n: usize) -> Vec<WebhookRequest> {
        within(&format!("{n} webhook requests"), async {
            loop {
                let r = self.hook.requests();
                if r.len() >= n {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn log(&self) -> Vec<DeliveryLog> {
        self.engine
            .notification_deliveries(None, None, None, 100)
            .await
            .unwrap()
            .items
    }

    async fn log_until(
        &self,
        what: &str,
        done: impl Fn(&[DeliveryLog]) -> bool,
    ) -> Vec<DeliveryLog> {
        within(what, async {
            loop {
                let log = self.log().await;
                if done(&log) {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

fn body(r: &WebhookRequest) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Checks the signature header as a receiver would.
fn verify(r: &WebhookRequest, secret: &str) {
    let header = r.header("Shoal-Signature").expect("signed");
    let t: u64 = header
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(header, signature(secret, t, &r.body));
    assert_ne!(header, signature("another secret", t, &r.body));
}

#[tokio::test(start_paused = true)]
async fn a_failed_invocation_is_posted_signed_and_logged() {
    let node = node().await;
    let secret = node
        .notify("ops", &["invocation.failed"], &["resize*"])
        .await;
    node.deploy("name = \"resize_png\"\nretries = 0").await;
    node.deploy("name = \"other\"\nretries = 0").await;
    node.fake.script(
        "resize_png",
        Script::fail_with(FailureKind::Raised, "bad pixels"),
    );
    node.fake.script("other", Script::fail(FailureKind::Raised));
    // Another function's failure and a success match nothing.
    node.engine.invoke("other", "{}".into()).await.unwrap();
    let id = node
        .engine
        .invoke_async("resize_png", "{}".into())
        .await
        .unwrap();
    let r = node.requests(1).await;
    assert_eq!(r[0].url, "http://hooks.test/ops");
    assert_eq!(r[0].header("Shoal-Event"), Some("invocation.failed"));
    assert_eq!(r[0].header("Content-Type"), Some("application/json"));
    verify(&r[0], &secret);
    let b = body(&r[0]);
    assert_eq!(b["type"], "invocation.failed");
    assert_eq!(b["data"]["invocation"], id.as_str());
    assert_eq!(b["data"]["function"], "resize_png");
    assert_eq!(b["data"]["status"], "failed");
    assert_eq!(b["data"]["error"]["message"], "bad pixels");
    let log = node
        .log_until("the delivery logged", |l| {
            l.first()
                .is_some_and(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].name, "ops");
    assert_eq!(log[0].event, "invocation.failed");
    assert_eq!(log[0].event_id, b["id"].as_str().unwrap());
    assert_eq!(Some(log[0].id.as_str()), r[0].header("Shoal-Delivery"));
    assert_eq!(log[0].attempts, 1);
    assert_eq!(log[0].last_status_code, Some(200));
    tokio::time::sleep(secs(30)).await;
    assert_eq!(node.hook.requests().len(), 1, "nothing else notified");
}

#[tokio::test(start_paused = true)]
async fn a_receiver_failing_twice_gets_three_attempts_a_second_then_two_apart() {
    let node = node().await;
    node.notify("ops", &["invocation.succeeded"], &[]).await;
    node.deploy("name = \"f\"").await;
    node.fake.script("f", Script::ok(json!(1)));
    node.hook
        .script([Ok(500), Err("connection refused".to_string()), Ok(204)]);
    node.engine.invoke("f", "{}".into()).await.unwrap();
    let r = node.requests(3).await;
    let at: Vec<Duration> = r.iter().map(|x| x.at - r[0].at).collect();
    // Jitter fixed at the whole backoff: 1 s, then 2 s.
    assert_eq!(at, [secs(0), secs(1), secs(3)]);
    let ids: Vec<_> = r.iter().map(|r| r.header("Shoal-Delivery")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one delivery: {ids:?}");
    // The same body each time (signed anew).
    assert!(r.iter().all(|x| x.body == r[0].body));
    let log = node
        .log_until("delivered", |l| {
            l.first()
                .is_some_and(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    assert_eq!(log[0].attempts, 3);
    assert_eq!(log[0].last_status_code, Some(204));
    let _ = node.t0;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_that_keeps_failing_is_tried_eight_times_with_capped_backoff_then_failed() {
    let node = node().await;
    node.notify("ops", &["budget.reached"], &[]).await;
    node.hook.script(std::iter::repeat_n(Ok(503), 20));
    node.engine
        .notifications()
        .emit(NotificationEvent::new(
            "budget.reached",
            json!({"token": "t1"}),
        ))
        .await
        .unwrap();
    let r = node.requests(notifications::MAX_ATTEMPTS as usize).await;
    let gaps: Vec<u64> = r
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64]);
    // A pending entry in between says when it is tried next.
    let log = node
        .log_until("failed", |l| {
            l.first()
                .is_some_and(|d| d.status == DeliveryStatus::Failed)
        })
        .await;
    assert_eq!(log[0].attempts, 8);
    assert_eq!(log[0].last_status_code, Some(503));
    assert_eq!(log[0].last_error.as_deref(), Some("answered 503"));
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(node.hook.requests().len(), 8, "given up after 8");
    let failed = node
        .engine
        .notification_deliveries(Some("ops"), Some(DeliveryStatus::Failed), None, 10)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    let delivered = node
        .engine
        .notification_deliveries(None, Some(DeliveryStatus::Delivered), None, 10)
        .await
        .unwrap();
    assert!(delivered.items.is_empty());
}

#[test]
fn backoff_doubles_from_a_second_and_stops_at_ten_minutes() {
    let full = Jitter(1.0);
    let half = Jitter(0.0);
    let d = |n, r: &Jitter| notifications::retry_delay(n, r).as_secs();
    assert_eq!(
        (1..=11).map(|n| d(n, &full)).collect::<Vec<_>>(),
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    );
    assert_eq!(d(4, &half), 4, "equal jitter: at least half");
    assert_eq!(d(40, &full), 600);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_handed_over_twice_notifies_once() {
    let node = node().await;
    node.notify("a", &[], &[]).await;
    node.notify("b", &["invocation.succeeded"], &[]).await;
    node.deploy("name = \"f\"").await;
    node.fake.script("f", Script::ok(json!(1)));
    let done = node.engine.invoke("f", "{}".into()).await.unwrap();
    node.requests(2).await;
    // Both delivered and acknowledged: the queue no longer holds them, so
    // only the deduplication key can stop a second delivery.
    node.log_until("both delivered", |l| {
        l.len() == 2 && l.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    tokio::time::sleep(secs(5)).await;
    let record = node.engine.invocation(&done.id).await.unwrap();
    assert_eq!(record.status, InvocationStatus::Succeeded);
    // The dispatcher hands a redelivered message's final record over again.
    let again = OutcomeSink::finished(&**node.engine.notifications(), &record).unwrap();
    again.await.unwrap();
    tokio::time::sleep(secs(60)).await;
    let r = node.hook.requests();
    assert_eq!(r.len(), 2, "one per notification");
    let mut urls: Vec<_> = r.iter().map(|r| r.url.clone()).collect();
    urls.sort();
    assert_eq!(urls, ["http://hooks.test/a", "http://hooks.test/b"]);
    assert_eq!(body(&r[0])["id"], body(&r[1])["id"], "one event");
    assert_eq!(node.log().await.len(), 2);
    // A keyed event emitted twice, likewise.
    let e = NotificationEvent::new("budget.reached", json!({})).keyed("token t1, day 3");
    node.engine.notifications().emit(e.clone()).await.unwrap();
    node.engine.notifications().emit(e).await.unwrap();
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        node.hook.requests().len(),
        3,
        "only `a` asks for budgets, once"
    );
}

#[tokio::test(start_paused = true)]
async fn dead_letters_and_finished_jobs_notify() {
    let node = node().await;
    node.notify("dl", &["dead_letter"], &["worker"]).await;
    node.notify("jobs", &["job.finished"], &[]).await;
    node.engine
        .put_queue(
            "orders",
            QueueSettings {
                max_attempts: Some(1),
                ..QueueSettings::default()
            },
        )
        .await
        .unwrap();
    node.deploy("name = \"worker\"\n[subscribe]\nqueue = \"orders\"")
        .await;
    node.fake
        .script("worker", Script::raise("ValueError", "no such order"));
    let ids = node
        .engine
        .send(
            "orders",
            vec![OutMessage {
                body: "{}".into(),
                delay: secs(0),
                dedup_id: None,
            }],
        )
        .await
        .unwrap();
    let r = node.requests(1).await;
    let b = body(&r[0]);
    assert_eq!(b["type"], "dead_letter");
    assert_eq!(b["data"]["queue"], "orders");
    assert_eq!(b["data"]["message"], ids[0].as_str());
    assert_eq!(b["data"]["reason"], "raised: no such order");
    assert_eq!(b["data"]["function"], "worker");

    node.deploy("name = \"child\"").await;
    let job = node
        .engine
        .start_job(JobSpec {
            function: "child".into(),
            events: vec!["1".into(), "2".into(), "3".into()],
            then: None,
            max_in_flight: None,
        })
        .await
        .unwrap();
    let r = node.requests(2).await;
    let b = body(&r[1]);
    assert_eq!(b["type"], "job.finished");
    assert_eq!(b["data"]["job"], job.as_str());
    assert_eq!(b["data"]["function"], "child");
    assert_eq!(b["data"]["total"], 3);
    assert_eq!(b["data"]["succeeded"], 3);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(node.hook.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn settings_are_checked_listed_without_secrets_and_removed() {
    let node = node().await;
    let put = |url: &str, events: Option<Vec<&str>>, functions: Vec<&str>, secret: Option<&str>| {
        node.engine.put_notification(
            "n1",
            NotificationSpec {
                url: url.into(),
                events: events.map(|e| e.into_iter().map(String::from).collect()),
                functions: functions.into_iter().map(String::from).collect(),
                secret: secret.map(String::from),
            },
        )
    };
    for (url, events, functions, secret) in [
        ("ftp://x", None, vec![], None),
        ("http://h/", Some(vec!["nope"]), vec![], None),
        ("http://h/", None, vec!["a*b"], None),
        ("http://h/", None, vec![], Some("short")),
    ] {
        let err = put(url, events, functions, secret).await.unwrap_err();
        assert!(matches!(err, shoal_engine::Error::Invalid(_)), "{err}");
    }
    let (n, secret) = put("http://h/x", None, vec!["a*"], Some("a given secret"))
        .await
        .unwrap();
    assert_eq!(secret, None, "a given secret is not echoed");
    assert_eq!(
        n.events.len(),
        notifications::EVENT_TYPES.len(),
        "all by default"
    );
    let listed = node.engine.notification_list().await.unwrap();
    assert_eq!(listed, [n]);
    node.engine.remove_notification("n1").await.unwrap();
    assert!(node.engine.notification_list().await.unwrap().is_empty());
    let err = node.engine.remove_notification("n1").await.unwrap_err();
    assert!(matches!(err, shoal_engine::Error::NotFound { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_removed_notifications_pending_delivery_ends_failed() {
    let node = node().await;
    node.notify("gone", &["budget.reached"], &[]).await;
    node.hook.script([Ok(500)]);
    node.engine
        .notifications()
        .emit(NotificationEvent::new("budget.reached", json!({})))
        .await
        .unwrap();
    node.requests(1).await;
    node.engine.remove_notification("gone").await.unwrap();
    let log = node
        .log_until("failed", |l| {
            l.first()
                .is_some_and(|d| d.status == DeliveryStatus::Failed)
        })
        .await;
    assert_eq!(
        log[0].last_error.as_deref(),
        Some("the notification was removed")
    );
    assert_eq!(node.hook.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn events_are_published_on_the_events_channel_with_or_without_notifications() {
    let node = node().await;
    node.deploy("name = \"f\"").await;
    node.fake.script("f", Script::ok(json!(1)));
    let mut sub = node
        .engine
        .subscribe(notifications::EVENTS_CHANNEL, None)
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut sub).await,
        shoal_engine::ChannelEvent::Ready { .. }
    ));
    // The feed is recorded once its wanting is seen (every 2 s).
    tokio::time::sleep(secs(3)).await;
    let done = node.engine.invoke("f", "{}".into()).await.unwrap();
    node.engine
        .notifications()
        .emit(NotificationEvent::new(
            "budget.reached",
            json!({"token": "t"}),
        ))
        .await
        .unwrap();
    let mut got: Vec<Value> = Vec::new();
    while got.len() < 2 {
        match next_event(&mut sub).await {
            shoal_engine::ChannelEvent::Messages { messages, .. } => got.extend(
                messages
                    .iter()
                    .map(|m| serde_json::from_slice::<Value>(&m.data).unwrap()),
            ),
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(got[0]["type"], "invocation.succeeded");
    assert_eq!(got[0]["data"]["invocation"], done.id.as_str());
    assert_eq!(got[1]["type"], "budget.reached");
    assert_eq!(got[1]["data"]["token"], "t");
    assert!(node.hook.requests().is_empty(), "no notification asked");
}

async fn next_event(sub: &mut shoal_engine::Subscription) -> shoal_engine::ChannelEvent {
    tokio::time::timeout(secs(5), sub.next())
        .await
        .expect("an event in time")
        .expect("open")
}

#[tokio::test(start_paused = true)]
async fn the_log_pages_newest_first_with_a_cursor_and_filters() {
    let node = node().await;
    node.notify("a", &["budget.reached"], &[]).await;
    node.notify("b", &["budget.reached"], &[]).await;
    for i in 0..3 {
        node.engine
            .notifications()
            .emit(NotificationEvent::new("budget.reached", json!({"n": i})))
            .await
            .unwrap();
        tokio::time::sleep(secs(1)).await;
    }
    node.requests(6).await;
    node.log_until("six entries", |l| l.len() == 6).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = node
            .engine
            .notification_deliveries(Some("a"), None, cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|d| (d.created_at_ms, d.name.clone())));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|(_, n)| n == "a"));
    assert!(
        seen.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first: {seen:?}"
    );
}
