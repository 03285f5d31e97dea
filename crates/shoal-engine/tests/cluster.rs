//! Several nodes on one store, each with its own data directory: what one
//! deploys, rolls back, removes or revokes, the others serve at once (a
//! lookup that misses syncs the catalog) or within a catalog poll; code
//! reaches them through the store, by content hash; each lists the others.

mod common;

use std::sync::Arc;

use common::{Node, ms, secs};
use shoal_engine::{Entity, Error};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::{Outcome, Role};

fn manifest(name: &str, handler: &str) -> String {
    format!("name = \"{name}\"\nhandler = \"{handler}\"\n")
}

/// Two engines on one store, with their own data directories.
async fn two_nodes() -> (Node, Node) {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with(None, backend.clone()).await;
    let b = Node::with(None, backend).await;
    (a, b)
}

/// The version a call of `name` on `node` ran.
async fn ran(node: &Node, name: &str) -> u64 {
    let done = node.engine.invoke(name, "{}".into()).await.unwrap();
    assert!(matches!(done.outcome, Outcome::Succeeded(_)), "{done:?}");
    node.engine.invocation(&done.id).await.unwrap().version
}

#[tokio::test(start_paused = true)]
async fn a_function_deployed_on_one_node_runs_on_another_at_once() {
    let (a, b) = two_nodes().await;
    let v1 = a.deploy(&manifest("hello", "main:handler")).await;
    // No poll has passed: B finds it by syncing on the miss.
    assert_eq!(ran(&b, "hello").await, v1.version);
    // B has the code on its own disk, fetched from the store by hash.
    let code = b.data_dir().join(&v1.code_dir);
    assert!(code.join("main.py").is_file(), "{code:?}");
    assert!(code.join("shoal.toml").is_file());

    // A new version: `NAME@2` is found at once; the live pointer within a poll.
    let v2 = a.deploy(&manifest("hello", "main:other")).await;
    assert_eq!(v2.version, 2);
    let done = b.engine.invoke("hello@2", "{}".into()).await.unwrap();
    assert_eq!(b.engine.invocation(&done.id).await.unwrap().version, 2);
    b.pass(ms(300)).await;
    assert_eq!(ran(&b, "hello").await, 2);

    // A rollback on B is live on A within a poll.
    b.engine.rollback("hello", Some(1)).await.unwrap();
    a.pass(ms(300)).await;
    assert_eq!(ran(&a, "hello").await, 1);

    // A removal on A: B stops serving it within a poll.
    a.engine.remove_function("hello").await.unwrap();
    b.pass(ms(300)).await;
    let err = b.engine.invoke("hello", "{}".into()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                entity: Entity::Function,
                ..
            }
        ),
        "{err:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn async_work_sent_on_one_node_runs_on_either() {
    let (a, b) = two_nodes().await;
    a.deploy(&manifest("work", "main:handler")).await;
    b.pass(ms(300)).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(a.engine.invoke_async("work", "{}".into()).await.unwrap());
    }
    for id in &ids {
        let record = b.wait_final(id).await;
        assert_eq!(record.status, shoal_types::InvocationStatus::Succeeded);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_token_revoked_on_one_node_stops_working_on_the_others() {
    let (a, b) = two_nodes().await;
    let (_keep, _) = a
        .engine
        .create_token(Role::Admin, "keep", Vec::new())
        .await
        .unwrap();
    let (token, secret) = a
        .engine
        .create_token(Role::Invoker, "ci", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        b.engine.authenticate(&secret).await.unwrap(),
        Some(Role::Invoker)
    );
    a.engine.revoke_token(&token.id).await.unwrap();
    b.pass(ms(300)).await;
    assert_eq!(b.engine.authenticate(&secret).await.unwrap(), None);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn nodes_list_each_other_and_tell_the_lost_ones() {
    let (a, b) = two_nodes().await;
    a.pass(ms(100)).await;
    let seen = a.engine.nodes().await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].this && seen[0].record.id == a.engine.node_id());
    assert!(seen.iter().all(|n| n.alive));
    let b_id = b.engine.node_id().to_string();
    b.stop().await;
    a.pass(secs(20)).await;
    let seen = a.engine.nodes().await.unwrap();
    let b_seen = seen.iter().find(|n| n.record.id == b_id).expect("B listed");
    assert!(!b_seen.alive, "{seen:?}");
    a.stop().await;
}
