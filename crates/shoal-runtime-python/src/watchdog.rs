//! Process-tree limits without cgroups: a watchdog thread that reads `/proc`.
//!
//! Where the node may not write cgroups (an unprivileged node), each
//! worker's tree is found by parent links: a worker is a child subreaper, so
//! everything it starts stays below it, `setsid` and double forks included.
//! Every `INTERVAL` the watchdog walks `/proc` once (only while some worker
//! is watched) and, per watched worker,
//! - counts the processes of its tree: over `MAX_PROCESSES`, the whole tree
//!   is killed (cgroups refuse the fork instead; a watchdog can only act
//!   after it);
//! - sums the private memory of the tree (`Private_Clean + Private_Dirty +
//!   Swap` of `smaps_rollup`: the pages the tree does not share with its
//!   template): over `memory_mb`, the whole tree is killed.
//!
//! A kill stops the tree first (SIGSTOP, again until no new process
//! appears), then kills it, so a process forking during the kill cannot
//! slip out. The worker's invocation then reports why.
//!
//! What it does not do as well as cgroups: a tree can exceed a limit for up
//! to one interval before it is killed, and memory is sampled, not charged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tracing::warn;

use crate::cgroup::MAX_PROCESSES;

/// How often the watched trees are measured.
const INTERVAL: Duration = Duration::from_millis(100);

/// Why the watchdog killed a tree.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    over_memory: AtomicBool,
    over_processes: AtomicBool,
}

struct Watched {
    root: i32,
    limit_bytes: u64,
    verdict: Arc<Verdict>,
}

#[derive(Default)]
struct Registry {
    watched: HashMap<u64, Watched>,
    stopping: bool,
}

struct Shared {
    registry: Mutex<Registry>,
    wake: Condvar,
}

/// The watchdog thread and the trees it watches; dropping it stops the thread.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    next: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Starts the thread, or `None` when `/proc` cannot tell the watchdog
    /// what it needs (no `smaps_rollup`).
    pub(crate) fn start() -> Option<Watchdog> {
        if std::fs::metadata("/proc/self/smaps_rollup").is_err() {
            return None;
        }
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            wake: Condvar::new(),
        });
        let watching = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-tree-watchdog".into())
            .spawn(move || run(&watching))
            .ok()?;
        Some(Watchdog {
            shared,
            next: AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    /// Watches the tree of a freshly forked worker.
    pub(crate) fn watch(self: &Arc<Self>, pid: Pid, memory_mb: u64) -> WatchedTree {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let verdict = Arc::new(Verdict::default());
        lock(&self.shared.registry).watched.insert(
            id,
            Watched {
                root: pid.as_raw_pid(),
                limit_bytes: memory_mb.saturating_mul(1024 * 1024),
                verdict: verdict.clone(),
            },
        );
        WatchedTree {
            watchdog: self.clone(),
            id,
            root: pid.as_raw_pid(),
            verdict,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.registry).stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One worker's watched tree; dropping it kills what is left of the tree.
pub(crate) struct WatchedTree {
    watchdog: Arc<Watchdog>,
    id: u64,
    root: i32,
    verdict: Arc<Verdict>,
}

impl std::fmt::Debug for WatchedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedTree")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl WatchedTree {
    /// Kills every process of the tree, the worker included.
    pub(crate) fn kill_all(&self) {
        kill_tree(self.root);
    }

    /// True when the watchdog killed the tree for its memory.
    pub(crate) fn over_memory(&self) -> bool {
        self.verdict.over_memory.load(Ordering::SeqCst)
    }

    /// True when the watchdog killed the tree for its process count.
    pub(crate) fn over_processes(&self) -> bool {
        self.verdict.over_processes.load(Ordering::SeqCst)
    }
}

impl Drop for WatchedTree {
    fn drop(&mut self) {
        lock(&self.watchdog.shared.registry)
            .watched
            .remove(&self.id);
        self.kill_all();
    }
}

fn run(shared: &Shared) {
    let mut registry = lock(&shared.registry);
    loop {
        let (guard, _) = shared
            .wake
            .wait_timeout(registry, INTERVAL)
            .unwrap_or_else(|p| p.into_inner());
        registry = guard;
        if registry.stopping {
            return;
        }
        if registry.watched.is_empty() {
            continue;
        }
        let watched: Vec<(i32, u64, Arc<Verdict>)> = registry
            .watched
            .values()
            .map(|w| (w.root, w.limit_bytes, w.verdict.clone()))
            .collect();
        drop(registry);
        let table = ProcessTable::read();
        for (root, limit_bytes, verdict) in watched {
            let tree = table.tree(root);
            if tree.len() > MAX_PROCESSES as usize {
                verdict.over_processes.store(true, Ordering::SeqCst);
                kill_tree(root);
                continue;
            }
            let used: u64 = tree.iter().map(|&pid| private_bytes(pid)).sum();
            if used > limit_bytes {
                verdict.over_memory.store(true, Ordering::SeqCst);
                kill_tree(root);
            }
        }
        registry = lock(&shared.registry);
    }
}

/// Every process's parent, read from `/proc` in one pass.
struct ProcessTable {
    children: HashMap<i32, Vec<i32>>,
}

impl ProcessTable {
    fn read() -> ProcessTable {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ProcessTable { children };
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
        ProcessTable { children }
    }

    /// `root` and all its descendants.
    fn tree(&self, root: i32) -> Vec<i32> {
        let mut seen = std::collections::HashSet::from([root]);
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = self.children.get(&out[i]) {
                for &kid in kids {
                    if seen.insert(kid) {
                        out.push(kid);
                    }
                }
            }
            i += 1;
        }
        out
    }
}

/// The live children of a process, from one walk of `/proc`.
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    ProcessTable::read()
        .children
        .remove(&parent)
        .unwrap_or_default()
}

/// The parent of a live process (`None` once gone, or for a zombie, which
/// holds no memory and forks nothing).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Memory a process does not share with others, in bytes.
fn private_bytes(pid: i32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            matches!(name, "Private_Clean" | "Private_Dirty" | "Swap")
                .then(|| rest.split_whitespace().next()?.parse::<u64>().ok())
                .flatten()
        })
        .sum::<u64>()
        * 1024
}

/// Stops the whole tree below and including `root` (again until no new
/// process shows up), then kills it.
fn kill_tree(root: i32) {
    let mut stopped: Vec<i32> = Vec::new();
    for _ in 0..64 {
        let tree = ProcessTable::read().tree(root);
        let new: Vec<i32> = tree.into_iter().filter(|p| !stopped.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for pid in &new {
            if let Some(pid) = Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(pid, Signal::STOP);
            }
        }
        stopped.extend(new);
    }
    for pid in &stopped {
        if let Some(pid) = Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
    if stopped.len() > 1 {
        warn!(
            root,
            processes = stopped.len(),
            "Killed a worker's process tree."
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_holds_the_root_and_every_descendant() {
        let mut children = HashMap::new();
        children.insert(1, vec![2, 3]);
        children.insert(3, vec![4]);
        children.insert(9, vec![10]);
        let table = ProcessTable { children };
        let mut tree = table.tree(1);
        tree.sort();
        assert_eq!(tree, vec![1, 2, 3, 4]);
        assert_eq!(table.tree(4), vec![4]);
    }

    #[test]
    fn this_process_has_private_memory_and_a_parent() {
        let me = std::process::id() as i32;
        assert!(private_bytes(me) > 0);
        assert_eq!(
            parent_of(me),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_pid()))
        );
    }
}
