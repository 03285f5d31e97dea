//! Where the CPU went during a phase: the bench client itself, the `shoal`
//! node process, its descendants (Python templates and workers), and
//! everything else on the machine (e.g. a concurrent build).
//!
//! All figures come from `/proc` in clock ticks (the same unit everywhere, so
//! the tick rate cancels out of the shares). Processes that exit during a
//! phase are not lost: their time moves into their parent's `cutime` and
//! `cstime` once reaped, and those are counted for the node's descendants
//! and for the node itself (its children are templates and pip).

/// A snapshot of CPU counters.
#[derive(Clone)]
pub struct Snapshot {
    /// Busy and total ticks of the whole machine (all CPUs).
    machine_busy: u64,
    machine_total: u64,
    client: u64,
    /// On-CPU time of this process's main thread (the whole client: it runs
    /// on a `current_thread` runtime), in ns, from `/proc/self/schedstat`.
    client_ns: u64,
    node: u64,
    /// Ticks of the node's descendants, living and reaped.
    python: u64,
}

/// CPU use over a phase, as shares of the machine's capacity.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Busy share of all CPUs (1.0 = every core busy).
    pub busy: f64,
    pub client: f64,
    pub node: f64,
    pub python: f64,
    pub other: f64,
    /// CPU seconds the client used (precise, from the scheduler).
    pub client_cpu_s: f64,
}

impl Usage {
    /// The usage over several windows, each `(duration, usage)`, as if they
    /// were one window (shares weighted by duration; CPU seconds added).
    pub fn weighted(parts: &[(f64, Usage)]) -> Usage {
        let total: f64 = parts.iter().map(|(d, _)| d).sum();
        if total <= 0.0 {
            return Usage::default();
        }
        let share = |f: fn(&Usage) -> f64| parts.iter().map(|(d, u)| d * f(u)).sum::<f64>() / total;
        Usage {
            busy: share(|u| u.busy),
            client: share(|u| u.client),
            node: share(|u| u.node),
            python: share(|u| u.python),
            other: share(|u| u.other),
            client_cpu_s: parts.iter().map(|(_, u)| u.client_cpu_s).sum(),
        }
    }
}

impl Snapshot {
    pub fn take(node_pid: u32) -> Snapshot {
        let (machine_busy, machine_total) = machine();
        let node = stat(node_pid);
        let python = crate::rss::descendants(node_pid)
            .into_iter()
            .filter_map(stat)
            .map(|p| p.ticks + p.children)
            .sum::<u64>()
            + node.as_ref().map_or(0, |p| p.children);
        Snapshot {
            machine_busy,
            machine_total,
            client: stat(std::process::id()).map_or(0, |p| p.ticks),
            client_ns: std::fs::read_to_string("/proc/self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
                .unwrap_or(0),
            node: node.map_or(0, |p| p.ticks),
            python,
        }
    }

    /// Usage from `self` to `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Usage {
        let total = later
            .machine_total
            .saturating_sub(self.machine_total)
            .max(1) as f64;
        let busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        let client = later.client.saturating_sub(self.client) as f64;
        let node = later.node.saturating_sub(self.node) as f64;
        let python = later.python.saturating_sub(self.python) as f64;
        let other = (busy - client - node - python).max(0.0);
        Usage {
            busy: busy / total,
            client: client / total,
            node: node / total,
            python: python / total,
            other: other / total,
            client_cpu_s: later.client_ns.saturating_sub(self.client_ns) as f64 / 1e9,
        }
    }
}

/// `(busy, total)` ticks from the first line of `/proc/stat`.
fn machine() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let idle = get(3) + get(4);
    (busy, busy + idle)
}

struct Proc {
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: reaped children.
    children: u64,
}

/// `/proc/PID/stat` of a living process.
fn stat(pid: u32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/PID/stat`; the command name may hold spaces and parentheses,
/// so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); ppid is field 4, utime 14, stime 15,
    // cutime 16, cstime 17.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Proc {
        ticks: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_odd_names() {
        let line =
            "1234 (py (worker) x) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 5 0 0";
        let p = parse_stat(line).unwrap();
        assert_eq!(p.ticks, 281);
        assert_eq!(p.children, 0);
    }

    #[test]
    fn weights_usage_by_duration() {
        let u = |busy: f64| Usage {
            busy,
            client_cpu_s: 1.0,
            ..Usage::default()
        };
        let w = Usage::weighted(&[(1.0, u(1.0)), (3.0, u(0.2))]);
        assert!((w.busy - 0.4).abs() < 1e-12);
        assert_eq!(w.client_cpu_s, 2.0);
        assert_eq!(Usage::weighted(&[]).busy, 0.0);
    }

    #[test]
    fn own_process_is_seen() {
        let s = Snapshot::take(0);
        assert!(s.machine_total > 0);
        let _ = s.usage_until(&Snapshot::take(0));
    }
}
