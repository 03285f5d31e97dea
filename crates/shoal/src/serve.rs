//! `shoal serve`: the wiring. Opens the store, builds the runtime, the engine
//! and the HTTP router, then runs them until SIGINT/SIGTERM.
//!
//! Shutdown: stop accepting, let in-flight work finish up to the deadline,
//! kill remaining workers, flush and close the store. A second signal exits
//! at once; queued work survives in the store either way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use shoal_engine::{SystemClock, manifest::parse_duration};
use shoal_store::Backend;
use shoal_store_redb::RedbStore;
use shoal_types::Role;

/// The admin token file, in the data directory.
pub const TOKEN_FILE: &str = "admin.token";

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    /// `host:port` with a name (`localhost:7700`) or an address.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7700",
        value_parser = crate::cli::parse_listen)]
    pub listen: SocketAddr,
    /// Where the node keeps its data (with `--store redis://...`: the
    /// code it fetched, virtualenvs, the admin token file).
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = ".shoal")]
    pub data_dir: PathBuf,
    /// Where functions, invocations, queues, documents and jobs are stored:
    /// `embedded` (a file in the data directory; one node), or
    /// `redis://[user:password@]host:port/db` for several nodes sharing one
    /// Redis 7 / Valkey (AOF on, `maxmemory-policy noeviction`; see
    /// docs/operations.md).
    #[arg(long, env = "SHOAL_STORE", default_value = "embedded")]
    pub store: String,
    /// The prefix of every key Shoal writes in Redis, so several clusters
    /// can share one server.
    #[arg(long, env = "SHOAL_REDIS_NAMESPACE", default_value = "shoal")]
    pub redis_namespace: String,
    /// With `--store rediss://...`: the PEM file of the certificate
    /// authority that signed Redis's certificate (default: the system's
    /// trusted roots).
    #[arg(long, env = "SHOAL_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// How other nodes and `shoal nodes` should reach this node (default:
    /// the address it listens on).
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// The 32-byte key secrets are encrypted under (default:
    /// DATA_DIR/secrets.key, created on first use). Nodes sharing a store
    /// keep the secrets in it and must all use the same key: copy the
    /// first node's key file to the others (mode 0600).
    #[arg(long, env = "SHOAL_SECRETS_KEY_FILE", value_name = "PATH")]
    pub secrets_key_file: Option<PathBuf>,
    /// How long past its timeout an asynchronous invocation's lease lasts:
    /// when a node dies (kill -9, power cut), other nodes run its leased
    /// work again once the function's timeout plus this has passed.
    #[arg(long, env = "SHOAL_LEASE_MARGIN", default_value = "60s", value_parser = duration)]
    pub lease_margin: Duration,
    /// Largest request body accepted (events, JSON), in bytes.
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest function archive accepted by deploy, in bytes.
    #[arg(long, env = "SHOAL_MAX_ARCHIVE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_archive_bytes: usize,
    /// Largest document write (one request), in bytes.
    #[arg(long, env = "SHOAL_MAX_WRITE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_write_bytes: usize,
    /// Most bytes of files one static site deploy may hold (`shoal sites
    /// deploy`). Files up to 8 MiB are held in memory while they are
    /// stored; larger ones are streamed.
    #[arg(long, env = "SHOAL_MAX_SITE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_site_bytes: u64,
    /// Most documents in one write (one request). A write is atomic, so the
    /// node holds its documents until it commits (~250 bytes each besides
    /// their JSON).
    #[arg(long, env = "SHOAL_MAX_WRITE_DOCS", default_value_t = 500_000)]
    pub max_write_docs: usize,
    /// Largest single document, in bytes.
    #[arg(long, env = "SHOAL_MAX_DOC_BYTES", default_value_t = 1024 * 1024)]
    pub max_doc_bytes: usize,
    /// Shard level of categories created without one.
    #[arg(long, env = "SHOAL_SHARDS", default_value_t = 8)]
    pub shards: u32,
    /// Memory for documents kept resident in query workers, in MiB (all workers together).
    #[arg(long, env = "SHOAL_QUERY_CACHE_MB", default_value_t = 2048)]
    pub query_cache_mb: usize,
    /// Memory for the embedded store's page cache, in MiB.
    #[arg(long, env = "SHOAL_STORE_CACHE_MB", default_value_t = 64)]
    pub store_cache_mb: usize,
    /// Local disk for the Redis store's cache of blob chunks
    /// (`DATA_DIR/blob-cache`), in MiB; 0 turns the cache off.
    #[arg(long, env = "SHOAL_BLOB_CACHE_MB", default_value_t = 1024)]
    pub blob_cache_mb: u64,
    /// Worker processes a query runs on, per function (default: the number of CPUs).
    #[arg(long, env = "SHOAL_QUERY_WORKERS", default_value_t = default_query_workers())]
    pub query_workers: usize,
    /// The Python interpreter for functions without their own virtualenv.
    #[arg(long, env = "SHOAL_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Stop workers idle this long (e.g. 30s, 5m).
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight invocations.
    #[arg(long, env = "SHOAL_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = duration)]
    pub shutdown_deadline: Duration,
    /// How often queue statistics are sampled for their history.
    #[arg(long, env = "SHOAL_QUEUE_SAMPLE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub queue_sample_interval: Duration,
    /// Most messages one queue holds waiting or in flight (a user queue, or
    /// a function's queue of asynchronous invocations); a send beyond it is
    /// refused with 429 `queue_full`. Each waiting message costs ~400 bytes
    /// of memory besides its body.
    #[arg(long, env = "SHOAL_MAX_QUEUE_MESSAGES", default_value_t = 1_000_000)]
    pub max_queue_messages: u64,
    /// Most children one job may have (~2 KB of memory each while it runs).
    #[arg(long, env = "SHOAL_MAX_JOB_CHILDREN", default_value_t = 100_000)]
    pub max_job_children: usize,
    /// How long finished invocation records and their logs are kept; `0s`
    /// keeps them forever [default: 30d]. (`--retention` and
    /// `SHOAL_RETENTION` are the older names.)
    #[arg(long = "retain", visible_alias = "retention", env = "SHOAL_RETAIN",
        value_parser = retention)]
    pub retention: Option<Duration>,
    /// Serve `/metrics` without a token (by default it needs a reader token).
    #[arg(long, env = "SHOAL_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Connections served at once; one more is answered 503 and closed.
    /// Default: half the process's file limit (raised to its hard limit at
    /// start), at most 10,000.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a request's head (request line and headers) may take to
    /// arrive, from its first byte.
    #[arg(long, env = "SHOAL_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// Longest silence inside a request body before the request fails.
    #[arg(long, env = "SHOAL_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_timeout: Duration,
    /// Slowest average, in bytes per second of waiting, a request body may
    /// arrive at once it has been waited for --body-timeout (0: no minimum).
    #[arg(long, env = "SHOAL_MIN_BODY_RATE", default_value_t = 1024)]
    pub min_body_rate: u64,
    /// Close a connection that waits this long for its next request.
    #[arg(long, env = "SHOAL_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub http_idle_timeout: Duration,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "SHOAL_LOG", default_value = "info")]
    pub log: String,
    /// Run functions WITHOUT a sandbox, with the node's own rights (they can
    /// then read the data directory, other functions' code and the admin
    /// token). Only for kernels without Landlock, on a node you alone use.
    #[arg(long, env = "SHOAL_INSECURE_NO_SANDBOX")]
    pub insecure_no_sandbox: bool,
    /// Also let every function write under this directory (repeatable), e.g.
    /// a shared output directory. Never give the data directory.
    #[arg(long = "sandbox-allow-write", value_name = "DIR")]
    pub sandbox_allow_write: Vec<PathBuf>,
    /// How each worker's process tree (processes and memory summed) is
    /// limited: `auto` (cgroups where the node may write them, else a
    /// watchdog reading /proc), `cgroups`, or `watchdog`.
    #[arg(long, env = "SHOAL_TREE_LIMITS", value_name = "HOW", default_value = "auto", value_parser = parse_tree_limits)]
    pub tree_limits: shoal_runtime_python::TreeLimitMode,
}

