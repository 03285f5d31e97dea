"""The template (zygote) of one deployment: imports the handler's module
once, then forks a worker per "fork" request on its control socket (fd 0);
each request carries the worker's protocol socket and log pipe (SCM_RIGHTS).
It reports how its workers end."""

import builtins
import functools
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
import traceback

from .capture import Sink, Writer
from .failures import MAX_TEXT, describe_load
from .process import set_subreaper, vm_size
from .protocol import HOST_PROTOCOL, MAX_CONTROL, send_control
from .worker import worker_main


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "template":
        os.write(2, b"usage: python -u _shoal_runner/__main__.py template CONFIG_JSON\n")
        os._exit(2)
    config = json.loads(sys.argv[2])

    # fd 0 is the control socket; move it away so that user code reading
    # stdin finds /dev/null instead of our messages.
    ctl = socket.socket(fileno=os.dup(0))
    ctl.setblocking(True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)

    config["vm_size"] = vm_size()
    if config.get("sandbox") is not None:
        _enter_sandbox(config["sandbox"])

    # The function's own modules come first (`__main__` took the runner's
    # directory off the path).
    sys.path.insert(0, config["code_dir"])

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    # Orphans of workers (grandchildren whose parent exited) are re-parented
    # here and reaped, instead of lingering under init.
    set_subreaper()

    sink = Sink(None, MAX_TEXT)
    sink.active = True
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Writer(sink, 1), Writer(sink, 2)
    try:
        module, handler, handler_error = _load(config["handler"])
    except BaseException as e:  # noqa: BLE001 - any import failure is the user's
        sys.stdout, sys.stderr = saved
        msg = {"kind": "load_failed", "host_protocol": HOST_PROTOCOL}
        msg.update(describe_load(e))
        send_control(ctl, msg, sink.take())
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


def _enter_sandbox(cfg):
    """Enters the sandbox before any user code is imported; a template that
    cannot must not go on (its output tells the node why)."""
    from . import sandbox

    # The Python installation (and the virtualenv) it runs from: the paths
    # it imports from now, before the function's directory is added.
    python = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    python += [p for p in sys.path if p]
    try:
        sandbox.enter({
            "read_only": list(cfg["read_only"]) + python,
            "read_write": list(cfg["read_write"]),
        })
    except sandbox.SandboxError as e:
        os.write(2, ("shoal: cannot enter the sandbox: %s\n" % e).encode())
        os._exit(3)
    scratch = cfg["scratch"]
    os.environ["TMPDIR"] = scratch
    os.environ["HOME"] = scratch


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
            "host_protocol": HOST_PROTOCOL,
            "pid": os.getpid(),
            "handler_error": self.handler_error,
            "query": {name: fn is not None for name, fn in self.functions.items()},
        }
        send_control(self.ctl, ready)
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
                    data, fds, _flags, _addr = socket.recv_fds(self.ctl, MAX_CONTROL, 4)
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
            send_control(self.ctl, {"kind": "unknown", "message": "unknown control message %r" % (kind,)})

    def fork(self, msg, fds):
        req = msg.get("req")
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            send_control(self.ctl, {"kind": "fork_failed", "req": req, "message": "expected 2 fds, got %d" % len(fds)})
            return
        proto_fd, log_fd = fds
        # Query workers get room for their resident documents on top.
        memory_mb = msg.get("memory_mb") or self.config["memory_mb"]
        try:
            pid = os.fork()
        except OSError as e:
            os.close(proto_fd)
            os.close(log_fd)
            send_control(self.ctl, {"kind": "fork_failed", "req": req, "message": "fork failed: %s" % e})
            return
        if pid == 0:
            try:
                # The child answers the fork request itself: only it can name
                # its pid as the node sees it (the template may be the init
                # of a pid namespace of its own, where pids differ).
                os.setpgid(0, 0)
                send_control(self.ctl, {"kind": "forked", "req": req, "pid": _host_pid(), "ns_pid": os.getpid()})
                worker_main(self, proto_fd, log_fd, memory_mb)
            except BaseException:  # noqa: BLE001
                try:
                    os.write(2, traceback.format_exc().encode("utf-8", "backslashreplace"))
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(70)
        os.close(proto_fd)
        os.close(log_fd)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.children.add(pid)

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
            send_control(self.ctl, msg)

    def exit(self):
        # In a pid namespace of its own, the kernel kills everything left
        # when this process (its init) exits, `setsid` or not.
        for pid in self.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)


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
        return module, None, describe_load(e)
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


def _host_pid():
    """This process's pid in the node's pid namespace: /proc belongs to the
    node's namespace, so its `self` link names the pid the node sees."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def _ignore_signal(signum, frame):
    pass
