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
        let made = self.make().and_then(|group| {
            group.limit(memory_mb)?;
            group.take(pid)?;
            Ok(group)
        });
        match made {
            Ok(group) => Some(group),
            Err(e) => {
                warn!(error = %e, "Could not put a worker into its cgroups; its tree is not limited.");
                None
            }
        }
    }

    /// New, empty groups for a worker to come.
    pub(crate) fn make(&self) -> std::io::Result<WorkerCgroup> {
        remove_leftovers(&self.leftovers);
        let name = format!("w{}", self.next.fetch_add(1, Ordering::Relaxed));
        let group = WorkerCgroup {
            pids: self.pids.join(&name),
            memory: self.memory.join(&name),
            leftovers: self.leftovers.clone(),
            spared: None,
        };
        std::fs::create_dir_all(&group.pids)?;
        std::fs::create_dir_all(&group.memory)?;
        Ok(group)
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
    /// A process never killed with the tree: the template, which waits in
    /// a worker's group so that the worker is born there (see `template.rs`).
    spared: Option<Pid>,
}

impl WorkerCgroup {
    /// Kills every process of the worker's tree.
    pub(crate) fn kill_all(&self) {
        kill_all_in(&self.pids, self.spared);
    }

    /// Limits the group to `MAX_PROCESSES` and `memory_mb` on top of what
    /// is in it now (a template waiting there: its process and the memory
    /// charged while it was there).
    pub(crate) fn limit(&self, memory_mb: u64) -> std::io::Result<()> {
        let count = |file: &str, dir: &Path| -> u64 {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let procs = count("pids.current", &self.pids);
        std::fs::write(
            self.pids.join("pids.max"),
            (u64::from(MAX_PROCESSES) + procs).to_string(),
        )?;
        let bytes = count("memory.usage_in_bytes", &self.memory)
            .saturating_add(memory_mb.saturating_mul(1024 * 1024));
        std::fs::write(self.memory.join("memory.limit_in_bytes"), bytes.to_string())
    }

    /// Moves a process into the group (both controllers). Under cgroup v1
    /// this waits for an RCU grace period (~15 ms on a small VM): never on
    /// an invocation's path if it can be helped.
    pub(crate) fn take(&self, pid: Pid) -> std::io::Result<()> {
        let pid = pid.as_raw_pid().to_string();
        std::fs::write(self.pids.join("cgroup.procs"), &pid)?;
        std::fs::write(self.memory.join("cgroup.procs"), &pid)
    }

    /// Never kill `pid` with the tree.
    pub(crate) fn spare(&mut self, pid: Pid) {
        self.spared = Some(pid);
    }

    /// What sets the process limit back to `MAX_PROCESSES`, to call once
    /// the spared process (the template) has left the group.
    pub(crate) fn when_spared_left(&self) -> impl FnOnce() + Send + 'static {
        let file = self.pids.join("pids.max");
        move || {
            let _ = std::fs::write(file, MAX_PROCESSES.to_string());
        }
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

/// Kills every process in the group at `dir` but `spared`, again until none
/// is left (a process may fork while we kill; `pids.max` bounds how long
/// that goes on).
fn kill_all_in(dir: &Path, spared: Option<Pid>) {
    for _ in 0..64 {
        let pids: Vec<Pid> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(Pid::from_raw)
            .filter(|p| Some(*p) != spared)
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
                kill_all_in(&group.path(), None);
                let _ = std::fs::remove_dir(group.path());
            }
        }
        let _ = std::fs::remove_dir(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_pid()))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z'))
    }

    /// A worker's group may hold the template waiting for the next fork:
    /// killing the group's tree spares it, and only it.
    #[test]
    fn killing_a_group_spares_the_spared_process() {
        let Some(cgroups) = Cgroups::detect() else {
            eprintln!("skipped: this machine's cgroups are not writable");
            return;
        };
        let mut group = cgroups.make().unwrap();
        let mut spared = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut doomed = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let spared_pid = Pid::from_raw(spared.id() as i32).unwrap();
        let doomed_pid = Pid::from_raw(doomed.id() as i32).unwrap();
        group.take(spared_pid).unwrap();
        group.take(doomed_pid).unwrap();
        group.spare(spared_pid);
        group.kill_all();
        doomed.wait().unwrap();
        assert!(!alive(doomed_pid));
        assert!(alive(spared_pid), "the spared process was killed");
        let _ = spared.kill();
        let _ = spared.wait();
    }
}
