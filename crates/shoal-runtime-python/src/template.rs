//! The template (zygote) process of one deployment: it imports the function
//! once, then forks a worker per request, so a new worker costs a fork, not a
//! Python start.
//!
//! The control socket is the template's stdin (no fd juggling in the child, no
//! fd leaks into other processes). The template exits when that socket reaches
//! EOF, killing its workers, so a node killed with SIGKILL leaves no orphans.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, BufReader, Interest};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use shoal_runtime::{Error, HOST_PROTOCOL_VERSION};
use shoal_types::{Failure, FailureKind};

use crate::cgroup::WorkerCgroup;
use crate::lock;
use crate::protocol::{self, Control, QueryFunctions};
use crate::tree::{TreeLimits, WorkerTree};
use shoal_types::Network;

/// Largest control message we accept; the runner stays well below it.
const CONTROL_BUF: usize = 256 * 1024;
/// How long a live template may take to answer a fork request.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Template output kept to explain a template that died while loading.
const OUTPUT_TAIL: usize = 8 * 1024;

/// Everything needed to start a template.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub key: String,
    pub python: PathBuf,
    pub runner: PathBuf,
    /// The sandbox the template enters (`Sandbox::for_deployment`), or
    /// `None` to run with the node's rights.
    pub sandbox: Option<serde_json::Value>,
    /// The deployment's scratch directory, emptied at every start.
    pub scratch: PathBuf,
    /// Where each worker's process tree gets its limits, if anywhere.
    pub tree_limits: Option<Arc<TreeLimits>>,
    /// `Network::Off` starts the template in an empty network namespace.
    pub network: Network,
    /// Start the template as the init of a pid namespace of its own.
    pub pid_namespace: bool,
    /// The function's own variables (`[env]`).
    pub env: std::collections::BTreeMap<String, String>,
    pub code_dir: PathBuf,
    pub handler: String,
    pub memory_mb: u32,
    pub max_log_bytes: usize,
    pub max_result_bytes: usize,
}

/// The outcome of starting a template.
pub(crate) enum Started {
    Ready(Box<Template>),
    /// Importing the function failed; the process is gone.
    LoadFailed {
        failure: Failure,
        logs: Vec<u8>,
    },
}

/// A running template process.
pub(crate) struct Template {
    pid: Pid,
    /// Why invocations cannot run although the module imported (no handler).
    pub handler_error: Option<Failure>,
    /// The query functions the module defines.
    pub functions: QueryFunctions,
    shared: Arc<Shared>,
    next_req: AtomicU64,
    tree_limits: Option<Arc<TreeLimits>>,
    /// With cgroups: the template process (its pid as the node sees it) and
    /// the group it waits in, which the next worker is born in. Moving a
    /// process into a cgroup v1 group waits for an RCU grace period (~15
    /// ms), so the template moves ahead of time: at its start (while Python
    /// starts up) and after each fork (before the next one is asked for),
    /// and no worker is moved on an invocation's path. The lock is held
    /// from a fork until the template has moved on.
    room: Option<WaitingRoom>,
    reader: tokio::task::JoinHandle<()>,
    _child: tokio::process::Child,
}

struct WaitingRoom {
    template: Pid,
    group: Arc<tokio::sync::Mutex<Option<WorkerCgroup>>>,
}

/// A freshly forked worker, as the template reported it.
pub(crate) struct NewWorker {
    pub pid: Pid,
    /// Our end of the worker's protocol socket.
    pub proto: OwnedFd,
    /// The read end of the pipe behind the worker's fds 1 and 2.
    pub logs: OwnedFd,
    /// Fires when the template has reaped the worker.
    pub exit: oneshot::Receiver<Exit>,
    /// Its process tree's limits, where the machine has a way to limit it.
    pub tree: Option<WorkerTree>,
}

/// How a worker process ended, as reported by the template that reaped it.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    pub code: Option<i32>,
    pub signal: Option<(i32, String)>,
    pub maxrss_kb: u64,
}

