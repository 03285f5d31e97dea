"""Shoal's Python runner: the template (zygote) of one deployment and the workers it forks.

Shipped inside the Rust binary and started as

    python -u runner.py template '<config json>'

with the control socket (AF_UNIX, SOCK_SEQPACKET) as fd 0. The template imports
the handler once, then forks one worker per "fork" request; each request carries
the worker's protocol socket and log pipe (SCM_RIGHTS). Standard library only.
The wire format is described in protocol.rs.
"""

import faulthandler
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
        handler = _load(config["handler"])
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
    Template(ctl, handler, config).run()


class Template:
    """Forks workers on request and reports how they end."""

    def __init__(self, ctl, handler, config):
        self.ctl = ctl
        self.handler = handler
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
        _send_control(self.ctl, {"kind": "ready", "pid": os.getpid()})
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
        try:
            pid = os.fork()
        except OSError as e:
            os.close(proto_fd)
            os.close(log_fd)
            _send_control(self.ctl, {"kind": "fork_failed", "req": req, "message": "fork failed: %s" % e})
            return
        if pid == 0:
            try:
                _worker_main(self, proto_fd, log_fd)
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


def _worker_main(template, proto_fd, log_fd):
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
    _limit_memory(config["memory_mb"])
    # On a crash, a Python traceback lands in the invocation's logs.
    faulthandler.enable(file=2, all_threads=True)
    Worker(proto_fd, template.handler, config).serve()


class Worker:
    """Serves invocations on the protocol socket until it reaches EOF."""

    def __init__(self, proto_fd, handler, config):
        self.pid = os.getpid()
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
        os.register_at_fork(after_in_child=self._forked_copy)
        signal.signal(_LOGS_SIGNAL, self._on_logs_signal)

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
            try:
                msg = json.loads(body)
            except ValueError as e:
                self.send(_json({"kind": "error", "failure": "bad_event", "message": _text(e)}))
                continue
            kind = msg.get("kind")
            if kind == "invoke":
                self.invoke(msg)
            else:
                self.send(_json({"kind": "error", "failure": "protocol", "message": "unknown frame kind %r" % (kind,)}))

    def invoke(self, msg):
        sink = self.sink
        ctx = Context(msg, self.memory_mb)
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
            self.fail("bad_result", None, "the result is not JSON-serializable: %s" % _text(e), sink.take(), False)
            return
        if len(body) > self.max_result:
            message = "the result is %d bytes; the limit is %d" % (len(body), self.max_result)
            self.fail("output_limit", None, message, sink.take(), False)
            return
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

    def _forked_copy(self):
        # A process forked by user code is not the worker: it must never speak
        # the protocol, and its output goes straight to the log pipe.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, self.sock.fileno())
        os.close(null)
        self.sink.active = False
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        signal.signal(_LOGS_SIGNAL, signal.SIG_DFL)


class Context:
    """The second argument of a handler."""

    __slots__ = ("invocation_id", "function_name", "version", "attempt", "memory_limit_mb", "_deadline")

    def __init__(self, msg, memory_mb):
        self._deadline = time.monotonic() + msg["timeout_ms"] / 1000.0
        self.invocation_id = msg["id"]
        self.function_name = msg["function"]
        self.version = msg["version"]
        self.attempt = msg["attempt"]
        self.memory_limit_mb = memory_mb

    def remaining_time_ms(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self):
        return "Context(invocation_id=%r, function_name=%r, version=%r, attempt=%r)" % (
            self.invocation_id,
            self.function_name,
            self.version,
            self.attempt,
        )


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
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("handler %r is not of the form module:function" % spec)
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError("handler %r is not callable" % spec)
    return obj


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
        text = "".join(traceback.format_exception(type(e), e, tb))
    except BaseException:  # noqa: BLE001
        text = ""
    return {"exception": type(e).__name__, "message": _text(e), "traceback": _clean(text)}


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
