//! `Runtime::query_parts` and `Runtime::combine` against a real python3:
//! what a node gives for its share of a query spread over several nodes
//! (each shard's own result), and the origin's last reduce.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use shoal_runtime::{
    DocBatch, QueryRequest, QueryResult, QueryShard, Runtime, ShardPart, ShardSource,
};
use shoal_types::FailureKind;

mod common;

/// `shards` shards of `n` documents, ids `s{shard}-{i:03}`, each `{"n": i}`.
struct Source {
    shards: Vec<DocBatch>,
}

impl Source {
    fn new(shards: usize, n: usize) -> Arc<Source> {
        Arc::new(Source {
            shards: (0..shards)
                .map(|s| {
                    (0..n)
                        .map(|i| {
                            let id = format!("s{s}-{i:03}");
                            let doc = json!({"id": id, "n": i});
                            (id, serde_json::to_vec(&doc).unwrap())
                        })
                        .collect()
                })
                .collect(),
        })
    }

    fn ids(&self, shard: usize) -> Vec<String> {
        self.shards[shard]
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl ShardSource for Source {
    fn scan(
        &self,
        shard: u32,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'static, Result<DocBatch, String>> {
        let docs = &self.shards[shard as usize];
        let start = match &after {
            None => 0,
            Some(after) => docs.partition_point(|(id, _)| id.as_str() <= after.as_str()),
        };
        let batch: DocBatch = docs[start..].iter().take(limit).cloned().collect();
        Box::pin(async move { Ok(batch) })
    }
}

/// The parts of `shards` (in this order), progress events dropped.
async fn parts(
    fx: &common::Fixture,
    dep: &shoal_runtime::Deployment,
    source: &Arc<Source>,
    shards: &[u32],
    skip_errors: bool,
) -> Vec<ShardPart> {
    let (events, mut rx) = mpsc::channel(8);
    let request = QueryRequest {
        query_id: "q".into(),
        dataset: "things@1".into(),
        shards: shards
            .iter()
            .map(|s| QueryShard {
                shard: *s,
                version: 1,
                docs: source.shards[*s as usize].len() as u64,
            })
            .collect(),
        skip_errors,
        source: source.clone(),
        events,
    };
    let run = fx.rt.query_parts(dep, request);
    let drain = async { while rx.recv().await.is_some() {} };
    let (parts, ()) = futures_util::future::join(run, drain).await;
    parts.unwrap()
}

const CONCAT: &str =
    "def map(doc):\n    return [doc['id']]\n\ndef reduce(a, b):\n    return a + b\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_gives_its_own_partial_and_combine_keeps_their_order() {
    let fx = common::fixture_with(|o| o.query_workers = 2);
    assert_eq!(fx.rt.parts_at_once(), 2);
    let dep = fx.deploy("concat@1", CONCAT);
    let source = Source::new(4, 300);
    // Shards in any order: each answers for itself.
    for round in 0..2 {
        let got = parts(&fx, &dep, &source, &[2, 0, 3], false).await;
        assert_eq!(got.iter().map(|p| p.shard).collect::<Vec<_>>(), [2, 0, 3]);
        for p in &got {
            let QueryResult::Reduced(Some(partial)) = &p.result else {
                panic!("{p:?}");
            };
            let partial: Value = serde_json::from_str(partial).unwrap();
            assert_eq!(partial, json!(source.ids(p.shard as usize)));
            assert_eq!(p.docs, 300);
            assert!(p.values.is_empty());
            // The second time from the workers' resident copies.
            assert_eq!(p.resident, round == 1, "{p:?}");
        }
        // The origin's last step: reduce the partials in shard order.
        let mut in_order: Vec<&ShardPart> = got.iter().collect();
        in_order.sort_by_key(|p| p.shard);
        let partials: Vec<String> = in_order
            .iter()
            .map(|p| match &p.result {
                QueryResult::Reduced(Some(v)) => v.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let combined = fx.rt.combine(&dep, partials).await.unwrap().unwrap();
        let combined: Value = serde_json::from_str(&combined).unwrap();
        let mut want = source.ids(0);
        want.extend(source.ids(2));
        want.extend(source.ids(3));
        assert_eq!(combined, json!(want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reduce_each_shard_keeps_its_values() {
    let fx = common::fixture_with(|o| o.query_workers = 2);
    let dep = fx.deploy(
        "pick@1",
        "def map(doc):\n    return None if doc['n'] % 3 == 0 else doc['id']\n",
    );
    let source = Source::new(3, 500);
    let got = parts(&fx, &dep, &source, &[0, 1, 2], false).await;
    for p in &got {
        assert_eq!(p.result, QueryResult::Mapped);
        let lines: Vec<String> = String::from_utf8(p.values.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<String> = source
            .ids(p.shard as usize)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(lines, want);
        assert_eq!(p.docs, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_map_fails_the_shards_that_did_not_finish() {
    let fx = common::fixture_with(|o| o.query_workers = 2);
    let dep = fx.deploy(
        "picky@1",
        "def map(doc):\n    if doc['id'] == 's1-007':\n        raise ValueError('no')\n    return 1\n\ndef reduce(a, b):\n    return a + b\n",
    );
    let source = Source::new(3, 100);
    let got = parts(&fx, &dep, &source, &[0, 1, 2], false).await;
    assert_eq!(got.len(), 3);
    let failed: Vec<&ShardPart> = got
        .iter()
        .filter(|p| matches!(p.result, QueryResult::Failed { .. }))
        .collect();
    let one = got.iter().find(|p| p.shard == 1).unwrap();
    let QueryResult::Failed { doc_id, failure } = &one.result else {
        panic!("{one:?}");
    };
    assert_eq!(doc_id.as_deref(), Some("s1-007"));
    assert_eq!(failure.kind, FailureKind::Raised);
    assert!(!failed.is_empty());

    // With skip_errors every shard finishes, the failure counted.
    let got = parts(&fx, &dep, &source, &[0, 1, 2], true).await;
    let errors: Vec<u64> = got.iter().map(|p| p.errors).collect();
    assert_eq!(errors, [0, 1, 0]);
    assert_eq!(got[1].failures[0].id, "s1-007");
    assert_eq!(got[1].result, QueryResult::Reduced(Some("99".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reduce_fails_the_combine() {
    let fx = common::fixture_with(|o| o.query_workers = 2);
    let dep = fx.deploy(
        "bad@1",
        "def map(doc):\n    return 1\n\ndef reduce(a, b):\n    raise RuntimeError('reduce broke')\n",
    );
    let failure = fx
        .rt
        .combine(&dep, vec!["1".into(), "2".into()])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Raised, "{failure:?}");
    assert!(failure.message.contains("reduce broke"), "{failure:?}");
    // One partial needs no reduce.
    let one = fx.rt.combine(&dep, vec!["5".into()]).await.unwrap();
    assert_eq!(one.unwrap(), "5");
}
