//! Queries over a store shared by several engines (issue 11): the shards of
//! a query run on every node, the answer is the one-node answer, and a
//! shard whose node dies mid-query runs again elsewhere and counts once.
//!
//! The fake runtime's `map` gives each document's id; its `reduce`
//! concatenates, so an answer lists which documents counted, in order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Node, secs, within};
use shoal_engine::{NewDoc, QueryEvent, QueryOutcome, QueryResult, shard_of};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;

const SHARDS: u32 = 8;

async fn two_nodes() -> (Node, Node) {
    let (a, b, _) = two_nodes_on().await;
    (a, b)
}

/// Two engines and the store they share.
async fn two_nodes_on() -> (Node, Node, Backend) {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let a = Node::with(None, backend.clone()).await;
    let b = Node::with(None, backend.clone()).await;
    (a, b, backend)
}

fn manifest(name: &str) -> String {
    format!("name = \"{name}\"\nhandler = \"main:handler\"\ntimeout = 10\n")
}

/// Writes `n` documents; returns their ids in document order (shard by
/// shard, by id within a shard): the order of a one-node answer.
async fn fill(node: &Node, category: &str, n: usize) -> Vec<String> {
    node.engine
        .create_category(category, Some(SHARDS))
        .await
        .unwrap();
    let mut docs = Vec::new();
    for i in 0..n {
        let body = if i == 7 {
            br#"{"fail": true}"#.to_vec()
        } else {
            format!("{{\"i\": {i}}}").into_bytes()
        };
        docs.push(NewDoc {
            id: Some(format!("doc-{i:04}")),
            body,
        });
    }
    node.engine.write_docs(category, docs).await.unwrap();
    let mut ids: Vec<String> = (0..n).map(|i| format!("doc-{i:04}")).collect();
    ids.sort_by_key(|id| (shard_of(id, SHARDS), id.clone()));
    ids
}

/// Runs a query to its end; its values (NDJSON lines) and outcome.
async fn query(node: &Node, function: &str) -> (Vec<String>, QueryOutcome) {
    let mut q = node.engine.query("things", function, true).await.unwrap();
    // Awaited below.
    #[allow(clippy::disallowed_methods)]
    let reader = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(ev) = q.events.recv().await {
            if let QueryEvent::Values(v) = ev {
                let text = String::from_utf8(v).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
        }
        lines
    });
    let outcome = within("the query", q.outcome).await.unwrap();
    let lines = reader.await.unwrap();
    (lines, outcome)
}

fn quoted(ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| id.as_str() != "doc-0007")
        .map(|id| format!("\"{id}\""))
        .collect()
}

fn shards_run(node: &Node) -> Vec<u32> {
    node.fake.queried().iter().map(|(_, s, _)| *s).collect()
}

#[tokio::test(start_paused = true)]
async fn a_query_runs_its_shards_on_both_nodes_and_gives_the_one_node_answer() {
    both_nodes_give_the_one_node_answer(2).await;
}

/// A runtime without `query_parts`: each node runs its shards one by one.
#[tokio::test(start_paused = true)]
async fn shard_by_shard_on_a_runtime_without_parts() {
    both_nodes_give_the_one_node_answer(0).await;
}

