"""Log capture: what `print()` and `sys.stdout`/`sys.stderr` receive during
an invocation is kept in memory, capped, and sent with the reply.

Raw writes to fds 1 and 2 (C code, subprocesses) bypass this: they go to
the worker's log pipe, which Rust reads.
"""

import io


class Sink:
    """What sys.stdout and sys.stderr write into during an invocation, capped
    at `limit` bytes of UTF-8. Going past the limit while `active` calls
    `worker.output_limit()`, which fails the invocation."""

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
        """The captured text as UTF-8 (at most `limit` bytes); starts over."""
        parts, self.parts = self.parts, []
        self.size = 0
        if not parts:
            return b""
        return "".join(parts).encode("utf-8", "backslashreplace")[: self.limit]


class Writer(io.TextIOBase):
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
            self._buffer = BinaryWriter(self)
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


class BinaryWriter:
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