fn parse_tree_limits(s: &str) -> std::result::Result<shoal_runtime_python::TreeLimitMode, String> {
    use shoal_runtime_python::TreeLimitMode;
    match s {
        "auto" => Ok(TreeLimitMode::Auto),
        "cgroups" => Ok(TreeLimitMode::Cgroups),
        "watchdog" => Ok(TreeLimitMode::Watchdog),
        other => Err(format!("{other:?} is not one of auto, cgroups, watchdog")),
    }
}

/// Where the embedded store keeps blob files (next to `shoal.redb`).
const BLOB_DIR: &str = "blobs";
/// Where the Redis store caches blob chunks.
const BLOB_CACHE_DIR: &str = "blob-cache";

/// The functions' sandbox from the flags; `None` with `--insecure-no-sandbox`.
fn sandbox(args: &ServeArgs, data_dir: &Path) -> Result<Option<shoal_runtime_python::Sandbox>> {
    if args.insecure_no_sandbox {
        return Ok(None);
    }
    // Handlers read blob bytes straight from the node's files (`ctx.blob`):
    // the embedded store's blob files and the Redis store's chunk cache,
    // read-only.
    let mut sandbox = shoal_runtime_python::Sandbox::standard()
        .allow_read(data_dir.join(BLOB_DIR))
        .allow_read(data_dir.join(BLOB_CACHE_DIR));
    for dir in &args.sandbox_allow_write {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--sandbox-allow-write {}", dir.display()))?;
        if data_dir.starts_with(&dir) || dir.starts_with(data_dir) {
            anyhow::bail!(
                "--sandbox-allow-write {} would let functions write the data directory {}; give a directory outside it",
                dir.display(),
                data_dir.display()
            );
        }
        sandbox = sandbox.allow_write(dir);
    }
    Ok(Some(sandbox))
}