pub(crate) enum ForkError {
    /// The template is gone; start another.
    Dead,
    Failed(String),
}

struct Shared {
    key: String,
    /// A `SOCK_SEQPACKET` socket. Tokio has no type for those; `UnixStream`
    /// serves only as its reactor registration, and every read and write goes
    /// through rustix in `recv` and `send_with_fds`.
    ctl: tokio::net::UnixStream,
    state: Mutex<ControlState>,
}

/// The template's answer to a fork request: the pid and its exit notice, or why not.
type ForkReply = Result<(Pid, oneshot::Receiver<Exit>), String>;

#[derive(Default)]
struct ControlState {
    alive: bool,
    forks: HashMap<u64, oneshot::Sender<ForkReply>>,
    exits: HashMap<i32, oneshot::Sender<Exit>>,
}

impl Template {
    /// Spawns the template and waits until it has imported the function.
    pub(crate) async fn start(spec: &Spec, load_timeout: Duration) -> Result<Started, Error> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| platform("creating a control socket", e.into()))?;
        rustix::io::ioctl_fionbio(&ours, true)
            .map_err(|e| platform("creating a control socket", e.into()))?;
        let (out_r, out_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| platform("creating a pipe", e.into()))?;
        let out_w2 = out_w
            .try_clone()
            .map_err(|e| platform("creating a pipe", e))?;
        let _ = std::fs::remove_dir_all(&spec.scratch);
        std::fs::create_dir_all(&spec.scratch)
            .map_err(|e| platform("creating the scratch directory", e))?;
        let config = serde_json::json!({
            "code_dir": spec.code_dir,
            "handler": spec.handler,
            "memory_mb": spec.memory_mb,
            "max_log_bytes": spec.max_log_bytes,
            "max_result_bytes": spec.max_result_bytes,
            "sandbox": spec.sandbox,
        })
        .to_string();

        let mut cmd = match namespaces(spec) {
            None => tokio::process::Command::new(&spec.python),
            Some(args) => {
                let mut cmd = tokio::process::Command::new("unshare");
                cmd.args(args).arg("--").arg(&spec.python);
                cmd
            }
        };
        cmd.arg("-u")
            .arg(&spec.runner)
            .arg("template")
            .arg(config)
            .current_dir(&spec.code_dir)
            // User code must not see the node's secrets: only the variables
            // a program needs to find its way around are passed on.
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| passed_on(name)))
            .envs(&spec.env)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(out_w2))
            .process_group(0)
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        // The command holds the child's ends of the socket and pipe: close
        // them here, or EOF would never be seen on either side.
        drop(cmd);
        let mut child =
            spawned.map_err(|e| platform(&format!("starting {}", spec.python.display()), e))?;
        let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) else {
            return Err(Error::Platform("the template exited at once".into()));
        };

        // The template moves into the first worker's group while Python
        // starts up (see `Template::room`).
        let moving = spec
            .tree_limits
            .clone()
            .filter(|t| t.cgroups().is_some())
            .map(|limits| {
                let namespaced = spec.pid_namespace;
                tokio::task::spawn_blocking(move || first_room(&limits, pid, namespaced))
            });

        let tail = Arc::new(Mutex::new(Vec::new()));
        // Ends at EOF of the template's output, once the template (killed
        // when its `Template` or this start is dropped) and its workers are gone.
        #[allow(clippy::disallowed_methods)]
        let output = tokio::spawn(forward_output(spec.key.clone(), out_r, tail.clone()));
        let ctl = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(ours))
            .map_err(|e| platform("registering a control socket", e))?;

        let mut buf = vec![0u8; CONTROL_BUF];
        let first = tokio::time::timeout(load_timeout, recv(&ctl, &mut buf)).await;
        let n = match first {
            Err(_elapsed) => {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let message = format!(
                    "loading the function took longer than {}s",
                    load_timeout.as_secs()
                );
                return Ok(Started::LoadFailed {
                    failure: Failure::new(FailureKind::LoadFailed, message),
                    logs: take_tail(&tail),
                });
            }
            Ok(Err(e)) => return Err(platform("reading the control socket", e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            // The runner died before it could report: show what it printed.
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), output).await;
            let status = match status {
                Ok(Ok(status)) => status.to_string(),
                _ => "status unknown".to_string(),
            };
            let logs = take_tail(&tail);
            let message = format!(
                "the Python runner exited before loading the function ({status}): {}",
                String::from_utf8_lossy(&logs).trim()
            );
            return Ok(Started::LoadFailed {
                failure: Failure::new(FailureKind::LoadFailed, message),
                logs,
            });
        }
        let (msg, logs): (Control, &[u8]) = protocol::split(&buf[..n])
            .map_err(|e| Error::Platform(format!("bad message from the template: {e}")))?;
        if let Err(e) = check_protocol(&msg, &spec.runner) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            return Err(e);
        }
        match msg.kind.as_str() {
            "ready" => {
                let shared = Arc::new(Shared {
                    key: spec.key.clone(),
                    ctl,
                    state: Mutex::new(ControlState {
                        alive: true,
                        ..ControlState::default()
                    }),
                });
                // Kept in the `Template`, which aborts it when dropped.
                #[allow(clippy::disallowed_methods)]
                let reader = tokio::spawn(read_control(shared.clone(), buf));
                let handler_error = msg.handler_error.map(|e| Failure {
                    kind: FailureKind::LoadFailed,
                    exception: e.exception,
                    message: e.message,
                    traceback: e.traceback.filter(|t| !t.is_empty()),
                });
                let room = match moving {
                    Some(moving) => moving.await.ok().flatten(),
                    None => None,
                };
                Ok(Started::Ready(Box::new(Template {
                    pid,
                    handler_error,
                    functions: msg.query.unwrap_or_default(),
                    shared,
                    next_req: AtomicU64::new(1),
                    tree_limits: spec.tree_limits.clone(),
                    room,
                    reader,
                    _child: child,
                })))
            }
            "load_failed" => {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let failure = Failure {
                    kind: FailureKind::LoadFailed,
                    exception: msg.exception,
                    message: msg
                        .message
                        .unwrap_or_else(|| "loading the function failed".into()),
                    traceback: msg.traceback,
                };
                Ok(Started::LoadFailed {
                    failure,
                    logs: logs.to_vec(),
                })
            }
            other => Err(Error::Platform(format!(
                "unexpected first message from the template: {other}"
            ))),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        lock(&self.shared.state).alive
    }

    /// Asks the template to fork a worker with a memory limit of `memory_mb`;
    /// hands it a fresh protocol socket and log pipe.
    pub(crate) async fn fork(&self, memory_mb: u64) -> Result<NewWorker, ForkError> {
        let failed = |what: &str, e: io::Error| ForkError::Failed(format!("{what}: {e}"));
        let (proto, proto_theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| failed("creating a protocol socket", e.into()))?;
        let (logs, logs_theirs) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| failed("creating a log pipe", e.into()))?;

        // The worker is born in the group the template waits in: limit it
        // for the worker before the fork. Until the fork is known to have
        // worked, the group goes back to the room whatever happens.
        let mut born_in = match &self.room {
            Some(r) => Some(RoomLease::take(r).await),
            None => None,
        };
        if let Some(lease) = &mut born_in
            && let Some(group) = &lease.group
            && let Err(e) = group.limit(memory_mb)
        {
            warn!(error = %e, "Could not limit a worker's cgroups; moving it after the fork.");
            lease.group = None;
        }

        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.shared.state);
            if !state.alive {
                return Err(ForkError::Dead);
            }
            state.forks.insert(req, tx);
        }
        let message = protocol::fork_message(req, memory_mb);
        let fds = [proto_theirs.as_fd(), logs_theirs.as_fd()];
        if send_with_fds(&self.shared.ctl, &message, &fds)
            .await
            .is_err()
        {
            lock(&self.shared.state).forks.remove(&req);
            return Err(ForkError::Dead);
        }
        drop(proto_theirs);
        drop(logs_theirs);
        match tokio::time::timeout(FORK_TIMEOUT, rx).await {
            Ok(Ok(Ok((pid, exit)))) => {
                let group = born_in.as_mut().and_then(|lease| lease.group.take());
                let room = born_in.as_mut().and_then(|lease| lease.room.take());
                let tree = match (group, room) {
                    (Some(group), Some(room)) => {
                        let left = group.when_spared_left();
                        self.move_on(room, left);
                        Some(WorkerTree::Cgroup(group))
                    }
                    // Before it runs user code: the worker waits for its
                    // first invocation, which comes after this returns.
                    _ => self.attach(pid, memory_mb).await,
                };
                Ok(NewWorker {
                    pid,
                    proto,
                    logs,
                    exit,
                    tree,
                })
            }
            Ok(Ok(Err(message))) => Err(ForkError::Failed(message)),
            Ok(Err(_closed)) => Err(ForkError::Dead),
            Err(_elapsed) => {
                lock(&self.shared.state).forks.remove(&req);
                Err(ForkError::Failed(
                    "the template did not answer a fork request".into(),
                ))
            }
        }
    }
}

