//! End to end: fan-out jobs with fan-in. `ctx.map` inside handlers (nested,
//! with sizes known only at run time), the fan-in running once with every
//! child's result in order (failures reported, not hidden), job status over
//! HTTP and the CLI, cancel, bad input, and `kill -9` in the middle of a job.

mod common;

use std::time::Duration;

use common::{TestNode, deploy, until, wait_async_drained, wait_final, wait_job};
use serde_json::{Value, json};

const LEAF: &str = r#"
def handler(event, ctx):
    n = event["n"]
    if n % 7 == 3:
        raise ValueError("leaf %d refuses" % n)
    return n * 2
"#;

/// A group fans out to its own leaves: its place in the outer job is then
/// filled by `sum_group`, once all its leaves have finished.
const GROUP: &str = r#"
def handler(event, ctx):
    leaves = [{"n": event["base"] + i} for i in range(event["size"])]
    return {"job": ctx.map("leaf", leaves, then="sum_group")}
"#;

const SUM_GROUP: &str = r#"
def handler(event, ctx):
    results = list(ctx.results(event["job"]))
    assert [r["index"] for r in results] == list(range(event["count"])), results
    ok = [r["output"] for r in results if r["status"] == "succeeded"]
    failed = [r["error"]["message"] for r in results if r["status"] == "failed"]
    return {"sum": sum(ok), "failed": failed}
"#;

const TOP: &str = r#"
def handler(event, ctx):
    groups = [{"base": 100 * g, "size": size} for g, size in enumerate(event["sizes"])]
    return {"job": ctx.map("group", groups, then="final")}
"#;

fn final_py(path: &std::path::Path) -> String {
    format!(
        r#"
import json

def handler(event, ctx):
    results = []
    offset = 0
    while True:
        page = ctx.job_results(event["job"], offset, 2)
        results += page
        if len(page) < 2:
            break
        offset = page[-1]["index"] + 1
    out = {{"count": event["count"], "groups": [r["output"] for r in results]}}
    with open({path:?}, "a") as f:
        f.write(json.dumps(out) + "\n")
    return out
"#,
        path = path.to_str().unwrap()
    )
}

async fn deploy_tree(c: &shoal_client::Client, record: &std::path::Path) {
    deploy(c, "name = \"leaf\"\nretries = 0\nconcurrency = 4", LEAF).await;
    deploy(c, "name = \"group\"\nretries = 0", GROUP).await;
    deploy(c, "name = \"sum_group\"\nretries = 0", SUM_GROUP).await;
    deploy(c, "name = \"top\"\nretries = 0", TOP).await;
    deploy(c, "name = \"final\"\nretries = 0", &final_py(record)).await;
}

