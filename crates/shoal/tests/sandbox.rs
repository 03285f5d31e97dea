//! A function is untrusted code: inside its sandbox it cannot read the
//! node's secrets or data, other functions' code or the system's private
//! files, cannot change another function's code, cannot signal the node,
//! and cannot use the system calls that attack the kernel. Each escape is
//! tried by a real function on a real node; each must fail, and the function
//! reports how.

mod common;

use common::{TestNode, deploy};
use serde_json::{Value, json};

/// Tries every escape it is given and reports, per attempt, `"ok"` or the
/// error it got.
const ATTACKER: &str = r##"
import ctypes, os, signal

def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return "%s: %s" % (type(e).__name__, e.strerror)

def read(path):
    with open(path, "rb") as f:
        f.read(1)

def write(path):
    with open(path, "ab") as f:
        f.write(b"# pwned\n")

def syscall(nr, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def handler(event, ctx):
    node = event["node_pid"]
    out = {
        "read_admin_token": attempt(lambda: read(event["admin_token"])),
        "read_store": attempt(lambda: read(event["store"])),
        "read_other_code": attempt(lambda: read(event["other_code"])),
        "list_data_dir": attempt(lambda: os.listdir(event["data_dir"])),
        "read_node_environ": attempt(lambda: read("/proc/%d/environ" % node)),
        "read_shadow": attempt(lambda: read("/etc/shadow")),
        "write_other_code": attempt(lambda: write(event["other_code"])),
        "write_own_code": attempt(lambda: write(__file__)),
        "signal_node": attempt(lambda: os.kill(node, signal.SIGKILL)),
        "fill_dev_shm": attempt(lambda: write("/dev/shm/shoal-escape")),
        "ptrace_node": attempt(lambda: syscall(101, 16, node, 0, 0)),
        "mount": attempt(lambda: syscall(165, b"none", b"/mnt", b"tmpfs", 0, 0)),
        "unshare": attempt(lambda: syscall(272, 0x10000000)),
    }
    # What a function may do: its scratch directory, and its own code read.
    scratch = os.environ["TMPDIR"]
    out["write_scratch"] = attempt(lambda: write(os.path.join(scratch, "mine")))
    out["read_own_code"] = attempt(lambda: read(__file__))
    return out
"##;

const VICTIM: &str = "def handler(event, ctx):\n    return 'untouched'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_fails_and_says_why() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"victim\"", VICTIM).await;
    deploy(&c, "name = \"attacker\"", ATTACKER).await;
    let victim_dir = std::fs::read_dir(node.data_dir.join("functions/victim"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let other_code = victim_dir.join("main.py");
    let before = std::fs::read(&other_code).unwrap();
    let event = json!({
        "node_pid": node.pid(),
        "data_dir": node.data_dir,
        "admin_token": node.data_dir.join("admin.token"),
        "store": node.data_dir.join("shoal.redb"),
        "other_code": other_code,
    });
    let out = c
        .invoke("attacker", &event.to_string())
        .await
        .unwrap()
        .result
        .expect("the attacker ran");
    let denied = |what: &str, error: &str| {
        let got = out[what].as_str().unwrap_or_default();
        assert!(
            got.contains(error),
            "{what}: expected {error}, got {got:?} (all: {out})"
        );
    };
    for file in [
        "read_admin_token",
        "read_store",
        "read_other_code",
        "list_data_dir",
        "read_node_environ",
        "read_shadow",
        "write_other_code",
        "write_own_code",
        "fill_dev_shm",
    ] {
        denied(file, "PermissionError");
    }
    for call in ["signal_node", "ptrace_node", "mount", "unshare"] {
        denied(call, "Operation not permitted");
    }
    assert_eq!(out["write_scratch"], Value::from("ok"), "{out}");
    assert_eq!(out["read_own_code"], Value::from("ok"), "{out}");

    // Nothing changed: the node is alive, the victim's code is as deployed.
    assert_eq!(std::fs::read(&other_code).unwrap(), before);
    let victim = c.invoke("victim", "{}").await.unwrap();
    assert_eq!(victim.result.unwrap(), json!("untouched"));
}

/// Reads what it is given; nothing else.
const READER: &str = r#"
import os

def handler(event, ctx):
    with open(event["admin_token"], "rb") as f:
        token = f.read()
    return {"token_bytes": len(token), "data_dir": sorted(os.listdir(event["data_dir"]))}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sandbox_a_function_reads_the_admin_token() {
    // The test above is only worth something if the same reads work when
    // nothing stops them: with --insecure-no-sandbox they do.
    let node = TestNode::start_with(&["--insecure-no-sandbox"]);
    let c = node.client();
    deploy(&c, "name = \"reader\"", READER).await;
    let event = json!({
        "data_dir": node.data_dir,
        "admin_token": node.data_dir.join("admin.token"),
    });
    let out = c
        .invoke("reader", &event.to_string())
        .await
        .unwrap()
        .result
        .expect("the reader ran");
    assert!(out["token_bytes"].as_u64().unwrap() > 10, "{out}");
    assert!(
        out["data_dir"]
            .as_array()
            .unwrap()
            .contains(&json!("shoal.redb")),
        "{out}"
    );
}
