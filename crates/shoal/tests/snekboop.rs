//! The Snekboop example (`examples/snekboop`) against a real node: the demo
//! and every CLI command, with the expected answers computed here,
//! independently of the Python code.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{TestNode, repo_root};
use serde_json::{Value, json};

fn snekboop(node: &TestNode, args: &[&str]) -> Output {
    snekboop_in(node, args, None)
}

fn snekboop_in(node: &TestNode, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let script = repo_root().join("examples/snekboop/snekboop.py");
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .current_dir(cwd.path())
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The script finds the client in the source tree by itself.
        .env_remove("PYTHONPATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("snekboop output")
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "snekboop failed\n{}", show(&out));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn cents(n: u64) -> String {
    format!("{}.{:02}", n / 100, n % 100)
}

/// The demo's data, by the formulas documented in snekboop.py.
struct DemoData {
    /// (id, price_cents, qty)
    orders: Vec<(String, u64, u64)>,
    /// (age, country)
    users: Vec<(u64, &'static str)>,
}

fn demo_data() -> DemoData {
    const COUNTRIES: [&str; 5] = ["DK", "FI", "IS", "NO", "SE"];
    DemoData {
        orders: (0..240u64)
            .map(|i| {
                (
                    format!("order-{i:04}"),
                    199 + (i * 37) % 1000,
                    1 + (i * 7) % 5,
                )
            })
            .collect(),
        users: (0..30u64)
            .map(|j| (18 + (j * 13) % 50, COUNTRIES[((j * j) % 5) as usize]))
            .collect(),
    }
}

fn expected_demo_lines(url: &str) -> Vec<String> {
    let data = demo_data();
    let revenue: u64 = data.orders.iter().map(|(_, p, q)| p * q).sum();
    let mut big: Vec<(&str, u64)> = data
        .orders
        .iter()
        .map(|(id, p, q)| (id.as_str(), p * q))
        .filter(|(_, total)| *total >= 3000)
        .collect();
    big.sort();
    let big_sum: u64 = big.iter().map(|(_, t)| t).sum();
    let first: Vec<&str> = big.iter().take(5).map(|(id, _)| *id).collect();
    let mut countries: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, c) in &data.users {
        *countries.entry(c).or_default() += 1;
    }
    let countries = countries
        .iter()
        .map(|(c, n)| format!("\"{c}\": {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ages: Vec<u64> = data.users.iter().map(|(a, _)| *a).collect();
    vec![
        format!("snekboop demo on {url}"),
        // Slots depend on the node's round-robin counter: checked apart.
        "wrote 240 orders: 240 documents in 8 shards on slots [".into(),
        "wrote 30 users: 30 documents in 2 shards on slots [".into(),
        "registered age_stats, big_orders, country_counts, revenue".into(),
        format!(
            "revenue: {revenue} cents = {} over 240 orders in 8 shards",
            cents(revenue)
        ),
        format!(
            "big orders (>= 30.00): {}, worth {}",
            big.len(),
            cents(big_sum)
        ),
        format!("  first: {}", first.join(", ")),
        format!("users by country: {{{countries}}}"),
        format!(
            "ages: count {}, sum {}, min {}, max {}",
            ages.len(),
            ages.iter().sum::<u64>(),
            ages.iter().min().unwrap(),
            ages.iter().max().unwrap()
        ),
        "age_stats over orders: null".into(),
    ]
}

fn check_demo(stdout: &str, url: &str) {
    let got: Vec<&str> = stdout.lines().collect();
    let want = expected_demo_lines(url);
    assert_eq!(got.len(), want.len(), "demo output:\n{stdout}");
    for (g, w) in got.iter().zip(&want) {
        if w.ends_with('[') {
            assert!(g.starts_with(w.as_str()), "{g:?} should start with {w:?}");
            let slots: Vec<u64> = serde_json::from_str(&g[w.len() - 1..]).expect("slot list");
            let shards: usize = if w.contains("8 shards") { 8 } else { 2 };
            assert_eq!(slots.len(), shards, "{g}");
        } else {
            assert_eq!(g, w, "demo output:\n{stdout}");
        }
    }
}

#[test]
fn demo_prints_the_right_answers() {
    let node = TestNode::start();
    let stdout = ok(snekboop(&node, &["demo"]));
    check_demo(&stdout, &node.url);
    // Again: the documents carry ids, so a second run replaces them and the
    // answers stay the same (the functions get new versions).
    let stdout = ok(snekboop(&node, &["demo"]));
    check_demo(&stdout, &node.url);

    // The data is really on the node, placed on distinct slots round-robin.
    let out = ok(snekboop(&node, &["categories"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("orders: 240 documents, "), "{out}");
    assert!(lines[1].starts_with("users: 30 documents, "), "{out}");
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().unwrap().to_string()
}

#[test]
fn cli_write_add_function_and_query() {
    let node = TestNode::start();
    let functions = repo_root().join("examples/snekboop/functions");
    let tmp = tempfile::tempdir().expect("tempdir");

    // `deploy` registers every function of the example.
    let out = ok(snekboop(&node, &["deploy"]));
    for name in ["age_stats", "big_orders", "country_counts", "revenue"] {
        assert!(
            out.contains(&format!("registered {name} version 1")),
            "{out}"
        );
    }
    // The same code again is no new version (deploys of identical code are
    // a no-op that says so); changed code is.
    let revenue = functions.join("revenue");
    let out = ok(snekboop(
        &node,
        &["add_function", revenue.to_str().unwrap()],
    ));
    assert_eq!(out, "revenue unchanged, still version 1\n");
    let changed = tmp.path().join("revenue");
    std::fs::create_dir_all(&changed).unwrap();
    for entry in std::fs::read_dir(&revenue).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), changed.join(entry.file_name())).unwrap();
        }
    }
    let main = changed.join("main.py");
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{code}\n# changed\n")).unwrap();
    let out = ok(snekboop(
        &node,
        &["add_function", changed.to_str().unwrap()],
    ));
    assert_eq!(out, "registered revenue version 2\n");

    // NDJSON file, written in several atomic batches.
    let sales: Vec<Value> = (0..1500u64)
        .map(|i| {
            json!({"id": format!("s{i}"), "price_cents": 50 + (i * 91) % 4000, "qty": 1 + i % 4})
        })
        .collect();
    let ndjson: String = sales.iter().map(|d| format!("{d}\n")).collect();
    let file = write_file(tmp.path(), "sales.ndjson", &ndjson);
    let out = ok(snekboop(
        &node,
        &["write", "sales", &file, "--batch-size", "400"],
    ));
    assert!(
        out.starts_with("wrote 1500 documents to sales (1500 documents in "),
        "{out}"
    );

    let total: u64 = sales
        .iter()
        .map(|d| d["price_cents"].as_u64().unwrap() * d["qty"].as_u64().unwrap())
        .sum();
    let out = ok(snekboop(&node, &["query", "sales", "revenue"]));
    assert_eq!(out, format!("{total}\n"));

    // Map only: one value per line, every big sale exactly once.
    let out = ok(snekboop(&node, &["query", "sales", "big_orders"]));
    let mut got: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON value per line"))
        .collect();
    got.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    let mut want: Vec<Value> = sales
        .iter()
        .filter_map(|d| {
            let t = d["price_cents"].as_u64().unwrap() * d["qty"].as_u64().unwrap();
            (t >= 3000).then(|| json!({"id": d["id"], "total_cents": t}))
        })
        .collect();
    want.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // A JSON array from stdin; map_batch + reduce over it.
    let users = json!([
        {"id": "u1", "age": 30, "country": "NO"},
        {"id": "u2", "age": 40, "country": "SE"},
        {"id": "u3", "age": 50, "country": "NO"},
        {"id": "u4", "name": "no age, no country"}
    ]);
    let out = snekboop_in(&node, &["write", "people", "-"], Some(&users.to_string()));
    let out = ok(out);
    assert!(out.starts_with("wrote 4 documents to people"), "{out}");
    let out = ok(snekboop(&node, &["query", "people", "country_counts"]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"NO": 2, "SE": 1})
    );
    let out = snekboop(&node, &["query", "people", "age_stats", "--stats"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        serde_json::from_str::<Value>(&ok(out)).unwrap(),
        json!({"count": 3, "sum": 120, "min": 30, "max": 50})
    );
    assert!(stderr.starts_with("4 documents, "), "{stderr}");

    // Failures: a clear message and a non-zero exit.
    let out = snekboop(&node, &["query", "sales", "nope"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("function_not_found"),
        "{}",
        show(&out)
    );
    let out = snekboop(&node, &["query", "nothing-here", "revenue"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("category_not_found"),
        "{}",
        show(&out)
    );
    let bad = write_file(tmp.path(), "bad.ndjson", "{\"a\": 1}\n{not json\n");
    let out = snekboop(&node, &["write", "sales", &bad]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2 is not JSON"),
        "{}",
        show(&out)
    );
}
