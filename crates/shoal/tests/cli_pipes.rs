//! The CLI's answers go to a reader that may go away (`shoal ... | head`):
//! the command then ends quietly, as Unix tools do, not with a panic.

mod common;

use std::process::{Command, Stdio};

use common::TestNode;

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let node = TestNode::start();
    for args in [
        &["status"][..],
        &["functions"],
        &["invocations"],
        &["status", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_URL", &node.url)
            .env("SHOAL_TOKEN", &node.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shoal");
        // The reader goes away before the command has its answer.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
