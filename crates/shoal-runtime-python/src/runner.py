"""Shoal's Python runner: the template (zygote) of one deployment and the workers it forks.

Shipped inside the Rust binary and started as

    python -u runner.py template '<config json>'

with the control socket (AF_UNIX, SOCK_SEQPACKET) as fd 0. The template imports
the handler once, then forks one worker per "fork" request; each request carries
the worker's protocol socket and log pipe (SCM_RIGHTS). Standard library only.
The wire format is described in protocol.rs.

Handlers get a `Context` (their second argument); its `call`, `spawn`, `map`
and `send` methods call back into the node ("host calls") and raise
`ctx.HostError` when the node refuses or fails a call.
"""

import builtins
import faulthandler
import functools
import gc
import importlib
import io
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import traceback
import _thread

_HEADER = struct.Struct(">I")
# Control messages stay far below the SOCK_SEQPACKET size limit.
_MAX_CONTROL = 60 * 1024
# Messages and tracebacks are cut to this many characters.
_MAX_TEXT = 16 * 1024
# Sent by Rust when an invocation times out: hand over the logs captured so far.
_LOGS_SIGNAL = signal.SIGUSR2
# Sent by Rust to stop a query step early (the query failed or was dropped).
_ABORT_SIGNAL = signal.SIGINT
# The heartbeat timer of query steps.
_BEAT_SIGNAL = signal.SIGALRM
_PR_SET_CHILD_SUBREAPER = 36


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "template":
        os.write(2, b"usage: runner.py template CONFIG_JSON\n")
        os._exit(2)
    config = json.loads(sys.argv[2])

    # fd 0 is the control socket; move it away so that user code reading
    # stdin finds /dev/null instead of our messages.
    ctl = socket.socket(fileno=os.dup(0))
    ctl.setblocking(True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)

    # The runner's own directory must not shadow user modules.
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    if sys.path and os.path.realpath(sys.path[0] or ".") == here:
        del sys.path[0]
    sys.path.insert(0, config["code_dir"])

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    # Orphans of workers (grandchildren whose parent exited) are re-parented
    # here and reaped, instead of lingering under init.
    _set_subreaper()

    sink = _Sink(None, _MAX_TEXT)
    sink.active = True
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Writer(sink, 1), _Writer(sink, 2)
    try:
        module, handler, handler_error = _load(config["handler"])
    except BaseException as e:  # noqa: BLE001 - any import failure is the user's
        sys.stdout, sys.stderr = saved
        msg = {"kind": "load_failed"}
        msg.update(_describe(e))
        _send_control(ctl, msg, sink.take())
        os._exit(0)
    sys.stdout, sys.stderr = saved
    early = sink.take()
    if early:
        # Import-time output goes to the node's log.
        os.write(2, early)

    # Objects that exist now are shared with every worker; keep the collector
    # from touching (and so copying) their pages after fork.
    gc.collect()
    gc.freeze()
    Template(ctl, handler, handler_error, _query_functions(module), config).run()


class Template:
    """Forks workers on request and reports how they end."""

    def __init__(self, ctl, handler, handler_error, functions, config):
        self.ctl = ctl
        self.handler = handler
        self.handler_error = handler_error
        self.functions = functions
        self.config = config
        self.children = set()
        self.wake_r = self.wake_w = -1

    def run(self):
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # A Python-level handler makes the C handler write to the wakeup fd,
        # which wakes the select below.
        signal.signal(signal.SIGCHLD, _ignore_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        ready = {
            "kind": "ready",
            "pid": os.getpid(),
            "handler_error": self.handler_error,
            "query": {name: fn is not None for name, fn in self.functions.items()},
        }
        _send_control(self.ctl, ready)
        while True:
            try:
                readable, _, _ = select.select([self.ctl, self.wake_r], [], [])
            except OSError:
                self.exit()
            if self.wake_r in readable:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                self.reap()
            if self.ctl in readable:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.ctl, _MAX_CONTROL, 4)
                except OSError:
                    self.exit()
                if not data:
                    for fd in fds:
                        os.close(fd)
                    # The node is gone: take the workers with us.
                    self.exit()
                self.handle(json.loads(data), fds)

    def handle(self, msg, fds):
        kind = msg.get("kind")
        if kind == "fork":
            self.fork(msg, fds)
        else:
            for fd in fds:
                os.close(fd)
            _send_control(self.ctl, {"kind": "unknown", "message": "unknown control message %r" % (kind,)})

    def fork(self, msg, fds):
        req = msg.get("req")
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            _send_control(self.ctl, {"kind": "fork_failed", "req": req, "message": "expected 2 fds, got %d" % len(fds)})
            return
        proto_fd, log_fd = fds
        # Query workers get room for their resident documents on top.
        memory_mb = msg.get("memory_mb") or self.config["memory_mb"]
        try:
            pid = os.fork()
        except OSError as e:
            os.close(proto_fd)
            os.close(log_fd)
            _send_control(self.ctl, {"kind": "fork_failed", "req": req, "message": "fork failed: %s" % e})
            return
        if pid == 0:
            try:
                _worker_main(self, proto_fd, log_fd, memory_mb)
            except BaseException:  # noqa: BLE001
                try:
                    os.write(2, traceback.format_exc().encode("utf-8", "backslashreplace"))
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(70)
        os.close(proto_fd)
        os.close(log_fd)
        # Also set by the child; doing it here too means the group exists
        # before Rust learns the pid and may kill it.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.children.add(pid)
        _send_control(self.ctl, {"kind": "forked", "req": req, "pid": pid})

    def reap(self):
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue  # a re-parented orphan
            self.children.discard(pid)
            msg = {"kind": "exit", "pid": pid, "maxrss_kb": usage.ru_maxrss}
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                msg["signal"] = sig
                try:
                    msg["signal_name"] = signal.Signals(sig).name
                except ValueError:
                    msg["signal_name"] = "signal %d" % sig
            else:
                msg["code"] = os.WEXITSTATUS(status)
            _send_control(self.ctl, msg)

    def exit(self):
        for pid in self.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)


