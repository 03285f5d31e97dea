//! One worker process: runs an invocation over its protocol socket, drains its
//! log pipe, enforces the timeout and output caps, and tells how it failed.
//!
//! The hot path is one write of the invoke frame and one read of the reply;
//! the log pipe costs one non-blocking read when the function wrote nothing
//! to fds 1 and 2. A worker in an unknown state is never reused: dropping a
//! `Worker` kills its whole process group.
//!
//! Host calls (`ctx.call`) are served inside the same loop: each call is
//! decoded into a `HostCall` straight from the read buffer, and its future
//! lives in `HostCalls`, polled next to the socket, the log pipe and the
//! deadline, and dropped with it when the invocation ends however it ends.
//! Nothing of it is allocated until a handler makes its first call.

use std::io::{self, ErrorKind};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use shoal_runtime::{Host, HostCall, HostError};
use shoal_types::{Failure, FailureKind, Outcome};

use crate::protocol::{self, HEADER, Reply};
use crate::template::{Exit, NewWorker};
use crate::tree::WorkerTree;

/// How long a timed-out worker gets to hand over its captured logs.
const SALVAGE_GRACE: Duration = Duration::from_millis(100);
/// How long to wait for the template's exit notice after a worker's socket closed.
const EXIT_NOTICE_WAIT: Duration = Duration::from_secs(2);
/// Room in a frame for the error message and traceback beside result and logs.
const FRAME_SLACK: usize = 1024 * 1024;
/// Read buffers beyond this are released after use.
const KEEP_BUFFER: usize = 256 * 1024;

/// Limits that apply to every invocation of a deployment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub max_log_bytes: usize,
    pub max_result_bytes: usize,
    pub memory_mb: u32,
}

/// What one invocation on a worker produced.
pub(crate) struct Ran {
    pub outcome: Outcome,
    pub logs: Vec<u8>,
    pub duration: Duration,
    /// False when the worker must not serve again.
    pub reusable: bool,
}

pub(crate) enum RunError {
    /// The worker had died before the invocation reached it; use another.
    Stale,
    /// The worker refused the frame (the event is not JSON); it is healthy.
    Rejected(String),
    /// The worker broke the protocol; it is dropped.
    Broken(String),
}

pub(crate) struct Worker {
    pid: Pid,
    proto: UnixStream,
    logs: pipe::Receiver,
    inbuf: Vec<u8>,
    /// Taken once it has answered (a report, or its sender gone): a
    /// finished receiver must not be polled again.
    exit: Option<oneshot::Receiver<Exit>>,
    /// Its process tree's limits (where the machine has a way to limit it).
    tree: Option<WorkerTree>,
    /// When the worker last finished an invocation.
    pub last_used: Instant,
    /// Invocations it has finished (for `max_invocations_per_worker`).
    pub served: u32,
}

/// What a query exchange waits for.
pub(crate) enum Incoming {
    /// A complete frame of this length is at the start of the read buffer.
    Frame(usize),
    Eof,
    Deadline,
    FrameTooBig(usize),
}

enum Event {
    /// A complete frame of this length is at the start of `inbuf`.
    Frame(usize),
    Eof,
    Deadline,
    /// The log pipe brought more than the cap.
    LogFlood,
    FrameTooBig(usize),
}

impl Worker {
    pub(crate) fn new(new: NewWorker) -> io::Result<Worker> {
        let proto = StdUnixStream::from(new.proto);
        proto.set_nonblocking(true)?;
        Ok(Worker {
            pid: new.pid,
            proto: UnixStream::from_std(proto)?,
            logs: pipe::Receiver::from_owned_fd(new.logs)?,
            inbuf: Vec::new(),
            exit: Some(new.exit),
            tree: new.tree,
            last_used: Instant::now(),
            served: 0,
        })
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Lets an idle worker go gracefully: its socket's write side is shut,
    /// so the runner finishes what it does after an invocation (emptying
    /// its scratch directory) and exits at the end of the stream. The
    /// caller keeps the `Worker` until [`Worker::has_exited`] (dropping it
    /// kills the process group, as always).
    pub(crate) fn close_input(&self) {
        let _ = rustix::net::shutdown(&self.proto, rustix::net::Shutdown::Write);
    }

    /// True when the template reported this worker dead (it died idle).
    pub(crate) fn has_exited(&mut self) -> bool {
        let Some(exit) = &mut self.exit else {
            return true;
        };
        match exit.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => false,
            Ok(_) | Err(oneshot::error::TryRecvError::Closed) => {
                self.exit = None;
                true
            }
        }
    }

