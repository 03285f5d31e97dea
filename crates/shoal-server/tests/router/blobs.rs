//! `/v1/blobs`: uploads and their metadata, one `Range` per read with its
//! edge cases (suffix ranges, past the end, malformed, several), `If-Range`,
//! `If-None-Match`, `HEAD`, listing, deletes, fixed-size blobs and
//! bitfield batches that apply all or nothing.

use shoal_types::Role;

use crate::app::{App, Caller, Reply, check};

const ADMIN: Caller = Caller::As(Role::Admin);

async fn get(app: &App, path: &str, headers: &[(&str, &str)]) -> Reply {
    app.call_with(ADMIN, "GET", path, headers, vec![]).await
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn upload_then_ranged_reads() {
    let app = App::new().await;
    let body = data(1000);
    let r = app
        .call_with(
            ADMIN,
            "PUT",
            "/v1/blobs/data%2Fa.bin",
            &[("content-type", "application/x-rec")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let meta = r.json();
    assert_eq!(meta["key"], "data/a.bin");
    assert_eq!(meta["size"], 1000);
    assert_eq!(meta["fixed_size"], false);
    let etag = meta["etag"].as_str().unwrap().to_string();
    assert_eq!(meta["sha256"].as_str().unwrap(), etag);
    assert_eq!(header(&r, "etag"), format!("\"{etag}\""));

    let whole = get(&app, "/v1/blobs/data%2Fa.bin", &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.bytes, body);
    assert_eq!(header(&whole, "content-type"), "application/x-rec");
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "content-length"), "1000");

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-9", 0, 10),
        ("bytes=990-", 990, 10),
        ("bytes=990-5000", 990, 10),
        ("bytes=-10", 990, 10),
        ("bytes=-5000", 0, 1000),
        ("bytes=999-999", 999, 1),
    ];
    for &(range, start, len) in cases {
        let r = get(&app, "/v1/blobs/data%2Fa.bin", &[("range", range)]).await;
        assert_eq!(r.status, 206, "{range}: {}", r.text);
        assert_eq!(r.bytes, &body[start..start + len], "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {start}-{}/1000", start + len - 1)
        );
        assert_eq!(header(&r, "content-length"), len.to_string());
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = get(&app, "/v1/blobs/data%2Fa.bin", &[("range", range)]).await;
        check(&r, 416, "range_not_satisfiable", "1000 bytes").unwrap();
        assert_eq!(header(&r, "content-range"), "bytes */1000", "{range}");
    }
    for range in [
        "bytes=9-2",
        "bytes=x-3",
        "bytes=1",
        "bytes=",
        "bytes=0-1,5-9",
    ] {
        let r = get(&app, "/v1/blobs/data%2Fa.bin", &[("range", range)]).await;
        check(&r, 400, "invalid_input", "Range").unwrap();
    }
    // Another unit: ignored.
    let r = get(&app, "/v1/blobs/data%2Fa.bin", &[("range", "rows=0-1")]).await;
    assert_eq!((r.status, r.bytes.len()), (200, 1000));

    // If-Range: the same tag keeps the range, another gives the whole blob.
    let quoted = format!("\"{etag}\"");
    let r = get(
        &app,
        "/v1/blobs/data%2Fa.bin",
        &[("range", "bytes=0-1"), ("if-range", &quoted)],
    )
    .await;
    assert_eq!((r.status, r.bytes.len()), (206, 2));
    let r = get(
        &app,
        "/v1/blobs/data%2Fa.bin",
        &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!((r.status, r.bytes.len()), (200, 1000));
    // If-None-Match: 304 without a body.
    let r = get(
        &app,
        "/v1/blobs/data%2Fa.bin",
        &[("if-none-match", &quoted)],
    )
    .await;
    assert_eq!((r.status, r.bytes.len()), (304, 0));
    assert_eq!(header(&r, "etag"), quoted);
    let r = get(
        &app,
        "/v1/blobs/data%2Fa.bin",
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(r.status, 200);

    let r = app
        .call_with(ADMIN, "HEAD", "/v1/blobs/data%2Fa.bin", &[], vec![])
        .await;
    assert_eq!((r.status, r.bytes.len()), (200, 0));
    assert_eq!(header(&r, "content-length"), "1000");
    assert_eq!(header(&r, "etag"), quoted);

    // An empty blob: whole is fine, any range is unsatisfiable.
    let r = app
        .call_with(ADMIN, "PUT", "/v1/blobs/empty", &[], vec![])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = get(&app, "/v1/blobs/empty", &[]).await;
    assert_eq!((r.status, r.bytes.len()), (200, 0));
    let r = get(&app, "/v1/blobs/empty", &[("range", "bytes=-1")]).await;
    assert_eq!(r.status, 416);
}

#[tokio::test]
async fn list_delete_and_missing_blobs() {
    let app = App::new().await;
    for key in ["logs%2F2", "logs%2F1", "logs%2F3", "other"] {
        let r = app
            .call_with(
                ADMIN,
                "PUT",
                &format!("/v1/blobs/{key}"),
                &[],
                b"x".to_vec(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = app
        .call("GET", "/v1/blobs?prefix=logs/&limit=2", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = r.json();
    let keys: Vec<&str> = page["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["logs/1", "logs/2"]);
    let next = page["next"].as_str().unwrap();
    let r = app
        .call(
            "GET",
            &format!(
                "/v1/blobs?prefix=logs/&limit=2&cursor={}",
                next.replace('/', "%2F")
            ),
            None,
            vec![],
        )
        .await;
    let page = r.json();
    assert_eq!(page["blobs"][0]["key"], "logs/3");
    assert!(page["next"].is_null());

    let r = app.call("DELETE", "/v1/blobs/logs%2F1", None, vec![]).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app.call("DELETE", "/v1/blobs/logs%2F1", None, vec![]).await;
    check(&r, 404, "blob_not_found", "logs/1").unwrap();
    let r = get(&app, "/v1/blobs/logs%2F1", &[]).await;
    check(&r, 404, "blob_not_found", "logs/1").unwrap();
    let r = app
        .call_with(ADMIN, "HEAD", "/v1/blobs/nope", &[], vec![])
        .await;
    assert_eq!(r.status, 404);
    let r = app.call("GET", "/v1/blobs?limit=0", None, vec![]).await;
    check(&r, 400, "invalid_input", "limit").unwrap();
    let r = app.call("GET", "/v1/blobs?bogus=1", None, vec![]).await;
    assert_eq!(r.status, 400);

    // Reading needs a reader, writing an invoker.
    let r = app
        .call_with(
            Caller::As(Role::Reader),
            "PUT",
            "/v1/blobs/x",
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .call_with(
            Caller::As(Role::Reader),
            "GET",
            "/v1/blobs/other",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call_with(Caller::Nobody, "GET", "/v1/blobs/other", &[], vec![])
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
}

fn ops(app: &App, key: &str, body: serde_json::Value) -> impl std::future::Future<Output = Reply> {
    let path = format!("/v1/blobs/{key}/bitfield");
    let body = serde_json::to_vec(&body).unwrap();
    async move {
        app.call("POST", &path, Some("application/json"), body)
            .await
    }
}

#[tokio::test]
async fn fixed_size_blobs_and_bitfield_batches() {
    let app = App::new().await;
    let r = app
        .call("PUT", "/v1/blobs/board?fixed_size=500000", None, vec![])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["fixed_size"], true);
    assert!(r.json().get("sha256").is_none());
    let v0 = r.json()["version"].as_u64().unwrap();
    // If-None-Match: * keeps it.
    let r = app
        .call_with(
            ADMIN,
            "PUT",
            "/v1/blobs/board?fixed_size=10",
            &[("if-none-match", "*")],
            vec![],
        )
        .await;
    check(&r, 412, "precondition_failed", "500000 bytes").unwrap();
    let r = app
        .call(
            "PUT",
            "/v1/blobs/b2?fixed_size=10",
            None,
            b"not empty".to_vec(),
        )
        .await;
    check(&r, 400, "invalid_input", "empty body").unwrap();
    let r = app
        .call("PUT", "/v1/blobs/b2?fixed_size=0", None, vec![])
        .await;
    check(&r, 400, "invalid_input", "fixed_size").unwrap();

    let r = ops(
        &app,
        "board",
        serde_json::json!({"ops": [
            {"op": "set", "type": "u4", "offset": "#1", "value": 7},
            {"op": "incrby", "type": "u4", "offset": "#1", "by": 10, "overflow": "sat"},
            {"op": "write_at", "offset": 10, "data_base64": "aGk="},
            {"op": "get", "type": "u8", "offset": 0},
            {"op": "incrby", "type": "i8", "offset": 8, "by": -1, "overflow": "fail"},
            {"op": "incrby", "type": "u4", "offset": "#1", "by": 1, "overflow": "fail"}
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(
        out["results"],
        serde_json::json!([0, 15, null, 15, -1, null])
    );
    let v1 = out["version"].as_u64().unwrap();
    assert!(v1 > v0);
    assert_eq!(out["etag"], format!("v{v1}"));
    let r = get(&app, "/v1/blobs/board", &[("range", "bytes=0-11")]).await;
    assert_eq!(r.bytes, [0x0F, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);

    // A batch with one bad operation changes nothing, and says which.
    let bad_batches = [
        (
            serde_json::json!({"ops": [
                {"op": "set", "type": "u8", "offset": 0, "value": 1},
                {"op": "get", "type": "u8", "offset": 3_999_999}
            ]}),
            "operation 1",
        ),
        (
            serde_json::json!({"ops": [
                {"op": "set", "type": "u8", "offset": 0, "value": 1},
                {"op": "set", "type": "u64", "offset": 0, "value": 1}
            ]}),
            "ops[1]",
        ),
        (
            serde_json::json!({"ops": [{"op": "flip", "type": "u8", "offset": 0}]}),
            "flip",
        ),
        (
            serde_json::json!({"ops": [{"op": "get", "type": "u8", "offset": -1}]}),
            "offset",
        ),
        (
            serde_json::json!({"ops": [{"op": "write_at", "offset": 499_999, "data_base64": "aGk="}]}),
            "past the end",
        ),
        (serde_json::json!({"ops": []}), "1 to"),
    ];
    for (batch, says) in bad_batches {
        let r = ops(&app, "board", batch).await;
        check(&r, 400, "invalid_input", says).unwrap();
    }
    let r = get(&app, "/v1/blobs/board", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.bytes, [0x0F, 0xFF]);
    assert_eq!(header(&r, "etag"), format!("\"v{v1}\""));

    let r = app
        .call_with(ADMIN, "PUT", "/v1/blobs/up", &[], b"bytes".to_vec())
        .await;
    assert_eq!(r.status, 201);
    let get_op = serde_json::json!({"ops": [{"op": "get", "type": "u8", "offset": 0}]});
    let r = ops(&app, "up", get_op.clone()).await;
    check(&r, 409, "not_fixed_size", "fixed_size=N").unwrap();
    let r = ops(&app, "missing", get_op).await;
    check(&r, 404, "blob_not_found", "missing").unwrap();
}
