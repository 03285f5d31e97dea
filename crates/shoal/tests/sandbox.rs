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
    for call in ["ptrace_node", "mount", "unshare"] {
        denied(call, "Operation not permitted");
    }
    // In its pid namespace the function cannot even name the node's pid;
    // without one, Landlock's signal scope refuses the signal.
    let signal = out["signal_node"].as_str().unwrap_or_default();
    assert!(
        signal == "ProcessLookupError: No such process"
            || signal == "PermissionError: Operation not permitted",
        "signal_node: {signal:?}"
    );
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

/// True while a process with this pid exists (and is not a zombie).
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Waits up to 5 s for a process to be gone.
async fn gone(pid: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} of the invocation is still alive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn pids_in(path: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Runs `code` (which records the pids it starts in `event["record"]` and
/// returns leaving them running) on a node; the invocation must fail
/// `forked`. Returns the recorded pids.
async fn run_leaving_processes(code: &str, node_args: &[&str]) -> Vec<i64> {
    let node = TestNode::start_with(node_args);
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("pids");
    deploy(&c, "name = \"tree\"", code).await;
    let event = json!({"record": record});
    let out = c.invoke("tree", &event.to_string()).await.unwrap();
    let error = out
        .result
        .expect_err("leaving processes behind fails the invocation")
        .error;
    assert_eq!(error.kind, "forked", "{error:?}");
    pids_in(&record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_grandchild_does_not_outlive_its_invocation() {
    let pids = run_leaving_processes(
        r#"
import os, time

def handler(event, ctx):
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            with open(event["record"], "a") as f:
                f.write("%s\n" % os.readlink("/proc/self"))
            time.sleep(60)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.2)
    return "left one behind"
"#,
        &[],
    )
    .await;
    assert_eq!(pids.len(), 1, "the grandchild recorded its pid");
    gone(pids[0]).await;
}

/// The node is killed (kill -9) while an invocation runs: its template sees
/// its control socket close and exits, and since it is the init of its pid
/// namespace, the kernel takes everything started in it, `setsid` or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_grandchild_dies_with_a_killed_node() {
    let mut node = TestNode::start();
    let c = node.client();
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("pids");
    deploy(
        &c,
        "name = \"stay\"",
        r#"
import os, time

def handler(event, ctx):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(event["record"], "a") as f:
                f.write("%s\n" % os.readlink("/proc/self"))
            time.sleep(120)
        os._exit(0)
    time.sleep(120)
"#,
    )
    .await;
    let event = json!({"record": record}).to_string();
    c.invoke_async("stay", &event).await.unwrap();
    common::until(
        "the grandchild to start",
        std::time::Duration::from_secs(20),
        async || !pids_in(&record).is_empty(),
    )
    .await;
    let pids = pids_in(&record);
    assert!(alive(pids[0]), "the grandchild runs while the node does");
    node.kill9();
    gone(pids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_and_cleaned_up() {
    // `pids.max` refuses the 129th process (the worker is one).
    fork_bomb(&["--tree-limits", "cgroups"], 128).await;
}

/// Without cgroups, the /proc watchdog kills the tree once it has more than
/// 128 processes (it cannot refuse the fork as `pids.max` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_and_cleaned_up_by_the_watchdog() {
    // Forks come at most one per 2 ms, so one 100 ms interval of the
    // watchdog lets at most ~50 more start.
    fork_bomb(&["--tree-limits", "watchdog"], 128 + 60).await;
}

/// Forks up to 1,000 sleeping children, one per 2 ms; at most `most` may start.
async fn fork_bomb(node_args: &[&str], most: usize) {
    let pids = run_leaving_processes(
        r#"
import os, time

def handler(event, ctx):
    started = 0
    error = None
    for _ in range(1000):
        time.sleep(0.002)
        try:
            pid = os.fork()
        except OSError as e:
            error = "%s: %s" % (type(e).__name__, e.strerror)
            break
        if pid == 0:
            with open(event["record"], "a") as f:
                f.write("%s\n" % os.readlink("/proc/self"))
            time.sleep(60)
            os._exit(0)
        started += 1
    return {"started": started, "error": error}
"#,
        node_args,
    )
    .await;
    assert!(
        !pids.is_empty() && pids.len() <= most,
        "forks must stop at {most}: {} started",
        pids.len()
    );
    for pid in pids {
        gone(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spread_over_forks_counts_against_the_limit() {
    memory_over_forks(&["--tree-limits", "cgroups"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spread_over_forks_counts_against_the_limit_with_the_watchdog() {
    memory_over_forks(&["--tree-limits", "watchdog"]).await;
}

/// Ten children each take and hold 100 MB under `memory_mb = 128`.
async fn memory_over_forks(node_args: &[&str]) {
    let node = TestNode::start_with(node_args);
    let c = node.client();
    deploy(
        &c,
        "name = \"hog\"\nmemory_mb = 128",
        r#"
import os, time

def handler(event, ctx):
    kids = []
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            block = bytearray(100 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    return [os.waitpid(pid, 0)[1] for pid in kids]
"#,
    )
    .await;
    let out = c.invoke("hog", "{}").await.unwrap();
    let error = out
        .result
        .expect_err("1 GB over forks under memory_mb = 128 must fail")
        .error;
    assert_eq!(error.kind, "out_of_memory", "{error:?}");
    assert!(error.message.contains("128 MiB"), "{error:?}");
    // The function works again afterwards (a fresh worker).
    deploy(
        &c,
        "name = \"hog\"\nmemory_mb = 128",
        "def handler(e, ctx):\n    return 1\n",
    )
    .await;
    assert_eq!(
        c.invoke("hog", "{}").await.unwrap().result.unwrap(),
        json!(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_reaches_no_network() {
    let node = TestNode::start();
    let c = node.client();
    let code = r#"
import socket

def handler(event, ctx):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", event["port"]))
        return "connected"
    except OSError as e:
        return "%s: %s" % (type(e).__name__, e.strerror)
    finally:
        s.close()
"#;
    deploy(&c, "name = \"offline\"\nnetwork = \"none\"", code).await;
    deploy(&c, "name = \"online\"", code).await;
    // The node's own port: reachable with the default network only.
    let port: u16 = node.url.rsplit(':').next().unwrap().parse().unwrap();
    let event = json!({"port": port}).to_string();
    let online = c.invoke("online", &event).await.unwrap().result.unwrap();
    assert_eq!(online, json!("connected"));
    let offline = c.invoke("offline", &event).await.unwrap().result.unwrap();
    assert!(
        offline.as_str().is_some_and(|s| s.contains("unreachable")),
        "{offline}"
    );
    // A bad value is refused at deploy, saying what is allowed.
    let dir = common::function_dir("name = \"bad\"\nnetwork = \"some\"", code);
    let err = c
        .deploy(shoal_client::pack_dir(dir.path()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("use \"default\" or \"none\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_changed_on_disk_after_its_deploy_is_not_run() {
    let node = TestNode::start();
    let c = node.client();
    deploy(&c, "name = \"honest\"", VICTIM).await;
    let main = std::fs::read_dir(node.data_dir.join("functions/honest"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("main.py");
    // Someone with access to the node's disk changes the code.
    std::fs::write(&main, "def handler(event, ctx):\n    return 'tampered'\n").unwrap();
    let out = c.invoke("honest", "{}").await.unwrap();
    let error = out.result.expect_err("changed code must not run").error;
    assert_eq!(error.kind, "load_failed", "{error:?}");
    assert!(error.message.contains("not what was deployed"), "{error:?}");
    // A new deploy of the function runs again.
    deploy(&c, "name = \"honest\"", VICTIM).await;
    assert_eq!(
        c.invoke("honest", "{}").await.unwrap().result.unwrap(),
        json!("untouched")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_sees_its_own_env_and_none_of_the_nodes() {
    let node = TestNode::start();
    let c = node.client();
    deploy(
        &c,
        "name = \"envy\"\n\n[env]\nGREETING = \"hello\"\nAPI_BASE = \"https://example.test/v1\"\n",
        "import os\n\ndef handler(event, ctx):\n    return dict(os.environ)\n",
    )
    .await;
    let env = c.invoke("envy", "{}").await.unwrap().result.unwrap();
    assert_eq!(env["GREETING"], json!("hello"), "{env}");
    assert_eq!(env["API_BASE"], json!("https://example.test/v1"), "{env}");
    // The node runs with the test harness's variables (CARGO_*, SHOAL_LOG):
    // none of them reaches the function.
    let names: Vec<&String> = env.as_object().unwrap().keys().collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("CARGO") && !n.starts_with("SHOAL") && !n.starts_with("RUST")),
        "{names:?}"
    );
    assert_eq!(env["HOME"], env["TMPDIR"], "HOME is the scratch directory");
    // Reserved names are refused at deploy.
    let dir = common::function_dir(
        "name = \"bad-env\"\n\n[env]\nLD_PRELOAD = \"/tmp/evil.so\"\n",
        "def handler(e, ctx):\n    return 1\n",
    );
    let err = c
        .deploy(shoal_client::pack_dir(dir.path()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("LD_PRELOAD is set by the node"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_status_says_whether_functions_are_sandboxed() {
    let node = TestNode::start();
    let out = node.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("sandbox: on: Landlock ABI"), "{text}");
    assert!(text.contains("process-tree limits by cgroups"), "{text}");
    assert!(text.contains("a pid namespace per template"), "{text}");
    let insecure = TestNode::start_with(&["--insecure-no-sandbox"]);
    let out = insecure.cli(&["status", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        health["sandbox"]
            .as_str()
            .unwrap()
            .starts_with("off: functions run with the node's own rights"),
        "{health}"
    );
}

/// The template waits in the group its next worker is born in (so no
/// worker is moved between cgroups on an invocation's path), and moves on
/// right after the fork; a worker that dies at once has its tree killed
/// while the template may still be there, and the template must be spared:
/// the next call is served by the same template (no cold start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_workers_tree_spares_the_template_waiting_in_its_group() {
    let node = TestNode::start_with(&["--tree-limits", "cgroups"]);
    let c = node.client();
    deploy(
        &c,
        "name = \"brittle\"",
        "import os, signal\n\ndef handler(event, ctx):\n    if event == 'die':\n        os.kill(os.getpid(), signal.SIGKILL)\n    return 'ok'\n",
    )
    .await;
    // Each call forks a worker from the template's group; each dies at once.
    for round in 0..5 {
        let died = c.invoke("brittle", "\"die\"").await.unwrap();
        let error = died.result.expect_err("the call dies").error;
        assert_eq!(error.kind, "crashed", "{error:?}");
        let cold = c.invocation(&died.id).await.unwrap().cold_start;
        assert_eq!(
            cold,
            round == 0,
            "round {round}: the template was killed before"
        );
    }
    let second = c.invoke("brittle", "\"go\"").await.unwrap();
    assert_eq!(second.result.unwrap(), json!("ok"));
    let record = c.invocation(&second.id).await.unwrap();
    assert!(
        !record.cold_start,
        "the template was killed with the worker: {record:?}"
    );
}
