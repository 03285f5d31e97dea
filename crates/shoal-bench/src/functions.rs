//! The bench's Python functions (`crates/shoal-bench/functions/`), embedded in
//! the binary and written out under a chosen name before each deploy.

use std::path::Path;

use anyhow::{Context, Result, bail};
use shoal_client::Client;
use shoal_client::protocol::FunctionView;

/// A function directory: `(file name, content)` pairs.
pub struct Source {
    files: &'static [(&'static str, &'static str)],
    /// The `name = "..."` line in its `shoal.toml`, replaced on deploy.
    name_line: &'static str,
}

/// A `Source` from the files of `functions/DIR`; `NAME` is the name in its
/// `shoal.toml`.
macro_rules! source {
    ($dir:literal, $name:literal, [$($file:literal),+]) => {
        Source {
            files: &[$(($file, include_str!(concat!("../functions/", $dir, "/", $file)))),+],
            name_line: concat!("name = \"", $name, "\""),
        }
    };
}

/// `def handler(event, ctx): return event`, concurrency 4.
pub const ECHO: Source = source!("echo", "bench-echo", ["shoal.toml", "main.py"]);
/// Imports numpy at load, sleeps 300 ms per call; `requirements.txt` = numpy.
pub const NUMPY: Source = source!(
    "numpy-sleep",
    "bench-numpy",
    ["shoal.toml", "main.py", "requirements.txt"]
);
/// `map` + `reduce`: the total of `price * qty` (query benchmarks).
pub const QUERY_SUM: Source = source!("query-sum", "bench-sum", ["shoal.toml", "main.py"]);
/// The same total as `map_batch` (one value per document) + `reduce`.
pub const QUERY_SUM_BATCH: Source = source!(
    "query-sum-batch",
    "bench-sum-batch",
    ["shoal.toml", "main.py"]
);
/// A CPU-heavy pure-Python `map` (about 1 ms per document) + `reduce`.
pub const QUERY_CPU: Source = source!("query-cpu", "bench-cpu", ["shoal.toml", "main.py"]);
/// The trivial queue consumer (`[subscribe]`, handler returns at once).
pub const QUEUE_NOOP: Source = source!("queue-noop", "bench-queue", ["shoal.toml", "main.py"]);
/// One GET of the URL in each queue message, under the `bench-vendor` limiter.
pub const VENDOR_CALL: Source = source!("vendor-call", "bench-vendor", ["shoal.toml", "main.py"]);
/// A fan-out child: returns its event.
pub const FANOUT_CHILD: Source = source!("fanout-child", "bench-child", ["shoal.toml", "main.py"]);
/// The fan-in: returns `time.time()` at its start and the child count.
pub const FANOUT_FANIN: Source = source!("fanout-fanin", "bench-fanin", ["shoal.toml", "main.py"]);
/// The parent: one `ctx.map` with a fan-in, timed from inside.
pub const FANOUT_PARENT: Source =
    source!("fanout-parent", "bench-parent", ["shoal.toml", "main.py"]);

/// Applies `batches` batches of single-pixel `set u4` ops with
/// `ctx.blob_apply` (the bitfield figure from a function).
pub const BITFIELD_APPLY: Source = source!(
    "bitfield-apply",
    "bench-bitfield",
    ["shoal.toml", "main.py"]
);
/// One pixel placement: `ctx.publish` with one bitfield op, behind a public
/// route (the live phase).
pub const LIVE_PIXEL: Source = source!("live-pixel", "bench-live", ["shoal.toml", "main.py"]);
/// An echo with `[cache] ttl = "60s"` (the cache figure).
pub const CACHED: Source = source!("cached", "bench-cached", ["shoal.toml", "main.py"]);
/// A ranged-scan child: numpy sum of the value column of its range.
pub const SCAN_PART: Source = source!(
    "scan-part",
    "bench-scan-part",
    ["shoal.toml", "main.py", "requirements.txt"]
);
/// The same child mapping its range of the blob's file (`mmap`) instead
/// of copying it (where the scan's time goes).
pub const SCAN_PART_MMAP: Source = source!(
    "scan-part-mmap",
    "bench-scan-part-mmap",
    ["shoal.toml", "main.py", "requirements.txt"]
);
/// The ranged scan's fan-in: the total of the children's sums.
pub const SCAN_SUM: Source = source!("scan-sum", "bench-scan-sum", ["shoal.toml", "main.py"]);
/// The ranged scan: `ctx.map_ranges(...).wait()` from a sync call.
pub const SCAN_PARENT: Source = source!("scan-parent", "bench-scan", ["shoal.toml", "main.py"]);

