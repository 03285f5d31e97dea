//! The performance targets, as data. The report's Target column, the wording
//! of each figure and every PASS/MISS verdict come from this one table. A
//! phase reports a figure by its target's id and never states a threshold.
//!
//! The table's order is the order of the report's rows and of the phases
//! (`--only` names) as they run.

use crate::stats::{fmt_ms, thousands};

pub struct Target {
    /// `phase.name`; the phase is the `--only` name that measures it.
    pub id: &'static str,
    /// The figure, as the report's first column words it.
    pub what: &'static str,
    pub unit: Unit,
    pub comparison: Comparison,
    pub threshold: f64,
    /// The issue that set the target.
    pub issue: u32,
}

/// How a figure is held against its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    AtMost,
    AtLeast,
    /// The figure divided by the named reference is at most the threshold.
    RatioAtMost(&'static str),
    RatioAtLeast(&'static str),
    /// The figure exceeds the named reference by at most the threshold.
    AtMostOver(&'static str),
    /// No threshold: passes once measured (a baseline the issue asks for).
    Measured,
    /// No threshold: reported for information.
    Reported,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    Ms,
    S,
    PerS,
    DocsPerS,
    MiB,
    Count,
    /// Redis commands per unit of work (two decimals).
    Cmds,
    /// Throughput of bytes, MiB (2^20 bytes) per second.
    MiBPerS,
    /// Operations per second.
    OpsPerS,
    /// KiB (1,024 bytes), one decimal.
    KiB,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// Reported without a target.
    Info,
    /// Not run.
    Skipped,
}

use Comparison::*;
use Unit::*;

macro_rules! targets {
    ($($id:literal $issue:literal $cmp:ident $(($of:literal))? $threshold:literal $unit:ident
       $what:literal;)*) => {
        &[$(Target {
            id: $id,
            what: $what,
            unit: $unit,
            comparison: $cmp $(($of))?,
            threshold: $threshold,
            issue: $issue,
        }),*]
    };
}

/// The table, in the order of the report's rows and of the phases. A row:
/// `"phase.name" issue comparison threshold unit`, then the figure's wording.
pub static TARGETS: &[Target] = targets! {
    "latency.p50"         2  AtMost                    1.0  Ms
        "Warm sync invoke latency, p50";
    "throughput.best"     2  AtLeast                3000.0  PerS
        "Sync invocations/s, best over concurrent keep-alive clients";
    "cold.first_call"     2  AtMost                  150.0  Ms
        "Cold start: first call of a new version, median";
    "numpy.new_worker"    2  AtMost                   20.0  Ms
        "New worker for a warm numpy function: queued_ms, median";
    "async.end_to_end"    2  AtLeast                2000.0  PerS
        "Async invocations/s end to end";
    "queue.single"        4  RatioAtLeast("Celery")    3.0  PerS
        "Queue end to end (sends in batches → trivial Python handler → ack), one message per \
         invocation, vs Celery (2 prefork workers, Redis without persistence)";
    "queue.batched"       4  RatioAtLeast("Celery")    3.0  PerS
        "Queue end to end (sends in batches → trivial Python handler → ack), a batch of \
         messages per invocation, vs Celery (2 prefork workers, Redis without persistence)";
    "queue.alone"         4  RatioAtLeast("kombu")     3.0  PerS
        "The queue alone, no handler: messages sent, then consumed and acked; Shoal's \
         embedded store in-process (every write durable) vs Celery's broker alone (kombu on \
         Redis without persistence)";
    "ratelimit.peak"      4  RatioAtMost("the limit")  1.0  PerS
        "Rate limit: most requests the mock vendor saw in any 1 s window";
    "ratelimit.rejected"  4  AtMost                    0.0  Count
        "Rate limit: requests the vendor answered 429 (too many)";
    "ratelimit.rate"      4  RatioAtLeast("the limit") 0.9  PerS
        "Rate limit: achieved rate, the vendor's mean accepted rate from the first to the last \
         call";
    "fanout.fanin"        4  AtMost                   60.0  S
        "Fan-out: a parent's `ctx.map` of trivial children with a fan-in: fan-in start − parent \
         start";
    "writes.docs"         3  AtLeast              100000.0  DocsPerS
        "Batched durable document writes, NDJSON";
    "queries.map"         3  RatioAtMost("(a)")        1.5  Ms
        "Repeated query, `map` + `reduce` per document: Shoal vs (a) `multiprocessing.Pool(2)` \
         holding the documents, medians";
    "queries.map_batch"   3  RatioAtMost("(a)")        1.2  Ms
        "Repeated query, `map_batch` + `reduce`: Shoal vs (a) `multiprocessing.Pool(2)` holding \
         the documents, medians";
    "queries.ray"         3  Measured                  0.0  Ms
        "(b) Ray, 2 actors holding the documents, beside (a): `map` per document, median";
    "queries.rss"         3  AtMostOver("budget")    256.0  MiB
        "Peak RSS of the node and its workers during the repeated queries";
    "query-cpu.map"       3  RatioAtMost("(a)")        1.1  Ms
        "CPU-heavy pure-Python `map`: Shoal vs (a), medians";
    "query-cold.first"    3  Reported                  0.0  Ms
        "First query after a node restart (SIGTERM, start on the same data), median, beside the \
         baselines loading the file";
    "query-stream.rss"    3  AtMostOver("budget")    256.0  MiB
        "Query with a budget far smaller than the data: peak RSS of node + workers";
    "list.failed_p99"    10  AtMost                   50.0  Ms
        "List the failed invocations of one function among 1,000,000 stored records \
         (`GET /v1/invocations?function=F&status=failed&limit=50`), p99";
    "list.failed_p50"    10  Reported                  0.0  Ms
        "The same list, median";
    "stats.count_p99"    14  AtMost                  200.0  Ms
        "Count invocations among 1,000,000 stored records (`GET /v1/invocations/count`: all, \
         failed, one function, a range off minute edges, failed of one function in it), the \
         slowest variant's p99";
    "stats.stats_p99"    14  AtMost                  200.0  Ms
        "Invocation stats over the same records (`GET /v1/stats`: a day in 5-minute steps, a \
         week in hours), the slower one's p99";
    "cluster.cmds_sync"  11  Reported                  0.0  Cmds
        "Redis commands per sync invocation: commands the node sent (an EVALSHA counts once), \
         from a counting proxy; with the calls inside scripts, from `INFO commandstats`";
    "cluster.cmds_async" 11  AtMost                    4.0  Cmds
        "Redis commands per async invocation, submit to final record (as above)";
    "cluster.cmds_queue" 11  Reported                  0.0  Cmds
        "Redis commands per queue message, sent to a queue with a subscriber until acked (as \
         above)";
    "cluster.cmds_doc"   11  AtMost                    1.0  Cmds
        "Redis commands per document written, batched NDJSON writes (as above)";
    "cluster.cmds_shard" 11  Reported                  0.0  Cmds
        "Redis commands per shard of a query over a category (as above)";
    "cluster.async_embedded" 11 Reported               0.0  PerS
        "Async invocations/s end to end, one node on the embedded store";
    "cluster.async_1"    11  RatioAtLeast("Celery")    5.0  PerS
        "Async invocations/s end to end, 1 node on one redis-server (AOF, `appendfsync \
         everysec`), vs Celery (2 prefork workers) on the same kind of redis-server";
    "cluster.async_2"    11  RatioAtLeast("Celery")    5.0  PerS
        "The same, 2 nodes on one redis-server, clients spread round robin";
    "cluster.async_3"    11  RatioAtLeast("Celery")    5.0  PerS
        "The same, 3 nodes on one redis-server";
    "cluster.async_always" 11 RatioAtLeast("Celery")   5.0  PerS
        "Async invocations/s with `appendfsync always`, best of 1 and 3 nodes, vs Celery on \
         redis-server with `appendfsync always`";
    "cluster.sync_embedded" 11 Reported                0.0  PerS
        "Sync invocations/s, concurrent keep-alive clients, one node on the embedded store";
    "cluster.sync_1"     11  Reported                  0.0  PerS
        "Sync invocations/s, 1 node on one redis-server (`appendfsync everysec`)";
    "cluster.sync_2"     11  Reported                  0.0  PerS
        "Sync invocations/s, 2 nodes on one redis-server, clients spread round robin";
    "cluster.sync_3"     11  Reported                  0.0  PerS
        "Sync invocations/s, 3 nodes on one redis-server";
    "cluster.capacity"   11  Reported                  0.0  PerS
        "Async invocations/s one redis-server carries: 1 ÷ its main thread's CPU per async \
         invocation in the 1-node run (on paper from the commands above and redis-benchmark in \
         the note)";
    "blobs.upload"       12  RatioAtLeast("dd")        0.5  MiBPerS
        "Blob upload over loopback (`PUT /v1/blobs/{key}`, a streamed chunked body read from a \
         file in the page cache, answered once stored and fsynced) vs `dd bs=4M conv=fsync` \
         copying the same file on the same disk";
    "blobs.download"     12  RatioAtLeast("dd")        0.5  MiBPerS
        "Blob download over loopback, whole, the blob's file not in the page cache, vs `dd \
         bs=4M` reading the same file to /dev/null, not in the page cache either";
    "blobs.ranges"       12  RatioAtLeast("dd")        0.5  MiBPerS
        "Blob download by ranges (`Range: bytes=...`, 4 requests in flight) over the whole \
         blob, not in the page cache, vs the same `dd` read";
    "blobs.rss"          12  AtMostOver("idle")       64.0  MiB
        "Peak RSS of the node process during the upload";
    "blobs.upload_redis" 12  RatioAtLeast("dd")        0.5  MiBPerS
        "The same upload on the Redis store (AOF, `appendfsync everysec`) vs the same dd copy";
    "blobs.download_redis" 12 RatioAtLeast("dd")       0.5  MiBPerS
        "The first whole download after it, on the Redis store, vs the same cold dd read";
    "blobs.ranges_redis" 12  RatioAtLeast("dd")        0.5  MiBPerS
        "Download by ranges on the Redis store vs the same cold dd read";
    "blobs.rss_redis"    12  AtMostOver("idle")       64.0  MiB
        "Peak RSS of the node process on Redis during its upload";
    "bitfield.http"      12  AtLeast               50000.0  OpsPerS
        "Single-pixel `set u4` ops/s through `POST /v1/blobs/{key}/bitfield`, durable (each \
         batch committed before its answer)";
    "bitfield.function"  12  AtLeast               50000.0  OpsPerS
        "Single-pixel `set u4` ops/s from a Python function (`ctx.blob_apply` in batches), \
         durable, concurrent sync invocations";
    "bitfield.http_redis" 12 AtLeast              50000.0  OpsPerS
        "The same HTTP batches on the Redis store";
    "bitfield.function_redis" 12 AtLeast          50000.0  OpsPerS
        "The same function on the Redis store";
    "cache.hit_p50"      12  AtMost                    1.0  Ms
        "Result-cache hit over HTTP (`[cache] ttl = \"60s\"`, identical sync calls on one \
         keep-alive connection), p50";
    "cache.hit_p99"      12  Reported                  0.0  Ms
        "The same, p99";
    "scan.warm"          12  RatioAtMost("the limit")  1.3  S
        "Ranged scan, warm page cache: the sum of a float column of fixed-size 16-byte records \
         over a blob, `ctx.map_ranges(..., chunk_bytes=64 MiB, then=...).wait()` from one sync \
         call, vs the limit: 2 processes each `numpy.memmap`-ing half of the same file, medians";
    "scan.cold"          12  RatioAtMost("the limit")  1.3  S
        "The same scan with the file dropped from the page cache before each run (Shoal: the \
         blob's file; the limit: the source file), medians";
    "scan.dask"          12  RatioAtMost("Dask")       1.0  S
        "The same scan, warm: Shoal vs Dask (`dask.array` over a `numpy.memmap` of the file, \
         64 MiB chunks, threaded scheduler, 2 workers), medians";
    "scan.ray"           12  RatioAtMost("Ray")        1.0  S
        "The same scan, warm: Shoal vs Ray (a local instance with 2 CPUs, one task per 64 MiB \
         block `numpy.memmap`-ing it), medians";
    "live.placements"    13  AtLeast                5000.0  PerS
        "Pixel placements/s, durable (each one `ctx.publish` of a bitfield op and a channel \
         message, committed before its answer), with 1,000 live SSE subscribers connected";
    "live.delivery_p99"  13  AtMost                  100.0  Ms
        "Placement-to-delivery latency at every subscriber, placements at a paced 2,000/s, p99";
    "live.delivery_p50"  13  Reported                  0.0  Ms
        "The same, p50";
    "live.lost"          13  AtMost                    0.0  Count
        "Subscribers whose board (every message applied to a local copy) differs from the \
         server's at the end, subscribers that dropped and resumed included";
    "live.idle_sse"      13  AtMost                   10.0  KiB
        "Node memory per idle SSE subscriber: RSS growth over 10,000 idle connections ÷ 10,000 \
         (Centrifugo reports about 30 KB)";
    "live.idle_ws"       13  AtMost                   10.0  KiB
        "The same over WebSocket";
    "ui.first_load"      14  Measured                  0.0  Ms
        "The dashboard's first load in headless Chromium, signed in, empty cache: from the \
         navigation's start to the overview rendered (figures and charts), median";
    "ui.first_bytes"     14  Measured                  0.0  KiB
        "The same load's page and assets as they crossed the wire (gzip, headers included)";
    "ui.warm_load"       14  Measured                  0.0  Ms
        "The same page loaded again in the same tab, cache warm, median";
};

/// The target with this id. Ids are constants in the phases' code, and a
/// test renders every phase against the table, so a miss is a bug.
pub fn get(id: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no target {id:?} in target::TARGETS"))
}

/// The phases, in the order they run.
pub fn phases() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in TARGETS {
        if !out.contains(&t.phase()) {
            out.push(t.phase());
        }
    }
    out
}

impl Target {
    /// The phase (`--only` name) that measures it: the id up to the dot.
    pub fn phase(&self) -> &'static str {
        self.id.split_once('.').map_or(self.id, |(phase, _)| phase)
    }

    /// The Target column: `≤ 1 ms`, `≥ 3× Celery`, `≤ budget + 256 MiB`.
    pub fn text(&self) -> String {
        let t = self.threshold;
        match self.comparison {
            AtMost if t == 0.0 => "none".into(),
            AtMost => format!("≤ {}", self.unit.with(number(t))),
            AtLeast => format!("≥ {}", self.unit.with(number(t))),
            RatioAtMost(of) => format!("≤ {}× {of}", number(t)),
            RatioAtLeast(of) => format!("≥ {}× {of}", number(t)),
            AtMostOver(base) => format!("≤ {base} + {}", self.unit.with(number(t))),
            Measured => "measured".into(),
            Reported => "none (reported)".into(),
        }
    }

    /// Whether the figure is judged against a second measured value.
    pub fn reference(&self) -> Option<&'static str> {
        match self.comparison {
            RatioAtMost(r) | RatioAtLeast(r) | AtMostOver(r) => Some(r),
            _ => None,
        }
    }

    /// The verdict on `value`; `reference` is the measured value a ratio or
    /// an allowance over a budget is taken against (ignored otherwise). A
    /// value that is not a number misses.
    pub fn judge(&self, value: f64, reference: f64) -> Verdict {
        let t = self.threshold;
        let pass = match self.comparison {
            AtMost => value <= t,
            AtLeast => value >= t,
            RatioAtMost(_) => value / reference <= t,
            RatioAtLeast(_) => value / reference >= t,
            AtMostOver(_) => value - reference <= t,
            Measured => return Verdict::Pass,
            Reported => return Verdict::Info,
        };
        if pass { Verdict::Pass } else { Verdict::Miss }
    }

    /// The figure as the Measured column starts: `0.23 ms`, `Shoal 261 ms
    /// vs (a) 311 ms: 0.84×`, `2,346 MiB, budget 2,048 MiB`.
    pub fn measured(&self, value: f64, reference: f64) -> String {
        let u = self.unit;
        match self.comparison {
            RatioAtMost(of) | RatioAtLeast(of) => {
                let r = value / reference;
                let r = if r < 10.0 {
                    format!("{r:.2}")
                } else {
                    format!("{r:.1}")
                };
                format!("Shoal {} vs {of} {}: {r}×", u.fmt(value), u.fmt(reference))
            }
            AtMostOver(base) => format!("{}, {base} {}", u.fmt(value), u.fmt(reference)),
            _ => u.fmt(value),
        }
    }
}

