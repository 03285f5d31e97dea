//! Layout 2 → 3: a database written before the invocation indexes gets
//! them built when it is opened, so its old records are listed and
//! filtered like new ones, and later writes keep them right.

use std::sync::Arc;

use redb::{Database, TableDefinition};
use shoal_store::conformance::sample_invocation;
use shoal_store::{InvocationFilter, InvocationRecord, Invocations};
use shoal_store_redb::RedbStore;
use shoal_types::{FunctionName, InvocationStatus};

const T: u64 = 1_700_000_000_000;

#[tokio::test]
async fn a_layout_2_database_gets_its_invocations_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let records: Vec<InvocationRecord> = (0..40u64)
        .map(|i| InvocationRecord {
            status: if i % 4 == 0 {
                InvocationStatus::Failed
            } else {
                InvocationStatus::Succeeded
            },
            created_at_ms: T + i,
            ..sample_invocation(
                &format!("inv-{i:02}"),
                if i % 2 == 0 { "even" } else { "odd" },
            )
        })
        .collect();
    {
        let store: Arc<RedbStore> = RedbStore::open(&path).unwrap();
        store.put_invocations(records.clone()).await.unwrap();
        store.close();
    }
    // Make it a layout-2 file: no index tables, format 2.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        for name in [
            "invocations_by_function",
            "invocations_by_status",
            "invocations_by_function_status",
            "invocation_keys",
        ] {
            // The key types do not matter to a delete by name.
            let def: TableDefinition<&str, u8> = TableDefinition::new(name);
            let _ = txn.delete_table(def);
        }
        let def: TableDefinition<(u64, &str), u8> = TableDefinition::new("invocations_by_time");
        assert!(txn.delete_table(def).unwrap(), "the index existed");
        {
            let mut meta = txn
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format", 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let store: Arc<RedbStore> = RedbStore::open(&path).unwrap();
    let even_failed = InvocationFilter {
        function: Some(FunctionName::parse("even").unwrap()),
        status: Some(InvocationStatus::Failed),
        ..InvocationFilter::default()
    };
    let page = store
        .list_invocations(&even_failed, None, 100)
        .await
        .unwrap();
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<String> = (0..40)
        .rev()
        .filter(|i| i % 4 == 0)
        .map(|i| format!("inv-{i:02}"))
        .collect();
    assert_eq!(ids, want);
    let all = store
        .list_invocations(&InvocationFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all.records.len(), 40);
    assert_eq!(store.count_invocations().await.unwrap(), 40);

    // A record written after the migration moves between statuses.
    store
        .put_invocations(vec![InvocationRecord {
            status: InvocationStatus::Succeeded,
            ..records[0].clone()
        }])
        .await
        .unwrap();
    let page = store
        .list_invocations(&even_failed, None, 100)
        .await
        .unwrap();
    assert_eq!(page.records.len(), want.len() - 1);
    assert!(page.records.iter().all(|r| r.id != "inv-00"));
}