/// The Celery baseline of the queue figures (`baselines/celery_baseline.py`).
pub const CELERY_BASELINE: (&str, &str) = (
    "celery_baseline.py",
    include_str!("../baselines/celery_baseline.py"),
);

/// The baselines of the ranged scan (`baselines/scan_baseline.py`): the
/// limit (2 processes over a memmap), Dask and Ray.
pub const SCAN_BASELINE: (&str, &str) = (
    "scan_baseline.py",
    include_str!("../baselines/scan_baseline.py"),
);

/// The Python baselines of the query benchmarks (`baselines/`), written out
/// next to each other before they run.
pub const BASELINES: [(&str, &str); 3] = [
    ("common.py", include_str!("../baselines/common.py")),
    (
        "pool_baseline.py",
        include_str!("../baselines/pool_baseline.py"),
    ),
    (
        "ray_baseline.py",
        include_str!("../baselines/ray_baseline.py"),
    ),
];

impl Source {
    /// Writes the function under `name` into `dir`, with whole lines of its
    /// `shoal.toml` replaced: each `(line, replacement)` replaces every line
    /// equal to `line` (at least one). `variant` is appended to `main.py` as
    /// a comment, so that each variant is new code.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        variant: Option<u64>,
        edits: &[(&str, String)],
    ) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (file, text) in self.files {
            let text = match *file {
                "shoal.toml" => {
                    assert!(
                        text.contains(self.name_line),
                        "{file} lacks {}",
                        self.name_line
                    );
                    let mut lines: Vec<String> = text
                        .replace(self.name_line, &format!("name = \"{name}\""))
                        .lines()
                        .map(str::to_string)
                        .collect();
                    for (line, replacement) in edits {
                        let matching = lines.iter_mut().filter(|l| l == line);
                        if matching.map(|l| l.clone_from(replacement)).count() == 0 {
                            bail!("{file} has no line {line:?}");
                        }
                    }
                    lines.join("\n") + "\n"
                }
                "main.py" => match variant {
                    Some(v) => format!("{text}\n# variant {v}\n"),
                    None => text.to_string(),
                },
                _ => text.to_string(),
            };
            std::fs::write(dir.join(file), text).with_context(|| format!("writing {file}"))?;
        }
        Ok(())
    }

    /// Writes (see `write`), packs and deploys the function as `name`.
    pub async fn deploy(
        &self,
        client: &Client,
        scratch: &Path,
        name: &str,
        variant: Option<u64>,
        edits: &[(&str, String)],
    ) -> Result<FunctionView> {
        let dir = scratch.join(match variant {
            Some(v) => format!("{name}-{v}"),
            None => name.to_string(),
        });
        self.write(&dir, name, variant, edits)?;
        let archive = shoal_client::pack_dir(&dir).context("packing the function")?;
        client
            .deploy(archive)
            .await
            .with_context(|| format!("deploying {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_replace_every_matching_line() {
        let dir = tempfile::tempdir().unwrap();
        QUEUE_NOOP
            .write(
                dir.path(),
                "q2",
                None,
                &[
                    ("queue = \"bench-queue\"", "queue = \"q2\"".into()),
                    ("batch_size = 1", "batch_size = 100".into()),
                    ("concurrency = 4", "concurrency = 2".into()),
                ],
            )
            .unwrap();
        let toml = std::fs::read_to_string(dir.path().join("shoal.toml")).unwrap();
        assert!(toml.contains("name = \"q2\"\n") && toml.contains("queue = \"q2\"\n"));
        assert!(toml.contains("batch_size = 100\n"));
        assert_eq!(toml.matches("concurrency = 2\n").count(), 2, "{toml}");
        let err = QUEUE_NOOP
            .write(dir.path(), "q2", None, &[("nope", "x".into())])
            .unwrap_err();
        assert!(err.to_string().contains("no line"), "{err}");
    }
}