impl Template {
    /// Moves the template on into a new group for the next worker, then
    /// releases the room (the next fork waits until then) and calls `left`.
    fn move_on(
        &self,
        mut room: tokio::sync::OwnedMutexGuard<Option<WorkerCgroup>>,
        left: impl FnOnce() + Send + 'static,
    ) {
        let (Some(r), Some(limits)) = (&self.room, self.tree_limits.clone()) else {
            return;
        };
        let template = r.template;
        // Ends by itself once the move is done (one grace period); it holds
        // nothing a stopping node waits for.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let next = tokio::task::spawn_blocking(move || {
                let cgroups = limits.cgroups()?;
                let group = cgroups.make().ok()?;
                group.take(template).ok()?;
                left();
                Some(group)
            })
            .await
            .ok()
            .flatten();
            *room = next;
        });
    }

    /// Puts a new worker's tree under its limits. Moving a process between
    /// cgroup v1 groups waits for an RCU grace period (~15 ms here), so it
    /// runs on a blocking thread, not on one of the runtime's.
    async fn attach(&self, pid: Pid, memory_mb: u64) -> Option<WorkerTree> {
        let limits = self.tree_limits.clone()?;
        tokio::task::spawn_blocking(move || limits.attach(pid, memory_mb))
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Its own group only: workers have groups of their own and are
        // stopped by whoever owns them.
        let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
        self.reader.abort();
        let stale = {
            let mut state = lock(&self.shared.state);
            state.alive = false;
            (
                std::mem::take(&mut state.forks),
                std::mem::take(&mut state.exits),
            )
        };
        drop(stale);
    }
}

