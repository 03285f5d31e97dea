//! `/v1/sites` and the serving of site files through the router's
//! fallback: who may deploy, list and remove; every bad request a 4xx JSON
//! error that says why; the OpenAPI document lists the routes.

use shoal_types::Role;

use crate::app::{App, Caller, JSON, TAR, case, run_table, tar_of};

#[tokio::test]
async fn bad_requests_are_refused_with_what_is_wrong() {
    let app = App::new().await;
    let ok = tar_of(&[("index.html", "hi")]);
    let big = "x".repeat(1024 * 1024 + 1);
    let rows = vec![
        case(
            "PUT",
            "/v1/sites/Bad%20Name",
            TAR,
            ok.clone(),
            400,
            "invalid_name",
            "site name",
        ),
        case(
            "PUT",
            "/v1/sites/s?path=docs",
            TAR,
            ok.clone(),
            400,
            "invalid_input",
            "start with `/`",
        ),
        case(
            "PUT",
            "/v1/sites/s?path=/v1/x",
            TAR,
            ok.clone(),
            400,
            "invalid_input",
            "node keeps",
        ),
        case(
            "PUT",
            "/v1/sites/s?pth=/",
            TAR,
            ok.clone(),
            400,
            "invalid_input",
            "pth",
        ),
        case(
            "PUT",
            "/v1/sites/s?spa=maybe",
            TAR,
            ok.clone(),
            400,
            "invalid_input",
            "",
        ),
        case(
            "PUT",
            "/v1/sites/s?cache_control=",
            TAR,
            ok.clone(),
            400,
            "invalid_input",
            "cache_control",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            JSON,
            ok.clone(),
            415,
            "unsupported_media_type",
            "application/x-tar",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            b"not a tar".repeat(100),
            400,
            "invalid_input",
            "not a valid tar",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            tar_of(&[("../up.html", "x")]),
            400,
            "invalid_input",
            "`..`",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            tar_of(&[("/abs.html", "x")]),
            400,
            "invalid_input",
            "absolute",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            vec![0; 1024],
            400,
            "invalid_input",
            "no files",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            tar_of(&[("a.html", "1"), ("a.html", "2")]),
            400,
            "invalid_input",
            "twice",
        ),
        case(
            "PUT",
            "/v1/sites/s",
            TAR,
            tar_of(&[("big.bin", &big)]),
            413,
            "payload_too_large",
            "--max-site-bytes",
        ),
        case(
            "GET",
            "/v1/sites/nope",
            None,
            vec![],
            404,
            "site_not_found",
            "nope",
        ),
        case(
            "GET",
            "/v1/sites/nope/versions",
            None,
            vec![],
            404,
            "site_not_found",
            "nope",
        ),
        case(
            "POST",
            "/v1/sites/nope/rollback",
            None,
            vec![],
            404,
            "site_not_found",
            "nope",
        ),
        case(
            "POST",
            "/v1/sites/nope/rollback",
            JSON,
            b"{\"version\": \"x\"}".to_vec(),
            400,
            "invalid_input",
            "version",
        ),
        case(
            "DELETE",
            "/v1/sites/nope",
            None,
            vec![],
            404,
            "site_not_found",
            "nope",
        ),
    ];
    run_table(&app, "sites", rows).await;
    // Nothing of the above was recorded.
    let r = app.call("GET", "/v1/sites", None, vec![]).await;
    assert_eq!(r.json()["sites"], serde_json::json!([]));
}

#[tokio::test]
async fn developers_deploy_readers_list_and_anyone_reads_the_files() {
    let app = App::new().await;
    let archive = tar_of(&[("index.html", "<p>hi</p>"), ("app.js", "go()")]);
    let put = |caller, archive: Vec<u8>| {
        let app = &app;
        async move {
            app.call_as(
                caller,
                "PUT",
                "/v1/sites/web?path=/web&spa=true",
                TAR,
                archive,
            )
            .await
        }
    };
    assert_eq!(put(Caller::Nobody, archive.clone()).await.status, 401);
    assert_eq!(
        put(Caller::As(Role::Reader), archive.clone()).await.status,
        403
    );
    assert_eq!(
        put(Caller::As(Role::Invoker), archive.clone()).await.status,
        403
    );
    let r = put(Caller::As(Role::Developer), archive.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["name"].as_str(), v["live"].as_u64()),
        (Some("web"), Some(1))
    );
    assert_eq!(
        (v["path"].as_str(), v["spa"].as_bool()),
        (Some("/web"), Some(true))
    );
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(2), Some(13))
    );
    assert!(v.get("unchanged").is_none(), "{v}");
    let r = put(Caller::As(Role::Developer), archive).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["unchanged"], true);

    let r = app
        .call_as(Caller::As(Role::Reader), "GET", "/v1/sites", None, vec![])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sites"][0]["name"], "web");
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/sites/web/versions",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.json()["versions"][0]["live"], true);
    for (method, path) in [
        ("POST", "/v1/sites/web/rollback"),
        ("DELETE", "/v1/sites/web"),
    ] {
        let r = app
            .call_as(Caller::As(Role::Reader), method, path, None, vec![])
            .await;
        assert_eq!(r.status, 403, "{method} {path}");
    }
    let r = app
        .call_as(Caller::Nobody, "GET", "/v1/sites", None, vec![])
        .await;
    assert_eq!(r.status, 401);

    // The files need no token; other methods are not the site's.
    let r = app
        .call_as(Caller::Nobody, "GET", "/web/app.js", None, vec![])
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "go()"));
    assert_eq!(r.content_type, "text/javascript; charset=utf-8");
    let r = app
        .call_as(Caller::Nobody, "GET", "/web/some/route", None, vec![])
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "<p>hi</p>"));
    let r = app
        .call_as(Caller::Nobody, "HEAD", "/web/app.js", None, vec![])
        .await;
    assert_eq!((r.status, r.bytes.len()), (200, 0));
    assert_eq!(r.headers["content-length"], "4");
    let r = app
        .call_as(Caller::Nobody, "DELETE", "/web/app.js", None, vec![])
        .await;
    assert_ne!(r.status, 200);
    assert_eq!(
        app.call_as(Caller::Nobody, "GET", "/other", None, vec![])
            .await
            .status,
        404
    );

    let r = app.call("DELETE", "/v1/sites/web", None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        app.call_as(Caller::Nobody, "GET", "/web/app.js", None, vec![])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_site_routes() {
    let app = App::new().await;
    let doc = app
        .call("GET", "/v1/openapi.json", None, vec![])
        .await
        .json();
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/sites", &["get"][..]),
        ("/v1/sites/{name}", &["put", "get", "delete"]),
        ("/v1/sites/{name}/versions", &["get"]),
        ("/v1/sites/{name}/rollback", &["post"]),
    ] {
        for m in methods {
            assert!(
                paths[path].get(*m).is_some(),
                "{m} {path} in the OpenAPI document"
            );
        }
    }
}
