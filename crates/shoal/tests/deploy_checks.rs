//! End to end: a version goes live only once its module imports and its
//! handler exists in a real worker. A broken deploy (syntax error, missing
//! handler, import of a package that is not installed) is refused with
//! `invalid_function` and the user's own traceback, and the previous
//! version keeps answering; `--dry-run` checks without deploying and
//! leaves nothing behind.

mod common;

use std::path::Path;

use common::TestNode;
use serde_json::{Value, json};
use shoal_client::protocol::ErrorCode;

const GOOD: &str = "def handler(event, ctx):\n    return 'v1'\n";

/// The runtime's own files never show in a refusal.
fn assert_users_own(message: &str) {
    for internal in ["_shoal_runner", "<frozen", "importlib", "template.py"] {
        assert!(
            !message.contains(internal),
            "{internal} in the traceback:\n{message}"
        );
    }
}

/// Entries under the node's directory for this function's code.
fn code_dirs(data_dir: &Path, name: &str) -> Vec<String> {
    match std::fs::read_dir(data_dir.join("functions").join(name)) {
        Err(_) => Vec::new(),
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_deploy_is_refused_with_the_users_traceback_and_the_previous_version_answers() {
    let node = TestNode::start();
    let c = node.client();
    let dir = common::function_dir("name = \"hello\"", GOOD);
    let path = dir.path().to_str().unwrap();
    let out = node.cli(&["deploy", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.invoke("hello", "{}").await.unwrap().result.unwrap(),
        json!("v1")
    );

    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "name = \"hello\"",
            "def handler(event, ctx):\n    return (1,\n",
            &["SyntaxError", "File \"main.py\", line 2"],
        ),
        (
            "name = \"hello\"\nhandler = \"main:hendler\"",
            GOOD,
            &["AttributeError", "hendler"],
        ),
        (
            "name = \"hello\"",
            "import surely_not_installed_pkg\n\ndef handler(event, ctx):\n    return 1\n",
            &[
                "ModuleNotFoundError",
                "No module named 'surely_not_installed_pkg'",
                "File \"main.py\", line 1",
            ],
        ),
        // An error raised in a module of the function's own: both of its
        // frames, none of the import machinery's.
        (
            "name = \"hello\"",
            "import helper\n\ndef handler(event, ctx):\n    return 1\n",
            &[
                "File \"main.py\", line 1",
                "File \"helper.py\", line 2",
                "ZeroDivisionError",
            ],
        ),
    ];
    std::fs::write(dir.path().join("helper.py"), "X = 1\nY = X / 0\n").unwrap();
    for (manifest, main_py, expected) in cases {
        std::fs::write(dir.path().join("shoal.toml"), manifest).unwrap();
        std::fs::write(dir.path().join("main.py"), main_py).unwrap();

        // HTTP: 400 invalid_function with the traceback.
        let archive = shoal_client::pack_dir(dir.path()).unwrap();
        let err = c.deploy(archive).await.unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (Some(400), Some(ErrorCode::InvalidFunction)),
            "{err}"
        );
        let message = err.to_string();
        for e in expected {
            assert!(message.contains(e), "{e:?} missing in:\n{message}");
        }
        assert!(message.contains("version 1 stays live"), "{message}");
        assert_users_own(&message);

        // CLI: exit non-zero, the same traceback on stderr.
        let out = node.cli(&["deploy", path]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for e in expected {
            assert!(stderr.contains(e), "{e:?} missing in:\n{stderr}");
        }
        assert_users_own(&stderr);

        // Nothing changed: version 1 answers, and is the only one.
        assert_eq!(
            c.invoke("hello", "{}").await.unwrap().result.unwrap(),
            json!("v1")
        );
        assert_eq!(
            c.function_versions("hello").await.unwrap().versions.len(),
            1
        );
        assert_eq!(
            code_dirs(&node.data_dir, "hello").len(),
            1,
            "no code left behind"
        );
    }

    // A module that only serves queries (map, no handler) is a function.
    std::fs::write(dir.path().join("shoal.toml"), "name = \"hello\"").unwrap();
    std::fs::write(
        dir.path().join("main.py"),
        "def map(doc):\n    return doc\n",
    )
    .unwrap();
    let out = node.cli(&["deploy", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_checks_without_deploying_and_leaves_nothing_behind() {
    let node = TestNode::start();
    let c = node.client();
    // A function that does not exist yet: checked, not created.
    let dir = common::function_dir("name = \"fresh\"", GOOD);
    let path = dir.path().to_str().unwrap();
    let out = node.cli(&["deploy", "--dry-run", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fresh: checked, it loads"), "{stdout}");
    let err = c.function("fresh").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(code_dirs(&node.data_dir, "fresh").is_empty());

    // Over a live version: the live one keeps serving; HTTP says dry_run.
    let out = node.cli(&["deploy", path]);
    assert!(out.status.success());
    std::fs::write(
        dir.path().join("main.py"),
        "def handler(e, ctx):\n    return 'v2'\n",
    )
    .unwrap();
    let archive = shoal_client::pack_dir(dir.path()).unwrap();
    let checked = c.deploy_dry_run(archive).await.unwrap();
    assert!(checked.dry_run);
    assert_eq!(checked.version, 0);
    let out = node.cli(&["--json", "deploy", "--dry-run", path]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], json!(true));
    assert_eq!(
        c.invoke("fresh", "{}").await.unwrap().result.unwrap(),
        json!("v1")
    );
    assert_eq!(
        c.function_versions("fresh").await.unwrap().versions.len(),
        1
    );
    assert_eq!(code_dirs(&node.data_dir, "fresh").len(), 1);

    // A broken one: refused the same way as a deploy, nothing left.
    std::fs::write(dir.path().join("main.py"), "def handler(:\n").unwrap();
    let out = node.cli(&["deploy", "--dry-run", path]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert_eq!(code_dirs(&node.data_dir, "fresh").len(), 1);
    assert_eq!(
        c.function_versions("fresh").await.unwrap().versions.len(),
        1
    );
}
