//! Triggers on the in-memory store and a paused clock: document changes run
//! a function in batches (by size, and by window), once across two nodes;
//! blob uploads and deletes by prefix and event; another function's
//! outcome (destinations), by status, with the source's token and user,
//! once even when the source's outcome is handed over again; manifests
//! that are refused, and why.

mod common;

use std::sync::Arc;

use common::{Node, Script, archive, ms, secs};
use serde_json::{Value, json};
use shoal_engine::{NewDoc, Origin};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, NewMessage};
use shoal_types::{FailureKind, InvocationStatus};

fn doc(id: &str, v: Value) -> NewDoc {
    NewDoc {
        id: Some(id.to_string()),
        body: v.to_string().into_bytes(),
    }
}

/// The events of the calls of `function` on these nodes, in call order.
fn events(nodes: &[&Node], function: &str) -> Vec<Value> {
    let mut calls: Vec<_> = nodes
        .iter()
        .flat_map(|n| n.fake.calls_of(function))
        .collect();
    calls.sort_by_key(|c| c.invoked);
    calls
        .iter()
        .map(|c| serde_json::from_str(&c.event).unwrap())
        .collect()
}

/// The `(op, id)` of every change in these events.
fn changes(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().clone())
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const DOCS_SINK: &str = "name = \"sink\"\nhandler = \"main:handler\"\n\
     [[trigger]]\non = \"docs\"\ncategory = \"photos\"\nbatch_size = 3\nbatch_window_ms = 500\n";

#[tokio::test(start_paused = true)]
async fn document_changes_run_the_trigger_in_batches_of_at_most_batch_size() {
    let node = Node::start().await;
    node.deploy(DOCS_SINK).await;
    let docs: Vec<NewDoc> = (0..7)
        .map(|i| doc(&format!("d{i}"), json!({"n": i})))
        .collect();
    node.engine.write_docs("photos", docs).await.unwrap();
    node.pass(ms(2_000)).await;
    let got = events(&[&node], "sink");
    // 3 + 3 at once, the last one after the window.
    let sizes: Vec<usize> = got
        .iter()
        .map(|e| e["changes"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![3, 3, 1], "{got:?}");
    assert_eq!(got[0]["trigger"], "docs");
    assert_eq!(got[0]["category"], "photos");
    assert_eq!(
        got[0]["changes"][0],
        json!({"op": "put", "id": "d0", "doc": {"n": 0}})
    );
    let ids: Vec<String> = changes(&got).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, (0..7).map(|i| format!("d{i}")).collect::<Vec<_>>());
    // Ordinary async invocations.
    let call = &node.fake.calls_of("sink")[0];
    let r = node.wait_final(&call.invocation_id).await;
    assert_eq!(r.mode, shoal_types::InvocationMode::Async);
    assert_eq!(r.status, InvocationStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn small_changes_within_the_window_are_one_run() {
    let node = Node::start().await;
    node.deploy(DOCS_SINK).await;
    let t = tokio::time::Instant::now();
    node.engine
        .write_docs("photos", vec![doc("a", json!(1))])
        .await
        .unwrap();
    node.pass(ms(100)).await;
    node.engine.delete_doc("photos", "a").await.unwrap();
    node.pass(ms(1_000)).await;
    let got = events(&[&node], "sink");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["changes"],
        json!([
            {"op": "put", "id": "a", "doc": 1},
            {"op": "delete", "id": "a"},
        ])
    );
    // Not full (2 of 3): it waited for the window from the first change
    // (500 ms), not more.
    let started = node.fake.calls_of("sink")[0].invoked - t;
    assert!(
        started >= ms(500) && started < ms(800),
        "started at {started:?}"
    );
    // Another category runs nothing.
    node.engine
        .write_docs("other", vec![doc("x", json!(0))])
        .await
        .unwrap();
    node.pass(ms(2_000)).await;
    assert_eq!(events(&[&node], "sink").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_nodes_run_each_change_once() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with_clock_at(common::BASE_MS, backend.clone()).await;
    let b = Node::with(None, backend).await;
    a.deploy(DOCS_SINK).await;
    // B sees the function within a catalog poll.
    b.pass(secs(3)).await;
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.engine
            .write_docs("photos", vec![doc(&format!("d{i}"), json!(i))])
            .await
            .unwrap();
        node.pass(ms(37)).await;
    }
    a.pass(secs(3)).await;
    let got = events(&[&a, &b], "sink");
    let mut ids: Vec<String> = changes(&got).into_iter().map(|(_, id)| id).collect();
    ids.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each change once: {got:?}");
    assert!(
        got.iter()
            .all(|e| e["changes"].as_array().unwrap().len() <= 3)
    );
}

#[tokio::test(start_paused = true)]
async fn blob_uploads_and_deletes_run_triggers_by_prefix_and_event() {
    let node = Node::start().await;
    node.deploy(
        "name = \"on_blob\"\nhandler = \"main:handler\"\n\
         [[trigger]]\non = \"blob\"\nprefix = \"uploads/\"\n",
    )
    .await;
    node.deploy(
        "name = \"on_delete\"\nhandler = \"main:handler\"\n\
         [[trigger]]\non = \"blob\"\nevents = [\"deleted\"]\n",
    )
    .await;
    let body = |b: &'static [u8]| {
        futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(b))])
    };
    node.engine
        .blob_upload("uploads/a.png", None, body(b"abc"))
        .await
        .unwrap();
    node.engine
        .blob_upload("other/b", None, body(b"x"))
        .await
        .unwrap();
    node.engine.blob_delete("uploads/a.png").await.unwrap();
    node.pass(secs(2)).await;
    assert_eq!(
        events(&[&node], "on_blob"),
        vec![
            json!({"trigger": "blob", "event": "created", "key": "uploads/a.png", "size": 3}),
            json!({"trigger": "blob", "event": "deleted", "key": "uploads/a.png"}),
        ]
    );
    assert_eq!(
        events(&[&node], "on_delete"),
        vec![json!({"trigger": "blob", "event": "deleted", "key": "uploads/a.png"})]
    );
    // A fixed-size blob created counts as created.
    node.engine
        .blob_create_fixed("uploads/grid", 16, false)
        .await
        .unwrap()
        .unwrap();
    node.pass(secs(1)).await;
    assert_eq!(
        events(&[&node], "on_blob").last().unwrap(),
        &json!({"trigger": "blob", "event": "created", "key": "uploads/grid", "size": 16})
    );
}