def _worker_main(template, proto_fd, log_fd, memory_mb):
    """Runs in a freshly forked child: becomes a worker and serves invocations."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(template.wake_r)
    os.close(template.wake_w)
    template.ctl.close()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _set_subreaper()
    config = template.config
    _limit_memory(memory_mb)
    # On a crash, a Python traceback lands in the invocation's logs.
    faulthandler.enable(file=2, all_threads=True)
    Worker(proto_fd, template.handler, template.functions, config).serve()


class Worker:
    """Serves invocations on the protocol socket until it reaches EOF."""

    def __init__(self, proto_fd, handler, functions, config):
        self.pid = os.getpid()
        self.functions = functions
        self.query = None
        # Set while a query step runs user code: SIGINT (Rust aborting the
        # query) then raises _Abort there. `aborting` makes the worker skip
        # frames until the "abort" frame that follows the signal.
        self.in_step = False
        self.aborting = False
        os.set_inheritable(proto_fd, False)
        self.sock = socket.socket(fileno=proto_fd)
        self.sock.setblocking(True)
        self.rfile = self.sock.makefile("rb", buffering=65536)
        self.handler = handler
        self.memory_mb = config["memory_mb"]
        self.max_result = config["max_result_bytes"]
        self.lock = _thread.allocate_lock()
        self.sink = _Sink(self, config["max_log_bytes"])
        self.stdout = _Writer(self.sink, 1)
        self.stderr = _Writer(self.sink, 2)
        self.encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
        self.host = _Host(self)
        os.register_at_fork(after_in_child=self._forked_copy)
        signal.signal(_LOGS_SIGNAL, self._on_logs_signal)
        signal.signal(_ABORT_SIGNAL, self._on_abort_signal)
        signal.signal(_BEAT_SIGNAL, self._on_beat_signal)

    def serve(self):
        read = self.rfile.read
        unpack = _HEADER.unpack
        while True:
            head = read(4)
            if len(head) < 4:
                os._exit(0)
            (n,) = unpack(head)
            body = read(n)
            if len(body) < n:
                os._exit(0)
            if not body.startswith(b'{"kind":"invoke"'):
                self.query_frame(body)
                continue
            try:
                msg = json.loads(body)
            except ValueError as e:
                self.send(_json({"kind": "error", "failure": "bad_event", "message": _text(e)}))
                continue
            self.invoke(msg)

    def query_frame(self, body):
        """A frame of the query protocol: a JSON line, then an optional tail."""
        if self.aborting and not body.startswith(b'{"kind":"abort"'):
            return  # work sent before the abort: dropped unanswered
        nl = body.find(b"\n")
        if nl < 0:
            head, tail = body, b""
        else:
            head, tail = body[:nl], body[nl + 1 :]
        try:
            msg = json.loads(head)
        except ValueError as e:
            self.send(_json({"kind": "error", "failure": "protocol", "message": _text(e)}))
            return
        kind = msg.get("kind")
        if kind not in _QUERY_FRAMES:
            self.send(_json({"kind": "error", "failure": "protocol", "message": "unknown frame kind %r" % (kind,)}))
            return
        if self.query is None:
            self.query = _Query(self)
        self.query.frame(kind, msg, tail)
    def invoke(self, msg):
        if self.handler is None:
            self.send(_json({"kind": "error", "failure": "load_failed", "message": "the module has no handler", "fatal": False}))
            return
        sink = self.sink
        ctx = Context(msg, self)
        host = self.host
        host.ctx = ctx
        # Set every time: a handler may have replaced them.
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        sink.begin()
        failure = None
        try:
            result = self.handler(msg["event"], ctx)
        except SystemExit as e:
            failure = ("exited", e, True)
        except MemoryError as e:
            failure = ("out_of_memory", e, True)
        except BaseException as e:  # noqa: BLE001 - every exception is the handler's result
            failure = ("raised", e, False)
        if os.getpid() != self.pid:
            # A copy forked by user code returned into the runner.
            os._exit(0)
        with self.lock:
            sink.active = False
            # From now on this ctx's calls fail at once. A call still waiting
            # for its reply (from a thread the handler left running) or a
            # broken reply stream means the worker must not serve again: the
            # reply goes out marked fatal, and the worker exits.
            host.ctx = None
            retire = bool(host.waiting) or host.broken is not None
        if retire:
            sink.write("shoal: the handler returned while a host call was still in flight; the worker is replaced\n")
        if _children_left():
            self.fail("forked", None, "the handler left child processes running", sink.take(), True)
            os._exit(0)
        if failure is not None:
            kind, e, fatal = failure
            if kind == "exited":
                message = "the handler called sys.exit(%r)" % (e.code,)
            elif kind == "out_of_memory":
                message = "the worker ran out of memory (limit %d MiB)" % self.memory_mb
            else:
                message = _text(e)
            fatal = fatal or retire
            self.fail(kind, e, message, sink.take(), fatal)
            if fatal:
                os._exit(0)
            return
        try:
            body = self.encode(result).encode("utf-8")
        except MemoryError as e:
            self.fail("out_of_memory", e, "the worker ran out of memory encoding the result", sink.take(), True)
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            self.fail("bad_result", None, "the result is not JSON-serializable: %s" % _text(e), sink.take(), retire)
            if retire:
                os._exit(0)
            return
        if len(body) > self.max_result:
            message = "the result is %d bytes; the limit is %d" % (len(body), self.max_result)
            self.fail("output_limit", None, message, sink.take(), retire)
            if retire:
                os._exit(0)
            return
        if retire:
            self.send(b'{"kind":"result","fatal":true,"result":' + body + b"}" + sink.take())
            os._exit(0)
        self.send(b'{"kind":"result","result":' + body + b"}" + sink.take())

    def fail(self, kind, exc, message, logs, fatal):
        msg = {"kind": "error", "failure": kind, "message": message, "fatal": fatal}
        if exc is not None:
            msg.update(_describe(exc, skip_frames=1))
            msg["message"] = message
        self.send(_json(msg) + logs)

    def send(self, data):
        head = _HEADER.pack(len(data))
        with self.lock:
            if len(data) <= 65536:
                self.sock.sendall(head + data)
            else:
                self.sock.sendall(head)
                self.sock.sendall(data)

    def output_limit(self):
        """The handler wrote more than the limit: fail now, while it still runs."""
        with self.lock:
            if not self.sink.active:
                return
            self.sink.active = False
            message = "the invocation wrote more than %d bytes of logs" % self.sink.limit
            data = _json({"kind": "error", "failure": "output_limit", "message": message, "fatal": True})
            data += self.sink.take()
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        os._exit(0)

    def _on_logs_signal(self, signum, frame):
        # Runs in the main thread between bytecodes of the timed-out handler.
        if not self.lock.acquire(False):
            return
        try:
            if not self.sink.active:
                return
            self.sink.active = False
            data = b'{"kind":"logs"}' + self.sink.take()
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        finally:
            self.lock.release()

    def _on_abort_signal(self, signum, frame):
        # Runs in the main thread between bytecodes. Only user code in a
        # query step is interrupted; our own sends never are (a torn frame
        # would break the stream).
        self.aborting = True
        if self.in_step:
            self.in_step = False
            raise _Abort()

    def _on_beat_signal(self, signum, frame):
        # A timer during query steps: tells Rust the step still advances, as
        # long as a document was finished since the last beat. A map stuck
        # on one document stays silent and runs into the timeout.
        q = self.query
        if q is None or not self.in_step or q.it is None:
            return
        left = q.it.__length_hint__()
        if q.it is q.beat_it and left == q.beat_left:
            return
        q.beat_it = q.it
        q.beat_left = left
        self.in_step = False
        try:
            self.send(b'{"kind":"progress","unit":%d,"docs":0}' % q.beat_unit)
        finally:
            self.in_step = True
        if self.aborting:
            # SIGINT came while the beat was sent: it could not raise then.
            self.in_step = False
            raise _Abort()

    def _forked_copy(self):
        # A process forked by user code is not the worker: it must never speak
        # the protocol, and its output goes straight to the log pipe.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, self.sock.fileno())
        os.close(null)
        self.sink.active = False
        self.host.broken = "host calls cannot be made from a process the handler forked"
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        signal.signal(_LOGS_SIGNAL, signal.SIG_DFL)
        signal.signal(_ABORT_SIGNAL, signal.default_int_handler)
        signal.signal(_BEAT_SIGNAL, signal.SIG_DFL)
        self.query = None


class HostError(Exception):
    """A host call (`ctx.call`, `ctx.spawn`, `ctx.map`, `ctx.send`) was
    refused or failed.

    `code` is a short machine-readable string, `message` says what happened.
    Codes the runtime itself uses:

    - `no_host`: host calls are not available where this code runs;
    - `too_large`: the arguments are more JSON than the limit (the result
      size limit, 6 MiB by default);
    - `invocation_ended`: the call came from a context whose invocation has
      already returned (a context kept for later, or a leftover thread);
    - `unavailable`: the worker can no longer make calls (a forked process,
      or an earlier call was interrupted while reading its reply);
    - `bad_answer`: the node's answer was not valid JSON.

    Every other code is the node's answer (for example an unknown function
    or queue). The class is `ctx.HostError`, so a handler catches it without
    importing anything:

        try:
            ctx.send("orders", order)
        except ctx.HostError as e:
            print("not queued:", e.code, e.message)
    """

    def __init__(self, code, message):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return "%s: %s" % (self.code, self.message)


class Context:
    """The second argument of a handler.

    Attributes: `invocation_id`, `function_name`, `version`, `attempt`
    (1-based), `memory_limit_mb`. Methods: `remaining_time_ms()`, and the
    host calls `call`, `spawn`, `map`, `job`, `job_results`, `results`,
    `send`, `put_docs`, `put`, `get`, which raise `ctx.HostError`.
    """

    __slots__ = ("invocation_id", "function_name", "version", "attempt", "memory_limit_mb", "_deadline", "_worker")

    HostError = HostError

    def __init__(self, msg, worker):
        self._deadline = time.monotonic() + msg["timeout_ms"] / 1000.0
        self.invocation_id = msg["id"]
        self.function_name = msg["function"]
        self.version = msg["version"]
        self.attempt = msg["attempt"]
        self.memory_limit_mb = worker.memory_mb
        self._worker = worker

    def remaining_time_ms(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def call(self, op, args=None):
        """Calls the node: runs the host operation `op` (a string) with
        `args` (any JSON-serializable value) and returns the node's answer,
        decoded from JSON.

        Blocks until the node answers; the invocation's timeout keeps running
        meanwhile. Threads of the handler may call at the same time; each
        gets its own answer. Calls end with the invocation: a context kept
        for later, or a thread still calling after the handler returned, gets
        `HostError("invocation_ended")`.

        Raises `ctx.HostError` (`.code`, `.message`) when the node refuses or
        fails the call, `TypeError` or `ValueError` when `args` cannot be
        encoded as JSON (NaN and infinities included).
        """
        return self._worker.host.call(self, op, args)

    def spawn(self, function, event=None):
        """Starts an asynchronous invocation of `function` (a name) with
        `event`, without waiting for it; returns the node's answer (for
        example the new invocation's id). Host operation `"spawn"`, args
        `{"function", "event"}`."""
        return self.call("spawn", {"function": function, "event": event})

    def map(self, function, events, then=None):
        """Fans out: one asynchronous invocation of `function` per event in
        `events` (any iterable; up to 200,000 small events, within the size
        limit of `call`'s arguments), as one job. When every child has
        finished (succeeded, failed after its retries, or cancelled), the node
        invokes `then` (a function name), if given, once, with the event
        `{"job": <id>, "count": <n>}`; it reads the children's results with
        `ctx.results(job)`. Returns the job's id.

        Called from a child of another job, the first `map` hands this
        invocation's place in that job to the new one: the outer job counts
        it finished only when the new job (and its `then`) has, so an outer
        fan-in waits for the whole tree. Host operation `"map"`, args
        `{"function", "events", "then"}`, answer `{"job"}`."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        return self.call("map", {"function": function, "events": events, "then": then})["job"]

    def job(self, job):
        """A job's progress: a dict with `status` (`running`, `cancelling`,
        `finished`, `cancelled`), `total`, `pending`, `succeeded`, `failed`,
        `cancelled`. Host operation `"job"`."""
        return self.call("job", {"job": job})

    def job_results(self, job, offset=0, limit=1000):
        """One page of a job's results in child order from index `offset`
        (at most `limit`, up to 1000): dicts with `index`, `invocation`,
        `status`, `output` (the child's result) and `error` (`type`,
        `exception`, `message`) for failed children. Children not finished
        yet are skipped. Host operation `"job_results"`."""
        return self.call("job_results", {"job": job, "offset": offset, "limit": limit})["results"]

    def results(self, job, page=1000):
        """Every finished child's result of `job`, in child order (see
        `job_results`), fetched a page at a time."""
        offset = 0
        while True:
            batch = self.job_results(job, offset, page)
            for r in batch:
                yield r
            if len(batch) < page:
                return
            offset = batch[-1]["index"] + 1

    def put_docs(self, category, docs):
        """Writes documents into `category`, atomically and durably before it
        returns: `docs` is a list of `(id, doc)` pairs (`id` None: the node
        makes one) or of documents. Writing an id again replaces it. Returns
        the ids. Host operation `"put_docs"`, args `{"category", "docs":
        [{"id", "doc"}]}`."""
        items = []
        for d in docs:
            if isinstance(d, tuple) and len(d) == 2:
                items.append({"id": d[0], "doc": d[1]})
            else:
                items.append({"id": None, "doc": d})
        return self.call("put_docs", {"category": category, "docs": items})["ids"]

    def put(self, category, id, doc):
        """Writes one document (see `put_docs`); returns its id."""
        return self.put_docs(category, [(id, doc)])[0]

    def get(self, category, id):
        """The document `id` of `category`, or None when there is none.
        Host operation `"get_doc"`."""
        return self.call("get_doc", {"category": category, "id": id})["doc"]

    def send(self, queue, body, delay=None, dedup_id=None):
        """Sends a message with `body` (any JSON value) to `queue`; returns
        the node's answer (for example the message id).

        `delay` postpones delivery: seconds (int or float) or a
        `datetime.timedelta`; it goes to the node in milliseconds. `dedup_id`
        makes sending the same message twice send it once. Host operation
        `"send"`, args `{"queue", "body", "delay_ms", "dedup_id"}` (absent
        options are `null`)."""
        delay_ms = None
        if delay is not None:
            seconds = delay.total_seconds() if hasattr(delay, "total_seconds") else delay
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError("delay must be seconds (int or float) or a timedelta, not %r" % (delay,))
            if not seconds >= 0:
                raise ValueError("delay must be at least 0 seconds, not %r" % (delay,))
            delay_ms = int(round(seconds * 1000))
        return self.call("send", {"queue": queue, "body": body, "delay_ms": delay_ms, "dedup_id": dedup_id})

    def __repr__(self):
        return "Context(invocation_id=%r, function_name=%r, version=%r, attempt=%r)" % (
            self.invocation_id,
            self.function_name,
            self.version,
            self.attempt,
        )


class _Slot:
    """One host call waiting for its reply."""

    __slots__ = ("ev", "signaled", "reply")

    def __init__(self):
        # Held while the caller sleeps; released to wake it.
        self.ev = _thread.allocate_lock()
        self.ev.acquire()
        self.signaled = False
        self.reply = None

    def wake(self):
        # Under the worker's lock. At most one release per sleep.
        if not self.signaled:
            self.signaled = True
            self.ev.release()


class _Host:
    """The host calls of the running invocation (see `Context.call`).

    A call sends one `host` frame and waits for the `host_reply` with its
    number. While an invocation runs, Rust sends nothing but replies, so
    waiting threads read the socket themselves: one at a time (the reader)
    reads frames for everyone, hands each reply to its caller, and passes the
    reading on to another waiting thread once its own reply has come. State
    changes and sends happen under the worker's lock."""

    __slots__ = ("w", "ctx", "seq", "waiting", "reading", "broken")

    def __init__(self, worker):
        self.w = worker
        # The Context of the running invocation; None between invocations.
        self.ctx = None
        self.seq = 0
        # seq -> _Slot, until its reply has been read.
        self.waiting = {}
        self.reading = False
        # Why calls can no longer be made (the worker is replaced after the
        # invocation), or None.
        self.broken = None

    def call(self, ctx, op, args):
        if op.__class__ is not str or not op:
            raise TypeError("the operation must be a non-empty string, not %r" % (op,))
        w = self.w
        body = w.encode(args).encode("utf-8")
        if len(body) > w.max_result:
            message = "the arguments of %r are %d bytes of JSON; the limit is %d" % (op, len(body), w.max_result)
            raise HostError("too_large", message)
        if os.getpid() != w.pid:
            raise HostError("unavailable", "host calls cannot be made from a process the handler forked")
        slot = _Slot()
        with w.lock:
            if self.ctx is not ctx:
                raise HostError("invocation_ended", "the invocation this context belongs to has ended")
            if self.broken is not None:
                raise HostError("unavailable", self.broken)
            self.seq += 1
            head = b'{"kind":"host","seq":%d,"op":%s,"args":' % (self.seq, w.encode(op).encode("utf-8"))
            n = len(head) + len(body) + 1
            self.waiting[self.seq] = slot
            try:
                if n <= 65536:
                    w.sock.sendall(_HEADER.pack(n) + head + body + b"}")
                else:
                    w.sock.sendall(_HEADER.pack(n) + head)
                    w.sock.sendall(body)
                    w.sock.sendall(b"}")
            except BaseException:  # noqa: BLE001
                # Rust is gone, or part of a frame went out and the stream
                # is torn: this worker cannot go on either way.
                os.write(2, b"shoal: a host call could not be sent; the worker stops\n")
                os._exit(70)
        return self.wait(slot)

    def wait(self, slot):
        lock = self.w.lock
        while True:
            with lock:
                if slot.reply is not None:
                    return _answer(slot.reply)
                if self.broken is not None:
                    raise HostError("unavailable", self.broken)
                if not self.reading:
                    self.reading = True
                    break
                slot.signaled = False
            slot.ev.acquire()
        try:
            self.read_until(slot)
        finally:
            with lock:
                self.reading = False
                # Hand the reading on (everyone wakes when it broke).
                for other in self.waiting.values():
                    other.wake()
                    if self.broken is None:
                        break
        return _answer(slot.reply)

    def read_until(self, slot):
        w = self.w
        read = w.rfile.read
        while slot.reply is None:
            try:
                head = read(4)
                if len(head) < 4:
                    os._exit(0)
                (n,) = _HEADER.unpack(head)
                body = read(n)
                if len(body) < n:
                    os._exit(0)
                msg = json.loads(body)
                seq = msg["seq"] if msg.__class__ is dict and msg.get("kind") == "host_reply" else None
            except BaseException as e:  # noqa: BLE001
                # Interrupted mid-frame (a signal handler raised, memory ran
                # out): where the next frame starts is unknown now.
                with w.lock:
                    self.broken = "reading a host call's reply failed (%s)" % type(e).__name__
                raise
            if seq is None:
                with w.lock:
                    self.broken = "the node sent something else than a host call's reply"
                raise HostError("unavailable", self.broken)
            with w.lock:
                other = self.waiting.pop(seq, None)
                if other is not None:
                    other.reply = msg
                    if other is not slot:
                        other.wake()


def _answer(reply):
    error = reply.get("error")
    if error is not None:
        raise HostError(error.get("code"), error.get("message"))
    return reply.get("result")


_QUERY_FRAMES = frozenset(("query", "run", "batch", "end", "combine", "drop", "abort"))
# Mapped values go back in frames of about this size.
_VALUES_FRAME = 1 << 20
# Documents per step of the loop at most; steps adapt to take a few ms.
_MAX_CHUNK = 1 << 16


class _Abort(BaseException):
    """Raised inside a query step when Rust aborts the query (SIGINT)."""


class _Stop(Exception):
    """Ends a query step: a document failed and errors are not skipped, or the
    module misbehaved in a way no single document is to blame for."""

    def __init__(self, doc_id, kind, exc=None, message=None):
        Exception.__init__(self, message)
        self.doc_id = doc_id
        self.kind = kind
        self.exc = exc
        self.message = message


# Exceptions that are never a document's failure.
_PASS = (_Abort, SystemExit, MemoryError)


class _Unit:
    """One shard of the running query on this worker."""

    __slots__ = ("index", "key", "version", "acc", "have", "errors", "failures", "unreported",
                 "keep", "limit", "ids", "docs", "kept", "failed")

    def __init__(self, index, key, version, keep=0):
        self.index = index
        self.key = key
        self.version = version
        self.acc = None
        self.have = False
        self.errors = 0
        self.failures = []
        self.unreported = 0
        # keep: bytes Rust made room for; 0: do not keep; -1: keep for now
        # (Rust decides once it knows the size).
        self.keep = keep != 0
        self.limit = float("inf") if keep < 0 else keep
        self.ids = [] if self.keep else None
        self.docs = [] if self.keep else None
        self.kept = 0
        self.failed = False

    def allow(self, keep):
        """Rust's (new) answer to whether this shard is kept."""
        if not self.keep or keep < 0:
            return
        if keep == 0 or self.kept > keep:
            self.keep = False
            self.ids = self.docs = None
            self.kept = 0
        else:
            self.limit = keep


class _Query:
    """Maps (and reduces) over shards; keeps the decoded documents of the
    shards Rust asks it to keep, so that the next query just loops over them.

    Frames (protocol.rs has the wire format): `query` starts a query (settings,
    evicted shards), `run` maps a resident shard, `batch`... `end` stream a
    shard from storage, `combine` reduces partial results, `drop` forgets
    evicted shards, `abort` ends an aborted query. Every frame but `query` and
    `drop` gets exactly one final reply; `progress` and `values` frames may
    come before it."""

    def __init__(self, worker):
        self.w = worker
        functions = worker.functions
        self.map = functions.get("map")
        self.map_batch = functions.get("map_batch")
        self.reduce = functions.get("reduce")
        # (dataset, shard) -> (version, ids, docs, estimated bytes)
        self.cache = {}
        self.units = {}
        self.fold = False
        self.skip = False
        self.report_every = 1.0
        self.last_report = 0.0
        self.max_failures = 100
        self.chunk = 256
        self.encode = worker.encode
        # The iterator of the document loop running now, for the heartbeat.
        self.it = None
        self.beat_it = None
        self.beat_left = -1
        self.beat_unit = 0
        # A query worker holds many documents: the collector must not walk
        # them over and over. Decoded batches are frozen at once (JSON makes
        # no cycles), automatic collection is off, and what user code leaves
        # behind is collected after each step (a young-generation pass).
        gc.disable()

    def frame(self, kind, msg, tail):
        w = self.w
        if kind == "abort":
            self.units.clear()
            w.aborting = False
            w.send(b'{"kind":"aborted"}')
            return
        if kind == "query":
            self.start(msg)
            return
        if kind == "drop":
            self.drop(msg.get("keys") or ())
            return
        sys.stdout = w.stdout
        sys.stderr = w.stderr
        unit = msg.get("unit")
        reply = None
        signal.setitimer(signal.ITIMER_REAL, self.report_every, self.report_every)
        try:
            w.in_step = True
            if w.aborting:
                # The signal came between frames (while this one was read or
                # parsed): it could not raise, so it is noticed here.
                raise _Abort()
            if kind == "run":
                reply = self.run(msg)
            elif kind == "batch":
                reply = self.batch(msg, tail)
            elif kind == "end":
                reply = self.end(msg)
            else:
                reply = self.combine(tail)
            w.in_step = False
        except _Abort:
            w.in_step = False
            self.units.clear()
        except _Stop as stop:
            w.in_step = False
            reply = self.failed(unit, stop)
        except SystemExit as e:
            w.in_step = False
            self.fatal(unit, "exited", e, "the query's code called sys.exit(%r)" % (e.code,))
        except MemoryError as e:
            w.in_step = False
            self.units.clear()
            message = "the worker ran out of memory (limit %d MiB, plus room for resident documents)" % w.memory_mb
            self.fatal(unit, "out_of_memory", e, message)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.it = None
        if os.getpid() != w.pid:
            os._exit(0)  # a copy forked by user code returned into the runner
        if _children_left():
            self.fatal(unit, "forked", None, "the query's code left child processes running")
        # Output of query code is not kept (a query has no log).
        w.sink.take()
        gc.collect(1)
        if reply is not None:
            w.send(reply)
            self.last_report = time.monotonic()

    def start(self, msg):
        self.units.clear()
        self.fold = bool(msg.get("reduce"))
        self.skip = bool(msg.get("skip"))
        self.report_every = max(0.005, msg.get("report_ms", 1000) / 1000.0)
        self.drop(msg.get("drop") or ())
        self.last_report = time.monotonic()

    def drop(self, keys):
        for dataset, shard, version in keys:
            entry = self.cache.get((dataset, shard))
            if entry is not None and entry[0] == version:
                del self.cache[(dataset, shard)]

    def run(self, msg):
        index = msg["unit"]
        key = tuple(msg["key"])
        entry = self.cache.get(key)
        if entry is None or entry[0] != msg["version"]:
            return b'{"kind":"miss","unit":%d}' % index
        unit = _Unit(index, key, msg["version"])
        self.process(unit, entry[1], entry[2])
        return self.done(unit, entry[3])

    def batch(self, msg, tail):
        index = msg["unit"]
        keep = msg.get("keep", 0)
        unit = self.units.get(index)
        if unit is None:
            unit = self.units[index] = _Unit(index, tuple(msg["key"]), msg["version"], keep)
        else:
            unit.allow(keep)
        if unit.failed:
            return b'{"kind":"skipped","unit":%d}' % index
        try:
            ids, docs = json.loads(tail)
        except ValueError as e:
            raise _Stop(None, "platform", None, "a batch of documents is not valid JSON: %s" % _text(e))
        gc.freeze()
        size = _estimate(ids, docs)
        self.process(unit, ids, docs)
        if unit.keep:
            unit.kept += size
            if unit.kept > unit.limit:
                # More than Rust made room for: stream the rest without keeping.
                unit.keep = False
                unit.ids = unit.docs = None
                unit.kept = 0
            else:
                unit.ids += ids
                unit.docs += docs
        done, unit.unreported = unit.unreported, 0
        per_doc = size // len(docs) if docs else 0
        return b'{"kind":"ack","unit":%d,"docs":%d,"kept":%d,"per_doc":%d}' % (index, done, unit.kept, per_doc)

    def end(self, msg):
        index = msg["unit"]
        keep = msg.get("keep", 0)
        unit = self.units.pop(index, None)
        if unit is None:  # an empty shard: no batch came
            unit = _Unit(index, tuple(msg["key"]), msg["version"], keep)
        else:
            unit.allow(keep)
        if unit.failed:
            return b'{"kind":"skipped","unit":%d}' % index
        kept = unit.kept + 64 if unit.keep else 0
        reply = self.done(unit, kept)
        if kept:
            self.cache[unit.key] = (unit.version, unit.ids, unit.docs, kept)
            gc.freeze()
        return reply

    def done(self, unit, kept):
        head = b'{"kind":"done","unit":%d,"docs":%d,"errors":%d,"kept":%d' % (
            unit.index,
            unit.unreported,
            unit.errors,
            kept,
        )
        if unit.failures:
            head += b',"failures":' + _json(unit.failures)
        if self.fold and unit.have:
            head += b',"has":true,"partial":' + self.encode_value(unit.acc, "the reduced value")
        return head + b"}"

    def combine(self, tail):
        values = json.loads(tail)
        r = self.reduce
        acc = values[0]
        try:
            for v in values[1:]:
                acc = r(acc, v)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "raised", e)
        return b'{"kind":"combined","result":' + self.encode_value(acc, "the reduced value") + b"}"

    def encode_value(self, value, what):
        try:
            body = self.encode(value).encode("utf-8")
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "bad_result", None, "%s is not JSON-serializable: %s" % (what, _text(e)))
        if len(body) > self.w.max_result:
            raise _Stop(None, "output_limit", None, "%s is %d bytes; the limit is %d" % (what, len(body), self.w.max_result))
        return body

    def failed(self, index, stop):
        if index is not None and index in self.units:
            self.units[index].failed = True
        msg = {"kind": "failed", "unit": index, "doc_id": stop.doc_id, "failure": stop.kind, "fatal": False}
        if stop.exc is not None:
            msg.update(_describe(stop.exc, skip_frames=1))
        if stop.message is not None:
            msg["message"] = stop.message
        return _json(msg)

    def fatal(self, index, kind, exc, message):
        msg = {"kind": "failed", "unit": index, "failure": kind, "message": message, "fatal": True}
        if exc is not None:
            msg.update(_describe(exc, skip_frames=1))
            msg["message"] = message
        self.w.send(_json(msg))
        os._exit(0)

    def doc_failed(self, unit, doc_id, e, kind="raised", message=None):
        if not self.skip:
            raise _Stop(doc_id, kind, e if kind == "raised" else None, message)
        unit.errors += 1
        if len(unit.failures) < self.max_failures:
            failure = {"id": doc_id, "failure": kind}
            if kind == "raised":
                failure.update(_describe(e, skip_frames=1))
            else:
                failure["exception"] = type(e).__name__
            if message is not None:
                failure["message"] = message
            unit.failures.append(failure)

    def send_in_step(self, data):
        w = self.w
        w.in_step = False
        w.send(data)
        w.in_step = True
        self.last_report = time.monotonic()
        if w.aborting:
            raise _Abort()

    def process(self, unit, ids, docs):
        """Runs map over `docs` in steps that take a few milliseconds each,
        reporting progress often enough for Rust's timeout."""
        n = len(docs)
        self.beat_unit = unit.index
        if self.map_batch is not None:
            step = self.fold_batch if self.fold else self.collect_batch
        else:
            step = self.fold_map if self.fold else self.collect_map
        batch = self.map_batch is not None
        mono = time.monotonic
        w = self.w
        i = 0
        while i < n:
            chunk = self.chunk
            j = i + chunk
            # map_batch gets its own list; map only reads the shared one.
            part = docs if (i == 0 and j >= n and not batch) else docs[i:j]
            t0 = mono()
            step(unit, part, ids, i)
            self.it = None
            t1 = mono()
            if t1 - t0 < 0.004:
                if chunk < _MAX_CHUNK:
                    self.chunk = chunk * 2
            elif t1 - t0 > 0.04 and chunk > 1:
                self.chunk = chunk // 2
            i += len(part)
            unit.unreported += len(part)
            if w.aborting:
                raise _Abort()
            if i < n and t1 - self.last_report >= self.report_every:
                self.send_in_step(b'{"kind":"progress","unit":%d,"docs":%d}' % (unit.index, unit.unreported))
                unit.unreported = 0

    def fold_map(self, unit, part, ids, base):
        f = self.map
        r = self.reduce
        acc = unit.acc
        have = unit.have
        it = self.it = iter(part)
        while True:
            try:
                for doc in it:
                    v = f(doc)
                    if v is not None:
                        if have:
                            acc = r(acc, v)
                        else:
                            acc = v
                            have = True
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001 - a document's failure
                unit.acc = acc
                unit.have = have
                self.doc_failed(unit, ids[base + len(part) - it.__length_hint__() - 1], e)
        unit.acc = acc
        unit.have = have

    def collect_map(self, unit, part, ids, base):
        f = self.map
        out = []
        append = out.append
        it = self.it = iter(part)
        while True:
            try:
                for doc in it:
                    v = f(doc)
                    if v is not None:
                        append(v)
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                self.doc_failed(unit, ids[base + len(part) - it.__length_hint__() - 1], e)
        if out:
            self.send_values(unit, out, part, ids, base)

    def fold_batch(self, unit, part, ids, base):
        values = self.batch_values(unit, part, ids, base)
        r = self.reduce
        acc = unit.acc
        have = unit.have
        it = self.it = iter(values)
        while True:
            try:
                for v in it:
                    if v is not None:
                        if have:
                            acc = r(acc, v)
                        else:
                            acc = v
                            have = True
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                unit.acc = acc
                unit.have = have
                self.doc_failed(unit, ids[base + len(values) - it.__length_hint__() - 1], e)
        unit.acc = acc
        unit.have = have

    def collect_batch(self, unit, part, ids, base):
        values = self.batch_values(unit, part, ids, base)
        out = [v for v in values if v is not None]
        if out:
            self.send_values(unit, out, part, ids, base)

    def batch_values(self, unit, part, ids, base):
        try:
            values = self.map_batch(part)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            return self.batch_one_by_one(unit, part, ids, base, e)
        return self.checked(values, len(part))

    def checked(self, values, n):
        try:
            if values.__class__ is not list:
                values = list(values)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "bad_result", None, "map_batch must return a list: %s" % _text(e))
        if len(values) != n:
            raise _Stop(None, "bad_result", None, "map_batch returned %d values for %d documents" % (len(values), n))
        return values

    def batch_one_by_one(self, unit, part, ids, base, error):
        """map_batch raised: find the documents to blame, one call each."""
        mb = self.map_batch
        values = []
        blamed = False
        for k, doc in enumerate(part):
            try:
                one = mb([doc])
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                blamed = True
                self.doc_failed(unit, ids[base + k], e)
                values.append(None)
                continue
            values.append(self.checked(one, 1)[0])
        if not blamed:
            raise _Stop(None, "raised", error)
        return values

    def send_values(self, unit, out, part, ids, base):
        try:
            body = self.encode(out).encode("utf-8")
        except _PASS:
            raise
        except BaseException:  # noqa: BLE001
            body = self.values_one_by_one(unit, part, ids, base)
            if body is None:
                return
        if len(body) > _VALUES_FRAME:
            self.chunk = max(1, self.chunk // 2)
            if len(out) > 1:
                half = len(out) // 2
                self.send_encoded(unit, out[:half])
                self.send_encoded(unit, out[half:])
                return
        self.send_body(unit, body)

    def send_encoded(self, unit, out):
        body = self.encode(out).encode("utf-8")
        if len(body) > _VALUES_FRAME and len(out) > 1:
            half = len(out) // 2
            self.send_encoded(unit, out[:half])
            self.send_encoded(unit, out[half:])
            return
        self.send_body(unit, body)

    def send_body(self, unit, body):
        if len(body) > self.w.max_result + 2:
            message = "a mapped value is %d bytes; the limit is %d" % (len(body) - 2, self.w.max_result)
            raise _Stop(None, "output_limit", None, message)
        self.send_in_step(b'{"kind":"values","unit":%d}' % unit.index + body)

    def values_one_by_one(self, unit, part, ids, base):
        """Some value is not JSON: find its document. Documents whose map
        raised were counted already and are left out quietly."""
        encode = self.encode
        pieces = []
        for k, doc in enumerate(part):
            try:
                if self.map_batch is not None:
                    v = self.checked(self.map_batch([doc]), 1)[0]
                else:
                    v = self.map(doc)
            except _PASS:
                raise
            except _Stop:
                raise
            except BaseException:  # noqa: BLE001
                continue
            if v is None:
                continue
            try:
                pieces.append(encode(v).encode("utf-8"))
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                message = "the mapped value is not JSON-serializable: %s" % _text(e)
                self.doc_failed(unit, ids[base + k], e, "bad_result", message)
        if not pieces:
            return None
        return b"[" + b",".join(pieces) + b"]"


def _deep_size(o, getsizeof=sys.getsizeof):
    """Bytes held by a decoded JSON value (dict keys are shared, not counted)."""
    c = o.__class__
    if c is dict:
        size = getsizeof(o)
        for v in o.values():
            size += _deep_size(v)
        return size
    if c is list:
        size = getsizeof(o)
        for v in o:
            size += _deep_size(v)
        return size
    if o is None or o is True or o is False or (c is int and -5 <= o <= 256):
        return 0  # shared singletons
    return getsizeof(o)


def _estimate(ids, docs):
    """Estimated memory of a batch of decoded documents, from a sample."""
    n = len(docs)
    if not n:
        return 0
    step = n // 8 or 1
    total = 0
    count = 0
    for k in range(0, n, step):
        total += _deep_size(docs[k])
        count += 1
        if count == 8:
            break
    # + the id and two list slots
    return int((total / count + sys.getsizeof(ids[0]) + 16) * n)



class _Sink:
    """What sys.stdout and sys.stderr write into during an invocation, capped."""

    __slots__ = ("worker", "limit", "parts", "size", "active")

    def __init__(self, worker, limit):
        self.worker = worker
        self.limit = limit
        self.parts = []
        self.size = 0
        self.active = False

    def begin(self):
        self.parts = []
        self.size = 0
        self.active = True

    def write(self, s):
        n = len(s) if s.isascii() else len(s.encode("utf-8", "backslashreplace"))
        before = self.size
        self.size = before + n
        if self.size <= self.limit:
            self.parts.append(s)
            return
        if before < self.limit:
            self.parts.append(s[: self.limit - before])
        if self.active and self.worker is not None:
            self.worker.output_limit()

    def take(self):
        parts, self.parts = self.parts, []
        self.size = 0
        if not parts:
            return b""
        return "".join(parts).encode("utf-8", "backslashreplace")[: self.limit]


class _Writer(io.TextIOBase):
    """A text stream that captures into the current invocation's logs."""

    encoding = "utf-8"
    errors = "strict"
    line_buffering = False

    def __init__(self, sink, fd):
        self._sink = sink
        self._fd = fd
        self._buffer = None

    def write(self, s):
        if s.__class__ is not str and not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        self._sink.write(s)
        return len(s)

    @property
    def buffer(self):
        if self._buffer is None:
            self._buffer = _BinaryWriter(self)
        return self._buffer

    @property
    def name(self):
        return "<stdout>" if self._fd == 1 else "<stderr>"

    def fileno(self):
        # C code and subprocesses given this stream write to the log pipe.
        return self._fd

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        return False

    def flush(self):
        pass


class _BinaryWriter:
    """`sys.stdout.buffer`: bytes are decoded and captured like text."""

    def __init__(self, text):
        self._text = text

    def write(self, b):
        self._text._sink.write(bytes(b).decode("utf-8", "backslashreplace"))
        return len(b)

    def flush(self):
        pass

    def fileno(self):
        return self._text._fd

    def writable(self):
        return True

    def isatty(self):
        return False

    @property
    def closed(self):
        return False


def _load(spec):
    """Imports the handler's module. A module that imports fine but lacks the
    handler still serves queries (map/reduce live in the same module); the
    handler's absence is reported to invocations instead."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("handler %r is not of the form module:function" % spec)
    module = importlib.import_module(module_name)
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError("handler %r is not callable" % spec)
    except Exception as e:  # noqa: BLE001 - a missing handler is the user's
        return module, None, _describe(e)
    return module, obj, None


def _query_functions(module):
    """The module's `map`, `map_batch` and `reduce`, when defined and callable.

    `from functools import reduce` (a common import) is not a reduce(a, b)."""
    found = {}
    for name in ("map", "map_batch", "reduce"):
        fn = getattr(module, name, None)
        if not callable(fn) or fn is functools.reduce or fn is builtins.map:
            fn = None
        found[name] = fn
    return found


def _children_left():
    """True when the worker still has child processes (zombies are reaped)."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False


def _limit_memory(memory_mb):
    try:
        size = 0
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    size = int(line.split()[1]) * 1024
                    break
        limit = size + memory_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


_libc = None


def _set_subreaper():
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass


def _describe(e, skip_frames=0):
    tb = e.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    try:
        te = traceback.TracebackException(type(e), e, tb)
        _hide_runner_tails(te)
        text = "".join(te.format())
    except BaseException:  # noqa: BLE001
        text = ""
    return {"exception": type(e).__name__, "message": _text(e), "traceback": _clean(text)}


def _hide_runner_tails(te):
    """Drops the runner's own frames from the end of each traceback in the
    chain: a HostError is raised inside Context.call, but the user's line is
    the one that matters."""
    todo = [te]
    seen = set()
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        frames = list(t.stack)
        n = len(frames)
        while n > 1 and frames[n - 1].filename == _RUNNER_FILE:
            n -= 1
        if n < len(frames):
            t.stack = traceback.StackSummary.from_list(frames[:n])
        todo.append(t.__cause__)
        todo.append(t.__context__)
        todo.extend(getattr(t, "exceptions", None) or ())


_RUNNER_FILE = _describe.__code__.co_filename


def _text(e):
    try:
        return _clean(str(e))
    except BaseException:  # noqa: BLE001
        return "<unprintable %s>" % type(e).__name__


def _clean(s):
    # Lone surrogates are not valid JSON text on the Rust side.
    if len(s) > _MAX_TEXT:
        s = s[: _MAX_TEXT // 2] + "\n[...]\n" + s[-_MAX_TEXT // 2 :]
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _json(msg):
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def _send_control(ctl, msg, tail=b""):
    data = _json(msg) + tail[: _MAX_CONTROL - 4096]
    try:
        # One SOCK_SEQPACKET message: sent whole or not at all.
        ctl.send(data)
    except OSError:
        os._exit(0)


def _ignore_signal(signum, frame):
    pass


if __name__ == "__main__":
    main()