async fn both_nodes_give_the_one_node_answer(at_once: usize) {
    let (a, b, backend) = two_nodes_on().await;
    a.deploy(&manifest("total")).await;
    a.deploy(&manifest("ids")).await;
    for node in [&a, &b] {
        node.fake
            .query_parts_at_once(at_once)
            .query_reduce("total")
            .query_delay("total", secs(1))
            .query_delay("ids", secs(1));
    }
    let ids = fill(&a, "things", 300).await;

    // With reduce: the partials, combined in shard order.
    let (lines, out) = query(&a, "total").await;
    assert!(lines.is_empty(), "{lines:?}");
    let QueryResult::Reduced(Some(value)) = &out.result else {
        panic!("{out:?}");
    };
    let got: Vec<String> = serde_json::from_str::<Vec<String>>(value)
        .unwrap()
        .into_iter()
        .map(|id| format!("\"{id}\""))
        .collect();
    assert_eq!(got, quoted(&ids));
    assert_eq!(out.docs, 300);
    assert_eq!(out.errors, 1);
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].id, "doc-0007");
    let (on_a, on_b) = (shards_run(&a), shards_run(&b));
    assert!(!on_a.is_empty() && !on_b.is_empty(), "{on_a:?} {on_b:?}");
    let mut all: Vec<u32> = on_a.iter().chain(&on_b).copied().collect();
    all.sort();
    assert_eq!(all, (0..SHARDS).collect::<Vec<_>>());

    // Without reduce: the values in document order, from both nodes.
    let (lines, out) = query(&b, "ids").await;
    assert!(matches!(out.result, QueryResult::Mapped), "{out:?}");
    assert_eq!(lines, quoted(&ids));
    assert_eq!(out.docs, 300);
    assert!(a.fake.queried().iter().any(|(f, _, _)| f == "ids"));
    assert!(b.fake.queried().iter().any(|(f, _, _)| f == "ids"));

    // Without skip_errors, a failing document fails the query.
    let q = a.engine.query("things", "total", false).await.unwrap();
    let out = within("the failing query", q.outcome).await.unwrap();
    let QueryResult::Failed { doc_id, .. } = &out.result else {
        panic!("{out:?}");
    };
    assert_eq!(doc_id.as_deref(), Some("doc-0007"));
    // The shards nobody had finished were taken off the queue, and no
    // partial is left.
    let depth = backend.queues.depth("_query").await.unwrap();
    assert_eq!((depth.waiting, depth.in_flight), (0, 0), "{depth:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_shard_whose_node_dies_runs_again_on_the_other_and_counts_once() {
    let (a, b) = two_nodes().await;
    a.deploy(&manifest("total")).await;
    a.fake.query_reduce("total").query_delay("total", secs(1));
    // On B a shard never ends: B dies while it runs.
    b.fake
        .query_reduce("total")
        .query_delay("total", Duration::from_secs(24 * 3600));
    let ids = fill(&a, "things", 300).await;

    let mut q = a.engine.query("things", "total", true).await.unwrap();
    let mut outcome = q.outcome;
    // Until B has taken a shard.
    let dead = loop {
        tokio::select! {
            out = &mut outcome => panic!("the query ended before B took a shard: {out:?}"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if let Some((_, shard, _)) = b.fake.queried().first() {
            break *shard;
        }
    };
    // Killed: it never stores the shard's result nor extends its lease.
    b.stop().await;
    // Awaited below.
    #[allow(clippy::disallowed_methods)]
    let drain = tokio::spawn(async move { while q.events.recv().await.is_some() {} });
    let out = within("the query", outcome).await.unwrap();
    drain.await.unwrap();

    let QueryResult::Reduced(Some(value)) = &out.result else {
        panic!("{out:?}");
    };
    let got: Vec<String> = serde_json::from_str::<Vec<String>>(value)
        .unwrap()
        .into_iter()
        .map(|id| format!("\"{id}\""))
        .collect();
    assert_eq!(got, quoted(&ids), "each document once, in order");
    assert_eq!(out.docs, 300);
    // The dead node's shard ran again on A, which ran every shard.
    let mut on_a = shards_run(&a);
    assert!(on_a.contains(&dead), "{on_a:?}");
    on_a.sort();
    assert_eq!(on_a, (0..SHARDS).collect::<Vec<_>>());
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_first_partial_of_a_shard_wins() {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    let docs = &backend.docs;
    assert!(docs.shares_queries());
    assert!(
        docs.put_query_part("q1", 3, b"first".to_vec(), 1000)
            .await
            .unwrap()
    );
    assert!(
        !docs
            .put_query_part("q1", 3, b"second".to_vec(), 1000)
            .await
            .unwrap()
    );
    let got = docs.query_parts("q1", vec![3, 4]).await.unwrap();
    assert_eq!(got, vec![Some(b"first".to_vec()), None]);
    docs.drop_query_parts("q1").await.unwrap();
    assert_eq!(docs.query_parts("q1", vec![3]).await.unwrap(), vec![None]);
}

/// The node that ran each shard, from the shards each node began.
fn runners(a: &Node, b: &Node, function: &str) -> Vec<(u32, char)> {
    let mut out: Vec<(u32, char)> = Vec::new();
    for (node, name) in [(a, 'a'), (b, 'b')] {
        for (f, shard, _) in node.fake.queried() {
            if f == function {
                out.push((shard, name));
            }
        }
    }
    out.sort();
    out
}

/// A shard goes back to the node that ran it last (which may hold it
/// resident), even when the origin could take it at once.
#[tokio::test(start_paused = true)]
async fn a_repeated_query_runs_each_shard_where_it_ran_before() {
    let (a, b) = two_nodes().await;
    a.deploy(&manifest("total")).await;
    a.deploy(&manifest("again")).await;
    for node in [&a, &b] {
        node.fake
            .query_parts_at_once(4)
            .query_reduce("total")
            .query_delay("total", secs(1));
    }
    let ids = fill(&a, "things", 300).await;
    let (_, first) = query(&a, "total").await;
    let before = runners(&a, &b, "total");
    assert_eq!(before.len(), SHARDS as usize, "{before:?}");
    assert!(before.iter().any(|(_, n)| *n == 'a') && before.iter().any(|(_, n)| *n == 'b'));

    // Now A could take every shard at once; those B ran wait for B.
    for node in [&a, &b] {
        node.fake.query_parts_at_once(8);
    }
    let (_, second) = query(&a, "total").await;
    assert_eq!(second.result, first.result);
    let QueryResult::Reduced(Some(value)) = &second.result else {
        panic!("{second:?}");
    };
    let got: Vec<String> = serde_json::from_str::<Vec<String>>(value)
        .unwrap()
        .into_iter()
        .map(|id| format!("\"{id}\""))
        .collect();
    assert_eq!(got, quoted(&ids));
    // Each shard ran once more, on the node that ran it before.
    let all = runners(&a, &b, "total");
    assert_eq!(all.len(), 2 * SHARDS as usize, "{all:?}");
    let moved: Vec<&(u32, char)> = all.iter().filter(|r| !before.contains(r)).collect();
    assert!(moved.is_empty(), "shards that moved: {moved:?}");
    a.stop().await;
    b.stop().await;
}
