//! The Python client (`python/`) against a real node: runs the unittest
//! suite `python/tests/test_client.py`, which covers every client method,
//! with the node's URL and admin token in its environment.

mod common;

use std::process::{Command, Output};

use common::{TestNode, repo_root};

fn run_python(node: &TestNode, args: &[&str]) -> Output {
    let root = repo_root();
    let cwd = tempfile::tempdir().expect("tempdir");
    Command::new("python3")
        .args(args)
        .current_dir(cwd.path())
        .env("SHOAL_URL", &node.url)
        .env("SHOAL_TOKEN", &node.token)
        // The package straight from the source tree, not an installed copy.
        .env("PYTHONPATH", root.join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("run python3")
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn python_client_suite_passes() {
    let node = TestNode::start();
    let script = repo_root().join("python/tests/test_client.py");
    let out = run_python(&node, &[script.to_str().unwrap()]);
    let text = show(&out);
    assert!(out.status.success(), "python client tests failed\n{text}");
    // unittest reports on stderr; make sure the suite really ran (a missing
    // URL would skip every test and still exit 0).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\nOK"), "{text}");
    assert!(!stderr.contains("skipped"), "tests were skipped\n{text}");
    assert!(stderr.contains("Ran "), "{text}");
}

#[test]
fn python_client_quick_tour() {
    // A short tour in a fresh interpreter, as a user would write it.
    let node = TestNode::start();
    let hello = repo_root().join("examples/hello");
    let code = format!(
        r#"
from shoal import Client, FunctionError, ShoalError
shoal = Client()
print(shoal.deploy({hello:?})["name"])
print(shoal.invoke("hello", {{"name": "Ada"}}))
print(shoal.write("orders", [{{"id": "o1", "price": 3, "qty": 2}}, {{"id": "o2", "price": 5, "qty": 1}}]))
print(shoal.get("orders", "o2"))
try:
    shoal.invoke("nope")
except ShoalError as e:
    print(e.status, e.code)
"#,
        hello = hello.to_str().unwrap()
    );
    let out = run_python(&node, &["-c", &code]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n{'hello': 'Ada'}\n['o1', 'o2']\n{'id': 'o2', 'price': 5, 'qty': 1}\n404 function_not_found\n",
        "{}",
        show(&out)
    );
}
