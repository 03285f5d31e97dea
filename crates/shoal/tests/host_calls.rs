//! End to end: a running handler calls back into the node — `ctx.spawn`
//! starts asynchronous invocations, `ctx.send` puts messages on a queue, and
//! errors come back as `ctx.HostError`.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, until, wait_final};
use serde_json::json;
use shoal_client::protocol::PutQueue;

const PARENT: &str = r#"
def handler(event, ctx):
    ids = [ctx.spawn("child", {"n": n})["id"] for n in range(event["children"])]
    sent = ctx.send("work", {"from": ctx.invocation_id}, dedup_id="once")["id"]
    try:
        ctx.spawn("no-such-function", {})
        missing = None
    except ctx.HostError as e:
        missing = e.code
    return {"children": ids, "sent": sent, "missing": missing}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn handlers_spawn_invocations_and_send_messages() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("got");
    deploy(
        &c,
        "name = \"child\"",
        "def handler(event, ctx):\n    return event['n'] * 10\n",
    )
    .await;
    c.put_queue("work", &PutQueue::default()).await.unwrap();
    deploy(
        &c,
        "name = \"consumer\"\n[subscribe]\nqueue = \"work\"",
        &format!(
            "import json\ndef handler(event, ctx):\n    open({:?}, 'a').write(json.dumps(event) + '\\n')\n",
            path.to_str().unwrap()
        ),
    )
    .await;
    deploy(&c, "name = \"parent\"", PARENT).await;

    let out = c
        .invoke("parent", r#"{"children": 5}"#)
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(out["missing"], json!("function_not_found"));
    let ids: Vec<String> = out["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    for (n, id) in ids.iter().enumerate() {
        let inv = wait_final(&c, id, Duration::from_secs(30)).await;
        assert_eq!(inv.status, "succeeded");
        assert_eq!(inv.output, Some(json!(n * 10)));
        assert_eq!(inv.function, "child");
    }
    // The message reached the queue's subscriber.
    until("the message handled", Duration::from_secs(30), async || {
        c.queue("work").await.unwrap().counters.acked >= 1
    })
    .await;
    let got = std::fs::read_to_string(&path).unwrap();
    assert!(got.contains("\"from\""), "{got}");

    // A second run's send is deduplicated ("once"), the spawns are not.
    c.invoke("parent", r#"{"children": 1}"#)
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(c.queue("work").await.unwrap().counters.sent, 1);
}
