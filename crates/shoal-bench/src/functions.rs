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

/// `def handler(event, ctx): return event`, concurrency 4.
pub const ECHO: Source = Source {
    files: &[
        ("shoal.toml", include_str!("../functions/echo/shoal.toml")),
        ("main.py", include_str!("../functions/echo/main.py")),
    ],
    name_line: "name = \"bench-echo\"",
};

/// Imports numpy at load, sleeps 300 ms per call; `requirements.txt` = numpy.
pub const NUMPY: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/numpy-sleep/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/numpy-sleep/main.py")),
        (
            "requirements.txt",
            include_str!("../functions/numpy-sleep/requirements.txt"),
        ),
    ],
    name_line: "name = \"bench-numpy\"",
};

/// `map` + `reduce`: the total of `price * qty` (query benchmarks).
pub const QUERY_SUM: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/query-sum/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/query-sum/main.py")),
    ],
    name_line: "name = \"bench-sum\"",
};

/// The same total as `map_batch` (one value per document) + `reduce`.
pub const QUERY_SUM_BATCH: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/query-sum-batch/shoal.toml"),
        ),
        (
            "main.py",
            include_str!("../functions/query-sum-batch/main.py"),
        ),
    ],
    name_line: "name = \"bench-sum-batch\"",
};

/// A CPU-heavy pure-Python `map` (about 1 ms per document) + `reduce`.
pub const QUERY_CPU: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/query-cpu/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/query-cpu/main.py")),
    ],
    name_line: "name = \"bench-cpu\"",
};

/// The trivial queue consumer (`[subscribe]`, handler returns at once).
pub const QUEUE_NOOP: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/queue-noop/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/queue-noop/main.py")),
    ],
    name_line: "name = \"bench-queue\"",
};

/// One GET of the URL in each queue message, under the `bench-vendor` limiter.
pub const VENDOR_CALL: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/vendor-call/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/vendor-call/main.py")),
    ],
    name_line: "name = \"bench-vendor\"",
};

/// A fan-out child: returns its event.
pub const FANOUT_CHILD: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/fanout-child/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/fanout-child/main.py")),
    ],
    name_line: "name = \"bench-child\"",
};

/// The fan-in: returns `time.time()` at its start and the child count.
pub const FANOUT_FANIN: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/fanout-fanin/shoal.toml"),
        ),
        ("main.py", include_str!("../functions/fanout-fanin/main.py")),
    ],
    name_line: "name = \"bench-fanin\"",
};

/// The parent: one `ctx.map` with a fan-in, timed from inside.
pub const FANOUT_PARENT: Source = Source {
    files: &[
        (
            "shoal.toml",
            include_str!("../functions/fanout-parent/shoal.toml"),
        ),
        (
            "main.py",
            include_str!("../functions/fanout-parent/main.py"),
        ),
    ],
    name_line: "name = \"bench-parent\"",
};

/// The Celery baseline of the queue figures (`baselines/celery_baseline.py`).
pub const CELERY_BASELINE: (&str, &str) = (
    "celery_baseline.py",
    include_str!("../baselines/celery_baseline.py"),
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
    /// Writes the function under `name` into `dir`; `variant` is appended to
    /// `main.py` as a comment so that each variant is new code.
    pub fn write(&self, dir: &Path, name: &str, variant: Option<u64>) -> Result<()> {
        self.write_edited(dir, name, variant, &[])
    }

    /// `write`, with whole lines of `shoal.toml` replaced: each `(line,
    /// replacement)` replaces every line equal to `line` (at least one).
    pub fn write_edited(
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
                        let mut found = false;
                        for l in lines.iter_mut().filter(|l| l == line) {
                            l.clone_from(replacement);
                            found = true;
                        }
                        if !found {
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

    /// Writes, packs and deploys the function as `name`.
    pub async fn deploy(
        &self,
        client: &Client,
        scratch: &Path,
        name: &str,
        variant: Option<u64>,
    ) -> Result<FunctionView> {
        self.deploy_edited(client, scratch, name, variant, &[])
            .await
    }

    /// `deploy` with lines of `shoal.toml` replaced (see `write_edited`).
    pub async fn deploy_edited(
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
        self.write_edited(&dir, name, variant, edits)?;
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
            .write_edited(
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
            .write_edited(dir.path(), "q2", None, &[("nope", "x".into())])
            .unwrap_err();
        assert!(err.to_string().contains("no line"), "{err}");
    }
}