impl Unit {
    /// A measured value in this unit.
    pub fn fmt(self, x: f64) -> String {
        if !x.is_finite() {
            return "n/a".into();
        }
        match self {
            Ms => fmt_ms(x),
            S if x < 10.0 => format!("{x:.2} s"),
            S => format!("{x:.1} s"),
            PerS if x < 100.0 && x.fract() != 0.0 => format!("{x:.1}/s"),
            Cmds => self.with(format!("{x:.2}")),
            KiB => self.with(format!("{x:.1}")),
            _ => self.with(thousands(x)),
        }
    }

    /// A number already formatted, with the unit.
    fn with(self, n: String) -> String {
        match self {
            Ms => format!("{n} ms"),
            S => format!("{n} s"),
            PerS => format!("{n}/s"),
            DocsPerS => format!("{n} docs/s"),
            MiB => format!("{n} MiB"),
            Count => n,
            Cmds => format!("{n} commands"),
            MiBPerS => format!("{n} MiB/s"),
            OpsPerS => format!("{n} ops/s"),
            KiB => format!("{n} KiB"),
        }
    }
}

/// A threshold: `3,000`, `1.5`, `0.9`.
fn number(x: f64) -> String {
    if x.fract() == 0.0 {
        thousands(x)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_phases_contiguous() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|u| u.id != t.id), "{} twice", t.id);
            assert!(t.id.contains('.'), "{} has no phase", t.id);
            // A phase's targets sit together, so its rows do too.
            let last = TARGETS[..i].iter().rposition(|u| u.phase() == t.phase());
            assert!(last.is_none_or(|j| j == i - 1), "{} is apart", t.id);
        }
        assert_eq!(phases().len(), 22);
        assert_eq!(phases()[0], "latency");
    }

    #[test]
    fn thresholds_read_as_the_issues_state_them() {
        let text = |id| get(id).text();
        assert_eq!(text("latency.p50"), "≤ 1 ms");
        assert_eq!(text("throughput.best"), "≥ 3,000/s");
        assert_eq!(text("writes.docs"), "≥ 100,000 docs/s");
        assert_eq!(text("queue.single"), "≥ 3× Celery");
        assert_eq!(text("ratelimit.rate"), "≥ 0.9× the limit");
        assert_eq!(text("ratelimit.rejected"), "none");
        assert_eq!(text("queries.map_batch"), "≤ 1.2× (a)");
        assert_eq!(text("queries.rss"), "≤ budget + 256 MiB");
        assert_eq!(text("fanout.fanin"), "≤ 60 s");
        assert_eq!(text("queries.ray"), "measured");
        assert_eq!(text("list.failed_p99"), "≤ 50 ms");
        assert_eq!(text("stats.count_p99"), "≤ 200 ms");
    }

    #[test]
    fn verdicts_compare_on_the_right_side_of_the_threshold() {
        let judge = |id, v, r| get(id).judge(v, r);
        use Verdict::*;
        // At most / at least, the threshold itself passes.
        assert_eq!(judge("latency.p50", 1.0, f64::NAN), Pass);
        assert_eq!(judge("latency.p50", 1.01, f64::NAN), Miss);
        assert_eq!(judge("throughput.best", 3000.0, f64::NAN), Pass);
        assert_eq!(judge("throughput.best", 2999.0, f64::NAN), Miss);
        assert_eq!(judge("ratelimit.rejected", 0.0, f64::NAN), Pass);
        assert_eq!(judge("ratelimit.rejected", 1.0, f64::NAN), Miss);
        // Ratios are taken against the reference.
        assert_eq!(judge("queue.single", 1500.0, 500.0), Pass);
        assert_eq!(judge("queue.single", 1499.0, 500.0), Miss);
        assert_eq!(judge("queries.map", 280.0, 200.0), Pass);
        assert_eq!(judge("queries.map_batch", 230.0, 180.0), Miss);
        assert_eq!(judge("ratelimit.peak", 50.0, 50.0), Pass);
        assert_eq!(judge("ratelimit.peak", 51.0, 50.0), Miss);
        // Budgets allow the threshold over the reference.
        assert_eq!(judge("queries.rss", 2048.0 + 256.0, 2048.0), Pass);
        assert_eq!(judge("queries.rss", 2048.0 + 257.0, 2048.0), Miss);
        // Not a number: a miss, whichever the direction.
        assert_eq!(judge("latency.p50", f64::NAN, f64::NAN), Miss);
        assert_eq!(judge("throughput.best", f64::NAN, f64::NAN), Miss);
        assert_eq!(judge("queue.single", 1500.0, f64::NAN), Miss);
        // No threshold.
        assert_eq!(judge("queries.ray", 300.0, f64::NAN), Pass);
        assert_eq!(judge("query-cold.first", 4000.0, f64::NAN), Info);
    }

    #[test]
    fn measured_cells() {
        let t = get("queries.map");
        assert_eq!(
            t.measured(261.0, 311.0),
            "Shoal 261 ms vs (a) 311 ms: 0.84×"
        );
        assert_eq!(
            get("queue.batched").measured(67954.0, 484.0),
            "Shoal 67,954/s vs Celery 484/s: 140.4×"
        );
        assert_eq!(
            get("queries.rss").measured(2346.0, 2048.0),
            "2,346 MiB, budget 2,048 MiB"
        );
        assert_eq!(get("ratelimit.rate").unit.fmt(47.5), "47.5/s");
        assert_eq!(get("fanout.fanin").measured(12.8, f64::NAN), "12.8 s");
    }
}