fn default_query_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration; use e.g. 500ms, 30s, 5m"))
}

/// A retention: a duration, also in days (`7d`), at least a minute unless
/// `0s` (keep forever).
fn retention(s: &str) -> Result<Duration, String> {
    let d = match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Duration::from_secs(days.saturating_mul(24 * 3600)),
        _ => parse_duration(s)
            .ok_or_else(|| format!("{s:?} is not a duration; use e.g. 7d, 12h, 30m, or 0s"))?,
    };
    if !d.is_zero() && d < Duration::from_secs(60) {
        return Err(format!(
            "{s:?} is shorter than a minute; use 1m or more, or 0s to keep records forever"
        ));
    }
    Ok(d)
}

/// Keeps the node's files to its own user: from here on every file it
/// creates is 0600 and every directory 0700 (umask 077), and what an
/// older node created is narrowed too: the data directory, the store
/// file, and the directories of function code.
fn make_private(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {} to {mode:o}", path.display()))
    };
    set(data_dir, 0o700)?;
    let store = data_dir.join("shoal.redb");
    if store.exists() {
        set(&store, 0o600)?;
    }
    let functions = data_dir.join("functions");
    if functions.is_dir() {
        set(&functions, 0o700)?;
        for function in std::fs::read_dir(&functions)?.flatten() {
            if function.file_type()?.is_dir() {
                set(&function.path(), 0o700)?;
                for version in std::fs::read_dir(function.path())?.flatten() {
                    if version.file_type()?.is_dir() {
                        set(&version.path(), 0o700)?;
                    }
                }
            }
        }
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("parsing --log")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ])
        .and_then(|b| b.install_recorder())
        .context("installing the metrics recorder")?;
    // Before anything opens files: raises the limit on open files.
    let edge = edge_options(&args)?;

    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
    make_private(&data_dir)?;
    // The sandbox grants reads of these; Landlock needs them to exist.
    for dir in [BLOB_DIR, BLOB_CACHE_DIR] {
        std::fs::create_dir_all(data_dir.join(dir))
            .with_context(|| format!("creating {}", data_dir.join(dir).display()))?;
    }

    let (backend, store) = open_store(&args, &data_dir).await?;

    let runtime = shoal_runtime_python::PythonRuntime::new(shoal_runtime_python::Options {
        python: args.python.clone(),
        work_dir: data_dir.join("runtime"),
        idle_timeout: args.idle_timeout,
        max_log_bytes: 1024 * 1024,
        max_result_bytes: args.max_body_bytes,
        query_cache_bytes: args.query_cache_mb.saturating_mul(1024 * 1024),
        query_workers: args.query_workers,
        sandbox: sandbox(&args, &data_dir)?,
        tree_limits: args.tree_limits,
    })
    .context("starting the Python runtime")?;
    let sandbox_state = if args.insecure_no_sandbox {
        tracing::warn!(
            "Functions run WITHOUT a sandbox (--insecure-no-sandbox): they can read the data directory and every other function's code."
        );
        "off: functions run with the node's own rights (--insecure-no-sandbox)".to_string()
    } else {
        let abi = runtime.sandbox_support().await.context(
            "functions cannot be sandboxed on this machine; start with --insecure-no-sandbox to run them with the node's own rights (only on a node you alone use)",
        )?;
        tracing::info!(
            landlock_abi = abi,
            tree_limits = runtime.tree_limits(),
            pid_namespace = runtime.pid_namespace(),
            "Functions run sandboxed."
        );
        format!(
            "on: Landlock ABI {abi}, seccomp, no_new_privs; {}; {}",
            if runtime.pid_namespace() {
                "a pid namespace per template"
            } else {
                "NO pid namespaces (unshare --pid is refused here): a setsid child outlives a killed node until its next start"
            },
            match runtime.tree_limits_by() {
                Some(by) => format!("process-tree limits by {by}"),
                None =>
                    "NO process-tree limits (neither cgroups nor /proc are usable here)".to_string(),
            }
        )
    };

    if !(1..=1024).contains(&args.shards) {
        anyhow::bail!("--shards must be between 1 and 1024");
    }
    let mut engine_opts = shoal_engine::Options::new(data_dir.clone());
    engine_opts.categories.default_shards = args.shards;
    engine_opts.categories.max_doc_bytes = args.max_doc_bytes;
    engine_opts.categories.max_write_docs = args.max_write_docs;
    engine_opts.sample_interval = args.queue_sample_interval;
    if args.max_queue_messages == 0 || args.max_job_children == 0 {
        anyhow::bail!("--max-queue-messages and --max-job-children must be at least 1");
    }
    engine_opts.max_queue_messages = args.max_queue_messages;
    engine_opts.max_job_children = args.max_job_children;
    let retain = match (args.retention, std::env::var("SHOAL_RETENTION")) {
        (Some(d), _) => d,
        // The variable of the flag's older name still counts.
        (None, Ok(old)) => retention(&old).map_err(|e| anyhow::anyhow!("SHOAL_RETENTION: {e}"))?,
        (None, Err(_)) => Duration::from_secs(30 * 24 * 3600),
    };
    engine_opts.retention = (!retain.is_zero()).then_some(retain);
    engine_opts.lease_margin = args.lease_margin;
    engine_opts.secrets_key_file = args.secrets_key_file.clone();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    engine_opts.node.address = args.advertise.clone().unwrap_or_else(|| addr.to_string());
    let shutdown = CancellationToken::new();
    let handle = shoal_engine::start_with(shoal_engine::Parts {
        opts: engine_opts,
        backend,
        runtime,
        clock: Arc::new(SystemClock),
        random: None,
        shutdown: shutdown.clone(),
        webhook: Some(Arc::new(crate::notifications::HttpWebhook::new()?)),
    })
    .await
    .context("starting the engine")?;

    ensure_admin_token(&handle, &data_dir).await?;

    let router = shoal_server::router(
        handle.clone(),
        &shoal_server::Options {
            max_body_bytes: args.max_body_bytes,
            max_archive_bytes: args.max_archive_bytes,
            max_write_bytes: args.max_write_bytes,
            max_site_bytes: args.max_site_bytes,
            metrics_public: args.metrics_public,
            sandbox: sandbox_state,
        },
        Some(metrics),
    );
    // Tests and scripts read this line to find the port.
    println!("Shoal listening on http://{addr}");
    info!(%addr, data_dir = %data_dir.display(), "Node started.");

    #[allow(clippy::disallowed_methods)] // lives as long as the process; ends with it
    tokio::spawn(watch_signals(shutdown.clone()));
    info!(
        max_connections = edge.max_connections,
        "Serving HTTP with a connection cap."
    );
    #[allow(clippy::disallowed_methods)] // awaited below, after shutdown
    let server = tokio::spawn(shoal_server::serve(
        listener,
        router,
        edge,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    let started = Instant::now();
    info!("Shutting down: no new work; waiting for in-flight invocations.");
    match tokio::time::timeout(args.shutdown_deadline, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "HTTP server task failed."),
        Err(_) => warn!("Shutdown deadline passed with requests still open."),
    }
    let left = args.shutdown_deadline.saturating_sub(started.elapsed());
    handle.drain(left).await;
    if let Some(store) = store {
        store.close();
    }
    info!("Stopped.");
    Ok(())
}

