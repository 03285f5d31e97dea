"""Host calls over the worker's socket (see `Context.call`).

A call is one frame `{"kind":"host","seq":n,"op":"...","args":<JSON>}` and
is answered by one `{"kind":"host_reply","seq":n,"result":<JSON>}` or
`{"kind":"host_reply","seq":n,"error":{"code","message"}}`. The operations
and their arguments are the Rust `HostCall` (crate `shoal-runtime`); the
golden files in `crates/shoal-runtime/tests/golden/host/` hold the exact
frames `Context`'s methods make here, and both sides are tested against them.
"""

import json
import os
import _thread

from .context import HostError
from .protocol import HEADER


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


class Host:
    """The host calls of the running invocation.

    A call sends one `host` frame and waits for the `host_reply` with its
    number. While an invocation runs, Rust sends nothing but replies, so
    waiting threads read the socket themselves: one at a time (the reader)
    reads frames for everyone, hands each reply to its caller, and passes the
    reading on to another waiting thread once its own reply has come. State
    changes and sends happen under the worker's lock.

    Of the worker `w` it uses `lock`, `sock`, `rfile` (the socket's reader),
    `encode`, `max_result` (the limit of a call's arguments) and `pid`."""

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
                    w.sock.sendall(HEADER.pack(n) + head + body + b"}")
                else:
                    w.sock.sendall(HEADER.pack(n) + head)
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
                    return answer(slot.reply)
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
        return answer(slot.reply)

    def read_until(self, slot):
        w = self.w
        read = w.rfile.read
        while slot.reply is None:
            try:
                head = read(4)
                if len(head) < 4:
                    os._exit(0)
                (n,) = HEADER.unpack(head)
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


def answer(reply):
    """A `host_reply`'s result, or its error raised as HostError."""
    error = reply.get("error")
    if error is not None:
        raise HostError(error.get("code"), error.get("message"))
    return reply.get("result")
