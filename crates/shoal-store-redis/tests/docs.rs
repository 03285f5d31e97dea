//! The docs port on a real `redis-server`: the conformance suite's docs
//! cases, one test each, with the catalog and the docs on Redis (the other
//! ports in memory; the docs cases do not use them), and what only Redis
//! has: raw bytes, several nodes, the states a crash can leave, the keys a
//! delete leaves, the calls a put costs.

use std::process::Command;
use std::sync::Arc;

use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, DocWrite, Docs, Error, conformance};
use shoal_store_redis::{RedisStore, info_field};

use shoal_store_redis::testing::RedisServer;

/// A backend whose catalog and docs are on `server`.
async fn backend(server: &RedisServer) -> Backend {
    let store = Arc::new(store(server).await);
    let memory = Arc::new(MemoryStore::new());
    Backend {
        catalog: store.clone(),
        invocations: memory.clone(),
        queues: memory.clone(),
        docs: store,
        jobs: memory.clone(),
        kv: memory.clone(),
        blobs: memory.clone(),
        channels: memory.clone(),
        usage: memory,
    }
}

macro_rules! docs_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = RedisServer::start(&[]);
                conformance::docs::$case(&backend(&server).await).await;
            }
        )*
    };
}

docs_cases!(
    categories,
    category_placement,
    docs_put_get_replace_delete,
    docs_versions,
    docs_scan_order,
    docs_atomicity,
    docs_write_order,
    delete_category_removes_everything,
    delete_category_if_empty,
    docs_category_isolation,
);

/// A store on `server`: one node's connection.
async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect to the test's redis-server")
        .0
}

/// `redis-cli` on the test's server (Debian's `redis-tools`, which
/// `redis-server` depends on): what the store's API cannot do, such as
/// leaving the state a crash between two calls leaves.
fn cli(server: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A creation time.
const T: u64 = 1_700_000_000_000;

fn doc(shard: u32, id: &str, body: &[u8]) -> DocWrite {
    DocWrite {
        shard,
        id: id.to_string(),
        body: body.to_vec(),
    }
}

/// Bodies are stored as the bytes they are, also when they are not UTF-8.
#[tokio::test]
async fn bodies_are_raw_bytes() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let body: Vec<u8> = vec![0xff, 0x00, b'{', 0xc3, 0x28, b'"', b'\\', 0x80, b'}'];
    store.create_category("raw", 2, 8, T).await.unwrap();
    store
        .put_docs("raw", vec![doc(1, "b", &body), doc(1, "a", b"")])
        .await
        .unwrap();
    assert_eq!(
        store.get_doc("raw", 1, "b").await.unwrap(),
        Some(body.clone())
    );
    assert_eq!(
        store.get_doc("raw", 1, "a").await.unwrap(),
        Some(Vec::new())
    );
    let page = store.scan_shard("raw", 1, None, 10).await.unwrap();
    let bodies: Vec<&[u8]> = page.iter().map(|d| d.body.as_slice()).collect();
    assert_eq!(bodies, [b"".as_slice(), body.as_slice()]);
    let stats = store.shard_stats("raw").await.unwrap();
    assert_eq!((stats[1].docs, stats[1].bytes), (2, body.len() as u64));
}

/// A create whose future is dropped still creates; its placement is set
/// by the first read, on any node, and is the one the counter gave it.
#[tokio::test]
async fn a_dropped_create_is_placed_by_the_first_read() {
    let server = RedisServer::start(&[]);
    let (a, b) = (store(&server).await, store(&server).await);
    drop(a.create_category("first", 3, 8, T));
    // A's calls run in order: once this answers, the create has run.
    a.info("server").await.unwrap();
    let key = format!("{}:{{d:first}}:cat", server.options().namespace);
    assert_eq!(cli(&server, &["HGET", &key, "start"]).trim(), "", "placed");
    let from_b = b.category("first").await.unwrap().expect("created");
    assert_eq!(cli(&server, &["HGET", &key, "start"]).trim(), "0");
    assert_eq!(from_b.slots, [0, 1, 2]);
    assert_eq!(a.category("first").await.unwrap(), Some(from_b.clone()));
    let (again, created) = a.create_category("first", 5, 8, T).await.unwrap();
    assert!(!created);
    assert_eq!(again, from_b);
    // The counter moved once, by the first create.
    let (next, _) = b.create_category("next", 2, 8, T).await.unwrap();
    assert_eq!(next.slots, [3, 4]);
    assert_eq!(b.categories().await.unwrap(), [from_b, next]);
}

