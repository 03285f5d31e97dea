//! Usage, stats, counts and budgets, read from the store's rollups: what
//! the dispatcher's record writes add up to, and records written straight
//! into the store (with the token that started them).

mod common;

use std::sync::Arc;

use common::{BASE_MS, Node};

use shoal_engine::usage::{Budget, BudgetPeriod, BudgetUnit, GroupBy, Prices, UsageQuery};
use shoal_engine::{Entity, Error, Origin};
use shoal_store::memory::MemoryStore;
use shoal_store::{Backend, InvocationFilter, InvocationRecord};
use shoal_types::{FunctionName, InvocationMode, InvocationStatus, Role};

/// A final record of `function` created at `at`.
fn record(id: &str, function: &str, status: InvocationStatus, at: u64) -> InvocationRecord {
    InvocationRecord {
        id: id.to_string(),
        function: FunctionName::parse(function).unwrap(),
        version: 1,
        mode: InvocationMode::Async,
        status,
        input: "{}".to_string(),
        output: None,
        error: None,
        attempts: 1,
        max_attempts: 1,
        created_at_ms: at,
        started_at_ms: Some(at),
        finished_at_ms: Some(at + 10),
        duration_ms: Some(10.0),
        queued_ms: None,
        billed_gb_s: 0.5,
        cold_start: false,
        next_attempt_at_ms: None,
        job: None,
        handed_to: None,
        cache_hit: false,
        token: None,
        user: None,
    }
}

fn memory() -> Backend {
    Backend::from_adapter(Arc::new(MemoryStore::new()))
}

