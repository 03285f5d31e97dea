//! Limits on a worker's whole process tree, where the machine lets the node
//! use cgroups (v1 `pids` and `memory` controllers, writable by the node).
//!
//! Every worker gets its own group in each controller, right after the
//! template forked it and before it runs any user code; everything the
//! handler starts (forked, `setsid` or not) is born into that group. So:
//! - `pids.max` caps processes and threads of the tree (a fork bomb gets
//!   `EAGAIN`);
//! - `memory.limit_in_bytes` caps the memory the tree adds (a handler
//!   spreading 1 GB over forks under `memory_mb = 128` is killed by the
//!   kernel, and the invocation reports `out_of_memory`);
//! - killing the worker kills every process in its group, whatever session
//!   or process group it moved to.
//!
//! Where cgroups are not writable, none of this applies (the per-process
//! address-space limit and the process-group kill remain); `docs/security.md`
//! says so.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, Signal};
use tracing::{debug, warn};

/// Processes and threads one worker's tree may have at once.
pub(crate) const MAX_PROCESSES: u32 = 128;

/// The node's own groups, under which each worker gets one.
#[derive(Debug)]
pub(crate) struct Cgroups {
    pids: PathBuf,
    memory: PathBuf,
    next: AtomicU64,
    /// Worker groups whose killed processes were not reaped yet when the
    /// worker went (a group cannot be removed before): removed later.
    leftovers: Arc<Mutex<Vec<PathBuf>>>,
}

impl Cgroups {
    /// The node's groups (`shoal-<pid>` below its current ones), or `None`
    /// where the controllers are absent or not writable.
    pub(crate) fn detect() -> Option<Cgroups> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path_of = |controller: &str| {
            own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })
        };
        let root = |controller: &str| -> Option<PathBuf> {
            let mount = Path::new("/sys/fs/cgroup").join(controller);
            let parent = mount.join(path_of(controller)?);
            sweep_stale(&parent);
            let dir = parent.join(format!("shoal-{}", std::process::id()));
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    debug!(controller, error = %e, "cgroup controller not usable");
                    None
                }
            }
        };
        let pids = root("pids")?;
        let memory = root("memory")?;
        Some(Cgroups {
            pids,
            memory,
            next: AtomicU64::new(0),
            leftovers: Arc::default(),
        })
    }

    /// Puts a freshly forked worker into groups of its own, limited to
    /// `MAX_PROCESSES` and `memory_mb` of added memory.
    pub(crate) fn attach(&self, pid: Pid, memory_mb: u64) -> Option<WorkerCgroup> {
        remove_leftovers(&self.leftovers);
        let name = format!("w{}", self.next.fetch_add(1, Ordering::Relaxed));
        let group = WorkerCgroup {
            pids: self.pids.join(&name),
            memory: self.memory.join(&name),
            leftovers: self.leftovers.clone(),
        };
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&group.pids)?;
            std::fs::create_dir_all(&group.memory)?;
            std::fs::write(group.pids.join("pids.max"), MAX_PROCESSES.to_string())?;
            let bytes = memory_mb.saturating_mul(1024 * 1024);
            std::fs::write(
                group.memory.join("memory.limit_in_bytes"),
                bytes.to_string(),
            )?;
            let pid = pid.as_raw_pid().to_string();
            std::fs::write(group.pids.join("cgroup.procs"), &pid)?;
            std::fs::write(group.memory.join("cgroup.procs"), &pid)?;
            Ok(())
        })();
        match made {
            Ok(()) => Some(group),
            Err(e) => {
                warn!(error = %e, "Could not put a worker into its cgroups; its tree is not limited.");
                None
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        remove_leftovers(&self.leftovers);
        let _ = std::fs::remove_dir(&self.pids);
        let _ = std::fs::remove_dir(&self.memory);
    }
}

/// One worker's groups. Dropping it kills what is left in them and removes
/// them.
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    pids: PathBuf,
    memory: PathBuf,
    leftovers: Arc<Mutex<Vec<PathBuf>>>,
}

impl WorkerCgroup {
    /// Kills every process of the worker's tree.
    pub(crate) fn kill_all(&self) {
        kill_all_in(&self.pids);
    }

    /// True when the kernel killed a process of the group for exceeding its
    /// memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.memory.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        self.kill_all();
        // A group can be removed once the kernel has reaped what was killed:
        // one still busy is removed at a later attach (no waiting here, on
        // the async path), or when the node next starts.
        let mut leftovers = self.leftovers.lock().unwrap_or_else(|p| p.into_inner());
        for dir in [&self.pids, &self.memory] {
            if !removed(std::fs::remove_dir(dir)) {
                leftovers.push(dir.clone());
            }
        }
    }
}

/// Kills every process in the group at `dir`, again until none is left (a
/// process may fork while we kill; `pids.max` bounds how long that goes on).
fn kill_all_in(dir: &Path) {
    for _ in 0..64 {
        let pids: Vec<Pid> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(Pid::from_raw)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        std::thread::yield_now();
    }
}

fn remove_leftovers(leftovers: &Mutex<Vec<PathBuf>>) {
    let mut leftovers = leftovers.lock().unwrap_or_else(|p| p.into_inner());
    leftovers.retain(|dir| !removed(std::fs::remove_dir(dir)));
}

fn removed(r: std::io::Result<()>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Kills what is left in the groups of nodes that are gone (a node killed
/// with -9 leaves its workers' descendants there) and removes the groups.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shoal-"))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a live node's
        }
        let node = entry.path();
        if let Ok(groups) = std::fs::read_dir(&node) {
            for group in groups.flatten().filter(|g| g.path().is_dir()) {
                kill_all_in(&group.path());
                let _ = std::fs::remove_dir(group.path());
            }
        }
        let _ = std::fs::remove_dir(&node);
    }
}