/// What a crash between a category's two calls leaves (listed, no record:
/// after the catalog's call of a create, or the category's call of a
/// delete) is not shown, and a create of the name then works.
#[tokio::test]
async fn a_listed_name_without_a_record_is_not_a_category() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let ns = server.options().namespace;
    cli(
        &server,
        &[
            "HSET",
            &format!("{ns}:{{catalog}}:categories"),
            "ghost",
            "5",
        ],
    );
    assert_eq!(store.categories().await.unwrap(), []);
    assert_eq!(store.category("ghost").await.unwrap(), None);
    assert!(matches!(
        store.put_docs("ghost", vec![doc(0, "a", b"1")]).await,
        Err(Error::NotFound(name)) if name == "ghost"
    ));
    let (record, created) = store.create_category("ghost", 3, 8, T).await.unwrap();
    assert!(created);
    assert_eq!(record.slots, [5, 6, 7], "the listed placement is reused");
    assert_eq!(store.categories().await.unwrap(), [record]);
}

/// A delete leaves no key of the category but its incarnation and version
/// counter; a category created again uses new keys.
#[tokio::test]
async fn a_delete_unlinks_every_document_key() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    let ns = server.options().namespace;
    let pattern = format!("{ns}:{{d:gone}}:*");
    store.create_category("gone", 3, 8, T).await.unwrap();
    let docs = (0..30)
        .map(|i| doc(i % 3, &format!("d{i}"), b"{}"))
        .collect();
    store.put_docs("gone", docs).await.unwrap();
    assert_eq!(
        cli(&server, &["KEYS", &pattern]).lines().count(),
        1 + 3 * 2 + 1
    );
    assert!(store.delete_category("gone").await.unwrap());
    let left = cli(&server, &["KEYS", &pattern]);
    assert_eq!(left.trim(), format!("{ns}:{{d:gone}}:cat"));
    let fields = cli(&server, &["HKEYS", left.trim()]);
    let mut fields: Vec<&str> = fields.lines().collect();
    fields.sort();
    assert_eq!(fields, ["gen", "ver"]);
    store.create_category("gone", 1, 8, T).await.unwrap();
    store
        .put_docs("gone", vec![doc(0, "d0", b"[]")])
        .await
        .unwrap();
    assert!(cli(&server, &["KEYS", &pattern]).contains(&format!("{ns}:{{d:gone}}:2:body:0")));
}

/// Two nodes on one Redis see one set of categories and documents.
#[tokio::test]
async fn two_nodes_share_categories_and_documents() {
    let server = RedisServer::start(&[]);
    let (a, b) = (store(&server).await, store(&server).await);
    let (record, _) = a.create_category("shared", 2, 4, T).await.unwrap();
    a.put_docs("shared", vec![doc(1, "x", b"1"), doc(0, "y", b"22")])
        .await
        .unwrap();
    assert_eq!(b.category("shared").await.unwrap(), Some(record));
    assert_eq!(
        b.get_doc("shared", 1, "x").await.unwrap(),
        Some(b"1".to_vec())
    );
    b.put_docs("shared", vec![doc(1, "x", b"333")])
        .await
        .unwrap();
    assert_eq!(
        a.get_doc("shared", 1, "x").await.unwrap(),
        Some(b"333".to_vec())
    );
    let stats = a.shard_stats("shared").await.unwrap();
    assert_eq!(
        stats.iter().map(|s| (s.docs, s.bytes)).collect::<Vec<_>>(),
        [(1, 2), (1, 3)]
    );
    assert!(b.delete_category("shared").await.unwrap());
    assert!(matches!(
        a.get_doc("shared", 1, "x").await,
        Err(Error::NotFound(_))
    ));
}

/// A put of many documents is one script call (the figure of Redis
/// commands per document written).
#[tokio::test]
async fn a_put_of_many_documents_is_one_call() {
    let server = RedisServer::start(&[]);
    let store = store(&server).await;
    store.create_category("many", 4, 8, T).await.unwrap();
    let scripts = || async {
        let stats = store.info("commandstats").await.unwrap();
        ["cmdstat_eval", "cmdstat_evalsha"]
            .iter()
            .filter_map(|f| info_field(&stats, f))
            .filter_map(|v| {
                v.strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    let before = scripts().await;
    let docs = (0..1000)
        .map(|i| doc(i % 4, &format!("doc-{i}"), b"{\"n\":1}"))
        .collect();
    store.put_docs("many", docs).await.unwrap();
    assert_eq!(scripts().await - before, 1);
    let stats = store.shard_stats("many").await.unwrap();
    assert_eq!(stats.iter().map(|s| s.docs).sum::<u64>(), 1000);
}
