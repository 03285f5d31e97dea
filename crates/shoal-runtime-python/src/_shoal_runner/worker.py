"""A worker: a process forked from the template that serves invocations
(and query frames) on its protocol socket until the socket reaches EOF."""

import faulthandler
import json
import os
import signal
import socket
import sys
import time
import _thread

from .capture import Sink, Writer
from .context import Context
from .failures import describe, text_of
from .host import Host
from .process import children_left, clear_dir, die_with_parent, limit_memory, set_subreaper
from .protocol import HEADER, encoder, json_bytes
from .query import QUERY_FRAMES, Abort, Query
from .response import Response, is_response_json

# Sent by Rust when an invocation times out: hand over the logs captured so far.
_LOGS_SIGNAL = signal.SIGUSR2
# Sent by Rust to stop a query step early (the query failed or was dropped).
_ABORT_SIGNAL = signal.SIGINT
# The heartbeat timer of query steps.
_BEAT_SIGNAL = signal.SIGALRM


def worker_main(template, proto_fd, log_fd, memory_mb):
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
    set_subreaper()
    die_with_parent()
    config = template.config
    limit_memory(memory_mb, config.get("vm_size", 0))
    scratch = None
    if config.get("sandbox") is not None:
        # A scratch directory of its own, emptied after every invocation.
        scratch = os.path.join(config["sandbox"]["scratch"], "w%d" % os.getpid())
        os.makedirs(scratch, exist_ok=True)
        os.environ["TMPDIR"] = os.environ["HOME"] = scratch
        import tempfile

        tempfile.tempdir = None
    config["worker_scratch"] = scratch
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
        # query) then raises Abort there. `aborting` makes the worker skip
        # frames until the "abort" frame that follows the signal.
        self.in_step = False
        self.aborting = False
        os.set_inheritable(proto_fd, False)
        self.sock = socket.socket(fileno=proto_fd)
        self.sock.setblocking(True)
        self.rfile = self.sock.makefile("rb", buffering=65536)
        self.handler = handler
        self.scratch = config.get("worker_scratch")
        self.memory_mb = config["memory_mb"]
        self.max_result = config["max_result_bytes"]
        self.lock = _thread.allocate_lock()
        self.sink = Sink(self, config["max_log_bytes"])
        self.stdout = Writer(self.sink, 1)
        self.stderr = Writer(self.sink, 2)
        self.encode = encoder()
        self.host = Host(self)
        os.register_at_fork(after_in_child=self._forked_copy)
        signal.signal(_LOGS_SIGNAL, self._on_logs_signal)
        signal.signal(_ABORT_SIGNAL, self._on_abort_signal)
        signal.signal(_BEAT_SIGNAL, self._on_beat_signal)

    def serve(self):
        read = self.rfile.read
        unpack = HEADER.unpack
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
                self.send(json_bytes({"kind": "error", "failure": "bad_event", "message": text_of(e)}))
                continue
            self.invoke(msg)
            if self.scratch:
                clear_dir(self.scratch)

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
            self.send(json_bytes({"kind": "error", "failure": "protocol", "message": text_of(e)}))
            return
        kind = msg.get("kind")
        if kind not in QUERY_FRAMES:
            self.send(json_bytes({"kind": "error", "failure": "protocol", "message": "unknown frame kind %r" % (kind,)}))
            return
        if self.query is None:
            self.query = Query(self)
        self.query.frame(kind, msg, tail)

    def invoke(self, msg):
        if self.handler is None:
            self.send(json_bytes({"kind": "error", "failure": "load_failed", "message": "the module has no handler", "fatal": False}))
            return
        sink = self.sink
        ctx = WorkerContext(msg, self)
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
        if children_left():
            self.fail("forked", None, "the handler left child processes running", sink.take(), True)
            os._exit(0)
        if failure is not None:
            kind, e, fatal = failure
            if kind == "exited":
                message = "the handler called sys.exit(%r)" % (e.code,)
            elif kind == "out_of_memory":
                message = "the worker ran out of memory (limit %d MiB)" % self.memory_mb
            else:
                message = text_of(e)
            fatal = fatal or retire
            self.fail(kind, e, message, sink.take(), fatal)
            if fatal:
                os._exit(0)
            return
        # A Response travels as its JSON form (see response.py); its body
        # counts against the result limit, not its base64.
        binary = isinstance(result, Response)
        refused = None
        if binary and len(result.body) > self.max_result:
            refused = ("output_limit", "the response body is %d bytes; the limit is %d" % (len(result.body), self.max_result))
        elif not binary and is_response_json(result):
            refused = ("bad_result", "a result whose only key is '$response' is reserved for shoal.Response; return ctx.Response(body, content_type=...) instead")
        if refused is not None:
            self.fail(refused[0], None, refused[1], sink.take(), retire)
            if retire:
                os._exit(0)
            return
        try:
            if binary:
                result = result.to_json()
            body = self.encode(result).encode("utf-8")
        except MemoryError as e:
            self.fail("out_of_memory", e, "the worker ran out of memory encoding the result", sink.take(), True)
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            self.fail("bad_result", None, "the result is not JSON-serializable: %s" % text_of(e), sink.take(), retire)
            if retire:
                os._exit(0)
            return
        if not binary and len(body) > self.max_result:
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
            msg.update(describe(exc, skip_frames=1))
            msg["message"] = message
        self.send(json_bytes(msg) + logs)

    def send(self, data):
        head = HEADER.pack(len(data))
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
            data = json_bytes({"kind": "error", "failure": "output_limit", "message": message, "fatal": True})
            data += self.sink.take()
            self.sock.sendall(HEADER.pack(len(data)) + data)
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
            self.sock.sendall(HEADER.pack(len(data)) + data)
        finally:
            self.lock.release()

    def _on_abort_signal(self, signum, frame):
        # Runs in the main thread between bytecodes. Only user code in a
        # query step is interrupted; our own sends never are (a torn frame
        # would break the stream).
        self.aborting = True
        if self.in_step:
            self.in_step = False
            raise Abort()

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
            raise Abort()

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


class WorkerContext(Context):
    """The `Context` handlers get: made from the invoke frame, its host calls
    go over this worker's socket. The API itself is `Context`'s."""

    __slots__ = ()

    def __init__(self, msg, worker):
        self._deadline = time.monotonic() + msg["timeout_ms"] / 1000.0
        self.invocation_id = msg["id"]
        self.function_name = msg["function"]
        self.version = msg["version"]
        self.attempt = msg["attempt"]
        self.memory_limit_mb = worker.memory_mb
        self._host = worker.host

    def call(self, op, args=None):
        return self._host.call(self, op, args)

    call.__doc__ = Context.call.__doc__
