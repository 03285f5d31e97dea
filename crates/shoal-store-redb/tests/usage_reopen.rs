//! A store's usage rollups across a close and a reopen: a new database
//! needs no backfill, so a reopen adds nothing twice.

use shoal_store::conformance::sample_invocation;
use shoal_store::usage::{Grain, RollupQuery, Usage};
use shoal_store::{InvocationRecord, Invocations};
use shoal_store_redb::RedbStore;
use shoal_types::InvocationStatus;

async fn counted(store: &RedbStore) -> u64 {
    let rows = store
        .rollups(&RollupQuery {
            grain: Grain::Day,
            since_ms: 0,
            until_ms: u64::MAX,
            function: Some("f".to_string()),
            each_function: false,
            token: None,
        })
        .await
        .unwrap();
    rows.iter().map(|r| r.rollup.invocations()).sum()
}

#[tokio::test]
async fn reopening_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let store = RedbStore::open(&path).unwrap();
    let records: Vec<InvocationRecord> = (0..10)
        .map(|i| InvocationRecord {
            status: InvocationStatus::Succeeded,
            ..sample_invocation(&format!("r{i}"), "f")
        })
        .collect();
    store.put_invocations(records).await.unwrap();
    assert_eq!(counted(&store).await, 10);
    store.close();
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(counted(&store).await, 10);
}