/// Opens the store `--store` names: the embedded one (returned too, to be
/// closed at shutdown), or Redis. A Redis that does not answer yet is
/// waited for (and the wait logged); one that refuses (credentials, an
/// evicting `maxmemory-policy`) stops the start with the reason.
async fn open_store(
    args: &ServeArgs,
    data_dir: &Path,
) -> Result<(Backend, Option<Arc<RedbStore>>)> {
    let url = args.store.as_str();
    if url == "embedded" {
        let store = RedbStore::open_with_cache(
            &data_dir.join("shoal.redb"),
            args.store_cache_mb.saturating_mul(1024 * 1024),
        )
        .with_context(|| {
            format!(
                "opening the store in {} (is another node using it?)",
                data_dir.display()
            )
        })?;
        return Ok((Backend::from_adapter(store.clone()), Some(store)));
    }
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        anyhow::bail!(
            "--store {url:?} is not a store: use `embedded`, redis://[user:password@]host:port/db, or rediss://... for TLS"
        );
    }
    let options = shoal_store_redis::Options {
        url: url.to_string(),
        namespace: args.redis_namespace.clone(),
        ca_file: args.redis_ca_file.clone(),
        blob_cache_dir: (args.blob_cache_mb > 0).then(|| data_dir.join(BLOB_CACHE_DIR)),
        blob_cache_bytes: args.blob_cache_mb.saturating_mul(1024 * 1024),
    };
    let shown = redacted(url);
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(200);
    let (store, notes) = loop {
        match shoal_store_redis::RedisStore::connect(&options).await {
            Ok(connected) => break connected,
            Err(shoal_store_redis::ConnectError::Rejected(why)) => {
                anyhow::bail!("cannot use Redis at {shown}: {why}")
            }
            Err(shoal_store_redis::ConnectError::Unreachable(why)) => {
                warn!(redis = %shown, waited_s = waited.as_secs(), error = %why, "Waiting for Redis.");
                eprintln!("Waiting for Redis at {shown}: {why}");
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    };
    if !notes.append_only {
        warn!(
            redis = %shown,
            "Redis keeps no append-only file (appendonly no): if Redis crashes, what it acknowledged since its last snapshot is lost. Set appendonly yes (docs/operations.md)."
        );
    }
    info!(redis = %shown, namespace = %args.redis_namespace, "Using Redis as the store.");
    Ok((Backend::from_adapter(Arc::new(store)), None))
}

/// A Redis URL with its password replaced by `***`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connections above this many are never served, whatever the file limit.
const MAX_CONNECTIONS_DEFAULT_CEILING: usize = 10_000;
/// Descriptors kept for everything else: the store, workers' sockets and
/// pipes, templates, logs, and the 503 answers to connections over the cap.
const RESERVED_FILES: u64 = 512;

/// The HTTP edge's limits from the flags. Raises the soft limit on open
/// files to the hard limit, and refuses a connection cap the limit cannot
/// hold (the process would run out of files before answering 503).
fn edge_options(args: &ServeArgs) -> Result<shoal_server::EdgeOptions> {
    let files = raise_file_limit();
    let fits = files.saturating_sub(RESERVED_FILES) as usize;
    let max_connections = match args.max_connections {
        Some(0) => anyhow::bail!("--max-connections must be at least 1"),
        Some(n) if n > fits => anyhow::bail!(
            "--max-connections {n} does not fit the limit of {files} open files (at most {fits}: {RESERVED_FILES} stay for the store and workers); raise `ulimit -Hn` or lower the cap"
        ),
        Some(n) => n,
        None => ((files / 2) as usize).clamp(16, MAX_CONNECTIONS_DEFAULT_CEILING),
    };
    for (flag, d) in [
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--http-idle-timeout", args.http_idle_timeout),
    ] {
        if d.is_zero() {
            anyhow::bail!("{flag} must be more than 0s");
        }
    }
    Ok(shoal_server::EdgeOptions {
        max_connections,
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        min_body_rate: args.min_body_rate,
        idle_timeout: args.http_idle_timeout,
    })
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force afterwards.
fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        limit.current = Some(maximum);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!(error = %e, "Cannot raise the limit on open files.");
            limit.current = before;
        }
    }
    // No limit at all: count it as plenty, but keep the default cap finite.
    limit.current.unwrap_or(u64::MAX / 2)
}

/// First signal: graceful shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "Cannot watch SIGTERM.");
            return;
        }
    };
    for round in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            shutdown.cancel();
        }
    }
    eprintln!("Second signal: exiting now. Queued work resumes on the next start.");
    std::process::exit(130);
}

/// Creates an admin token on first start (or when the token file is gone) and
/// writes it to `DATA_DIR/admin.token` with mode 0600.
async fn ensure_admin_token(handle: &shoal_engine::Handle, data_dir: &Path) -> Result<()> {
    let path = data_dir.join(TOKEN_FILE);
    if path.exists() {
        println!("Admin token: {}", path.display());
        return Ok(());
    }
    let (token, secret) = handle
        .create_token(Role::Admin, "admin (created at first start)", Vec::new())
        .await
        .context("creating the admin token")?;
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    println!("Admin token ({}) written to {}", token.id, path.display());
    Ok(())
}

pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}
