//! A handler's `shoal.Response` in the engine: the envelope the runtime
//! hands over is checked (a broken one is a `bad_result` failure, in every
//! mode), kept as JSON in records, cached like any result, and redacted
//! field by field (the body's bytes, not its base64).

mod common;

use common::Node;
use shoal_engine::BinaryResult;
use shoal_runtime::fake::Script;
use shoal_types::{FailureKind, InvocationStatus, Outcome};

fn png(headers: &[(&str, &str)], body: &[u8]) -> BinaryResult {
    BinaryResult {
        status: 200,
        content_type: "image/png".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        cookies: vec![],
    }
}

#[track_caller]
fn succeeded(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Succeeded(json) => json,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn responses_are_kept_and_cached_as_their_json_form() {
    let node = Node::start().await;
    node.deploy("name = \"tile\"\n[cache]\nttl = \"60s\"\n")
        .await;
    let tile = png(&[("x-tile", "1")], b"\x89PNG\0\xff");
    node.fake.script("tile", Script::ok_raw(tile.to_json()));
    let first = node.engine.invoke("tile", "{}".into()).await.unwrap();
    assert_eq!(succeeded(&first.outcome), tile.to_json());
    let second = node.engine.invoke("tile", "{ }".into()).await.unwrap();
    assert_eq!(
        node.fake.calls_of("tile").len(),
        1,
        "answered from the cache"
    );
    assert_eq!(succeeded(&second.outcome), tile.to_json());
    let record = node.engine.invocation(&second.id).await.unwrap();
    assert!(record.cache_hit);
    assert_eq!(record.output, Some(tile.to_json()));

    // Asynchronous: the record holds the JSON form.
    let id = node.engine.invoke_async("tile", "{}".into()).await.unwrap();
    let record = node.wait_final(&id).await;
    assert_eq!(record.status, InvocationStatus::Succeeded);
    let output = record.output.unwrap();
    assert_eq!(BinaryResult::parse(&output), Some(Ok(tile)));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_broken_response_is_a_bad_result_and_never_cached() {
    let node = Node::start().await;
    node.deploy("name = \"tile\"\nretries = 0\n[cache]\nttl = \"60s\"\n")
        .await;
    let bad = png(&[("transfer-encoding", "chunked")], b"x");
    node.fake.script("tile", Script::ok_raw(bad.to_json()));
    for _ in 0..2 {
        let done = node.engine.invoke("tile", "{}".into()).await.unwrap();
        match &done.outcome {
            Outcome::Failed(f) => {
                assert_eq!(f.kind, FailureKind::BadResult);
                assert!(f.message.contains("transfer-encoding"), "{f:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        node.fake.calls_of("tile").len(),
        2,
        "failures are not cached"
    );

    let id = node.engine.invoke_async("tile", "{}".into()).await.unwrap();
    let record = node.wait_final(&id).await;
    assert_eq!(record.status, InvocationStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(error.kind, FailureKind::BadResult);
    assert!(error.message.contains("transfer-encoding"), "{error:?}");
    assert_eq!(record.output, None);

    // A status out of range, and a malformed envelope, too.
    let mut teapot = png(&[], b"x");
    teapot.status = 700;
    node.fake.script("tile", Script::ok_raw(teapot.to_json()));
    let done = node.engine.invoke("tile", "{}".into()).await.unwrap();
    assert!(matches!(&done.outcome, Outcome::Failed(f) if f.message.contains("700")));
    node.fake
        .script("tile", Script::ok_raw(r#"{"$response":{"status":200}}"#));
    let done = node.engine.invoke("tile", "{}".into()).await.unwrap();
    assert!(matches!(&done.outcome, Outcome::Failed(f) if f.kind == FailureKind::BadResult));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn secrets_are_redacted_in_the_body_bytes_and_headers() {
    const VALUE: &str = "sk-live-123456";
    let node = Node::start().await;
    node.engine.set_secret("API_KEY", VALUE).await.unwrap();
    node.deploy("name = \"pay\"\nsecrets = [\"API_KEY\"]\n")
        .await;
    let mut body = b"\x00\x01key=".to_vec();
    body.extend_from_slice(VALUE.as_bytes());
    body.extend_from_slice(b"\xff");
    let leaky = png(&[("x-key", VALUE)], &body);
    node.fake.script("pay", Script::ok_raw(leaky.to_json()));
    let done = node.engine.invoke("pay", "{}".into()).await.unwrap();
    let answered = BinaryResult::parse(succeeded(&done.outcome))
        .unwrap()
        .unwrap();
    assert_eq!(answered.body, b"\x00\x01key=***\xff");
    assert_eq!(answered.headers["x-key"], "***");
    node.stop().await;
}