/// What `final` must see for groups of these sizes.
fn expected_groups(sizes: &[u64]) -> Vec<Value> {
    sizes
        .iter()
        .enumerate()
        .map(|(g, size)| {
            let ns = (0..*size).map(|i| 100 * g as u64 + i);
            let sum: u64 = ns.clone().filter(|n| n % 7 != 3).map(|n| n * 2).sum();
            let failed: Vec<String> = ns
                .filter(|n| n % 7 == 3)
                .map(|n| format!("leaf {n} refuses"))
                .collect();
            json!({"sum": sum, "failed": failed})
        })
        .collect()
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_dynamic_fan_out_fans_in_once_with_every_result() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("final.ndjson");
    deploy_tree(&c, &record).await;

    // Group sizes are known only at run time; one group is empty.
    let sizes = [5u64, 0, 12, 1, 30];
    let out = c
        .invoke("top", &json!({"sizes": sizes}).to_string())
        .await
        .unwrap()
        .result
        .unwrap();
    let top = out["job"].as_str().unwrap().to_string();
    let job = wait_job(&c, &top, Duration::from_secs(60)).await;
    assert_eq!(job.status, "finished");
    assert_eq!(job.counts.total, 5);
    assert_eq!(job.counts.succeeded, 5, "{job:?}");
    assert_eq!(job.counts.pending, 0);
    assert_eq!(job.progress, 1.0);
    assert!(job.failures.is_empty());
    // The tree: each group's job below the top one, with its leaves' counts.
    assert_eq!(job.jobs.len(), 5);
    let mut totals: Vec<u64> = job.jobs.iter().map(|n| n.counts.total).collect();
    totals.sort();
    assert_eq!(totals, vec![0, 1, 5, 12, 30]);
    let failed: u64 = job.jobs.iter().map(|n| n.counts.failed).sum();
    assert_eq!(
        failed,
        (0..5).map(|g| failures_in(g, sizes[g])).sum::<u64>()
    );
    assert!(job.jobs.iter().all(|n| n.status == "finished"));

    // The fan-in ran once, after everything, with the groups in order.
    let fan_in = job.then_invocation.clone().expect("fan-in started");
    let inv = wait_final(&c, &fan_in, Duration::from_secs(30)).await;
    assert_eq!(inv.status, "succeeded", "{inv:?}");
    let expected = json!({"count": 5, "groups": expected_groups(&sizes)});
    assert_eq!(inv.output, Some(expected.clone()));
    wait_async_drained(&c, "final").await;
    assert_eq!(lines(&record), vec![expected]);

    // Results over HTTP, paged, in child order; a group's failures are
    // listed on its own job.
    let page = c.job_results(&top, 1, 2).await.unwrap();
    assert_eq!(page.results.len(), 2);
    assert_eq!(page.results[0].index, 1);
    assert_eq!(page.next, Some(3));
    assert_eq!(
        page.results[1].output,
        Some(expected_groups(&sizes)[2].clone())
    );
    let big = job.jobs.iter().find(|n| n.counts.total == 30).unwrap();
    let big = c.job(&big.id).await.unwrap();
    assert_eq!(big.parent.as_deref(), Some(top.as_str()));
    assert_eq!(big.continues.as_ref().unwrap().job, top);
    assert_eq!(big.failures.len() as u64, failures_in(4, 30));
    let f = &big.failures[0];
    assert_eq!(f.status, "failed");
    let err = f.error.as_ref().unwrap();
    assert_eq!(err.exception.as_deref(), Some("ValueError"));
    assert_eq!(err.message, "leaf 402 refuses"); // 402 % 7 == 3
    // A failed leaf's own invocation names its slot.
    let leaf = c.invocation(&f.invocation).await.unwrap();
    assert_eq!(leaf.job.as_ref().unwrap().job, big.id);
    assert_eq!(leaf.job.as_ref().unwrap().index, f.index);
    // The group invocation handed its slot to the leaves' job.
    let group = c
        .invocation(&big.invocation.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(group.handed_to.as_deref(), Some(big.id.as_str()));

    // The CLI shows the same job.
    let shown = node.cli(&["jobs", "show", &top]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("finished"), "{text}");
    assert!(text.contains("5 succeeded"), "{text}");
    assert!(text.contains("jobs below:"), "{text}");
    let results = node.cli(&["jobs", "results", &top]);
    assert!(results.status.success(), "{results:?}");
    assert_eq!(String::from_utf8_lossy(&results.stdout).lines().count(), 5);
}

fn failures_in(group: usize, size: u64) -> u64 {
    (0..size)
        .filter(|i| (100 * group as u64 + i) % 7 == 3)
        .count() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_over_http_empty_jobs_and_bad_input() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("final.ndjson");
    deploy_tree(&c, &record).await;

    // Started over HTTP; no children: the fan-in runs at once with count 0.
    let id = c.start_job("leaf", vec![], Some("final")).await.unwrap();
    let first = id.clone();
    let job = wait_job(&c, &id, Duration::from_secs(10)).await;
    assert_eq!(job.status, "finished");
    assert_eq!(job.counts.total, 0);
    let inv = wait_final(&c, &job.then_invocation.unwrap(), Duration::from_secs(30)).await;
    assert_eq!(inv.output, Some(json!({"count": 0, "groups": []})));

    // Without a fan-in, from the CLI, with a file of events.
    let events = tmp.path().join("events.json");
    std::fs::write(&events, json!([{"n": 1}, {"n": 3}, {"n": 4}]).to_string()).unwrap();
    let out = node.cli(&[
        "--json",
        "jobs",
        "start",
        "leaf",
        &format!("@{}", events.display()),
    ]);
    assert!(out.status.success(), "{out:?}");
    let id: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = wait_job(&c, id["job"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!((job.counts.succeeded, job.counts.failed), (2, 1));
    assert_eq!(job.then_invocation, None);
    let results = c.job_results(&job.id, 0, 10).await.unwrap().results;
    let outputs: Vec<Option<Value>> = results.iter().map(|r| r.output.clone()).collect();
    assert_eq!(outputs, vec![Some(json!(2)), None, Some(json!(8))]);

    // `shoal jobs` lists them newest first, a page at a time.
    let second = job.id.clone();
    let out = node.cli(&["--json", "jobs", "--limit", "1"]);
    assert!(out.status.success(), "{out:?}");
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], json!(second), "{page}");
    assert_eq!(page["jobs"][0]["counts"]["failed"], json!(1), "{page}");
    assert_eq!(page["next"], json!(second));
    let out = node.cli(&["--json", "jobs", "--cursor", &second]);
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], json!(first), "{page}");
    assert_eq!(page["jobs"][0]["then"], json!("final"), "{page}");
    assert_eq!(page["next"], Value::Null);
    let out = node.cli(&["jobs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID"), "{text}");
    assert!(
        lines[1].starts_with(&second) && lines[1].contains("3/3"),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&first) && lines[2].contains("leaf → final"),
        "{text}"
    );

    let out = node.cli(&["jobs", "start", "leaf", "{\"n\": 1}"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JSON array"),
        "{out:?}"
    );

    // ctx.map of an unknown function raises HostError in the handler.
    deploy(
        &c,
        "name = \"mapper\"",
        "def handler(event, ctx):\n    try:\n        ctx.map('nope', [1])\n    except ctx.HostError as e:\n        return e.code\n",
    )
    .await;
    let out = c.invoke("mapper", "{}").await.unwrap().result.unwrap();
    assert_eq!(out, json!("function_not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_stops_its_children_and_never_fans_in() {
    let node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("final.ndjson");
    deploy(
        &c,
        "name = \"slow\"\nconcurrency = 1",
        "import time\ndef handler(event, ctx):\n    time.sleep(0.1)\n    return event\n",
    )
    .await;
    deploy(&c, "name = \"final\"\nretries = 0", &final_py(&record)).await;
    let events: Vec<Value> = (0..60).map(|i| json!(i)).collect();
    let id = c.start_job("slow", events, Some("final")).await.unwrap();
    until("2 children done", Duration::from_secs(30), async || {
        c.job(&id).await.unwrap().counts.succeeded >= 2
    })
    .await;
    let out = node.cli(&["jobs", "cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    let job = wait_job(&c, &id, Duration::from_secs(30)).await;
    assert_eq!(job.status, "cancelled");
    assert!(job.cancelled_at_ms.is_some());
    assert_eq!(job.counts.pending, 0);
    assert!(job.counts.cancelled >= 40, "{:?}", job.counts);
    assert_eq!(job.counts.succeeded + job.counts.cancelled, 60);
    assert_eq!(job.then_invocation, None);
    let last = c.job_results(&id, 59, 1).await.unwrap().results;
    assert_eq!(last[0].status, "cancelled");
    let inv = c.invocation(&last[0].invocation).await.unwrap();
    assert_eq!(inv.status, "cancelled");
    assert_eq!(inv.attempts, 0);
    wait_async_drained(&c, "final").await;
    assert!(lines(&record).is_empty(), "the fan-in ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_kill_9_and_fans_in_once() {
    let mut node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("final.ndjson");
    deploy(
        &c,
        "name = \"work\"\nconcurrency = 4\nretries = 0",
        "import time\ndef handler(event, ctx):\n    time.sleep(0.01)\n    return event * 3\n",
    )
    .await;
    deploy(&c, "name = \"final\"\nretries = 0", &final_py(&record)).await;
    let events: Vec<Value> = (0..400).map(|i| json!(i)).collect();
    let id = c.start_job("work", events, Some("final")).await.unwrap();
    until("50 children done", Duration::from_secs(30), async || {
        c.job(&id).await.unwrap().counts.succeeded >= 50
    })
    .await;
    node.kill9_and_restart();
    let c = node.client();
    let job = wait_job(&c, &id, Duration::from_secs(90)).await;
    assert_eq!(job.status, "finished");
    assert_eq!(job.counts.succeeded, 400, "{:?}", job.counts);
    let inv = wait_final(&c, &job.then_invocation.unwrap(), Duration::from_secs(30)).await;
    let groups: Vec<Value> = (0..400).map(|i| json!(i * 3)).collect();
    assert_eq!(inv.output, Some(json!({"count": 400, "groups": groups})));
    wait_async_drained(&c, "final").await;
    assert_eq!(lines(&record).len(), 1, "the fan-in ran more than once");
}

/// The README's fan-out tour: `examples/fanout` through the CLI.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_fanout_example_runs() {
    let node = TestNode::start();
    let c = node.client();
    for f in ["square", "total"] {
        let dir = common::repo_root().join("examples/fanout").join(f);
        let out = node.cli(&["deploy", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = node.cli(&["jobs", "start", "square", "[1, 2, 3, 4]", "--then", "total"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let id = text
        .strip_prefix("Started job ")
        .and_then(|t| t.split(". ").next())
        .unwrap_or_else(|| panic!("{text}"));
    let job = wait_job(&c, id, Duration::from_secs(30)).await;
    let fan_in = job.then_invocation.expect("fan-in started");
    let inv = wait_final(&c, &fan_in, Duration::from_secs(30)).await;
    assert_eq!(
        inv.output,
        Some(json!({"children": 4, "failed": [], "total": 30}))
    );
    let shown = node.cli(&["jobs", "show", id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("4 succeeded"), "{shown}");
    assert!(
        shown.contains(&format!("fan-in     invocation {fan_in}")),
        "{shown}"
    );
}
