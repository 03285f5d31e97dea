//! `GET /v1/invocations` (filters, paging, bad filters), a function's logs
//! and `GET /v1/stats`, on the fake runtime.

use shoal_runtime::fake::Script;
use shoal_types::Role;

use crate::app::{App, Caller, JSON, case, run_table};

/// Bad filters are 400 `invalid_input` saying what is valid; nothing
/// else is looked at.
#[tokio::test]
async fn bad_filters_say_what_is_valid() {
    let app = App::seeded().await;
    let bad = |q: &str, says: &'static str| {
        case(
            "GET",
            format!("/v1/invocations?{q}"),
            None,
            vec![],
            400,
            "invalid_input",
            says,
        )
    };
    let n = run_table(
        &app,
        "list filters",
        vec![
            bad(
                "status=broken",
                "use one of queued, running, succeeded, failed, timed_out, cancelled",
            ),
            bad("status=FAILED", "status \"FAILED\" is not known"),
            bad("mode=later", "use one of sync, async, queue"),
            bad("since=yesterday", "use RFC 3339 (2026-12-04T17:00:00Z)"),
            bad(
                "until=2026-13-01T00:00:00Z",
                "until \"2026-13-01T00:00:00Z\" is not a time",
            ),
            bad("since=5y", "a duration back from now (90s, 15m, 1h, 7d)"),
            bad("limit=0", "use a whole number from 1 to 1000"),
            bad("limit=1001", "from 1 to 1000"),
            bad("limit=ten", "limit \"ten\" is out of range"),
            bad("cursor=nope", "pass the `next` of the previous page"),
            bad("function=Bad_Name", "function \"Bad_Name\""),
            bad("colour=red", "colour"),
            case(
                "GET",
                "/v1/functions/ok/logs?limit=0",
                None,
                vec![],
                400,
                "invalid_input",
                "from 1 to 1000",
            ),
            case(
                "GET",
                "/v1/functions/nope/logs",
                None,
                vec![],
                404,
                "function_not_found",
                "nope",
            ),
        ],
    )
    .await;
    assert_eq!(n, 14);
}

/// Invocations of several functions, statuses and modes: each filter lists
/// exactly its own, newest first, in pages that follow each other.
#[tokio::test]
async fn filters_and_pages() {
    let app = App::seeded().await;
    let mut ok_ids = Vec::new();
    for i in 0..5 {
        let script = if i % 2 == 1 {
            Script::raise("ValueError", "odd")
        } else {
            Script::echo().log(&format!("line {i}\n"))
        };
        app.runtime.script("ok", script);
        let r = app
            .call(
                "POST",
                "/v1/functions/ok/invoke",
                JSON,
                format!("{{\"i\":{i}}}").into(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        ok_ids.push(
            r.headers[shoal_protocol::INVOCATION_ID_HEADER]
                .to_str()
                .unwrap()
                .to_string(),
        );
        // Distinct creation times: the fake clock follows tokio's.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let r = app
        .call("POST", "/v1/functions/limited/invoke", JSON, "{}".into())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let list = |q: &'static str| {
        let app = &app;
        async move {
            let r = app
                .call("GET", &format!("/v1/invocations?{q}"), None, vec![])
                .await;
            assert_eq!(r.status, 200, "{q}: {}", r.text);
            r.json()
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let newest_first: Vec<String> = ok_ids.iter().rev().cloned().collect();
    assert_eq!(ids(&list("function=ok").await), newest_first);
    assert_eq!(ids(&list("function=ok&status=&mode=").await), newest_first);
    assert_eq!(ids(&list("").await).len(), 6);
    let failed = list("function=ok&status=failed").await;
    assert_eq!(ids(&failed), vec![ok_ids[3].clone(), ok_ids[1].clone()]);
    let first = &failed["invocations"][0];
    assert_eq!(first["function"], "ok");
    assert_eq!(first["mode"], "sync");
    assert_eq!(first["error_type"], "raised", "{first}");
    assert_eq!(first["error_message"], "odd", "{first}");
    assert!(first.get("input").is_none(), "a summary, not the record");
    assert_eq!(ids(&list("mode=async").await), Vec::<String>::new());
    assert_eq!(
        ids(&list("function=limited&status=succeeded").await).len(),
        1
    );
    assert_eq!(ids(&list("since=1h").await).len(), 6);
    assert_eq!(ids(&list("until=2000-01-01T00:00:00Z").await).len(), 0);

    // Pages of two follow each other to the end.
    let mut got = Vec::new();
    let mut path = "/v1/invocations?function=ok&limit=2".to_string();
    loop {
        let r = app.call("GET", &path, None, vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.json();
        got.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/invocations?function=ok&limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(got, newest_first);

    // A reader may list; the logs of a function come oldest first.
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/invocations?limit=1",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call("GET", "/v1/functions/ok/logs?limit=3", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entries, ok_ids[2..].to_vec());
    let logs: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["logs"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logs, vec!["line 2\n", "", "line 4\n"]);
}

/// `GET /v1/stats` counts the stored invocations and the data directory.
#[tokio::test]
async fn stats_count_records_and_bytes() {
    let app = App::seeded().await;
    std::fs::write(app.data_dir.path().join("weight"), vec![0u8; 4096]).unwrap();
    let before = app.call("GET", "/v1/stats", None, vec![]).await;
    assert_eq!(before.status, 200, "{}", before.text);
    let before = before.json();
    assert!(
        before["data_dir_bytes"].as_u64().unwrap() >= 4096,
        "{before}"
    );
    assert!(before["retain_seconds"].is_u64(), "{before}");
    for _ in 0..3 {
        let r = app
            .call("POST", "/v1/functions/ok/invoke", JSON, "{}".into())
            .await;
        assert_eq!(r.status, 200);
    }
    let after = app
        .call_as(Caller::As(Role::Reader), "GET", "/v1/stats", None, vec![])
        .await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(
        after.json()["invocations"].as_u64().unwrap(),
        before["invocations"].as_u64().unwrap() + 3
    );
}

/// The retention the node runs with is reported; none when kept forever.
#[tokio::test]
async fn stats_report_the_retention() {
    for (keep, want) in [
        (
            Some(std::time::Duration::from_secs(90)),
            serde_json::json!(90),
        ),
        (None, serde_json::Value::Null),
    ] {
        let app = App::with(|o| o.retention = keep).await;
        let r = app.call("GET", "/v1/stats", None, vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["retain_seconds"], want, "{}", r.text);
    }
}
