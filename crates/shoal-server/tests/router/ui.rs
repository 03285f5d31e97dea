//! The dashboard's assets (`/ui`) and `GET /v1/functions/{name}/files`.

use std::path::PathBuf;

use shoal_types::Role;

use crate::app::{App, Caller, Case, case, check, run_table};

fn ui_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// CRC-32 (IEEE), as a gzip trailer holds it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

const COMPRESSED: [&str; 4] = [
    "app.js",
    "style.css",
    "vendor/uPlot.iife.min.js",
    "vendor/uPlot.min.css",
];

/// Each committed `.gz` sibling holds its file as it is now: the gzip
/// trailer's CRC-32 and length are the file's (run `scripts/ui-gzip` after
/// editing an asset).
#[test]
fn gz_siblings_are_fresh() {
    for name in COMPRESSED {
        let plain = std::fs::read(ui_dir().join(name)).expect(name);
        let gz = std::fs::read(ui_dir().join(format!("{name}.gz"))).expect(name);
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "{name}.gz is not gzip");
        let n = gz.len();
        let crc = u32::from_le_bytes(gz[n - 8..n - 4].try_into().unwrap());
        let len = u32::from_le_bytes(gz[n - 4..].try_into().unwrap());
        assert_eq!(
            (crc, len as usize),
            (crc32(&plain), plain.len()),
            "{name}.gz is stale: run scripts/ui-gzip"
        );
        assert!(gz.len() < plain.len() / 2, "{name}.gz barely compresses");
    }
    // uPlot's license travels with it.
    let license = std::fs::read_to_string(ui_dir().join("vendor/uPlot.LICENSE")).unwrap();
    assert!(license.contains("The MIT License"), "{license}");
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_cached_and_compressed() {
    let app = App::new().await;
    // Redirects: /ui to /ui/, and / (nothing of the user's there) too.
    let r = app
        .call_as(Caller::Nobody, "GET", "/ui", None, vec![])
        .await;
    assert_eq!(r.status, 308, "{}", r.text);
    assert_eq!(r.headers["location"], "/ui/");
    let r = app.call_as(Caller::Nobody, "GET", "/", None, vec![]).await;
    assert!(
        [302, 303, 307].contains(&r.status),
        "{}: {}",
        r.status,
        r.text
    );
    assert_eq!(r.headers["location"], "/ui/");

    // The page needs no token; it is revalidated on each load.
    let page = app
        .call_as(Caller::Nobody, "GET", "/ui/", None, vec![])
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(!page.text.contains("{{V}}"), "{}", page.text);
    let etag = page.headers["etag"].to_str().unwrap().to_string();
    let again = app
        .call_with(
            Caller::Nobody,
            "GET",
            "/ui/",
            &[("if-none-match", &etag)],
            vec![],
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.bytes.is_empty());
    let same = app
        .call_as(Caller::Nobody, "GET", "/ui/index.html", None, vec![])
        .await;
    assert_eq!(same.text, page.text);

    // Every asset the page names, with the build's version.
    let version = page
        .text
        .split("app.js?v=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("app.js?v= in the page")
        .to_string();
    assert_eq!(version.len(), 16, "{version}");
    for name in COMPRESSED {
        assert!(
            page.text.contains(&format!("{name}?v={version}")),
            "the page does not name {name}"
        );
        let plain = std::fs::read(ui_dir().join(name)).unwrap();
        let gz = std::fs::read(ui_dir().join(format!("{name}.gz"))).unwrap();
        let path = format!("/ui/{name}?v={version}");
        let r = app
            .call_with(
                Caller::Nobody,
                "GET",
                &path,
                &[("accept-encoding", "gzip, deflate, br")],
                vec![],
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.headers["content-encoding"], "gzip", "{path}");
        assert_eq!(r.headers["vary"], "accept-encoding");
        assert_eq!(
            r.headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.bytes, gz, "{path} gzipped");
        let ct = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(r.content_type, ct, "{path}");
        // Not accepting gzip (or refusing it): the file itself.
        for accept in [None, Some("gzip;q=0, br")] {
            let headers: Vec<(&str, &str)> =
                accept.map(|a| ("accept-encoding", a)).into_iter().collect();
            let r = app
                .call_with(Caller::Nobody, "GET", &path, &headers, vec![])
                .await;
            assert_eq!(r.status, 200);
            assert!(r.headers.get("content-encoding").is_none(), "{accept:?}");
            assert_eq!(r.bytes, plain, "{path} plain");
        }
        // Without the version (or an old one): revalidated, with an ETag.
        let r = app
            .call_with(
                Caller::Nobody,
                "GET",
                &format!("/ui/{name}?v=0000"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(r.headers["cache-control"], "no-cache");
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        let r = app
            .call_with(
                Caller::Nobody,
                "GET",
                &format!("/ui/{name}"),
                &[("if-none-match", &etag)],
                vec![],
            )
            .await;
        assert_eq!(r.status, 304, "{name}");
    }
    let r = app
        .call_as(
            Caller::Nobody,
            "GET",
            "/ui/vendor/uPlot.LICENSE",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Leon Sorokin"));

    // Anything else under /ui is a JSON 404; the page only answers GET.
    for path in [
        "/ui/nope.js",
        "/ui/vendor/",
        "/ui/app.js.gz",
        "/ui/../v1/functions",
    ] {
        let r = app.call_as(Caller::Nobody, "GET", path, None, vec![]).await;
        check(&r, 404, "route_not_found", "").unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let r = app
        .call_as(Caller::Nobody, "POST", "/ui/app.js", None, vec![])
        .await;
    check(&r, 405, "method_not_allowed", "").unwrap();
}

#[tokio::test]
async fn function_files_answer_the_deployed_code() {
    let app = App::seeded().await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/functions/ok/files",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["name"], "ok");
    assert_eq!(v["version"], 1);
    let files = v["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["main.py", "shoal.toml"]);
    assert!(files[0]["text"].as_str().unwrap().contains("def handler"));
    assert_eq!(
        files[0]["size"].as_u64().unwrap() as usize,
        files[0]["text"].as_str().unwrap().len()
    );

    // A second version with a binary file: the live one by default, an
    // older one by number; binary files come without text.
    let archive = crate::app::tar_of(&[
        ("shoal.toml", "name = \"ok\""),
        ("main.py", "def handler(e, ctx):\n    return 3\n"),
    ]);
    let mut archive = archive;
    // Append a binary file: rebuild with the tar crate for bytes that are
    // not UTF-8.
    {
        let mut b = tar::Builder::new(Vec::new());
        let mut ar = tar::Archive::new(archive.as_slice());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut header = e.header().clone();
            let path = e.path().unwrap().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            b.append_data(&mut header, path, data.as_slice()).unwrap();
        }
        let blob = [0xffu8, 0xfe, 0x00, 0x81];
        let mut header = tar::Header::new_gnu();
        header.set_size(blob.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut header, "data/blob.bin", blob.as_slice())
            .unwrap();
        archive = b.into_inner().unwrap();
    }
    let r = app
        .call("POST", "/v1/functions", crate::app::TAR, archive)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = app
        .call("GET", "/v1/functions/ok/files", None, vec![])
        .await
        .json();
    assert_eq!(v["version"], 2);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], "data/blob.bin");
    assert_eq!(files[0]["size"], 4);
    assert!(files[0].get("text").is_none(), "{}", files[0]);
    assert!(files[1]["text"].as_str().unwrap().contains("return 3"));
    let v = app
        .call("GET", "/v1/functions/ok/files?version=1", None, vec![])
        .await
        .json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["files"].as_array().unwrap().len(), 2);

    let nf = "function_not_found";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("GET", "/v1/functions/nope/files", None, "", 404, nf, "nope"),
        case("GET", "/v1/functions/ok/files?version=9", None, "", 404, nf, "ok@9"),
        case("GET", "/v1/functions/ok/files?version=x", None, "", 400, "invalid_input", "version"),
        case("GET", "/v1/functions/Bad/files", None, "", 400, "invalid_name", ""),
    ];
    run_table(&app, "function files", cases).await;
    let r = app
        .call_as(
            Caller::Nobody,
            "GET",
            "/v1/functions/ok/files",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
}
