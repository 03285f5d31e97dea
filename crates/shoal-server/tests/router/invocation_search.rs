//! `GET /v1/invocations` with `failed=true` (failed and timed out, merged
//! in the list's order) and `q` (text in logs, event, output or error: a
//! bounded scan continued by its cursor), and `POST
//! /v1/invocations/{id}/replay`.

use shoal_runtime::fake::Script;
use shoal_types::{FailureKind, Role};

use crate::app::{App, Caller, JSON, case, run_table};

async fn invoke(app: &App, script: Script, event: &str) -> String {
    app.runtime.script("ok", script);
    let r = app
        .call("POST", "/v1/functions/ok/invoke", JSON, event.into())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Distinct creation times: the fake clock follows tokio's.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    r.headers[shoal_protocol::INVOCATION_ID_HEADER]
        .to_str()
        .unwrap()
        .to_string()
}

async fn list(app: &App, q: &str) -> serde_json::Value {
    let r = app
        .call("GET", &format!("/v1/invocations?{q}"), None, vec![])
        .await;
    assert_eq!(r.status, 200, "{q}: {}", r.text);
    r.json()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every page of `q`, following `next`; the ids found and the records
/// scanned in all.
async fn all_pages(app: &App, q: &str) -> (Vec<String>, u64, usize) {
    let (mut found, mut scanned, mut pages) = (Vec::new(), 0, 0);
    let mut cursor = String::new();
    loop {
        let page = list(app, &format!("{q}{cursor}")).await;
        pages += 1;
        found.extend(ids(&page));
        scanned += page["scanned"].as_u64().unwrap_or(0);
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return (found, scanned, pages),
        }
    }
}

#[tokio::test]
async fn failed_lists_failed_and_timed_out_newest_first_in_pages() {
    let app = App::seeded().await;
    let mut want = Vec::new();
    for i in 0..7 {
        let id = match i % 3 {
            0 => invoke(&app, Script::ok(serde_json::json!(i)), "{}").await,
            1 => {
                let id = invoke(&app, Script::raise("ValueError", "bad"), "{}").await;
                want.push(id.clone());
                id
            }
            _ => {
                let id = invoke(&app, Script::fail(FailureKind::TimedOut), "{}").await;
                want.push(id.clone());
                id
            }
        };
        let _ = id;
    }
    want.reverse();
    assert_eq!(ids(&list(&app, "failed=true").await), want);
    assert_eq!(ids(&list(&app, "failed=true&function=ok").await), want);
    assert_eq!(
        ids(&list(&app, "failed=true&function=limited").await),
        Vec::<String>::new()
    );
    assert_eq!(ids(&list(&app, "failed=false").await).len(), 7);
    // Pages of two, merged across both statuses, follow each other.
    let mut got = Vec::new();
    let mut q = "failed=true&limit=2".to_string();
    loop {
        let page = list(&app, &q).await;
        got.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => q = format!("failed=true&limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn text_is_found_in_logs_event_output_and_error_and_the_scan_is_bounded() {
    let app = App::seeded().await;
    let in_logs = invoke(
        &app,
        Script::ok(serde_json::json!(1)).log("resizing PHOTO-7\n"),
        "{}",
    )
    .await;
    let in_event = invoke(
        &app,
        Script::ok(serde_json::json!(2)),
        r#"{"name":"photo-7.png"}"#,
    )
    .await;
    let in_output = invoke(&app, Script::ok(serde_json::json!("Photo-7 done")), "{}").await;
    let in_error = invoke(&app, Script::raise("KeyError", "photo-7"), "{}").await;
    for i in 0..20 {
        invoke(&app, Script::ok(serde_json::json!(i)).log("other\n"), "{}").await;
    }
    let want = vec![in_error.clone(), in_output, in_event, in_logs];
    let page = list(&app, "q=photo-7").await;
    assert_eq!(ids(&page), want);
    assert_eq!(page["scanned"], 24, "{page}");
    assert!(page.get("next").is_none(), "{page}");
    // With other filters.
    assert_eq!(
        ids(&list(&app, "q=photo-7&failed=true").await),
        vec![in_error.clone()]
    );
    assert_eq!(
        ids(&list(&app, "q=PHOTO-7&status=failed").await),
        vec![in_error]
    );
    assert_eq!(ids(&list(&app, "q=nowhere").await), Vec::<String>::new());
    // A scan of 5 at a time: pages continue where the last stopped, and
    // together look at every record once.
    let (found, scanned, pages) = all_pages(&app, "q=photo-7&scan=5").await;
    assert_eq!(found, want);
    assert_eq!(scanned, 24);
    assert_eq!(pages, 5);
    // A page full of matches stops there.
    let page = list(&app, "q=photo-7&limit=2").await;
    assert_eq!(ids(&page), want[..2]);
    assert!(page["next"].is_string());
    let (found, _, _) = all_pages(&app, "q=photo-7&limit=2").await;
    assert_eq!(found, want);
}

#[tokio::test]
async fn replay_runs_the_same_event_again() {
    let app = App::seeded().await;
    let first = invoke(&app, Script::echo(), r#"{"n": 7}"#).await;
    app.deploy_ok("name = \"ok\"\nretries = 1").await; // version 2 is live now
    app.runtime.script("ok", Script::echo());
    for (q, version) in [("", 2), ("?version=same", 1), ("?version=live", 2)] {
        let r = app
            .call_as(
                Caller::As(Role::Invoker),
                "POST",
                &format!("/v1/invocations/{first}/replay{q}"),
                None,
                vec![],
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_ne!(id, first);
        let mut done = serde_json::Value::Null;
        for _ in 0..200 {
            let r = app
                .call("GET", &format!("/v1/invocations/{id}"), None, vec![])
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            done = r.json();
            if done["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["mode"], "async");
        assert_eq!(done["version"], version, "{q}: {done}");
        assert_eq!(done["output"], serde_json::json!({"n": 7}), "{done}");
    }
}

#[tokio::test]
async fn bad_searches_and_replays_say_what_is_valid() {
    let app = App::seeded().await;
    let get = |q: &str, says: &'static str| {
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
        "searches",
        vec![
            get("failed=yes", "use true or false"),
            get("failed=true&status=failed", "leave out status"),
            get("q=x&scan=0", "scan must be a number from 1 to 10000"),
            get("q=x&scan=10001", "from 1 to 10000"),
            case(
                "POST",
                "/v1/invocations/nope/replay",
                None,
                vec![],
                404,
                "invocation_not_found",
                "nope",
            ),
            case(
                "POST",
                "/v1/invocations/nope/replay?version=old",
                None,
                vec![],
                400,
                "invalid_input",
                "use live or same",
            ),
        ],
    )
    .await;
    assert_eq!(n, 6);
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "POST",
            "/v1/invocations/x/replay",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}
