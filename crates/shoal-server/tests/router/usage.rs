//! Usage, prices, estimates, budgets, stats and counts: answers and errors.

use std::time::Duration;

use shoal_types::Role;

use crate::app::{App, Caller, JSON, case, check, run_table};

/// Invokes `ok` `n` times and waits until the records are stored (a sync
/// invocation's record is written behind its answer).
async fn invoked(app: &App, n: u64) {
    for _ in 0..n {
        let r = app
            .call("POST", "/v1/functions/ok/invoke", JSON, b"{}".to_vec())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    for _ in 0..200 {
        let r = app.call("GET", "/v1/invocations/count", None, vec![]).await;
        if r.json()["count"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the records of {n} invocations were not stored");
}

async fn token_id(app: &App, role: &str) -> String {
    let r = app.call("GET", "/v1/tokens", None, vec![]).await;
    r.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == role)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn usage_counts_and_stats_follow_the_invocations() {
    let app = App::seeded().await;
    invoked(&app, 3).await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/usage?group_by=function",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["group_by"], "function");
    assert_eq!(v["total"]["invocations"], 3, "{v}");
    assert_eq!(v["total"]["succeeded"], 3, "{v}");
    assert_eq!(v["items"][0]["key"], "ok", "{v}");
    assert_eq!(v["items"][0]["invocations"], 3, "{v}");
    assert_eq!(v["prices"]["currency"], "USD");
    assert!(v["stored"]["documents_bytes"].as_u64().unwrap() > 0, "{v}");
    let by_day = app
        .call("GET", "/v1/usage?group_by=day", None, vec![])
        .await;
    assert_eq!(
        by_day.json()["items"][0]["key"],
        "2023-11-14",
        "{}",
        by_day.text
    );

    let count = |q: &'static str| {
        let app = &app;
        async move {
            let r = app.call("GET", q, None, vec![]).await;
            assert_eq!(r.status, 200, "{q}: {}", r.text);
            r.json()["count"].as_u64().unwrap()
        }
    };
    assert_eq!(count("/v1/invocations/count?function=ok").await, 3);
    assert_eq!(count("/v1/invocations/count?status=succeeded").await, 3);
    assert_eq!(count("/v1/invocations/count?status=failed").await, 0);
    assert_eq!(count("/v1/invocations/count?function=worker").await, 0);
    assert_eq!(
        count("/v1/invocations/count?since=2030-01-01T00:00:00Z").await,
        0
    );
    assert_eq!(
        count("/v1/invocations/count?since=1699999999000&until=2023-11-15T00:00:00Z").await,
        3
    );

    let r = app.call("GET", "/v1/stats?step_s=120", None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["step_s"], 120);
    assert_eq!(v["total"]["invocations"], 3, "{v}");
    assert_eq!(v["points"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["points"][0]["p50_ms"].is_number(), "{v}");
    // What the node keeps, as before.
    assert!(v["data_dir_bytes"].is_u64() && v["invocations"] == 3, "{v}");

    let r = app
        .call("GET", "/v1/functions/ok/estimate", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["based_on"]["invocations"], 3, "{v}");
    assert_eq!(v["based_on"]["memory_mb"], 256, "{v}");
    assert!(v["per_1000_calls"]["cost"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test]
async fn prices_and_budgets() {
    let app = App::new().await;
    let r = app.call("GET", "/v1/usage/prices", None, vec![]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["per_million_invocations"], 0.2);
    let body = br#"{"currency":"EUR","per_gb_s":0.00002,"per_million_invocations":0.25,"per_gb_month_stored":0.02}"#;
    let r = app
        .call_as(
            Caller::As(Role::Developer),
            "PUT",
            "/v1/usage/prices",
            JSON,
            body.to_vec(),
        )
        .await;
    check(&r, 403, "forbidden", "admin").unwrap();
    let r = app
        .call("PUT", "/v1/usage/prices", JSON, body.to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.call("GET", "/v1/usage/prices", None, vec![]).await;
    assert_eq!(r.json()["currency"], "EUR");
    let r = app.call("GET", "/v1/usage", None, vec![]).await;
    assert_eq!(r.json()["prices"]["currency"], "EUR", "{}", r.text);

    let id = token_id(&app, "invoker").await;
    let path = format!("/v1/tokens/{id}/budget");
    let spec = br#"{"period":"month","limit":12.5,"unit":"usd","notify_at":0.8,"enforce":true}"#;
    let r = app.call("PUT", &path, JSON, spec.to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["token"], id.as_str());
    assert_eq!(
        (v["period"].as_str(), v["unit"].as_str()),
        (Some("month"), Some("usd"))
    );
    assert_eq!(
        (v["spent"].as_f64(), v["exceeded"].as_bool()),
        (Some(0.0), Some(false))
    );
    assert!(
        v["resets_at_ms"].as_u64() > v["period_start_ms"].as_u64(),
        "{v}"
    );
    let r = app.call("GET", &path, None, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["limit"], 12.5);
    let r = app.call("DELETE", &path, None, vec![]).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app
        .call_as(Caller::As(Role::Reader), "GET", &path, None, vec![])
        .await;
    check(&r, 403, "forbidden", "admin").unwrap();

    run_table(
        &app,
        "usage errors",
        vec![
            case("GET", &path, None, "", 404, "budget_not_found", "budget"),
            case("DELETE", &path, None, "", 404, "budget_not_found", "budget"),
            case(
                "PUT",
                "/v1/tokens/tok_nope/budget",
                JSON,
                &spec[..],
                404,
                "token_not_found",
                "tok_nope",
            ),
            case(
                "PUT",
                &path,
                JSON,
                &br#"{"period":"week","limit":1,"unit":"usd"}"#[..],
                400,
                "invalid_input",
                "week",
            ),
            case(
                "PUT",
                &path,
                JSON,
                &br#"{"period":"day","limit":1,"unit":"usd","notify_at":2}"#[..],
                400,
                "invalid_input",
                "notify_at",
            ),
            case(
                "PUT",
                &path,
                JSON,
                &br#"{"period":"day","limit":-1,"unit":"gb_s"}"#[..],
                400,
                "invalid_input",
                "limit",
            ),
            case(
                "PUT",
                "/v1/usage/prices",
                JSON,
                &br#"{"currency":"US$","per_gb_s":1,"per_million_invocations":1,"per_gb_month_stored":1}"#[..],
                400,
                "invalid_input",
                "currency",
            ),
            case("GET", "/v1/usage?group_by=colour", None, "", 400, "invalid_input", "colour"),
            case("GET", "/v1/usage?since=yesterday", None, "", 400, "invalid_input", "since"),
            case("GET", "/v1/usage?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", None, "", 400, "invalid_input", "before"),
            case("GET", "/v1/usage?colour=red", None, "", 400, "invalid_input", "colour"),
            case("GET", "/v1/stats?step_s=61", None, "", 400, "invalid_input", "multiple of 60"),
            case("GET", "/v1/stats?step_s=60&since=0", None, "", 400, "invalid_input", "10000 points"),
            case("GET", "/v1/invocations/count?status=done", None, "", 400, "invalid_input", "done"),
            case("GET", "/v1/invocations/count?function=Bad%20Name", None, "", 400, "invalid_input", ""),
            case("GET", "/v1/functions/nope/estimate", None, "", 404, "function_not_found", "nope"),
        ],
    )
    .await;
}

/// A token past its enforced budget (a limit of 0 is past at once) gets
/// 429 `budget_exceeded` where it starts work: invocations, sync and
/// async, and queue sends; other tokens do not.
#[tokio::test]
async fn a_token_past_its_budget_starts_no_work() {
    let app = App::seeded().await;
    let id = token_id(&app, "invoker").await;
    let r = app
        .call(
            "PUT",
            &format!("/v1/tokens/{id}/budget"),
            JSON,
            br#"{"period":"day","limit":0,"unit":"gb_s","enforce":true}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["exceeded"], true, "{}", r.text);
    let invoker = Caller::As(Role::Invoker);
    for (path, body) in [
        ("/v1/functions/ok/invoke", "{}"),
        ("/v1/functions/ok/invoke?mode=async", "{}"),
        ("/v1/queues/measured/messages", r#"{"body": 1}"#),
    ] {
        let r = app
            .call_as(invoker, "POST", path, JSON, body.as_bytes().to_vec())
            .await;
        check(&r, 429, "budget_exceeded", "resets at").unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    // The admin's work goes on.
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, b"{}".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
