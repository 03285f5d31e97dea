//! The fast engine tier's harness: an engine on the in-memory store and the
//! scripted runtime, its clock following tokio's paused time. Every test
//! runs under `#[tokio::test(start_paused = true)]`: sleeps and timeouts
//! cost no real time, and time moves on only when every task waits.

#![allow(dead_code, unused_imports)] // each test binary uses a part

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use shoal_engine::{
    FunctionRecord, Handle, InvocationRecord, JobView, Options, Parts, Random, TokioClock,
};
use shoal_runtime::fake::{Call, FakeRuntime};
use shoal_store::Backend;
use shoal_store::memory::MemoryStore;
use shoal_types::JobStatus;

pub use shoal_runtime::fake::{Latch, Script};

/// Wall time at the start of every test, in ms since the epoch.
pub const BASE_MS: u64 = 1_750_000_000_000;

/// How long (of tokio time) a wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(6 * 3600);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Jitter fixed at a fraction of its range: `Jitter(1.0)` always takes the
/// whole backoff, `Jitter(0.0)` half of it (equal jitter).
pub struct Jitter(pub f64);

impl Random for Jitter {
    fn up_to(&self, max: u64) -> u64 {
        (max as f64 * self.0).round() as u64
    }
}

/// An engine with the fake runtime.
pub struct Node {
    pub engine: Handle,
    pub fake: FakeRuntime,
    /// When the engine started; `at` measures from here.
    pub t0: Instant,
    shutdown: CancellationToken,
    _data: TempDir,
}

impl Node {
    /// An engine whose jitter is fixed at the whole backoff (`Jitter(1.0)`),
    /// so retry delays are exactly `retry_delay × 2^(n-1)`.
    pub async fn start() -> Node {
        Node::with_random(Some(Arc::new(Jitter(1.0)))).await
    }

    /// An engine with this jitter; `None` for the system's generator.
    pub async fn with_random(random: Option<Arc<dyn Random>>) -> Node {
        Node::with(random, Backend::from_adapter(Arc::new(MemoryStore::new()))).await
    }

    /// An engine on this store.
    pub async fn with(random: Option<Arc<dyn Random>>, backend: Backend) -> Node {
        Node::build(random, backend, BASE_MS, |_| {}).await
    }

    /// An engine on this store (jitter as [`Node::start`]) whose clock
    /// reads `base_ms` now: a node
    /// started later than others on the same store (a restart) with a
    /// clock that agrees with theirs.
    pub async fn with_clock_at(base_ms: u64, backend: Backend) -> Node {
        Node::build(Some(Arc::new(Jitter(1.0))), backend, base_ms, |_| {}).await
    }

    /// An engine (the system's jitter, an in-memory store) with options
    /// changed by `set`.
    pub async fn with_options(set: impl FnOnce(&mut Options)) -> Node {
        let backend = Backend::from_adapter(Arc::new(MemoryStore::new()));
        Node::build(None, backend, BASE_MS, set).await
    }

    async fn build(
        random: Option<Arc<dyn Random>>,
        backend: Backend,
        base_ms: u64,
        set: impl FnOnce(&mut Options),
    ) -> Node {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut opts = Options::new(data.path().to_path_buf());
        set(&mut opts);
        let fake = FakeRuntime::new();
        let shutdown = CancellationToken::new();
        let t0 = Instant::now();
        let engine = shoal_engine::start_with(Parts {
            opts,
            backend,
            runtime: Arc::new(fake.clone()),
            clock: Arc::new(TokioClock::starting_at(base_ms)),
            random,
            shutdown: shutdown.clone(),
            webhook: None,
        })
        .await
        .expect("the engine starts");
        Node {
            engine,
            fake,
            t0,
            shutdown,
            _data: data,
        }
    }