    /// The template's report of how this worker ended, waiting up to
    /// `EXIT_NOTICE_WAIT` for it; `None` when there is none (any more).
    async fn exit_report(&mut self) -> Option<Exit> {
        let exit = self.exit.take()?;
        tokio::time::timeout(EXIT_NOTICE_WAIT, exit)
            .await
            .ok()?
            .ok()
    }

    /// Runs one invocation. `frame` is a complete invoke frame; the
    /// handler's host calls go to `host`.
    pub(crate) async fn run(
        &mut self,
        frame: &[u8],
        host: Option<&Arc<dyn Host>>,
        timeout: Duration,
        caps: &Caps,
    ) -> Result<Ran, RunError> {
        if self.has_exited() {
            return Err(RunError::Stale);
        }
        let start = Instant::now();
        let deadline = start + timeout;
        let mut pipe_logs = Vec::new();
        match tokio::time::timeout_at(deadline.into(), self.proto.write_all(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(RunError::Stale),
            // A worker that does not even take the event in is stuck.
            Err(_elapsed) => return Ok(self.timed_out(pipe_logs, timeout, caps).await),
        }
        let mut calls = HostCalls::default();
        loop {
            let event = self
                .next_event(&mut pipe_logs, deadline, caps, &mut calls)
                .await;
            let len = match event {
                Event::Frame(len) => len,
                Event::Eof => {
                    drop(calls);
                    return Ok(self.died(pipe_logs, start, caps).await);
                }
                Event::Deadline => {
                    drop(calls);
                    return Ok(self.timed_out(pipe_logs, timeout, caps).await);
                }
                Event::LogFlood => {
                    self.kill();
                    self.drain_now(&mut pipe_logs, caps);
                    let message = format!(
                        "the invocation wrote more than {} bytes of logs",
                        caps.max_log_bytes
                    );
                    return Ok(fail(
                        FailureKind::OutputLimit,
                        message,
                        pipe_logs,
                        start,
                        caps,
                    ));
                }
                Event::FrameTooBig(len) => {
                    self.kill();
                    let message = format!(
                        "the worker sent a {len}-byte reply; results are limited to {} bytes and logs to {}",
                        caps.max_result_bytes, caps.max_log_bytes
                    );
                    return Ok(fail(
                        FailureKind::OutputLimit,
                        message,
                        pipe_logs,
                        start,
                        caps,
                    ));
                }
            };
            let duration = start.elapsed();
            let parsed = self.parse_reply(len, caps);
            self.consume(len);
            let reply = match parsed {
                Ok(reply) => reply,
                Err(message) => return Err(RunError::Broken(message)),
            };
            let ParsedReply {
                kind,
                outcome,
                python_logs,
                fatal,
            } = reply;
            match kind {
                ReplyKind::Logs => continue,
                ReplyKind::Host(call) => {
                    calls.start(host, call);
                    calls.flush(&self.proto);
                    continue;
                }
                ReplyKind::Rejected(message) => return Err(RunError::Rejected(message)),
                ReplyKind::Done => {}
            }
            // A call still pending (or a reply half written) means the worker
            // and Rust no longer agree on the stream: do not reuse it. The
            // runner says so itself (`fatal`); this is the belt to its braces.
            let fatal = fatal || !calls.is_idle();
            drop(calls);
            let outcome = outcome.unwrap_or_else(|| {
                Outcome::Failed(Failure::new(
                    FailureKind::Crashed,
                    "empty reply from the worker",
                ))
            });
            self.drain_now(&mut pipe_logs, caps);
            let mut ran = Ran {
                outcome,
                logs: join_logs(python_logs, pipe_logs),
                duration,
                reusable: !fatal,
            };
            if self.oom_killed() {
                // A process of the tree (a child the handler forked) was
                // killed for going over the memory the whole tree may use.
                ran.outcome = Outcome::Failed(Failure::new(
                    FailureKind::OutOfMemory,
                    format!(
                        "the invocation's processes used more than the limit of {} MiB together; they were killed",
                        caps.memory_mb
                    ),
                ));
                ran.reusable = false;
            } else if self.over_processes() {
                ran.outcome = Outcome::Failed(too_many_processes());
                ran.reusable = false;
            }
            if ran.logs.len() > caps.max_log_bytes {
                ran.logs.truncate(caps.max_log_bytes);
                let message = format!(
                    "the invocation wrote more than {} bytes of logs",
                    caps.max_log_bytes
                );
                ran.outcome = Outcome::Failed(Failure::new(FailureKind::OutputLimit, message));
            }
            if fatal {
                self.kill();
            }
            return Ok(ran);
        }
    }

    /// Waits for the next thing that matters, draining the log pipe meanwhile
    /// so the worker never blocks writing to it, and serving host calls:
    /// finished ones are answered, replies are written as the socket takes
    /// them.
    async fn next_event(
        &mut self,
        logs: &mut Vec<u8>,
        deadline: Instant,
        caps: &Caps,
        calls: &mut HostCalls,
    ) -> Event {
        // A `shoal.Response`'s body may take the whole result limit; it
        // travels as base64 (4 bytes per 3).
        let frame_max = caps.max_result_bytes.div_ceil(3) * 4 + caps.max_log_bytes + FRAME_SLACK;
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut logs_open = true;
        loop {
            match protocol::frame_len(&self.inbuf) {
                Some(len) if len > frame_max => return Event::FrameTooBig(len),
                Some(len) if self.inbuf.len() >= HEADER + len => return Event::Frame(len),
                Some(len) => self.inbuf.reserve(HEADER + len - self.inbuf.len()),
                None => self.inbuf.reserve(16 * 1024),
            }
            tokio::select! {
                biased;
                ready = self.proto.readable() => {
                    if ready.is_err() {
                        return Event::Eof;
                    }
                    match self.proto.try_read_buf(&mut self.inbuf) {
                        Ok(0) => return Event::Eof,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return Event::Eof,
                    }
                }
                ready = self.logs.readable(), if logs_open => {
                    if ready.is_err() {
                        logs_open = false;
                        continue;
                    }
                    loop {
                        logs.reserve(16 * 1024);
                        match self.logs.try_read_buf(logs) {
                            Ok(0) => {
                                logs_open = false;
                                break;
                            }
                            Ok(_) if logs.len() > caps.max_log_bytes => return Event::LogFlood,
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                }
                Some((seq, answer)) = next_answer(&mut calls.pending), if calls.waiting() => {
                    protocol::host_reply_frame(&mut calls.out, seq, answer);
                    calls.flush(&self.proto);
                }
                ready = self.proto.writable(), if calls.has_output() => {
                    if ready.is_err() {
                        calls.discard_output();
                    } else {
                        calls.flush(&self.proto);
                    }
                }
                () = &mut sleep => return Event::Deadline,
            }
        }
    }

    /// Reads what the log pipe holds right now, with real syscalls: output
    /// written before the worker replied is in the pipe even if the reactor
    /// has not reported it yet.
    fn drain_now(&mut self, logs: &mut Vec<u8>, caps: &Caps) {
        // A stack buffer: the usual answer is EAGAIN, and it should cost no allocation.
        let mut chunk = [0u8; 8 * 1024];
        while logs.len() <= caps.max_log_bytes {
            match rustix::io::read(&self.logs, &mut chunk) {
                Ok(0) => return,
                Ok(n) => logs.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    fn parse_reply(&self, len: usize, caps: &Caps) -> Result<ParsedReply, String> {
        let body = &self.inbuf[HEADER..HEADER + len];
        let (reply, tail): (Reply<'_>, &[u8]) =
            protocol::split(body).map_err(|e| format!("unreadable frame from the worker: {e}"))?;
        let python_logs = tail.to_vec();
        let parsed = match &*reply.kind {
            "result" => {
                let result = reply
                    .result
                    .map(|r| r.get().to_owned())
                    .unwrap_or_else(|| "null".into());
                ParsedReply {
                    kind: ReplyKind::Done,
                    outcome: Some(Outcome::Succeeded(result)),
                    python_logs,
                    fatal: reply.fatal,
                }
            }
            "error" => {
                let failure = reply.failure.as_deref().unwrap_or("raised");
                let message = reply.message.unwrap_or_default();
                let Some(kind) = FailureKind::parse(failure) else {
                    let message = match failure {
                        "bad_event" => format!("the event is not valid JSON: {message}"),
                        _ => format!("the worker refused the invocation: {message}"),
                    };
                    return Ok(ParsedReply {
                        kind: ReplyKind::Rejected(message),
                        outcome: None,
                        python_logs,
                        fatal: false,
                    });
                };
                ParsedReply {
                    kind: ReplyKind::Done,
                    outcome: Some(Outcome::Failed(Failure {
                        kind,
                        exception: reply.exception,
                        message,
                        traceback: reply.traceback.filter(|t| !t.is_empty()),
                    })),
                    python_logs,
                    fatal: reply.fatal,
                }
            }
            "logs" => ParsedReply {
                kind: ReplyKind::Logs,
                outcome: None,
                python_logs,
                fatal: false,
            },
            "host" => {
                let (Some(seq), Some(op)) = (reply.seq, reply.op) else {
                    return Err("a host call without its seq or op".into());
                };
                let args = reply.args.map_or("null", |a| a.get());
                let call = if args.len() > caps.max_result_bytes {
                    Err(HostError::new(
                        "too_large",
                        format!(
                            "the arguments of {op:?} are {} bytes of JSON; the limit is {}",
                            args.len(),
                            caps.max_result_bytes
                        ),
                    ))
                } else {
                    HostCall::decode(&op, args)
                };
                ParsedReply {
                    kind: ReplyKind::Host(HostFrame {
                        seq,
                        op: op.into_owned(),
                        call,
                    }),
                    outcome: None,
                    python_logs,
                    fatal: false,
                }
            }
            other => return Err(format!("unexpected frame kind {other:?} from the worker")),
        };
        Ok(parsed)
    }

    pub(crate) fn consume(&mut self, len: usize) {
        self.inbuf.drain(..HEADER + len);
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_BUFFER {
            self.inbuf = Vec::new();
        }
    }

    /// The invocation ran out of time: collect what it printed, kill it.
    async fn timed_out(&mut self, mut pipe_logs: Vec<u8>, timeout: Duration, caps: &Caps) -> Ran {
        // The runner answers SIGUSR2 with the logs it captured so far. A
        // handler stuck in C code cannot answer; it gets a short grace.
        let mut python_logs = Vec::new();
        if rustix::process::kill_process(self.pid, Signal::USR2).is_ok() {
            let grace = Instant::now() + SALVAGE_GRACE;
            let mut no_calls = HostCalls::default();
            // Host calls sent meanwhile are skipped; the logs frame follows.
            while let Event::Frame(len) = self
                .next_event(&mut pipe_logs, grace, caps, &mut no_calls)
                .await
            {
                let reply = self.parse_reply(len, caps);
                self.consume(len);
                match reply {
                    Ok(ParsedReply {
                        kind: ReplyKind::Host(_),
                        ..
                    }) => continue,
                    Ok(reply) => python_logs = reply.python_logs,
                    Err(_) => {}
                }
                break;
            }
        }
        self.kill();
        self.drain_now(&mut pipe_logs, caps);
        let mut logs = join_logs(python_logs, pipe_logs);
        logs.truncate(caps.max_log_bytes);
        let message = format!("the invocation timed out after {}", human(timeout));
        Ran {
            outcome: Outcome::Failed(Failure::new(FailureKind::TimedOut, message)),
            logs,
            duration: timeout,
            reusable: false,
        }
    }

    /// The worker's socket closed mid-invocation: find out how it died.
    async fn died(&mut self, mut pipe_logs: Vec<u8>, start: Instant, caps: &Caps) -> Ran {
        let duration = start.elapsed();
        let exit = self.exit_report().await;
        self.kill();
        self.drain_now(&mut pipe_logs, caps);
        let failure = match exit {
            Some(_) if self.over_processes() => too_many_processes(),
            Some(exit) => classify(&exit, caps, self.oom_killed()),
            _ => Failure::new(
                FailureKind::Crashed,
                "the worker died; its exit status is unknown",
            ),
        };
        let mut logs = pipe_logs;
        logs.truncate(caps.max_log_bytes);
        Ran {
            outcome: Outcome::Failed(failure),
            logs,
            duration,
            reusable: false,
        }
    }

    /// Kills the worker and everything it started: its process group, and
    /// where cgroups are usable every process of its tree, whatever session
    /// or group it moved to.
    pub(crate) fn kill(&self) {
        // The tree first: the watchdog finds it by parent links, which the
        // worker's death would cut.
        if let Some(tree) = &self.tree {
            tree.kill_all();
        }
        let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
    }

    /// True when the kernel killed a process of the worker's tree for
    /// going over its memory limit.
    fn oom_killed(&self) -> bool {
        self.tree.as_ref().is_some_and(WorkerTree::over_memory)
    }

    /// True when the watchdog killed the worker's tree for having more
    /// processes than allowed.
    fn over_processes(&self) -> bool {
        self.tree.as_ref().is_some_and(WorkerTree::over_processes)
    }

    /// Interrupts a query step (the runner raises `_Abort` in user code).
    pub(crate) fn interrupt(&self) {
        let _ = rustix::process::kill_process(self.pid, Signal::INT);
    }

    /// Writes a whole frame. Whatever the worker sends meanwhile is buffered
    /// (it may be blocked writing values while we write a batch), and its raw
    /// output is drained and dropped (a query has no log), so neither side
    /// can block the other.
    pub(crate) async fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut written = 0;
        // Most frames fit in the socket buffer: no readiness wait at all.
        loop {
            match self.proto.try_write(&frame[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            if written == frame.len() {
                return Ok(());
            }
        }
        let mut logs_open = true;
        while written < frame.len() {
            tokio::select! {
                ready = self.proto.ready(Interest::READABLE | Interest::WRITABLE) => {
                    let ready = ready?;
                    if ready.is_readable() {
                        self.inbuf.reserve(64 * 1024);
                        match self.proto.try_read_buf(&mut self.inbuf) {
                            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if ready.is_writable() {
                        match self.proto.try_write(&frame[written..]) {
                            Ok(n) => written += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                ready = self.logs.readable(), if logs_open => {
                    logs_open = ready.is_ok() && self.discard_logs();
                }
            }
        }
        Ok(())
    }

    /// Waits for the next frame of a query exchange, dropping raw output.
    /// Without a deadline it waits as long as it takes.
    pub(crate) async fn next_frame(
        &mut self,
        deadline: Option<Instant>,
        frame_max: usize,
    ) -> Incoming {
        let mut logs_open = true;
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            match protocol::frame_len(&self.inbuf) {
                Some(len) if len > frame_max => return Incoming::FrameTooBig(len),
                Some(len) if self.inbuf.len() >= HEADER + len => return Incoming::Frame(len),
                Some(len) => self.inbuf.reserve(HEADER + len - self.inbuf.len()),
                None => self.inbuf.reserve(64 * 1024),
            }
            // Usually the data is there already: read before waiting.
            match self.proto.try_read_buf(&mut self.inbuf) {
                Ok(0) => return Incoming::Eof,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Incoming::Eof,
            }
            tokio::select! {
                biased;
                ready = self.proto.readable() => {
                    if ready.is_err() {
                        return Incoming::Eof;
                    }
                }
                ready = self.logs.readable(), if logs_open => {
                    logs_open = ready.is_ok() && self.discard_logs();
                }
                () = &mut sleep => return Incoming::Deadline,
            }
        }
    }

    /// The body of the frame of length `len` at the start of the read buffer.
    pub(crate) fn frame_body(&self, len: usize) -> &[u8] {
        &self.inbuf[HEADER..HEADER + len]
    }

    /// Drains the log pipe; false once it is closed.
    fn discard_logs(&mut self) -> bool {
        let mut chunk = [0u8; 8 * 1024];
        // Bounded: a worker writing without pause must not keep us here.
        for _ in 0..64 {
            match rustix::io::read(&self.logs, &mut chunk) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
        }
        true
    }

    /// The worker's socket closed: how it died.
    pub(crate) async fn death(&mut self, caps: &Caps) -> Failure {
        let exit = self.exit_report().await;
        self.kill();
        match exit {
            Some(exit) => classify(&exit, caps, self.oom_killed()),
            _ => Failure::new(
                FailureKind::Crashed,
                "the worker died; its exit status is unknown",
            ),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

struct ParsedReply {
    kind: ReplyKind,
    outcome: Option<Outcome>,
    python_logs: Vec<u8>,
    fatal: bool,
}

enum ReplyKind {
    Done,
    Logs,
    /// The handler calls the host.
    Host(HostFrame),
    Rejected(String),
}

/// A host call as the worker sent it.
struct HostFrame {
    seq: u64,
    /// The operation's name, as sent (for error messages).
    op: String,
    /// The decoded call, or why it cannot be made.
    call: Result<HostCall, HostError>,
}

type Answer = (u64, Result<String, HostError>);

/// The host calls of the running invocation: the futures of those in flight
/// and the replies not yet taken by the socket. Dropping it drops the calls.
#[derive(Default)]
struct HostCalls {
    /// Allocated at the first call: invocations without calls pay nothing.
    pending: Option<FuturesUnordered<BoxFuture<'static, Answer>>>,
    /// Reply frames, written from `written` on.
    out: Vec<u8>,
    written: usize,
}

impl HostCalls {
    /// Starts a call, or queues its error reply at once.
    fn start(&mut self, host: Option<&Arc<dyn Host>>, frame: HostFrame) {
        let HostFrame { seq, op, call } = frame;
        let error = match (host, call) {
            (None, _) => HostError::new(
                "no_host",
                format!("host calls are not available here ({op:?} was called)"),
            ),
            (Some(_), Err(error)) => error,
            (Some(host), Ok(call)) => {
                let call = host.call(call);
                self.pending
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(Box::pin(async move { (seq, call.await) }));
                return;
            }
        };
        protocol::host_reply_frame(&mut self.out, seq, Err(error));
    }

    /// True while some call has not been answered.
    fn waiting(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| !p.is_empty())
    }

    fn has_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// No call in flight and every reply written.
    fn is_idle(&self) -> bool {
        !self.waiting() && !self.has_output()
    }

    /// Writes as much of the pending replies as the socket takes now.
    fn flush(&mut self, proto: &UnixStream) {
        while self.has_output() {
            match proto.try_write(&self.out[self.written..]) {
                Ok(0) => return self.discard_output(),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The worker is gone: its EOF (and how it died) comes next.
                Err(_) => return self.discard_output(),
            }
        }
        self.discard_output();
    }

    fn discard_output(&mut self) {
        self.written = 0;
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
    }
}

/// The next answered call; never resolves when none is in flight (the
/// `select!` branch is disabled then anyway).
async fn next_answer(
    pending: &mut Option<FuturesUnordered<BoxFuture<'static, Answer>>>,
) -> Option<Answer> {
    match pending {
        Some(pending) => pending.next().await,
        None => std::future::pending().await,
    }
}

/// The watchdog killed the tree for its process count.
fn too_many_processes() -> Failure {
    Failure::new(
        FailureKind::Forked,
        format!(
            "the invocation ran more than {} processes at once; they were all killed",
            crate::cgroup::MAX_PROCESSES
        ),
    )
}

/// Tells a crash from an exit from running out of memory.
fn classify(exit: &Exit, caps: &Caps, oom_killed: bool) -> Failure {
    if oom_killed {
        return Failure::new(
            FailureKind::OutOfMemory,
            format!(
                "the worker's processes used more than the limit of {} MiB together; they were killed",
                caps.memory_mb
            ),
        );
    }
    match (&exit.signal, exit.code) {
        (Some((signal, _)), _)
            if *signal == Signal::KILL.as_raw()
                && exit.maxrss_kb >= u64::from(caps.memory_mb) * 1024 / 2 =>
        {
            // Nobody here sent it: the kernel's OOM killer is the usual sender.
            Failure::new(
                FailureKind::OutOfMemory,
                format!(
                    "the worker was killed (SIGKILL) using {} MiB; the limit is {} MiB",
                    exit.maxrss_kb / 1024,
                    caps.memory_mb
                ),
            )
        }
        (Some((signal, name)), _) => Failure::new(
            FailureKind::Crashed,
            format!("the worker crashed with {name} (signal {signal})"),
        ),
        (None, Some(code)) => Failure::new(
            FailureKind::Exited,
            format!("the worker exited with code {code}"),
        ),
        (None, None) => Failure::new(
            FailureKind::Crashed,
            "the worker died; its exit status is unknown",
        ),
    }
}

fn fail(kind: FailureKind, message: String, mut logs: Vec<u8>, start: Instant, caps: &Caps) -> Ran {
    logs.truncate(caps.max_log_bytes);
    Ran {
        outcome: Outcome::Failed(Failure::new(kind, message)),
        logs,
        duration: start.elapsed(),
        reusable: false,
    }
}

/// Python-level output (print, logging, tracebacks) comes first, then what
/// reached fds 1 and 2 directly (os.write, C code, subprocesses).
fn join_logs(mut python_logs: Vec<u8>, pipe_logs: Vec<u8>) -> Vec<u8> {
    if python_logs.is_empty() {
        return pipe_logs;
    }
    python_logs.extend_from_slice(&pipe_logs);
    python_logs
}

pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_log_bytes: 1024,
        max_result_bytes: 1024,
        memory_mb: 128,
    };

    fn exit(code: Option<i32>, signal: Option<i32>, maxrss_kb: u64) -> Exit {
        Exit {
            code,
            signal: signal.map(|s| (s, format!("SIG{s}"))),
            maxrss_kb,
        }
    }

    #[test]
    fn exits_are_classified() {
        assert_eq!(
            classify(&exit(Some(3), None, 0), &CAPS, false).kind,
            FailureKind::Exited
        );
        assert!(
            classify(&exit(Some(3), None, 0), &CAPS, false)
                .message
                .contains("code 3")
        );
        assert_eq!(
            classify(&exit(None, Some(11), 0), &CAPS, false).kind,
            FailureKind::Crashed
        );
        assert_eq!(
            classify(&exit(None, Some(9), 1000), &CAPS, false).kind,
            FailureKind::Crashed
        );
        assert_eq!(
            classify(&exit(None, Some(9), 100 * 1024), &CAPS, false).kind,
            FailureKind::OutOfMemory
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(300)), "300ms");
        assert_eq!(human(Duration::from_secs(30)), "30s");
    }
}
