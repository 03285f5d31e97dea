//! Peak memory of a process tree: a thread samples the resident set size
//! (`VmRSS`) of a root process and all its descendants every few tens of
//! milliseconds, from `/proc`, and keeps the largest sum it saw.
//!
//! RSS counts a page shared by several processes (a forked worker's pages
//! still shared with its template) once in each of them, so the sum
//! overstates the memory really used; it is the figure the issue asks for.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the sampler saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    /// Largest RSS sum of the root and its descendants, in bytes.
    pub total: u64,
    /// The root's own RSS in the sample with the largest sum.
    pub root: u64,
    /// Its descendants' RSS in that sample.
    pub descendants: u64,
    /// Processes in that sample.
    pub processes: usize,
    pub samples: u64,
}

impl Peak {
    pub fn total_mib(&self) -> f64 {
        mib(self.total)
    }

    /// The larger of two peaks (by total).
    pub fn max(self, other: Peak) -> Peak {
        let mut best = if other.total > self.total {
            other
        } else {
            self
        };
        best.samples = self.samples + other.samples;
        best
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A running sampler; `finish` stops it and returns the peak.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Peak>>,
}

impl Sampler {
    pub fn start(root: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut peak = Peak::default();
                loop {
                    // One last sample after the stop request, so that a short
                    // phase still gets one.
                    let stopping = flag.load(Ordering::Relaxed);
                    let s = sample(root);
                    peak.samples += 1;
                    if s.total > peak.total {
                        peak = Peak {
                            samples: peak.samples,
                            ..s
                        };
                    }
                    if stopping {
                        return peak;
                    }
                    std::thread::sleep(every);
                }
            })
            .ok();
        Sampler { stop, thread }
    }

    pub fn finish(mut self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One sample of the tree under `root`.
pub fn sample(root: u32) -> Peak {
    let mut out = Peak::default();
    for pid in std::iter::once(root).chain(descendants(root)) {
        let Some(rss) = vm_rss(pid) else {
            continue; // exited meanwhile
        };
        out.processes += 1;
        if pid == root {
            out.root = rss;
        } else {
            out.descendants += rss;
        }
    }
    out.total = out.root + out.descendants;
    out
}

/// The living descendants of `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut seen = HashSet::from([root]);
    let mut stack = children(root);
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if seen.insert(pid) {
            out.push(pid);
            stack.extend(children(pid));
        }
    }
    out
}

/// `VmRSS` of a process in bytes (`None` once it is gone; 0 for a zombie).
fn vm_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_vm_rss(&text).unwrap_or(0))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Direct children of a process, from `/proc/PID/task/*/children` (every
/// thread's children: tokio's threads spawn processes too).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tpython3\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
    }

    #[test]
    fn samples_this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let s = sample(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(s.root > 0);
        assert!(s.processes >= 2, "{s:?}");
        assert_eq!(s.total, s.root + s.descendants);
        let sampler = Sampler::start(std::process::id(), Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(30));
        let p = sampler.finish();
        assert!(p.samples >= 2 && p.total > 0, "{p:?}");
    }
}
