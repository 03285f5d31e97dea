//! Static sites in the engine: the archive forms it reads (directories, GNU
//! long names, pax paths), content-addressed files stored once, the
//! lookup rules, versions pruned past 100, the removal of unused files
//! (and the age that spares young ones), deploys of one site one after
//! the other, and the node's own keys kept out of user listings.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Node, secs};

use shoal_engine::{Error, SiteLookup, SiteOptions};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The archive as a body arriving in small pieces (headers split across
/// pieces).
fn body(archive: Vec<u8>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let pieces: Vec<Result<Bytes, std::io::Error>> = archive
        .chunks(333)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(pieces)
}

fn opts(path: &str) -> SiteOptions {
    SiteOptions {
        path: path.to_string(),
        spa: false,
        cache_control: None,
        max_bytes: 1 << 30,
    }
}

async fn deploy(node: &Node, name: &str, path: &str, files: &[(&str, &[u8])]) -> u64 {
    node.engine
        .site_deploy(name, opts(path), body(tar_of(files)))
        .await
        .unwrap_or_else(|e| panic!("deploying {name}: {e}"))
        .site
        .live
}

async fn stored(backend: &Backend) -> usize {
    backend
        .blobs
        .blob_list("\0site\0", None, 1000)
        .await
        .unwrap()
        .blobs
        .len()
}

fn file(l: Option<SiteLookup>) -> String {
    match l {
        Some(SiteLookup::File(f)) => f.path,
        other => panic!("want a file, got {other:?}"),
    }
}

async fn node_and_store() -> (Node, Backend) {
    let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
    (Node::with(None, backend.clone()).await, backend)
}

#[tokio::test(start_paused = true)]
async fn archives_with_directories_long_names_and_pax_paths() {
    let (node, _) = node_and_store().await;
    let long = format!("{}/deep.txt", "d".repeat(150));
    // GNU long names (the tar crate writes them for paths over 100 bytes).
    let mut archive = tar_of(&[("index.html", b"i"), (&long, b"deep")]);
    // A directory entry and a pax `path` record, written by hand.
    archive.truncate(archive.len() - 1024);
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    b.append_data(&mut dir, "assets/", &[][..]).unwrap();
    b.append_pax_extensions([("path", &b"assets/pax-named.css"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "assets/short", &b"css"[..]).unwrap();
    archive.extend(b.into_inner().unwrap());
    let d = node
        .engine
        .site_deploy("forms", opts("/"), body(archive))
        .await
        .unwrap();
    assert_eq!(d.site.live_version().unwrap().files, 3);
    assert_eq!(file(node.engine.site_lookup(&format!("/{long}"))), long);
    assert_eq!(
        file(node.engine.site_lookup("/assets/pax-named.css")),
        "assets/pax-named.css"
    );
    assert!(matches!(
        node.engine.site_lookup("/assets/short"),
        Some(SiteLookup::NotFound(None))
    ));
}

#[tokio::test(start_paused = true)]
async fn lookups_follow_mounts_indexes_and_the_spa_fallback() {
    let (node, _) = node_and_store().await;
    assert!(node.engine.site_lookup("/").is_none(), "no site, no answer");
    deploy(
        &node,
        "docs",
        "/docs",
        &[
            ("index.html", b"d"),
            ("a/index.html", b"a"),
            ("a/x.js", b"x"),
        ],
    )
    .await;
    assert!(node.engine.site_lookup("/").is_none());
    assert!(node.engine.site_lookup("/docsx").is_none());
    assert_eq!(file(node.engine.site_lookup("/docs/")), "index.html");
    assert_eq!(file(node.engine.site_lookup("/docs/a/")), "a/index.html");
    assert_eq!(file(node.engine.site_lookup("/docs/a/x.js")), "a/x.js");
    assert!(
        matches!(node.engine.site_lookup("/docs"), Some(SiteLookup::Redirect(to)) if to == "/docs/")
    );
    assert!(
        matches!(node.engine.site_lookup("/docs/a"), Some(SiteLookup::Redirect(to)) if to == "/docs/a/")
    );
    assert!(matches!(
        node.engine.site_lookup("/docs/nope"),
        Some(SiteLookup::NotFound(None))
    ));
    assert!(matches!(
        node.engine.site_lookup("/docs/../etc"),
        Some(SiteLookup::NotFound(None))
    ));
    let spa = SiteOptions {
        spa: true,
        ..opts("/")
    };
    node.engine
        .site_deploy(
            "app",
            spa,
            body(tar_of(&[("index.html", b"app"), ("404.html", b"x")])),
        )
        .await
        .unwrap();
    assert_eq!(
        file(node.engine.site_lookup("/anything/at/all")),
        "index.html"
    );
    assert_eq!(
        file(node.engine.site_lookup("/docs/a/x.js")),
        "a/x.js",
        "the longest prefix wins"
    );
}

#[tokio::test(start_paused = true)]
async fn unused_files_are_removed_once_old_enough() {
    let (node, backend) = node_and_store().await;
    deploy(
        &node,
        "a",
        "/a",
        &[("shared.css", b"shared"), ("a.html", b"only a")],
    )
    .await;
    deploy(
        &node,
        "b",
        "/b",
        &[("shared.css", b"shared"), ("b.html", b"only b")],
    )
    .await;
    // 3 files (shared once) + 2 manifests.
    assert_eq!(stored(&backend).await, 5);
    node.engine.remove_site("a").await.unwrap();
    assert_eq!(stored(&backend).await, 5, "young files are kept");
    node.pass(secs(11 * 60)).await;
    deploy(&node, "c", "/c", &[("c.html", b"only c")]).await;
    node.engine.remove_site("b").await.unwrap();
    // Left: c's file and manifest (young, and named).
    assert_eq!(stored(&backend).await, 2);
    let read = node.engine.site_lookup("/c/c.html");
    assert_eq!(file(read), "c.html");
    assert!(node.engine.site_lookup("/b/b.html").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_site_keeps_its_last_100_versions() {
    let (node, backend) = node_and_store().await;
    for n in 1..=102u32 {
        let text = n.to_string();
        deploy(&node, "many", "/", &[("index.html", text.as_bytes())]).await;
        node.pass(secs(60)).await;
    }
    let site = node.engine.site("many").await.unwrap();
    let versions: Vec<u64> = site.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, (3..=102).collect::<Vec<u64>>());
    match node.engine.site_rollback("many", Some(2)).await {
        Err(Error::Invalid(inv)) => assert!(inv.reason.contains("no version 2"), "{inv}"),
        other => panic!("want invalid, got {other:?}"),
    }
    // The forgotten versions' old files are gone; the kept ones' stay.
    assert_eq!(
        stored(&backend).await,
        2 * 100,
        "a file and a manifest per kept version"
    );
    let back = node.engine.site_rollback("many", Some(3)).await.unwrap();
    assert_eq!(back.live, 3);
    let f = match node.engine.site_lookup("/") {
        Some(SiteLookup::File(f)) => f,
        other => panic!("{other:?}"),
    };
    let read = node.engine.site_read(&f.body).await.unwrap();
    let bytes: Vec<u8> = futures_util::StreamExt::collect::<Vec<_>>(read.body)
        .await
        .into_iter()
        .flat_map(|p| p.unwrap().to_vec())
        .collect();
    assert_eq!(bytes, b"3");
}

#[tokio::test(start_paused = true)]
async fn deploys_of_one_site_at_once_make_one_version_each() {
    let (node, _) = node_and_store().await;
    let texts: Vec<String> = (0..5).map(|i| format!("v{i}")).collect();
    let mut lives = futures_util::future::join_all(
        texts
            .iter()
            .map(|t| {
                let node = &node;
                async move { deploy(node, "race", "/", &[("index.html", t.as_bytes())]).await }
            })
            .collect::<Vec<_>>(),
    )
    .await;
    lives.sort();
    assert_eq!(lives, [1, 2, 3, 4, 5]);
    assert_eq!(node.engine.site("race").await.unwrap().versions.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_nodes_own_keys_stay_out_of_user_listings() {
    let (node, backend) = node_and_store().await;
    deploy(&node, "hidden", "/", &[("index.html", b"x")]).await;
    assert!(stored(&backend).await > 0);
    node.engine
        .kv_set("user", b"1", None, Default::default())
        .await
        .unwrap();
    let keys = node.engine.kv_list("", None, 100).await.unwrap();
    let names: Vec<&str> = keys.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(names, ["user"]);
    let blobs = node.engine.blob_list("", None, 100).await.unwrap();
    assert!(blobs.blobs.is_empty(), "{:?}", blobs.blobs);
    let blobs = node.engine.blob_list("\0site", None, 100).await.unwrap();
    assert!(blobs.blobs.is_empty());
}

#[tokio::test(start_paused = true)]
async fn big_files_are_streamed_in_and_stored_once() {
    let (node, backend) = node_and_store().await;
    let big: Vec<u8> = (0..(shoal_engine::SITE_INLINE_BYTES as usize + 123_457))
        .map(|i| (i % 251) as u8)
        .collect();
    let small = b"small".as_slice();
    deploy(
        &node,
        "big",
        "/big",
        &[("index.html", small), ("video.bin", &big)],
    )
    .await;
    // The small file and the big one, and the manifest.
    assert_eq!(stored(&backend).await, 3);
    let f = match node.engine.site_lookup("/big/video.bin") {
        Some(SiteLookup::File(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(f.body.size, big.len() as u64);
    assert_eq!(
        f.body.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big))
    );
    let read = node.engine.site_read(&f.body).await.unwrap();
    let mut got = Vec::new();
    let mut pieces = read.body;
    while let Some(p) = futures_util::StreamExt::next(&mut pieces).await {
        got.extend_from_slice(&p.unwrap());
    }
    assert!(got == big, "the big file reads back whole");
    // Deployed again unchanged: nothing new is stored, no new version.
    let again = node
        .engine
        .site_deploy(
            "big",
            opts("/big"),
            body(tar_of(&[("index.html", small), ("video.bin", &big)])),
        )
        .await
        .unwrap();
    assert!(again.unchanged);
    assert_eq!(stored(&backend).await, 3);
    // The same big file in another site is stored once; removing the first
    // site keeps what the second names.
    deploy(
        &node,
        "again",
        "/again",
        &[("index.html", small), ("video.bin", &big)],
    )
    .await;
    assert_eq!(
        stored(&backend).await,
        3,
        "the same files: the same blobs and the same manifest"
    );
    node.pass(secs(11 * 60)).await;
    node.engine.remove_site("big").await.unwrap();
    let f = match node.engine.site_lookup("/again/video.bin") {
        Some(SiteLookup::File(f)) => f,
        other => panic!("{other:?}"),
    };
    let read = node.engine.site_read(&f.body).await.unwrap();
    assert_eq!(read.meta.size, big.len() as u64);
    // Left: again's small file, its big file, its manifest.
    assert_eq!(stored(&backend).await, 3);
}

#[tokio::test(start_paused = true)]
async fn files_of_a_failed_deploy_are_removed_within_the_hour() {
    let (node, backend) = node_and_store().await;
    deploy(&node, "kept", "/", &[("index.html", b"kept")]).await;
    // A deploy refused after its files were stored (the path is taken).
    let refused = node
        .engine
        .site_deploy("late", opts("/"), body(tar_of(&[("orphan.html", b"o")])))
        .await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        stored(&backend).await,
        4,
        "kept's file and manifest, the orphan's"
    );
    node.pass(secs(3700)).await;
    assert_eq!(
        stored(&backend).await,
        2,
        "only what a version names is left"
    );
    assert_eq!(file(node.engine.site_lookup("/index.html")), "index.html");
}

#[tokio::test(start_paused = true)]
async fn a_redeploy_stores_only_what_changed() {
    let (node, backend) = node_and_store().await;
    let version_of = |key: String| {
        let backend = backend.clone();
        async move {
            backend
                .blobs
                .blob_meta(&key)
                .await
                .unwrap()
                .unwrap()
                .version
        }
    };
    let css = b"body{}".as_slice();
    let css_key = format!(
        "\0site\0f\0{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(css))
    );
    deploy(&node, "s", "/", &[("a.css", css), ("index.html", b"v1")]).await;
    let before = version_of(css_key.clone()).await;
    node.pass(secs(60)).await;
    deploy(&node, "s", "/", &[("a.css", css), ("index.html", b"v2")]).await;
    assert_eq!(
        version_of(css_key.clone()).await,
        before,
        "the unchanged file was not written again"
    );
    // Two files, two manifests, the unchanged file once.
    assert_eq!(stored(&backend).await, 5);
    // A file no live version names is written again (its age starts over).
    node.engine.remove_site("s").await.unwrap();
    deploy(&node, "t", "/", &[("a.css", css)]).await;
    assert!(version_of(css_key).await > before);
}