const DESTINATIONS: &str = "name = \"on_fail\"\nhandler = \"main:handler\"\n\
     [[trigger]]\non = \"outcome\"\nfunction = \"resize\"\nwhen = \"failure\"\n";

#[tokio::test(start_paused = true)]
async fn a_failed_async_invocation_runs_its_failure_destination_with_its_outcome() {
    let node = Node::start().await;
    node.deploy("name = \"resize\"\nhandler = \"main:handler\"\nretries = 1\nretry_delay = \"1s\"")
        .await;
    node.deploy(DESTINATIONS).await;
    node.deploy(
        "name = \"on_any\"\nhandler = \"main:handler\"\n\
         [[trigger]]\non = \"outcome\"\nfunction = \"resize\"\n",
    )
    .await;
    node.fake
        .script("resize", Script::fail(FailureKind::Raised));
    let origin = Origin {
        token: Some("tok1".into()),
        user: Some("ana".into()),
    };
    let failed = node
        .engine
        .invoke_async_by(&origin, "resize", json!({"img": 7}).to_string())
        .await
        .unwrap();
    node.wait_final(&failed).await;
    node.pass(secs(2)).await;
    let got = events(&[&node], "on_fail");
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(e["trigger"], "outcome");
    assert_eq!(e["function"], "resize");
    assert_eq!(e["invocation"]["id"], failed.as_str());
    assert_eq!(e["invocation"]["status"], "failed");
    assert_eq!(e["invocation"]["event"], json!({"img": 7}));
    assert_eq!(e["invocation"]["output"], Value::Null);
    assert_eq!(e["invocation"]["attempts"], 2, "after its retry");
    assert_eq!(e["invocation"]["error"]["kind"], "raised", "{e}");
    // The destination's run carries the source's token and user.
    let call = &node.fake.calls_of("on_fail")[0];
    let r = node.wait_final(&call.invocation_id).await;
    assert_eq!(r.token.as_deref(), Some("tok1"));
    assert_eq!(r.user.as_deref(), Some("ana"));

    // A success runs `any`, not `failure`; a synchronous call runs neither.
    node.fake.script("resize", Script::ok(json!({"w": 10})));
    let ok = node
        .engine
        .invoke_async("resize", "{}".into())
        .await
        .unwrap();
    node.wait_final(&ok).await;
    node.engine.invoke("resize", "{}".into()).await.unwrap();
    node.pass(secs(2)).await;
    assert_eq!(events(&[&node], "on_fail").len(), 1);
    let any = events(&[&node], "on_any");
    assert_eq!(any.len(), 2, "{any:?}");
    assert_eq!(any[1]["invocation"]["status"], "succeeded");
    assert_eq!(any[1]["invocation"]["output"], json!({"w": 10}));
    assert_eq!(any[1]["invocation"]["error"], Value::Null);
}