    /// The engine's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    /// Deploys a function from its `shoal.toml` text (with a `main.py`
    /// the fake runtime never runs).
    pub async fn deploy(&self, manifest: &str) -> FunctionRecord {
        self.engine
            .deploy(archive(manifest))
            .await
            .unwrap_or_else(|e| panic!("deploying {manifest:?}: {e}"))
    }

    /// Time since the engine started.
    pub fn at(&self, instant: Instant) -> Duration {
        instant - self.t0
    }

    /// When each call started, from the engine's start.
    pub fn starts(&self, calls: &[Call]) -> Vec<Duration> {
        calls.iter().map(|c| self.at(c.started)).collect()
    }

    /// Waits until `done` holds, checking every 10 ms of tokio time.
    pub async fn until<F, Fut>(&self, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        within(what, async {
            while !done().await {
                tokio::time::sleep(ms(10)).await;
            }
        })
        .await
    }

    /// An invocation's record once it is final.
    pub async fn wait_final(&self, id: &str) -> InvocationRecord {
        within(&format!("invocation {id} to finish"), async {
            loop {
                let r = self
                    .engine
                    .invocation(id)
                    .await
                    .expect("the invocation exists");
                if r.status.is_final() {
                    return r;
                }
                tokio::time::sleep(ms(10)).await;
            }
        })
        .await
    }

    /// A job's view once it has finished (or finished cancelling).
    pub async fn wait_job(&self, id: &str) -> JobView {
        within(&format!("job {id} to finish"), async {
            loop {
                let v = self.engine.job(id).await.expect("the job exists");
                if matches!(v.status, JobStatus::Finished | JobStatus::Cancelled) {
                    return v;
                }
                tokio::time::sleep(ms(10)).await;
            }
        })
        .await
    }

    /// Waits for `n` calls of `function` to have ended.
    pub async fn ended(&self, function: &str, n: usize) -> Vec<Call> {
        within(
            &format!("{n} calls of {function} to end"),
            self.fake.wait_ended(function, n),
        )
        .await;
        self.fake.calls_of(function)
    }

    /// Waits for `n` calls of `function` to have started.
    pub async fn started(&self, function: &str, n: usize) -> Vec<Call> {
        within(
            &format!("{n} calls of {function} to start"),
            self.fake.wait_started(function, n),
        )
        .await;
        self.fake.calls_of(function)
    }

    /// Lets `d` of tokio time pass, with the engine running meanwhile.
    pub async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Stops the engine: shutdown, then drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.engine.drain(secs(5)).await;
    }
}

/// Runs `fut`, failing the test if it takes more than [`PATIENCE`] of
/// tokio time (an instant in real time, with time paused).
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("waited {PATIENCE:?} of tokio time for {what}"),
    }
}

/// A function archive: a tar of `shoal.toml` and a `main.py`, in memory.
pub fn archive(manifest: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let files = [
        ("shoal.toml", manifest),
        ("main.py", "def handler(event, ctx):\n    return event\n"),
    ];
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, path, text.as_bytes())
            .expect("appending to a tar in memory");
    }
    tar.into_inner().expect("finishing a tar in memory")
}

/// The most intervals among `spans` (start, end) open at once; one that
/// ends when another starts does not overlap it.
pub fn peak_overlap(spans: &[(Duration, Duration)]) -> usize {
    let mut events: Vec<(Duration, i32)> = Vec::new();
    for (start, end) in spans {
        events.push((*start, 1));
        events.push((*end, -1));
    }
    // Ends before starts at the same instant.
    events.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    peak as usize
}

/// The largest number of `starts` inside any window of `window` (closed at
/// its start, open at its end).
pub fn peak_in_window(starts: &[Duration], window: Duration) -> usize {
    let mut sorted = starts.to_vec();
    sorted.sort();
    let mut peak = 0;
    for (i, first) in sorted.iter().enumerate() {
        let n = sorted[i..]
            .iter()
            .take_while(|t| **t < *first + window)
            .count();
        peak = peak.max(n);
    }
    peak
}
