//! Limits on each worker's whole process tree: cgroups where the node may
//! write them (`cgroup.rs`: the kernel refuses and charges), else a `/proc`
//! watchdog (`watchdog.rs`: measures and kills).

use std::sync::Arc;

use rustix::process::Pid;

use crate::cgroup::{Cgroups, WorkerCgroup};
use crate::watchdog::{Watchdog, WatchedTree};

/// Which mechanism limits process trees (`shoal serve --tree-limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TreeLimitMode {
    /// cgroups where writable, else the watchdog.
    #[default]
    Auto,
    /// cgroups or nothing.
    Cgroups,
    /// The watchdog, even where cgroups are writable.
    Watchdog,
}

/// The node's process-tree limiter.
#[derive(Debug)]
pub(crate) enum TreeLimits {
    Cgroups(Cgroups),
    Watchdog(Arc<Watchdog>),
}

impl TreeLimits {
    /// The limiter `mode` asks for, where this machine has it.
    pub(crate) fn detect(mode: TreeLimitMode) -> Option<TreeLimits> {
        let cgroups = || Cgroups::detect().map(TreeLimits::Cgroups);
        let watchdog = || Watchdog::start().map(|w| TreeLimits::Watchdog(Arc::new(w)));
        match mode {
            TreeLimitMode::Auto => cgroups().or_else(watchdog),
            TreeLimitMode::Cgroups => cgroups(),
            TreeLimitMode::Watchdog => watchdog(),
        }
    }

    /// How the trees are limited, for `shoal status`.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            TreeLimits::Cgroups(_) => "cgroups",
            TreeLimits::Watchdog(_) => "a /proc watchdog (cgroups are not writable here)",
        }
    }

    /// The cgroups, when that is how trees are limited.
    pub(crate) fn cgroups(&self) -> Option<&Cgroups> {
        match self {
            TreeLimits::Cgroups(c) => Some(c),
            TreeLimits::Watchdog(_) => None,
        }
    }

    /// Limits a freshly forked worker's tree, before it runs user code.
    pub(crate) fn attach(&self, pid: Pid, memory_mb: u64) -> Option<WorkerTree> {
        match self {
            TreeLimits::Cgroups(c) => c.attach(pid, memory_mb).map(WorkerTree::Cgroup),
            TreeLimits::Watchdog(w) => Some(WorkerTree::Watched(w.watch(pid, memory_mb))),
        }
    }
}

/// One worker's tree limits. Dropping it kills what is left of the tree.
#[derive(Debug)]
pub(crate) enum WorkerTree {
    Cgroup(WorkerCgroup),
    Watched(WatchedTree),
}

impl WorkerTree {
    /// Kills every process of the tree, the worker included.
    pub(crate) fn kill_all(&self) {
        match self {
            WorkerTree::Cgroup(c) => c.kill_all(),
            WorkerTree::Watched(w) => w.kill_all(),
        }
    }

    /// True when a process of the tree was killed for the tree's memory.
    pub(crate) fn over_memory(&self) -> bool {
        match self {
            WorkerTree::Cgroup(c) => c.oom_killed(),
            WorkerTree::Watched(w) => w.over_memory(),
        }
    }

    /// True when the tree was killed for having too many processes (cgroups
    /// refuse the fork instead, so never for them).
    pub(crate) fn over_processes(&self) -> bool {
        match self {
            WorkerTree::Cgroup(_) => false,
            WorkerTree::Watched(w) => w.over_processes(),
        }
    }
}
