//! Documents a function writes (`ctx.put_docs`) obey the same rules as an
//! HTTP write: at most 128 levels deep, or the call fails and nothing of it
//! is written.

mod common;

use common::{Node, Script};
use serde_json::json;
use shoal_types::Outcome;

#[tokio::test(start_paused = true)]
async fn a_function_cannot_store_a_document_nested_deeper_than_128() {
    let node = Node::start().await;
    node.deploy("name = \"writer\"").await;
    node.engine.create_category("c", None).await.unwrap();
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let args = |doc: &str| {
        format!(
            r#"{{"category": "c", "docs": [{{"id": "ok", "doc": {{"a": 1}}}}, {{"id": "deep", "doc": {doc}}}]}}"#
        )
    };
    node.fake.script_seq(
        "writer",
        [
            Script::ok(json!("stored")).host_raw("put_docs", args(&deep(129))),
            Script::ok(json!("stored")).host_raw("put_docs", args(&deep(128))),
        ],
    );
    let refused = node.engine.invoke("writer", "{}".into()).await.unwrap();
    let Outcome::Failed(f) = &refused.outcome else {
        panic!("a 129-deep document was stored: {:?}", refused.outcome);
    };
    assert!(
        f.message
            .contains("invalid_input: document 1 nests objects and arrays more than 128 levels deep; nothing was written"),
        "{f:?}"
    );
    let (docs, _) = node.engine.scan("c", None, 100).await.unwrap();
    assert!(docs.is_empty(), "nothing of the call was written: {docs:?}");

    let stored = node.engine.invoke("writer", "{}".into()).await.unwrap();
    assert_eq!(stored.outcome, Outcome::Succeeded("\"stored\"".into()));
    let (docs, _) = node.engine.scan("c", None, 100).await.unwrap();
    assert_eq!(docs.len(), 2);
}
