"""Unit tests of the runner package (`src/_shoal_runner/`), with pytest.

The package is assembled the way the Rust runtime writes it (its modules,
plus the client package's `context.py`, `blobs.py` and `response.py`) into a temporary directory that is
put on `sys.path`, so `import _shoal_runner.host` imports what workers run.
"""

import atexit
import os
import shutil
import socket
import sys
import tempfile
import _thread

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.dirname(os.path.dirname(HERE))
REPO = os.path.dirname(os.path.dirname(CRATE))
GOLDEN = os.path.join(REPO, "crates", "shoal-runtime", "tests", "golden", "host")


def _assemble():
    root = tempfile.mkdtemp(prefix="shoal-runner-test-")
    atexit.register(shutil.rmtree, root, True)
    package = os.path.join(root, "_shoal_runner")
    os.mkdir(package)
    source = os.path.join(CRATE, "src", "_shoal_runner")
    for name in os.listdir(source):
        if name.endswith(".py"):
            shutil.copy(os.path.join(source, name), package)
    for name in ("blobs.py", "context.py", "response.py"):
        shutil.copy(os.path.join(REPO, "python", "shoal", name), package)
    sys.path.insert(0, root)


_assemble()

from _shoal_runner import host, protocol, worker  # noqa: E402


class Channel:
    """A worker's side of host calls, over a real socket pair: the runner's
    `Host` on one end, the test playing Rust on the other."""

    def __init__(self, max_result=6 * 1024 * 1024):
        self.sock, self.peer = socket.socketpair()
        self.rfile = self.sock.makefile("rb", buffering=65536)
        self.lock = _thread.allocate_lock()
        self.encode = protocol.encoder()
        self.max_result = max_result
        self.pid = os.getpid()
        self.memory_mb = 256
        self.host = host.Host(self)

    def context(self):
        """The context of a running invocation, as a worker makes it."""
        msg = {"id": "inv-1", "function": "fn", "version": 3, "attempt": 1, "timeout_ms": 5000}
        ctx = worker.WorkerContext(msg, self)
        self.host.ctx = ctx
        return ctx

    def reply(self, body):
        """Queues a frame for the runner to read (sent before the call: the
        socket buffers it)."""
        self.peer.sendall(protocol.HEADER.pack(len(body)) + body)

    def sent(self):
        """The body of the next frame the runner sent."""
        head = self._read(4)
        (n,) = protocol.HEADER.unpack(head)
        return self._read(n)

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.peer.recv(n - len(data))
            assert chunk, "the runner closed its socket"
            data += chunk
        return data

    def close(self):
        self.rfile.close()
        self.sock.close()
        self.peer.close()


@pytest.fixture
def channel():
    c = Channel()
    yield c
    c.close()
