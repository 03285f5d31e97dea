//! What a function's processes may touch: the node's side of the sandbox.
//!
//! The template enters the sandbox itself (`_shoal_runner/sandbox.py`)
//! before it imports any user code: `no_new_privs`, Landlock file-system
//! rules and signal/abstract-socket scoping, a seccomp filter, and the
//! parent-death signal. This module decides the paths: read-only, the
//! system's libraries and a few files under `/etc`, plus (per deployment)
//! the function's code, its virtualenv and the runner; read-write, the
//! deployment's scratch directory and `/dev/null`, plus whatever the
//! operator added (`--sandbox-allow-write`). See `docs/security.md`.

use std::path::{Path, PathBuf};

/// The paths every deployment's sandbox allows, beyond its own code,
/// environment and scratch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

/// Read-only for every function: what a Python program and the libraries
/// it loads read to start and run. Absent paths are skipped. Nothing under
/// `/etc` beyond these files (so not `/etc/shadow`), nothing of `/proc`
/// beyond the CPU and memory summaries.
const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/dev/full",
];

impl Sandbox {
    /// The standard sandbox: system paths read-only, nothing else writable.
    pub fn standard() -> Sandbox {
        Sandbox {
            read_only: SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect(),
            read_write: vec![PathBuf::from("/dev/null")],
        }
    }

    /// Also lets every function read (not write) under `path`.
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read_only.push(path.into());
        self
    }

    /// Also lets every function write under `path`.
    pub fn allow_write(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read_write.push(path.into());
        self
    }

    /// The sandbox of one deployment, as the template's configuration.
    pub(crate) fn for_deployment(
        &self,
        runner_dir: &Path,
        code_dir: &Path,
        env_dir: Option<&Path>,
        scratch: &Path,
    ) -> serde_json::Value {
        let mut read_only = self.read_only.clone();
        read_only.push(runner_dir.to_path_buf());
        read_only.push(code_dir.to_path_buf());
        read_only.extend(env_dir.map(Path::to_path_buf));
        let mut read_write = self.read_write.clone();
        read_write.push(scratch.to_path_buf());
        serde_json::json!({
            "read_only": read_only,
            "read_write": read_write,
            "scratch": scratch,
        })
    }
}
