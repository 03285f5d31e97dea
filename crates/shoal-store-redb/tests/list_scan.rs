//! A mode filter reads index entries it then skips; one page reads at most
//! `MAX_SCAN` (10,000) of them and ends short with a cursor, so a rare mode
//! is found over several short pages instead of one long read.

use std::sync::Arc;

use shoal_store::conformance::sample_invocation;
use shoal_store::{InvocationCursor, InvocationFilter, InvocationRecord, Invocations};
use shoal_store_redb::RedbStore;
use shoal_types::InvocationMode;

const T: u64 = 1_700_000_000_000;

#[tokio::test]
async fn a_rare_mode_is_found_over_short_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<RedbStore> = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    // The one async record is the oldest; 25,000 sync ones are newer.
    let mut records = vec![InvocationRecord {
        mode: InvocationMode::Async,
        created_at_ms: T,
        ..sample_invocation("rare", "f")
    }];
    records.extend((0..25_000u64).map(|i| InvocationRecord {
        mode: InvocationMode::Sync,
        created_at_ms: T + 1 + i,
        ..sample_invocation(&format!("common-{i:05}"), "f")
    }));
    for chunk in records.chunks(5_000) {
        store.put_invocations(chunk.to_vec()).await.unwrap();
    }
    let filter = InvocationFilter {
        mode: Some(InvocationMode::Async),
        ..InvocationFilter::default()
    };
    let mut after: Option<InvocationCursor> = None;
    let mut pages = Vec::new();
    loop {
        let page = store
            .list_invocations(&filter, after.as_ref(), 50)
            .await
            .unwrap();
        pages.push(
            page.records
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>(),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages.len() < 10, "the pages do not end");
    }
    // 25,001 entries, 10,000 a page: two empty pages, then the record.
    assert_eq!(
        pages,
        vec![vec![], vec![], vec!["rare".to_string()]],
        "pages: {pages:?}"
    );
    // Without the mode filter every entry counts: a full page at once.
    let page = store
        .list_invocations(&InvocationFilter::default(), None, 1_000)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1_000);
    assert!(page.next.is_some());
}
