//! The Python baselines of the query phases: (a) `multiprocessing.Pool(2)`
//! forked after the parent parsed the documents, (b) Ray with 2 actors
//! holding half the documents each (`baselines/`). Each runs as a process
//! that loads the NDJSON file, says it is ready, then runs the tasks it is
//! sent on stdin one at a time and answers each with its time and result.
//! The memory of its whole process tree is sampled while it lives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::functions::BASELINES;
use crate::node;
use crate::report::{peak_detail, secs};
use crate::rss::{Peak, Sampler};
use crate::stats::{fmt_ms, median, thousands};

const POOL_SCRIPT: &str = "pool_baseline.py";
const RAY_SCRIPT: &str = "ray_baseline.py";
/// How often the memory of a baseline's process tree is sampled (less often
/// than the node's: it is not a target, and the sampler shares the cores).
const RSS_EVERY: Duration = Duration::from_millis(200);

/// How to start the baselines.
pub struct Setup {
    /// The interpreter of (a): the one the node runs functions with.
    pub python: PathBuf,
    /// The interpreter of the venv with Ray, for (b).
    pub ray_python: PathBuf,
    /// Why Ray is not installed, when the install failed.
    pub ray_missing: Option<String>,
    /// The longest loading or one task may take.
    pub limit: Duration,
    /// The NDJSON documents.
    pub data: PathBuf,
    /// The scripts, with the functions' modules under `functions/`.
    pub dir: PathBuf,
    pub ray_tmp: PathBuf,
    /// Their stderr.
    pub log: PathBuf,
}

/// What a baseline measured, once it has exited.
pub struct Baseline {
    pub version: String,
    pub docs: u64,
    pub load: Load,
    pub tasks: HashMap<String, Task>,
    /// Peak RSS of the whole process tree (Ray's own processes included).
    pub peak: Peak,
    pub wall_s: f64,
}

pub struct Load {
    /// Ray only: `ray.init` and starting the actors.
    pub start_s: f64,
    pub read_s: f64,
    pub parse_s: f64,
    pub distribute_s: f64,
    /// Read + parse + distribute.
    pub total_s: f64,
}

pub struct Task {
    /// The first (warm-up) run, when there was one.
    pub first_s: Option<f64>,
    pub times_s: Vec<f64>,
    pub result: Value,
}

/// A running baseline script.
pub struct Proc {
    pub label: &'static str,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pid: u32,
    sampler: Option<Sampler>,
    started: Instant,
    log: PathBuf,
    limit: Duration,
    ready: Value,
    /// Every run of each task in order, warm-ups included: `(seconds, result)`.
    runs: HashMap<String, Vec<(f64, Value)>>,
    /// Set when a run failed; the baseline is not asked again.
    pub failed: Option<String>,
}

impl Setup {
    /// Writes the scripts and the functions' modules (`(source, name)`).
    pub fn write(&self, functions: &[(&crate::functions::Source, &str)]) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("functions"))?;
        for (name, text) in BASELINES {
            std::fs::write(self.dir.join(name), text)?;
        }
        for (src, name) in functions {
            src.write(&self.function(name), name, None, &[])?;
        }
        Ok(())
    }

    /// A task of the baselines: `function`'s module, run per document (`map`)
    /// or per batch (`batch`).
    pub fn task(&self, function: &str, mode: &str) -> Value {
        json!({"name": function, "dir": self.function(function), "mode": mode})
    }

    fn function(&self, name: &str) -> PathBuf {
        self.dir.join("functions").join(name)
    }

    /// Starts (a), which must work, and (b) (`Err` with the reason if not)
    /// on the first `limit` documents (0: all).
    pub async fn start(
        &self,
        limit: usize,
        tasks: &[Value],
    ) -> Result<(Proc, Result<Proc, String>)> {
        crate::step("  baseline (a): loading the documents into multiprocessing.Pool(2)");
        let pool = Proc::start("(a)", self, &self.python, POOL_SCRIPT, limit, tasks).await?;
        crate::step("  baseline (b): starting Ray and loading the documents into 2 actors");
        let ray = match &self.ray_missing {
            Some(reason) => Err(anyhow!("Ray could not be installed: {reason}")),
            None if self.ray_python.components().count() > 1 && !self.ray_python.exists() => {
                Err(anyhow!(
                    "{} does not exist: Ray is not installed (scripts/bench installs it)",
                    self.ray_python.display()
                ))
            }
            None => Proc::start("(b)", self, &self.ray_python, RAY_SCRIPT, limit, tasks).await,
        };
        let ray = ray.map_err(|e| {
            eprintln!("  Ray: {e:#}");
            format!("{e:#}")
        });
        Ok((pool, ray))
    }
}