#[tokio::test(start_paused = true)]
async fn a_source_outcome_handed_over_again_runs_its_destination_once() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let node = Node::with(None, backend.clone()).await;
    node.deploy("name = \"resize\"\nhandler = \"main:handler\"\nretries = 0")
        .await;
    node.deploy(DESTINATIONS).await;
    node.fake
        .script("resize", Script::fail(FailureKind::Raised));
    let failed = node
        .engine
        .invoke_async("resize", "{}".into())
        .await
        .unwrap();
    node.wait_final(&failed).await;
    node.pass(secs(2)).await;
    assert_eq!(node.fake.calls_of("on_fail").len(), 1);
    // The source's message delivered again (as after a crash before its
    // acknowledgement): its record is final, so its outcome is handed to
    // the sinks again; the destination is not queued twice.
    let record = node.engine.invocation(&failed).await.unwrap();
    backend
        .queues
        .send(
            "_async.resize",
            vec![NewMessage {
                id: failed.clone(),
                body: json!({"id": failed, "version": record.version})
                    .to_string()
                    .into_bytes(),
                due_ms: 0,
                sent_ms: common::BASE_MS,
                dedup: None,
                key: None,
            }],
        )
        .await
        .unwrap();
    node.pass(secs(5)).await;
    assert_eq!(
        node.fake.calls_of("resize").len(),
        1,
        "the source did not run again"
    );
    assert_eq!(node.fake.calls_of("on_fail").len(), 1);
    let list = node
        .engine
        .list_invocations(
            &shoal_store::InvocationFilter {
                function: Some(shoal_types::FunctionName::parse("on_fail").unwrap()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(list.records.len(), 1, "{list:?}");
}

#[tokio::test(start_paused = true)]
async fn triggers_are_listed() {
    let node = Node::start().await;
    node.deploy(
        "name = \"t\"\nhandler = \"main:handler\"\n\
         [[trigger]]\non = \"docs\"\ncategory = \"photos\"\n\
         [[trigger]]\non = \"blob\"\nprefix = \"up/\"\nevents = [\"created\"]\n\
         [[trigger]]\non = \"outcome\"\nfunction = \"resize\"\nwhen = \"success\"\n",
    )
    .await;
    let listed = node.engine.triggers();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[0].trigger,
        shoal_store::TriggerRecord::Docs {
            category: "photos".into(),
            batch_size: 100,
            batch_window_ms: 500
        }
    );
    assert_eq!(
        listed[1].trigger,
        shoal_store::TriggerRecord::Blob {
            prefix: "up/".into(),
            created: true,
            deleted: false
        }
    );
    assert_eq!(listed[2].index, 2);
}

#[tokio::test(start_paused = true)]
async fn a_bad_trigger_is_refused_saying_what_to_fix() {
    let node = Node::start().await;
    let cases = [
        ("", "set `on`"),
        ("on = \"cron\"", "is not a trigger"),
        ("on = \"docs\"", "needs `category`"),
        (
            "on = \"docs\"\ncategory = \"p\"\nbatch_size = 0",
            "1 to 1000",
        ),
        (
            "on = \"docs\"\ncategory = \"p\"\nbatch_size = 1001",
            "1 to 1000",
        ),
        (
            "on = \"docs\"\ncategory = \"p\"\nbatch_window_ms = 60001",
            "0 to 60000",
        ),
        (
            "on = \"docs\"\ncategory = \"p\"\nprefix = \"x\"",
            "`prefix` is for",
        ),
        (
            "on = \"blob\"\nevents = [\"moved\"]",
            "\"created\" and \"deleted\"",
        ),
        ("on = \"blob\"\nevents = []", "`events` is empty"),
        ("on = \"blob\"\ncategory = \"p\"", "`category` is for"),
        ("on = \"outcome\"", "needs `function`"),
        (
            "on = \"outcome\"\nfunction = \"bad\"",
            "names this function itself",
        ),
        (
            "on = \"outcome\"\nfunction = \"x\"\nwhen = \"later\"",
            "\"success\", \"failure\" or \"any\"",
        ),
        (
            "on = \"docs\"\ncategroy = \"p\"",
            "unknown field `categroy`",
        ),
    ];
    for (trigger, want) in cases {
        let manifest =
            format!("name = \"bad\"\nhandler = \"main:handler\"\n[[trigger]]\n{trigger}\n");
        let e = match node.engine.deploy(archive(&manifest)).await {
            Ok(_) => panic!("{trigger:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{trigger:?}: {e}");
        assert!(
            e.contains("[[trigger]] 1") || e.contains("unknown field"),
            "{e}"
        );
    }
}

/// The memory store's queues, except that the first acknowledgement of a
/// trigger's changes is lost (as when a node dies right after queueing a
/// batch's run): the changes are delivered again once their lease lapses.
struct LoseFirstTriggerAck {
    inner: Arc<dyn shoal_store::Queues>,
    lost: std::sync::atomic::AtomicBool,
}

impl shoal_store::Queues for LoseFirstTriggerAck {
    fn send(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> shoal_store::Pending<Vec<Option<String>>> {
        self.inner.send(queue, messages)
    }
    fn lease_keyed(
        &self,
        queue: &str,
        now_ms: u64,
        max: usize,
        visibility_ms: u64,
        limit: Option<&shoal_store::KeyLimit>,
    ) -> shoal_store::Pending<shoal_store::Leased> {
        self.inner
            .lease_keyed(queue, now_ms, max, visibility_ms, limit)
    }
    fn extend(&self, queue: &str, id: &str, lease_until_ms: u64) -> shoal_store::Pending<()> {
        self.inner.extend(queue, id, lease_until_ms)
    }
    fn ack(&self, queue: &str, ids: Vec<String>) -> shoal_store::Pending<()> {
        if queue.starts_with("_trigger.")
            && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Box::pin(async { Ok(()) });
        }
        self.inner.ack(queue, ids)
    }
    fn nack(&self, queue: &str, id: &str, due_ms: u64) -> shoal_store::Pending<()> {
        self.inner.nack(queue, id, due_ms)
    }
    fn started(&self, queue: &str, ids: Vec<String>) -> shoal_store::Pending<()> {
        self.inner.started(queue, ids)
    }
    fn depth(&self, queue: &str) -> shoal_store::Pending<shoal_store::QueueDepth> {
        self.inner.depth(queue)
    }
    fn counters(&self, queue: &str) -> shoal_store::Pending<shoal_store::QueueCounters> {
        self.inner.counters(queue)
    }
    fn dead_letter(
        &self,
        queue: &str,
        id: &str,
        reason: String,
        now_ms: u64,
    ) -> shoal_store::Pending<()> {
        self.inner.dead_letter(queue, id, reason, now_ms)
    }
    fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> shoal_store::Pending<Vec<shoal_store::DeadLetter>> {
        self.inner.dead_letters(queue, after, limit)
    }
    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
        now_ms: u64,
    ) -> shoal_store::Pending<u64> {
        self.inner.redrive(queue, ids, now_ms)
    }
    fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> shoal_store::Pending<u64> {
        self.inner.purge_dead(queue, ids)
    }
    fn purge(&self, queue: &str) -> shoal_store::Pending<u64> {
        self.inner.purge(queue)
    }
    fn record_samples(
        &self,
        samples: Vec<(String, shoal_store::QueueSample)>,
        keep_after_ms: u64,
    ) -> shoal_store::Pending<()> {
        self.inner.record_samples(samples, keep_after_ms)
    }
    fn samples(
        &self,
        queue: &str,
        since_ms: u64,
    ) -> shoal_store::Pending<Vec<shoal_store::QueueSample>> {
        self.inner.samples(queue, since_ms)
    }
}

/// A batch whose run was queued but whose changes were not acknowledged
/// (the node died in between) comes back whole after its lease: it names
/// the same invocation, which is not queued again.
#[tokio::test(start_paused = true)]
async fn a_batch_delivered_again_whole_runs_once() {
    let mut backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    backend.queues = Arc::new(LoseFirstTriggerAck {
        inner: backend.queues.clone(),
        lost: Default::default(),
    });
    let node = Node::with(None, backend.clone()).await;
    node.deploy(DOCS_SINK).await;
    node.engine
        .write_docs("photos", vec![doc("a", json!(1)), doc("b", json!(2))])
        .await
        .unwrap();
    node.pass(secs(2)).await;
    assert_eq!(node.fake.calls_of("sink").len(), 1);
    // The changes are still there, leased: they come back after the window
    // and the lease margin (30 s), form the same batch, and run nothing new.
    let depth = backend
        .queues
        .depth("_trigger.sink.0.photos")
        .await
        .unwrap();
    assert_eq!(depth.in_flight, 1, "{depth:?}");
    node.pass(secs(60)).await;
    assert_eq!(node.fake.calls_of("sink").len(), 1, "run twice");
    let depth = backend
        .queues
        .depth("_trigger.sink.0.photos")
        .await
        .unwrap();
    assert_eq!(
        (depth.waiting, depth.in_flight),
        (0, 0),
        "acknowledged the second time: {depth:?}"
    );
}
