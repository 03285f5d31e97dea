//! Usage on a real `shoal serve`: what `/v1/usage`, `/v1/stats` and
//! `/v1/invocations/count` answer matches the invocations' own records,
//! across a `kill -9` and a restart; a token's budget refuses its new work
//! past the limit and lets it through once raised; the CLI shows them.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, until, wait_final};
use shoal_client::Client;
use shoal_client::protocol::{BudgetPeriod, BudgetSpec, BudgetUnit, ErrorCode};

const WORK: &str = "import time\n\
def handler(event, ctx):\n    time.sleep(event.get(\"ms\", 0) / 1000)\n    \
if event.get(\"fail\"):\n        raise ValueError(\"asked to fail\")\n    return event\n";

/// Every record, with its billed GB-seconds and status, by paging the list
/// and reading each record.
async fn records(c: &Client) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut filters = vec![("limit", "100")];
        if let Some(cur) = cursor.as_deref() {
            filters.push(("cursor", cur));
        }
        let page = c.list_invocations(&filters).await.expect("list");
        for s in &page.invocations {
            let inv = c.invocation(&s.id).await.expect("invocation");
            out.push((inv.function, inv.status, inv.billed_gb_seconds));
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

async fn usage_total(c: &Client) -> (u64, f64, u64) {
    let u = c
        .usage(&[("group_by", Some("function"))])
        .await
        .expect("usage");
    (u.total.invocations, u.total.gb_s, u.total.failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_matches_the_records_and_survives_kill9() {
    let mut node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"work\"\nmemory_mb = 256\nretries = 0\n", WORK).await;
    deploy(&c, "name = \"other\"\nmemory_mb = 128\n", WORK).await;
    for i in 0..6 {
        let event = if i % 3 == 2 {
            r#"{"ms": 20, "fail": true}"#
        } else {
            r#"{"ms": 30}"#
        };
        let _ = c.invoke("work", event).await.expect("invoke");
    }
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            c.invoke_async("other", r#"{"ms": 10}"#)
                .await
                .expect("async"),
        );
    }
    for id in &ids {
        wait_final(&c, id, Duration::from_secs(60)).await;
    }
    // A sync invocation's record is written behind its answer.
    until("10 final records", Duration::from_secs(30), async || {
        let r = records(&c).await;
        r.len() == 10 && r.iter().all(|(_, s, _)| s != "queued" && s != "running")
    })
    .await;

    let check = async |c: &Client| {
        let recs = records(c).await;
        let gb_s: f64 = recs.iter().map(|r| r.2).sum();
        let failed = recs.iter().filter(|r| r.1 == "failed").count() as u64;
        let (n, used_gb_s, used_failed) = usage_total(c).await;
        assert_eq!(n, recs.len() as u64);
        assert!((used_gb_s - gb_s).abs() < 1e-6, "{used_gb_s} vs {gb_s}");
        assert!(gb_s > 0.0);
        assert_eq!((used_failed, failed), (2, 2));
        let u = c.usage(&[("group_by", Some("function"))]).await.unwrap();
        let per: Vec<(String, u64)> = u
            .items
            .iter()
            .map(|l| (l.key.clone(), l.invocations))
            .collect();
        assert_eq!(per, vec![("other".to_string(), 4), ("work".to_string(), 6)]);
        for (f, want) in [("work", 6), ("other", 4)] {
            let got = c.count_invocations(&[("function", Some(f))]).await.unwrap();
            assert_eq!(got, want, "{f}");
        }
        let failed_count = c
            .count_invocations(&[("status", Some("failed"))])
            .await
            .unwrap();
        assert_eq!(failed_count, 2);
        assert_eq!(c.count_invocations(&[]).await.unwrap(), 10);
        let stats = c
            .invocation_stats(&[("since", Some("1h")), ("step_s", Some("60"))])
            .await
            .unwrap();
        assert_eq!(stats.total.invocations, 10, "{stats:?}");
        assert_eq!(stats.total.failed, 2);
        assert!(stats.total.p50_ms.is_some_and(|p| p >= 5.0), "{stats:?}");
        assert!((stats.total.gb_s - gb_s).abs() < 1e-6);
        let points: u64 = stats.points.iter().map(|p| p.invocations).sum();
        assert_eq!(points, 10);
    };
    check(&c).await;

    node.kill9_and_restart();
    let c = node.client();
    check(&c).await;

    // The CLI: a table, JSON, counts and an estimate.
    let out = node.cli(&["usage", "--group-by", "function"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("work") && text.contains("TOTAL"), "{text}");
    let out = node.cli(&["--json", "usage", "--group-by", "day"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["total"]["invocations"], 10, "{v}");
    let out = node.cli(&[
        "usage",
        "count",
        "--function",
        "work",
        "--status",
        "succeeded",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4", "{out:?}");
    let out = node.cli(&["usage", "estimate", "work"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("per 1,000 calls") && text.contains("256 MB"),
        "{text}"
    );
    let out = node.cli(&["--json", "functions", "estimate", "work"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["based_on"]["invocations"], 6, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_work_past_its_limit() {
    let node = TestNode::start();
    let admin = node.client();
    deploy(&admin, "name = \"work\"\nmemory_mb = 1024\n", WORK).await;
    let token = admin
        .create_token("invoker", Some("ci"))
        .await
        .expect("token");
    let ci = node.client_with(Some(&token.token));
    // 1 GB × ≥ 50 ms = ≥ 0.05 GB-s per call: a limit of 0.1 GB-s is
    // reached within a few calls.
    let spec = BudgetSpec {
        period: BudgetPeriod::Day,
        limit: 0.1,
        unit: BudgetUnit::GbS,
        notify_at: Some(0.5),
        enforce: true,
    };
    admin.set_budget(&token.id, &spec).await.expect("budget");
    let mut refused = None;
    for i in 0..200 {
        match ci.invoke("work", r#"{"ms": 50}"#).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (calls, err) = refused.expect("a call past the budget is refused");
    assert!(calls >= 2, "refused after {calls} calls: {err}");
    assert_eq!(err.code(), Some(ErrorCode::BudgetExceeded), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&token.id) && msg.contains("resets at"),
        "{msg}"
    );
    match err {
        shoal_client::Error::Api { status, .. } => assert_eq!(status, 429),
        other => panic!("{other}"),
    }
    // Asynchronous invocations too; the admin's own work is not limited.
    let err = ci.invoke_async("work", "{}").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BudgetExceeded), "{err}");
    admin
        .invoke("work", "{}")
        .await
        .expect("the admin token has no budget");
    let view = admin.budget(&token.id).await.unwrap();
    assert!(view.exceeded && view.spent >= 0.1, "{view:?}");
    // Usage per token names it.
    let u = admin.usage(&[("group_by", Some("token"))]).await.unwrap();
    assert!(
        u.items
            .iter()
            .any(|l| l.key == token.id && l.invocations as usize == calls),
        "{u:?}"
    );

    // Raised: through again (the spend is cached for a second per node).
    admin
        .set_budget(
            &token.id,
            &BudgetSpec {
                limit: 100.0,
                ..spec
            },
        )
        .await
        .unwrap();
    ci.invoke("work", "{}").await.expect("through again");
    // The CLI shows it.
    let out = node.cli(&["usage", "budget", &token.id]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("of 100 GB-s this day") && text.contains("enforced"),
        "{text}"
    );
    let out = node.cli(&["tokens", "budget", &token.id, "rm"]);
    assert!(out.status.success(), "{out:?}");
    let err = admin.budget(&token.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BudgetNotFound));
}