/// The dispatcher's own writes: usage totals equal the sums of the
/// invocations' records, by function and in the count.
#[tokio::test(start_paused = true)]
async fn usage_adds_up_the_records() {
    let node = Node::with(None, memory()).await;
    node.deploy("name = \"a\"\nmemory_mb = 256\n").await;
    node.deploy("name = \"b\"\n").await;
    for _ in 0..3 {
        node.engine.invoke("a", "{}".to_string()).await.unwrap();
    }
    node.engine.invoke("b", "{}".to_string()).await.unwrap();
    let id = node
        .engine
        .invoke_async("b", "{}".to_string())
        .await
        .unwrap();
    node.wait_final(&id).await;
    let mut gb_s = 0.0;
    let mut n = 0;
    node.until("every record is stored final", || async {
        let page = node
            .engine
            .list_invocations(&InvocationFilter::default(), None, 100)
            .await
            .unwrap();
        page.records.len() == 5 && page.records.iter().all(|r| r.status.is_final())
    })
    .await;
    let page = node
        .engine
        .list_invocations(&InvocationFilter::default(), None, 100)
        .await
        .unwrap();
    for r in &page.records {
        gb_s += r.billed_gb_s;
        n += 1;
    }
    let report = node
        .engine
        .usage()
        .usage(&UsageQuery {
            group_by: Some(GroupBy::Function),
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(report.total.invocations, n);
    assert!(
        (report.total.gb_s - gb_s).abs() < 1e-6,
        "{report:?} vs {gb_s}"
    );
    let keys: Vec<(&str, u64)> = report
        .items
        .iter()
        .map(|l| (l.key.as_str(), l.invocations))
        .collect();
    assert_eq!(keys, vec![("a", 3), ("b", 2)]);
    let p = Prices::default();
    let want = p.cost(n, gb_s);
    assert!((report.total.cost - want).abs() < 1e-9);
    assert_eq!(
        node.engine
            .usage()
            .count(None, None, None, None)
            .await
            .unwrap(),
        5
    );
    let a = FunctionName::parse("a").unwrap();
    assert_eq!(
        node.engine
            .usage()
            .count(Some(&a), Some(InvocationStatus::Succeeded), None, None)
            .await
            .unwrap(),
        3
    );
    let stats = node
        .engine
        .usage()
        .stats(None, None, None, None)
        .await
        .unwrap();
    assert_eq!(stats.total.invocations, 5);
    assert!(stats.total.p50_ms.is_some());
    // Steps of an hour read hour rows, from a whole hour.
    let hourly = node
        .engine
        .usage()
        .stats(Some(BASE_MS - 86_400_000), None, Some(3_600), None)
        .await
        .unwrap();
    assert_eq!(hourly.since_ms % 3_600_000, 0);
    assert_eq!(hourly.total.invocations, 5);
    assert_eq!(hourly.points.len(), 1, "{hourly:?}");
    let est = node.engine.estimate("a").await.unwrap();
    assert_eq!((est.invocations, est.memory_mb), (3, 256));
    assert!(est.cost_per_1000.is_some_and(|c| c > 0.0));
    node.stop().await;
}

/// Counts are exact at any edge: whole minutes from the rollups, the edge
/// minutes and records not final yet from the indexes.
#[tokio::test(start_paused = true)]
async fn counts_are_exact_at_minute_edges() {
    let backend = memory();
    let node = Node::with(None, backend.clone()).await;
    let t0 = BASE_MS - BASE_MS % 86_400_000 - 86_400_000; // yesterday 00:00
    let mut records = Vec::new();
    // One record every 7 s over 3 days, some still queued.
    for i in 0..(3 * 86_400 / 7) {
        let at = t0 + i * 7_000 + 3;
        let status = match i % 5 {
            0 => InvocationStatus::Queued,
            1 => InvocationStatus::Failed,
            _ => InvocationStatus::Succeeded,
        };
        let f = if i % 2 == 0 { "even" } else { "odd" };
        records.push(record(&format!("r{i:06}"), f, status, at));
    }
    backend
        .invocations
        .put_invocations(records.clone())
        .await
        .unwrap();
    let usage = node.engine.usage();
    let even = FunctionName::parse("even").unwrap();
    for (since, until) in [
        (None, None),
        (Some(t0 + 12_345), Some(t0 + 86_400_000 * 2 + 61_001)),
        (Some(t0 + 60_000), Some(t0 + 120_000)),
        (Some(t0 + 59_999), Some(t0 + 60_001)),
        (Some(t0 + 86_400_000 - 1), None),
    ] {
        for function in [None, Some(&even)] {
            for status in [
                None,
                Some(InvocationStatus::Queued),
                Some(InvocationStatus::Failed),
            ] {
                let want = records
                    .iter()
                    .filter(|r| {
                        since.is_none_or(|s| r.created_at_ms >= s)
                            && until.is_none_or(|u| r.created_at_ms < u)
                            && function.is_none_or(|f| *f == r.function)
                            && status.is_none_or(|s| s == r.status)
                    })
                    .count() as u64;
                let got = usage.count(function, status, since, until).await.unwrap();
                assert_eq!(got, want, "{since:?}..{until:?} {function:?} {status:?}");
            }
        }
    }
    node.stop().await;
}

/// A budget refuses the token's new work past its limit (with enforce),
/// lets it through again once raised, and belongs to an existing token.
#[tokio::test(start_paused = true)]
async fn budgets_refuse_past_the_limit() {
    let backend = memory();
    let node = Node::with(None, backend.clone()).await;
    let (token, _) = node
        .engine
        .create_token(Role::Invoker, "ci", Vec::new())
        .await
        .unwrap();
    let usage = node.engine.usage();
    let budget = Budget {
        period: BudgetPeriod::Day,
        limit: 2.0,
        unit: BudgetUnit::GbS,
        notify_at: Some(0.5),
        enforce: true,
    };
    assert!(matches!(
        usage.set_budget("tok_nope", budget.clone()).await,
        Err(Error::NotFound {
            entity: Entity::Token,
            ..
        })
    ));
    assert!(matches!(
        usage.budget(&token.id).await,
        Err(Error::NotFound {
            entity: Entity::Budget,
            ..
        })
    ));
    let view = usage.set_budget(&token.id, budget.clone()).await.unwrap();
    assert_eq!((view.spent, view.exceeded), (0.0, false));
    usage.admit(Some(&token.id)).await.unwrap();

    // 4 × 0.5 GB-s of this token today (another token's work is not its).
    let mut records = Vec::new();
    for i in 0..4 {
        let mut r = record(
            &format!("t{i}"),
            "f",
            InvocationStatus::Succeeded,
            BASE_MS - 1_000,
        );
        r.token = Some(token.id.clone());
        records.push(r);
    }
    let mut other = record("o", "f", InvocationStatus::Succeeded, BASE_MS - 1_000);
    other.token = Some("someone-else".to_string());
    records.push(other);
    backend.invocations.put_invocations(records).await.unwrap();
    // The spend is cached for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let err = usage.admit(Some(&token.id)).await.unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&token.id) && msg.contains("daily") && msg.contains("resets at"),
        "{msg}"
    );
    let view = usage.budget(&token.id).await.unwrap();
    assert!((view.spent - 2.0).abs() < 1e-9 && view.exceeded, "{view:?}");
    // Work no token started has no budget; other tokens are not affected.
    usage.admit(None).await.unwrap();
    usage.admit(Some("someone-else")).await.unwrap();

    // Not enforced: reported, not refused.
    usage
        .set_budget(
            &token.id,
            Budget {
                enforce: false,
                ..budget.clone()
            },
        )
        .await
        .unwrap();
    usage.admit(Some(&token.id)).await.unwrap();
    // Raised: through again.
    usage
        .set_budget(
            &token.id,
            Budget {
                limit: 10.0,
                ..budget.clone()
            },
        )
        .await
        .unwrap();
    usage.admit(Some(&token.id)).await.unwrap();
    // In USD: 2 GB-s and 4 invocations at the prices set.
    usage
        .set_prices(Prices {
            currency: "EUR".to_string(),
            per_gb_s: 1.0,
            per_million_invocations: 1e6,
            per_gb_month_stored: 0.0,
        })
        .await
        .unwrap();
    let view = usage
        .set_budget(
            &token.id,
            Budget {
                unit: BudgetUnit::Usd,
                limit: 5.0,
                period: BudgetPeriod::Month,
                ..budget
            },
        )
        .await
        .unwrap();
    assert!((view.spent - 6.0).abs() < 1e-9, "{view:?}");
    assert!(matches!(
        usage.admit(Some(&token.id)).await,
        Err(Error::BudgetExceeded(_))
    ));
    usage.remove_budget(&token.id).await.unwrap();
    usage.admit(Some(&token.id)).await.unwrap();
    assert!(usage.remove_budget(&token.id).await.is_err());
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn prices_are_checked_and_kept() {
    let node = Node::start().await;
    let usage = node.engine.usage();
    assert_eq!(usage.prices().await.unwrap(), Prices::default());
    let bad = Prices {
        per_gb_s: -1.0,
        ..Prices::default()
    };
    assert!(matches!(
        usage.set_prices(bad).await,
        Err(Error::Invalid(_))
    ));
    let p = Prices {
        currency: "EUR".to_string(),
        per_gb_s: 0.00002,
        per_million_invocations: 0.25,
        per_gb_month_stored: 0.02,
    };
    usage.set_prices(p.clone()).await.unwrap();
    assert_eq!(usage.prices().await.unwrap(), p);
    node.stop().await;
}

/// The entry points that start new work check the budget of the token
/// that starts it: sync and async invocations are refused past an enforced
/// limit; work of no token, or of another token, goes on.
#[tokio::test(start_paused = true)]
async fn invocations_of_a_token_past_its_budget_are_refused() {
    let backend = memory();
    let node = Node::with(None, backend.clone()).await;
    node.deploy("name = \"f\"\n").await;
    let (token, _) = node
        .engine
        .create_token(Role::Invoker, "ci", Vec::new())
        .await
        .unwrap();
    let origin = Origin {
        token: Some(token.id.clone()),
        user: None,
    };
    let budget = Budget {
        period: BudgetPeriod::Day,
        limit: 1.0,
        unit: BudgetUnit::GbS,
        notify_at: None,
        enforce: true,
    };
    node.engine
        .usage()
        .set_budget(&token.id, budget.clone())
        .await
        .unwrap();
    node.engine
        .invoke_by(&origin, "f", "{}".to_string())
        .await
        .unwrap();
    let mut r = record("big", "f", InvocationStatus::Succeeded, BASE_MS);
    r.token = Some(token.id.clone());
    r.billed_gb_s = 1.5;
    backend.invocations.put_invocations(vec![r]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let err = node
        .engine
        .invoke_by(&origin, "f", "{}".to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded(_)), "{err}");
    let err = node
        .engine
        .invoke_async_by(&origin, "f", "{}".to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded(_)), "{err}");
    node.engine.invoke("f", "{}".to_string()).await.unwrap();
    // Raised: the token's work runs again.
    node.engine
        .usage()
        .set_budget(
            &token.id,
            Budget {
                limit: 5.0,
                ..budget
            },
        )
        .await
        .unwrap();
    node.engine
        .invoke_by(&origin, "f", "{}".to_string())
        .await
        .unwrap();
    node.stop().await;
}

/// At `notify_at` × limit, `budget.reached` goes out once per period
/// through the notifications (a webhook here).
#[tokio::test(start_paused = true)]
async fn the_threshold_notifies_once_per_period() {
    let data = tempfile::tempdir().unwrap();
    let backend = memory();
    let hook = shoal_engine::RecordingWebhook::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let engine = shoal_engine::start_with(shoal_engine::Parts {
        opts: shoal_engine::Options::new(data.path().to_path_buf()),
        backend: backend.clone(),
        runtime: Arc::new(shoal_runtime::fake::FakeRuntime::new()),
        clock: Arc::new(shoal_engine::TokioClock::starting_at(BASE_MS)),
        random: None,
        shutdown: shutdown.clone(),
        webhook: Some(Arc::new(hook.clone())),
    })
    .await
    .unwrap();
    engine
        .put_notification(
            "ops",
            shoal_engine::NotificationSpec {
                url: "http://hooks.test/ops".to_string(),
                events: Some(vec!["budget.reached".to_string()]),
                functions: Vec::new(),
                secret: None,
            },
        )
        .await
        .unwrap();
    let (token, _) = engine
        .create_token(Role::Invoker, "ci", Vec::new())
        .await
        .unwrap();
    let budget = Budget {
        period: BudgetPeriod::Month,
        limit: 1.0,
        unit: BudgetUnit::GbS,
        notify_at: Some(0.5),
        enforce: false,
    };
    engine.usage().set_budget(&token.id, budget).await.unwrap();
    engine.usage().admit(Some(&token.id)).await.unwrap();
    let mut r = record("half", "f", InvocationStatus::Succeeded, BASE_MS);
    r.token = Some(token.id.clone());
    r.billed_gb_s = 0.6;
    backend.invocations.put_invocations(vec![r]).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        engine.usage().admit(Some(&token.id)).await.unwrap();
    }
    let mut requests = Vec::new();
    for _ in 0..1_000 {
        requests = hook.requests();
        if !requests.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let requests_after = hook.requests();
    assert_eq!(requests_after.len(), 1, "{requests_after:?}");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["type"], "budget.reached", "{body}");
    assert_eq!(body["data"]["token"], token.id.as_str(), "{body}");
    assert!(
        (body["data"]["spent"].as_f64().unwrap() - 0.6).abs() < 1e-9,
        "{body}"
    );
    shutdown.cancel();
}

/// Grouped by day, usage shows the bytes stored that day, from a sample
/// each node takes every 10 minutes.
#[tokio::test(start_paused = true)]
async fn days_show_the_bytes_stored() {
    let node = Node::with(None, memory()).await;
    node.engine.create_category("docs", None).await.unwrap();
    node.engine
        .write_docs(
            "docs",
            vec![shoal_engine::NewDoc {
                id: Some("a".to_string()),
                body: br#"{"x": 1}"#.to_vec(),
            }],
        )
        .await
        .unwrap();
    let bytes = node.engine.usage().sample_stored().await.unwrap();
    assert!(bytes > 0);
    let report = node
        .engine
        .usage()
        .usage(&UsageQuery {
            group_by: Some(GroupBy::Day),
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    let today = report.items.last().expect("today");
    assert_eq!(today.stored_bytes, Some(bytes), "{report:?}");
    assert_eq!(report.stored.documents_bytes, bytes);
    node.stop().await;
}