impl Shared {
    fn handle(&self, msg: Control) {
        match msg.kind.as_str() {
            "forked" => {
                let (Some(req), Some(pid)) = (msg.req, msg.pid.and_then(Pid::from_raw)) else {
                    warn!(deployment = %self.key, "Template sent a fork reply without pid.");
                    return;
                };
                let (tx, rx) = oneshot::channel();
                let waiter = {
                    let mut state = lock(&self.state);
                    // `exit` names the worker as its template sees it.
                    let ns_pid = msg.ns_pid.unwrap_or(pid.as_raw_pid());
                    state.exits.insert(ns_pid, tx);
                    state.forks.remove(&req)
                };
                let delivered = waiter.is_some_and(|w| w.send(Ok((pid, rx))).is_ok());
                if !delivered {
                    // Nobody waits for this worker any more (the invocation
                    // was cancelled): do not leave it running.
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
            }
            "fork_failed" => {
                let waiter = msg.req.and_then(|req| lock(&self.state).forks.remove(&req));
                if let Some(waiter) = waiter {
                    let message = msg.message.unwrap_or_else(|| "fork failed".into());
                    let _ = waiter.send(Err(message));
                }
            }
            "exit" => {
                let Some(pid) = msg.pid else { return };
                let waiter = lock(&self.state).exits.remove(&pid);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Exit {
                        code: msg.code,
                        signal: msg
                            .signal
                            .map(|s| (s, msg.signal_name.unwrap_or_else(|| format!("signal {s}")))),
                        maxrss_kb: msg.maxrss_kb.unwrap_or(0),
                    });
                }
            }
            other => {
                debug!(deployment = %self.key, kind = other, message = ?msg.message, "Unexpected control message.");
            }
        }
    }
}

