//! The bench's Python functions (`crates/shoal-bench/functions/`), embedded in
//! the binary and written out under a chosen name before each deploy.

use std::path::Path;

use anyhow::{Context, Result};
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
        std::fs::create_dir_all(dir)?;
        for (file, text) in self.files {
            let text = match *file {
                "shoal.toml" => {
                    assert!(
                        text.contains(self.name_line),
                        "{file} lacks {}",
                        self.name_line
                    );
                    text.replace(self.name_line, &format!("name = \"{name}\""))
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
        let dir = scratch.join(match variant {
            Some(v) => format!("{name}-{v}"),
            None => name.to_string(),
        });
        self.write(&dir, name, variant)?;
        let archive = shoal_client::pack_dir(&dir).context("packing the function")?;
        client
            .deploy(archive)
            .await
            .with_context(|| format!("deploying {name}"))
    }
}
