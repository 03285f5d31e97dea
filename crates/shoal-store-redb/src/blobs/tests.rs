//! The stored blob record: its encoding round-trips, and a row that does
//! not decode is `Corrupt` for reads and batches of its key, while an
//! upload, a replacing creation or a delete clears it.

use bytes::Bytes;
use shoal_store::{Applied, BitType, BlobOp, Blobs, Created, Error};

use super::{BLOBS, Body, Stored};
use crate::{RedbStore, writer};

const T: u64 = 1_700_000_000_000;

#[test]
fn records_round_trip() {
    let cases = [
        Stored {
            size: 123,
            version: 9,
            created_at_ms: T,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: Body::File {
                id: "ab".repeat(16),
                sha256: [7; 32],
            },
        },
        Stored {
            size: 1 << 28,
            version: u64::MAX,
            created_at_ms: 0,
            content_type: None,
            body: Body::Pages(42),
        },
    ];
    for s in &cases {
        let bytes = s.encode();
        let back = Stored::decode("k", &bytes).unwrap();
        assert_eq!(back.meta("k"), s.meta("k"));
        assert_eq!(format!("{:?}", back.body), format!("{:?}", s.body));
        // Every truncation is refused, none panics.
        for len in 0..bytes.len() {
            assert!(matches!(
                Stored::decode("k", &bytes[..len]),
                Err(Error::Corrupt(_))
            ));
        }
    }
    assert!(Stored::decode("k", b"\x02").is_err());
    let mut long = cases[0].encode();
    long.push(0);
    assert!(Stored::decode("k", &long).is_err(), "trailing bytes");
}

fn corrupt(store: &RedbStore, key: &str) {
    let db = store.shared.db().unwrap();
    let txn = writer::begin(&db).unwrap();
    txn.open_table(BLOBS)
        .unwrap()
        .insert(key, &b"\x01\x07garbage"[..])
        .unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_corrupt_record_is_reported_and_can_be_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb")).unwrap();
    corrupt(&store, "bad");
    let get = vec![BlobOp::Get {
        ty: BitType {
            signed: false,
            bits: 8,
        },
        offset: 0,
    }];
    assert!(matches!(
        store.blob_meta("bad").await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        store.blob_read("bad", 0, 1).await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        store.blob_apply("bad", get.clone()).await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        store.blob_create_fixed("bad", 4, false, T).await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        store.blob_list("", None, 10).await,
        Err(Error::Corrupt(_))
    ));

    // Replaced by a creation, by an upload; cleared by a delete.
    let created = store.blob_create_fixed("bad", 4, true, T).await.unwrap();
    assert!(matches!(created, Created::Created(_)));
    assert!(matches!(
        store.blob_apply("bad", get).await.unwrap(),
        Applied::Done { .. }
    ));
    corrupt(&store, "bad");
    let mut up = store.blob_upload("bad").await.unwrap();
    up.write(Bytes::from_static(b"fine")).await.unwrap();
    let meta = up.commit(None, T).await.unwrap();
    assert_eq!(store.blob_meta("bad").await.unwrap(), Some(meta));
    corrupt(&store, "bad");
    assert!(store.blob_delete("bad").await.unwrap());
    assert_eq!(store.blob_meta("bad").await.unwrap(), None);
    assert_eq!(store.blob_list("", None, 10).await.unwrap().blobs, vec![]);
}