/// Reads the template's control messages until it exits.
async fn read_control(shared: Arc<Shared>, mut buf: Vec<u8>) {
    loop {
        let n = match recv(&shared.ctl, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match protocol::split::<Control>(&buf[..n]) {
            Ok((msg, _)) => shared.handle(msg),
            Err(e) => {
                warn!(deployment = %shared.key, error = %e, "Template sent an unreadable message.")
            }
        }
    }
    let stale = {
        let mut state = lock(&shared.state);
        state.alive = false;
        (
            std::mem::take(&mut state.forks),
            std::mem::take(&mut state.exits),
        )
    };
    drop(stale);
    debug!(deployment = %shared.key, "Template exited.");
}

/// Sends the template's stdout and stderr (import-time prints, runner
/// errors) to the node's log, keeping a tail for load failures.
async fn forward_output(key: String, out: OwnedFd, tail: Arc<Mutex<Vec<u8>>>) {
    let Ok(out) = tokio::net::unix::pipe::Receiver::from_owned_fd(out) else {
        return;
    };
    let mut lines = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        debug!(deployment = %key, "{}", String::from_utf8_lossy(&line).trim_end());
        let mut tail = lock(&tail);
        tail.extend_from_slice(&line);
        if tail.len() > OUTPUT_TAIL {
            let cut = tail.len() - OUTPUT_TAIL;
            tail.drain(..cut);
        }
    }
}

fn take_tail(tail: &Mutex<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut *lock(tail))
}

/// Receives one SEQPACKET message (0 means EOF).
async fn recv(ctl: &tokio::net::UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    ctl.async_io(Interest::READABLE, || {
        rustix::net::recv(ctl, &mut *buf, RecvFlags::empty())
            .map(|(_, n)| n)
            .map_err(io::Error::from)
    })
    .await
}

/// Sends one SEQPACKET message with file descriptors attached.
async fn send_with_fds(
    ctl: &tokio::net::UnixStream,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    ctl.async_io(Interest::WRITABLE, || {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many fds for one message"));
        }
        rustix::net::sendmsg(
            ctl,
            &[IoSlice::new(message)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)
    })
    .await
    .map(|_| ())
}

/// The arguments of unshare(1) that put the template in its namespaces, or
/// `None` when it needs none.
///
/// A pid namespace makes the template its init: when the template exits
/// (its control socket closed because the node died, or killed), the kernel
/// kills every process left in it, `setsid` or not. `--fork` makes unshare
/// the template's parent, and `--kill-child` sets the template's parent-death
/// signal, so killing unshare (the `Template` is dropped) ends it all too.
/// A network namespace of its own has no interfaces but loopback. Without
/// root, a user namespace is what allows the others.
fn namespaces(spec: &Spec) -> Option<Vec<&'static str>> {
    let mut args = Vec::new();
    if spec.pid_namespace {
        args.extend(["--pid", "--fork", "--kill-child"]);
    }
    if spec.network == Network::Off {
        args.push("--net");
    }
    if args.is_empty() {
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        args.extend(["--user", "--map-current-user"]);
    }
    Some(args)
}