impl Proc {
    async fn start(
        label: &'static str,
        setup: &Setup,
        python: &Path,
        script: &str,
        limit: usize,
        tasks: &[Value],
    ) -> Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&setup.log)?;
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(setup.dir.join(script))
            .arg("--data")
            .arg(&setup.data)
            .arg("--limit")
            .arg(limit.to_string())
            .arg("--tasks")
            .arg(serde_json::to_string(tasks)?)
            .env("SHOAL_BENCH_RAY_TMP", &setup.ray_tmp)
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {script}", python.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut proc = Proc {
            label,
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
            pid,
            sampler: Some(Sampler::start(pid, RSS_EVERY)),
            started,
            log: setup.log.clone(),
            limit: setup.limit,
            ready: Value::Null,
            runs: HashMap::new(),
            failed: None,
        };
        // On an error, dropping `proc` kills the process group.
        let ready = proc
            .read_line()
            .await
            .with_context(|| format!("{script} did not load the documents"))?;
        proc.ready = ready
            .get("ready")
            .cloned()
            .with_context(|| format!("{script} did not report that it was ready"))?;
        eprintln!(
            "  {label} loaded in {:.2} s",
            proc.ready["load"]["total_s"].as_f64().unwrap_or(f64::NAN)
        );
        Ok(proc)
    }

    /// The next JSON line on its stdout.
    async fn read_line(&mut self) -> Result<Value> {
        let limit = self.limit;
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
            .context("reading its stdout")?;
        match line {
            Some(l) => serde_json::from_str(&l).with_context(|| format!("reading {l:?}")),
            None => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("it exited; its log ends:\n{}", node::tail(&log, 12))
            }
        }
    }

    /// Runs one task; returns its time in seconds.
    pub async fn run(&mut self, task: &str) -> Result<f64> {
        let stdin = self.stdin.as_mut().context("stdin is closed")?;
        let mut request = serde_json::to_vec(&json!({ "task": task }))?;
        request.push(b'\n');
        stdin.write_all(&request).await.context("writing a task")?;
        stdin.flush().await?;
        let answer = self.read_line().await?;
        if let Some(e) = answer.get("error") {
            bail!("{task} failed: {e}");
        }
        let secs = answer["seconds"]
            .as_f64()
            .with_context(|| format!("unexpected answer {answer}"))?;
        let result = answer.get("result").cloned().unwrap_or(Value::Null);
        self.runs
            .entry(task.to_string())
            .or_default()
            .push((secs, result));
        Ok(secs)
    }

    fn kill(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }

    /// Closes its stdin, waits for it to exit (Ray shuts down) and returns
    /// what it measured; the first `warmup` runs of each task are warm-ups.
    pub async fn finish(mut self, warmup: usize) -> Result<Baseline, String> {
        drop(self.stdin.take());
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            self.kill();
        }
        let peak = self.sampler.take().map(Sampler::finish).unwrap_or_default();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let r = &self.ready;
        let f = |k: &str| r["load"][k].as_f64().unwrap_or(0.0);
        let python = r["python"].as_str().unwrap_or("?");
        let version = match r.get("ray").and_then(Value::as_str) {
            Some(ray) => format!("Ray {ray}, Python {python}"),
            None => format!("Python {python}"),
        };
        let mut tasks = HashMap::new();
        for (name, runs) in std::mem::take(&mut self.runs) {
            let first_s = (warmup > 0).then(|| runs.first().map(|r| r.0)).flatten();
            let result = runs.first().map_or(Value::Null, |r| r.1.clone());
            if let Some(other) = runs.iter().find(|r| r.1 != result) {
                return Err(format!(
                    "{name} gave different results: {result} and {}",
                    other.1
                ));
            }
            let times_s = runs.iter().skip(warmup).map(|r| r.0).collect();
            tasks.insert(
                name,
                Task {
                    first_s,
                    times_s,
                    result,
                },
            );
        }
        Ok(Baseline {
            version,
            docs: r["docs"].as_u64().unwrap_or(0),
            load: Load {
                start_s: f("start_s"),
                read_s: f("read_s"),
                parse_s: f("parse_s"),
                distribute_s: f("distribute_s"),
                total_s: f("total_s"),
            },
            tasks,
            peak,
            wall_s: self.started.elapsed().as_secs_f64(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Ends both baselines; (a) must have worked.
pub async fn finish(
    pool: Proc,
    ray: Result<Proc, String>,
    warmup: usize,
) -> Result<(Baseline, Result<Baseline, String>)> {
    let ray = match ray {
        Ok(r) => r.finish(warmup).await,
        Err(e) => Err(e),
    };
    let pool = pool
        .finish(warmup)
        .await
        .map_err(|e| anyhow!("baseline (a): {e}"))?;
    Ok((pool, ray))
}

impl Baseline {
    /// The median time of `task` in ms (NaN if it did not run).
    pub fn median_ms(&self, task: &str) -> f64 {
        self.tasks
            .get(task)
            .map_or(f64::NAN, |t| median(&t.times_s) * 1000.0)
    }

    pub fn result(&self, task: &str) -> &Value {
        self.tasks.get(task).map_or(&Value::Null, |t| &t.result)
    }

    /// One bullet of the details: loading, each task's runs, memory.
    pub fn detail(&self, label: &str, tasks: &[&str]) -> String {
        let mut parts = Vec::new();
        for t in tasks {
            if let Some(x) = self.tasks.get(*t) {
                let times: Vec<String> = x.times_s.iter().map(|s| fmt_ms(s * 1000.0)).collect();
                parts.push(format!(
                    "`{t}` {} (first run {})",
                    times.join(", "),
                    x.first_s.map_or("n/a".into(), |s| fmt_ms(s * 1000.0))
                ));
            }
        }
        let l = &self.load;
        let start = if l.start_s > 0.0 {
            format!("starting Ray and the actors took {}; ", secs(l.start_s))
        } else {
            String::new()
        };
        format!(
            "{label} ({}, {} documents): {start}loading took {} (read {}, json.loads {}, distribute \
             {}); runs: {}; peak RSS of its process tree {}; {} in all.",
            self.version,
            thousands(self.docs as f64),
            secs(l.total_s),
            secs(l.read_s),
            secs(l.parse_s),
            secs(l.distribute_s),
            parts.join("; "),
            peak_detail(&self.peak),
            secs(self.wall_s)
        )
    }

    /// A finished baseline with one task (for tests).
    #[cfg(test)]
    pub fn example(task: &str, times_s: &[f64], result: Value) -> Baseline {
        let mut tasks = HashMap::new();
        let first_s = Some(1.0);
        let times_s = times_s.to_vec();
        tasks.insert(
            task.to_string(),
            Task {
                first_s,
                times_s,
                result,
            },
        );
        Baseline {
            version: "Python 3.11.7".into(),
            docs: 1000,
            load: Load {
                start_s: 0.0,
                read_s: 0.5,
                parse_s: 5.0,
                distribute_s: 0.2,
                total_s: 5.7,
            },
            tasks,
            peak: Peak {
                total: 3 << 30,
                root: 1 << 30,
                descendants: 2 << 30,
                processes: 3,
                samples: 10,
            },
            wall_s: 9.0,
        }
    }
}
