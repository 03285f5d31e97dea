//! Versions: a deploy goes live only once it loads (the runtime's `check`),
//! identical code is a no-op, a dry run leaves nothing behind, rollback and
//! aliases move atomically, `NAME@N` and `NAME@ALIAS` pick a version, and
//! the live pointer and aliases survive a restart.

mod common;

use std::sync::Arc;

use common::{Node, archive, secs};
use shoal_engine::{DeployOptions, DeployOutcome, Entity, Error, OutMessage, QueueSettings};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::{Failure, FailureKind, Outcome};

fn manifest(name: &str, handler: &str) -> String {
    format!("name = \"{name}\"\nhandler = \"{handler}\"\n")
}

/// The version a call of `name` ran.
async fn ran(node: &Node, name: &str) -> u64 {
    let done = node.engine.invoke(name, "{}".into()).await.unwrap();
    assert!(matches!(done.outcome, Outcome::Succeeded(_)), "{done:?}");
    node.engine.invocation(&done.id).await.unwrap().version
}

#[tokio::test(start_paused = true)]
async fn a_version_that_does_not_load_is_refused_and_the_live_one_keeps_serving() {
    let node = Node::start().await;
    node.fake.fail_load(
        "main:hendler",
        Failure {
            kind: FailureKind::LoadFailed,
            exception: Some("AttributeError".into()),
            message: "module 'main' has no attribute 'hendler'".into(),
            traceback: Some("AttributeError: module 'main' has no attribute 'hendler'\n".into()),
        },
    );
    let v1 = node.deploy(&manifest("hello", "main:handler")).await;
    let err = node
        .engine
        .deploy(archive(&manifest("hello", "main:hendler")))
        .await
        .unwrap_err();
    let Error::InvalidFunction(message) = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("no attribute 'hendler'"), "{message}");
    assert!(message.contains("version 1 stays live"), "{message}");
    // Nothing was recorded; the first version still answers.
    let versions = node.engine.function_versions("hello").await.unwrap();
    assert_eq!(versions.versions.len(), 1);
    assert_eq!(ran(&node, "hello").await, v1.version);
    // The check ran on a key of its own, never the live one's.
    let checked = node.fake.checked();
    assert_eq!(checked.len(), 2, "{checked:?}");
    assert!(checked.iter().all(|k| k.starts_with("hello@check-")));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn identical_code_is_unchanged_and_a_dry_run_records_nothing() {
    let node = Node::start().await;
    let m = manifest("hello", "main:handler");
    node.deploy(&m).await;
    let again = node
        .engine
        .deploy_with(archive(&m), DeployOptions::default())
        .await
        .unwrap();
    assert!(
        matches!(&again, DeployOutcome::Unchanged(r) if r.version == 1),
        "{again:?}"
    );
    let dry = node
        .engine
        .deploy_with(
            archive(&manifest("hello", "main:other")),
            DeployOptions {
                dry_run: true,
                by: None,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&dry, DeployOutcome::Checked(r) if r.version == 0 && r.handler == "main:other"),
        "{dry:?}"
    );
    assert_eq!(node.fake.checked().len(), 2, "the dry run was checked");
    let versions = node.engine.function_versions("hello").await.unwrap();
    assert_eq!(versions.versions.len(), 1, "a dry run records nothing");
    assert_eq!(versions.live, 1);
    // A dry run of a broken version says why, and records nothing either.
    node.fake.fail_load(
        "main:broken",
        Failure::new(FailureKind::LoadFailed, "SyntaxError: invalid syntax"),
    );
    let err = node
        .engine
        .deploy_with(
            archive(&manifest("hello", "main:broken")),
            DeployOptions {
                dry_run: true,
                by: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidFunction(_)), "{err:?}");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rollback_aliases_and_pinned_versions() {
    let node = Node::start().await;
    for h in ["main:a", "main:b", "main:c"] {
        node.deploy(&manifest("hello", h)).await;
    }
    assert_eq!(ran(&node, "hello").await, 3);
    assert_eq!(ran(&node, "hello@1").await, 1);
    // Queued, a pinned call runs the version it named.
    let id = node
        .engine
        .invoke_async("hello@2", "{}".into())
        .await
        .unwrap();
    assert_eq!(node.wait_final(&id).await.version, 2);
    assert_eq!(node.fake.calls().last().unwrap().version, 2);
    // Rollback without a version: the one before the live one.
    let live = node.engine.rollback("hello", None).await.unwrap();
    assert_eq!(live.version, 2);
    assert_eq!(ran(&node, "hello").await, 2);
    assert_eq!(node.engine.function("hello").await.unwrap().version, 2);
    let live = node.engine.rollback("hello", None).await.unwrap();
    assert_eq!(live.version, 1);
    let err = node.engine.rollback("hello", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Invalid(_)),
        "nothing before 1: {err:?}"
    );
    let err = node.engine.rollback("hello", Some(9)).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { entity: Entity::Function, name } if name == "hello@9"),
        "{err:?}"
    );
    node.engine.rollback("hello", Some(3)).await.unwrap();
    assert_eq!(ran(&node, "hello").await, 3);

    // Aliases.
    node.engine.set_alias("hello", "prod", 2).await.unwrap();
    assert_eq!(ran(&node, "hello@prod").await, 2);
    node.engine.set_alias("hello", "prod", 1).await.unwrap();
    assert_eq!(ran(&node, "hello@prod").await, 1, "moved");
    for bad in ["123", "", "Prod", "a b"] {
        let err = node.engine.set_alias("hello", bad, 1).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{bad:?}: {err:?}");
    }
    let err = node.engine.set_alias("hello", "x", 7).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = node
        .engine
        .invoke("hello@nope", "{}".into())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let v = node.engine.function_versions("hello").await.unwrap();
    assert_eq!(v.aliases, [("prod".to_string(), 1)]);
    node.engine.remove_alias("hello", "prod").await.unwrap();
    let err = node.engine.remove_alias("hello", "prod").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_live_pointer_and_aliases_survive_a_restart_and_a_new_deploy_goes_live() {
    let store = Arc::new(MemoryStore::new());
    let backend = || Backend::from_adapter(store.clone());
    let node = Node::with(None, backend()).await;
    for h in ["main:a", "main:b", "main:c"] {
        node.deploy(&manifest("hello", h)).await;
    }
    node.engine.rollback("hello", Some(1)).await.unwrap();
    node.engine.set_alias("hello", "prod", 2).await.unwrap();
    node.stop().await;

    let node = Node::with(None, backend()).await;
    let v = node.engine.function_versions("hello").await.unwrap();
    assert_eq!(v.live, 1, "the rollback is durable");
    assert_eq!(v.aliases, [("prod".to_string(), 2)]);
    assert_eq!(ran(&node, "hello").await, 1);
    assert_eq!(ran(&node, "hello@prod").await, 2);
    // A new deploy is live, whatever the rollback chose before.
    let v4 = node.deploy(&manifest("hello", "main:d")).await;
    assert_eq!(v4.version, 4);
    assert_eq!(ran(&node, "hello").await, 4);
    node.stop().await;

    let node = Node::with(None, backend()).await;
    assert_eq!(
        node.engine.function_versions("hello").await.unwrap().live,
        4
    );
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_subscription_calls_the_live_version_after_a_rollback() {
    let node = Node::start().await;
    node.engine
        .put_queue("orders", QueueSettings::default())
        .await
        .unwrap();
    for h in ["main:a", "main:b"] {
        node.deploy(&format!(
            "name = \"worker\"\nhandler = \"{h}\"\n[subscribe]\nqueue = \"orders\""
        ))
        .await;
    }
    let send = |n: u32| OutMessage {
        body: format!("{{\"n\": {n}}}"),
        delay: secs(0),
        dedup_id: None,
    };
    node.engine.send("orders", vec![send(1)]).await.unwrap();
    assert_eq!(node.ended("worker", 1).await[0].version, 2);
    node.engine.rollback("worker", None).await.unwrap();
    node.engine.send("orders", vec![send(2)]).await.unwrap();
    let calls = node.ended("worker", 2).await;
    assert_eq!(
        calls[1].version, 1,
        "the subscription follows the live version"
    );
    assert_eq!(calls[1].event_json()["n"], 2);
    node.stop().await;
}