/// True when this machine lets the node start templates in a pid namespace
/// of their own (see `namespaces`).
pub(crate) fn pid_namespaces_work() -> bool {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child"]);
    if !rustix::process::geteuid().is_root() {
        cmd.args(["--user", "--map-current-user"]);
    }
    cmd.args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The room's group, taken out for one fork: put back when dropped unless
/// the fork used it. The template's process is never killed with it.
struct RoomLease {
    room: Option<tokio::sync::OwnedMutexGuard<Option<WorkerCgroup>>>,
    group: Option<WorkerCgroup>,
}

impl RoomLease {
    async fn take(r: &WaitingRoom) -> RoomLease {
        let mut room = r.group.clone().lock_owned().await;
        let group = room.take().map(|mut g| {
            g.spare(r.template);
            g
        });
        RoomLease {
            room: Some(room),
            group,
        }
    }
}

impl Drop for RoomLease {
    fn drop(&mut self) {
        if let (Some(room), Some(group)) = (&mut self.room, self.group.take()) {
            **room = Some(group);
        }
    }
}

/// Moves a starting template into the group its first worker will be born
/// in. `spawned` is the process the node started: the template itself, or
/// unshare(1) whose child it is when it has a pid namespace.
fn first_room(limits: &TreeLimits, spawned: Pid, namespaced: bool) -> Option<WaitingRoom> {
    let template = if namespaced {
        child_of(spawned)?
    } else {
        spawned
    };
    let group = limits.cgroups()?.make().ok()?;
    group.take(template).ok()?;
    Some(WaitingRoom {
        template,
        group: Arc::new(tokio::sync::Mutex::new(Some(group))),
    })
}

/// The child unshare(1) forked (it forks at once), found by its parent.
fn child_of(parent: Pid) -> Option<Pid> {
    for _ in 0..500 {
        if let Some(&child) = crate::watchdog::children_of(parent.as_raw_pid()).first() {
            return Pid::from_raw(child);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Environment variables a template inherits from the node.
pub(crate) fn passed_on(name: &std::ffi::OsStr) -> bool {
    const NAMES: &[&str] = &[
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    ];
    let Some(name) = name.to_str() else {
        return false;
    };
    NAMES.contains(&name) || name.starts_with("LC_")
}

/// The runner states the host-call protocol it speaks in its first message;
/// one that speaks another version (or none: older than versions) is not
/// used, since its host calls would be misunderstood.
fn check_protocol(msg: &Control, runner: &std::path::Path) -> Result<(), Error> {
    match msg.host_protocol {
        Some(HOST_PROTOCOL_VERSION) => Ok(()),
        spoken => Err(Error::Platform(format!(
            "the Python runner {} speaks host protocol {}; this node speaks version {HOST_PROTOCOL_VERSION}",
            runner.display(),
            spoken.map_or_else(|| "of no version".to_string(), |v| format!("version {v}")),
        ))),
    }
}

fn platform(what: &str, e: io::Error) -> Error {
    Error::Platform(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(text: &str) -> Control {
        protocol::split::<Control>(text.as_bytes()).unwrap().0
    }

    #[test]
    fn a_runner_speaking_another_host_protocol_is_refused() {
        let runner = std::path::Path::new("/w/runner-x/_shoal_runner/__main__.py");
        let ours = format!(r#"{{"kind":"ready","host_protocol":{HOST_PROTOCOL_VERSION},"pid":1}}"#);
        assert!(check_protocol(&hello(&ours), runner).is_ok());

        let other = format!(
            r#"{{"kind":"ready","host_protocol":{},"pid":1}}"#,
            HOST_PROTOCOL_VERSION + 1
        );
        let Err(Error::Platform(message)) = check_protocol(&hello(&other), runner) else {
            panic!("accepted")
        };
        assert_eq!(
            message,
            format!(
                "the Python runner /w/runner-x/_shoal_runner/__main__.py speaks host protocol version {}; this node speaks version {HOST_PROTOCOL_VERSION}",
                HOST_PROTOCOL_VERSION + 1
            )
        );

        let Err(Error::Platform(message)) =
            check_protocol(&hello(r#"{"kind":"ready","pid":1}"#), runner)
        else {
            panic!("accepted")
        };
        assert!(
            message.contains("speaks host protocol of no version"),
            "{message}"
        );
    }
}
