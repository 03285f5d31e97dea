//! What every engine service is given and none owns: the store, the runtime,
//! time, randomness, and the tasks it runs.
//!
//! `Env` holds no mutable state of its own (the services do); it is the
//! injection point that makes the engine testable: a test passes an
//! in-memory store, a scripted runtime, a clock that follows tokio's paused
//! time and a fixed random source.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use shoal_runtime::Runtime;
use shoal_store::Backend;

use crate::categories::CategoryOptions;
use crate::clock::Clock;

/// How the engine runs. Built by the binary from node configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where function code is unpacked (`functions/...`).
    pub data_dir: PathBuf,
    /// Extra lease time an asynchronous invocation gets beyond its timeout.
    pub lease_margin: Duration,
    pub categories: CategoryOptions,
    /// How often queue statistics are sampled for their history.
    pub sample_interval: Duration,
    /// How long a consumer with nothing to do sleeps before it looks again
    /// (sends wake it at once; this only bounds a missed wake-up).
    pub idle_poll: Duration,
    /// How long the messages of a batch whose run failed on the platform
    /// (not in user code) wait before they are delivered again.
    pub platform_retry: Duration,
    /// The most messages one queue (a user queue, or a function's queue of
    /// asynchronous invocations) holds waiting or in flight; a send beyond
    /// it is refused with `QueueFull`.
    pub max_queue_messages: u64,
    /// The most children one job may have.
    pub max_job_children: usize,
    /// How long finished invocation records and their logs are kept;
    /// `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often the retention sweep looks for records past `retention`.
    pub retention_sweep: Duration,
    /// This node among the nodes sharing its store.
    pub node: NodeOptions,
    /// The key secrets are encrypted under; `None` for
    /// `DATA_DIR/secrets.key`. Nodes sharing a store must use the same.
    pub secrets_key_file: Option<PathBuf>,
}

/// How a node takes part in a cluster (nodes sharing one store).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where its HTTP API listens, as others should reach it (shown by
    /// `shoal nodes`).
    pub address: String,
    /// How often it writes its heartbeat into the store.
    pub heartbeat: Duration,
    /// How often it looks whether another node changed the catalog
    /// (functions, tokens, limiters); a lookup that misses looks at once.
    pub catalog_poll: Duration,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            address: String::new(),
            heartbeat: Duration::from_secs(5),
            catalog_poll: Duration::from_millis(250),
        }
    }
}

impl Options {
    pub fn new(data_dir: PathBuf) -> Options {
        Options {
            data_dir,
            lease_margin: Duration::from_secs(60),
            categories: CategoryOptions::default(),
            sample_interval: Duration::from_secs(5),
            idle_poll: Duration::from_secs(1),
            platform_retry: Duration::from_secs(1),
            max_queue_messages: 1_000_000,
            max_job_children: 100_000,
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            retention_sweep: Duration::from_secs(600),
            node: NodeOptions::default(),
            secrets_key_file: None,
        }
    }
}

/// A source of randomness for jitter. Injected so tests can fix it.
pub trait Random: Send + Sync + 'static {
    /// A number in `0..=max`, uniformly.
    fn up_to(&self, max: u64) -> u64;
}

/// The thread-local generator of the `rand` crate.
pub struct SystemRandom;

impl Random for SystemRandom {
    #[allow(clippy::disallowed_methods)] // the one place randomness is drawn
    fn up_to(&self, max: u64) -> u64 {
        use rand::Rng;
        rand::rng().random_range(0..=max)
    }
}

/// Every task the engine starts, stopped together at shutdown.
///
/// Tasks are spawned on one `TaskTracker`, so `drain` can wait for them;
/// long-running loops select on [`Tasks::stopping`] and end when it fires.
#[derive(Clone)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Tasks {
    pub(crate) fn new(shutdown: CancellationToken) -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// Runs `task` as one of the engine's tasks.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// True once shutdown began: take no new work.
    pub(crate) fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub(crate) async fn stopping(&self) {
        self.shutdown.cancelled().await
    }

    /// Begins shutdown and waits up to `deadline` for every task to end.
    /// True when they all did.
    pub(crate) async fn stop(&self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The engine's dependencies, shared by every service.
pub(crate) struct Env {
    pub(crate) opts: Options,
    pub(crate) backend: Backend,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) random: Arc<dyn Random>,
    pub(crate) tasks: Tasks,
    /// The trigger service (set once at start), for the document and blob
    /// paths that run triggers, wherever they are reached from.
    pub(crate) triggers: std::sync::OnceLock<std::sync::Weak<crate::triggers::Triggers>>,
    /// The notifications service (set once at start), for services that
    /// emit events (`budget.reached`): `env.notifications()?.emit(..)`.
    pub(crate) notifications:
        std::sync::OnceLock<std::sync::Weak<crate::notifications::Notifications>>,
}

impl Env {
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The trigger service, once started.
    pub(crate) fn triggers(&self) -> Option<Arc<crate::triggers::Triggers>> {
        self.triggers.get()?.upgrade()
    }

    /// The notifications service, once started.
    pub(crate) fn notifications(&self) -> Option<Arc<crate::notifications::Notifications>> {
        self.notifications.get()?.upgrade()
    }

    /// Fails with `ShuttingDown` once shutdown began.
    pub(crate) fn accepting(&self) -> crate::Result<()> {
        if self.tasks.is_stopping() {
            Err(crate::Error::ShuttingDown)
        } else {
            Ok(())
        }
    }
}
