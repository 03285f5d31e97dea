"""Blobs and byte ranges in handlers: ``ctx.blob(key)``,
``ctx.map_ranges(...)``, ``ctx.range_bytes(event)`` and
``ctx.range_records(event)``.

A blob's bytes are read straight from the node's disk where the node keeps
them in files (the embedded store's blob files, or the Redis store's local
chunk cache): ``blob_open`` answers which files hold a range and the worker
reads them itself with ``os.pread``, so no byte goes through the node or
through a host-call frame. Where the bytes are not in files (the in-memory
store, or a fixed-size blob, whose bytes change in place), they come
through the node with ``blob_read``, 4 MiB a call.

Every read names the content it expects (its ``etag``): a blob replaced
while a handler reads it raises ``HostError("blob_changed")`` instead of
mixing two contents.

This file is embedded in the node like ``context.py``; standard library
only.
"""

from __future__ import annotations

import base64
import io
import mmap
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional

__all__ = ["Blob", "BlobFile", "Job"]

#: Bytes one ``blob_read`` host call answers at most.
READ_CALL = 4 << 20
#: Bytes read ahead at a time while finishing a line past a range's end.
LINE_WINDOW = 1 << 20
#: Ranges at least this long are mapped instead of copied by
#: ``range_bytes`` (a copy of a 64 MiB range costs ~30 ms; a map, nothing
#: until the bytes are touched).
MAP_AT_LEAST = 1 << 20


def _changed(ctx, key):
    return ctx.HostError("blob_changed", "blob `%s` was replaced while it was being read; read it again" % key)


def read_range(ctx, key, offset, length, etag=None, mapped=False):
    """``length`` bytes of blob ``key`` from ``offset`` (fewer at its end),
    of the content ``etag`` when given. Returns ``bytes`` (one file piece)
    or a ``bytearray``; with ``mapped``, a range in one file piece of at
    least ``MAP_AT_LEAST`` bytes comes as a read-only ``memoryview`` of a
    memory map of the file instead (no copy)."""
    answer = ctx.blob_open(key, offset, length)
    blob = answer["blob"]
    if blob is None:
        raise ctx.HostError("blob_not_found", "blob `%s` not found" % key)
    if etag is not None and blob["etag"] != etag:
        raise _changed(ctx, key)
    pieces = answer["pieces"]
    if pieces is not None:
        try:
            if mapped and len(pieces) == 1 and pieces[0]["length"] >= MAP_AT_LEAST:
                p = pieces[0]
                return _map_piece(p["path"], p["length"], p["offset"])
            return _read_files(pieces)
        except FileNotFoundError:
            # Replaced or evicted since: ask again, through the node this time.
            pass
    size = blob["size"]
    end = min(offset + length, size)
    out = bytearray()
    pos = offset
    while pos < end:
        n = min(READ_CALL, end - pos)
        out += ctx.blob_read(key, pos, n, etag=blob["etag"])
        pos += n
    return out


def _map_piece(path, length, offset):
    # A map starts on an allocation boundary; the view starts at `offset`.
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, length + (offset - start), offset=start, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    # The view keeps the map alive; the map stays valid if the file is
    # removed meanwhile (a blob replaced or evicted from a cache).
    return memoryview(m)[offset - start:]


def _read_files(pieces):
    if len(pieces) == 1:
        p = pieces[0]
        return _pread_all(p["path"], p["length"], p["offset"])
    total = sum(p["length"] for p in pieces)
    out = bytearray(total)
    view = memoryview(out)
    at = 0
    for p in pieces:
        fd = os.open(p["path"], os.O_RDONLY)
        try:
            done = 0
            while done < p["length"]:
                n = os.preadv(fd, [view[at + done:at + p["length"]]], p["offset"] + done)
                if n == 0:
                    raise OSError("blob file %s ended early" % p["path"])
                done += n
        finally:
            os.close(fd)
        at += p["length"]
    return out


def _pread_all(path, length, offset):
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                raise OSError("blob file %s ended early" % path)
            parts.append(more)
            got += len(more)
        return b"".join(parts)
    finally:
        os.close(fd)


class Blob:
    """``ctx.blob(key)``: one blob as it was when opened. Attributes:
    ``key``, ``size``, ``etag``, ``version``, ``fixed_size``,
    ``content_type``. Reads are of that content (``HostError
    ("blob_changed")`` once it is replaced); ``bitfield`` and ``write_at``
    change a fixed-size blob."""

    __slots__ = ("_ctx", "key", "size", "etag", "version", "fixed_size", "content_type")

    def __init__(self, ctx, info: Dict[str, Any]) -> None:
        self._ctx = ctx
        self.key = info["key"]
        self.size = info["size"]
        self.etag = info["etag"]
        self.version = info["version"]
        self.fixed_size = info["fixed_size"]
        self.content_type = info.get("content_type")

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int = 0, length: Optional[int] = None):
        """``length`` bytes from ``offset`` (to the end without ``length``;
        fewer at the end). Returns a bytes-like object."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length is None:
            length = max(0, self.size - offset)
        if length == 0 or offset >= self.size:
            return b""
        # A fixed-size blob changes in place: read whatever it holds now.
        etag = None if self.fixed_size else self.etag
        return read_range(self._ctx, self.key, offset, length, etag)

    def open(self) -> "BlobFile":
        """A read-only, seekable binary file over the blob (for libraries
        that want a file object)."""
        return io.BufferedReader(BlobFile(self), buffer_size=1 << 20)

    def bitfield(self, ops: List[Dict[str, Any]]) -> List[Optional[int]]:
        """Applies operations (``{"op": "set", "type": "u4", "offset":
        "#12", "value": 7}``, as ``POST /v1/blobs/{key}/bitfield`` takes)
        to a fixed-size blob, all or nothing; returns one result each."""
        answer = self._ctx.blob_apply(self.key, ops)
        self.version = answer["version"]
        self.etag = answer["etag"]
        return answer["results"]

    def write_at(self, offset: int, data: bytes) -> None:
        """Writes ``data`` at byte ``offset`` of a fixed-size blob."""
        self.bitfield([{"op": "write_at", "offset": offset,
                        "data_base64": base64.b64encode(bytes(data)).decode("ascii")}])

    def __repr__(self) -> str:
        return "<Blob %r %d bytes etag=%s>" % (self.key, self.size, self.etag)


class BlobFile(io.RawIOBase):
    """A raw, read-only file over a :class:`Blob` (``Blob.open()`` wraps it
    in a buffer)."""

    def __init__(self, blob: Blob) -> None:
        super().__init__()
        self._blob = blob
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._blob.size + offset
        else:
            raise ValueError("whence must be 0, 1 or 2")
        if pos < 0:
            raise ValueError("negative seek position %d" % pos)
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._blob.read(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n


class Job(str):
    """A job's id (a ``str``), as ``ctx.map_ranges`` returns it, with
    ``wait``."""

    __slots__ = ("_ctx",)

    def __new__(cls, job: str, ctx) -> "Job":
        self = super().__new__(cls, job)
        self._ctx = ctx
        return self

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Waits until the job and its fan-in (``then``) have finished and
        returns the fan-in's result (``None`` for a job without one).
        Raises ``HostError("job_failed")`` when the fan-in failed,
        ``HostError("timeout")`` after ``timeout`` seconds."""
        return self._ctx.job_wait(str(self), timeout)


def range_bytes(ctx, event: Dict[str, Any]):
    """The bytes of a ``map_ranges`` child's range (whole records for
    fixed-size records): bytes-like, and for a range of 1 MiB or more in a
    file on this node a read-only ``memoryview`` of a memory map of it (no
    copy: ``numpy.frombuffer`` reads the page cache directly)."""
    return read_range(ctx, event["key"], event["offset"], event["length"], event["etag"], mapped=True)


def range_records(ctx, event: Dict[str, Any]) -> Iterator[bytes]:
    """The records a ``map_ranges`` child owns, each once: fixed-size
    records of its range, or the lines that start in its range (without
    their newline), the last one read to its end past the range."""
    records = event["records"]
    if records != "lines":
        data = memoryview(range_bytes(ctx, event))
        for at in range(0, len(data) - len(data) % records, records):
            yield bytes(data[at:at + records])
        return
    key, offset, length, size, etag = (event["key"], event["offset"], event["length"],
                                       event["size"], event["etag"])
    end = offset + length
    # The first line start at or after `offset`: 0, or after a newline at
    # `offset - 1` or later (but before `end - 1`, else no line starts here).
    if offset == 0:
        start = 0
    else:
        start = None
        pos = offset - 1
        while pos < end - 1:
            window = read_range(ctx, key, pos, min(LINE_WINDOW, end - 1 - pos), etag)
            i = window.find(b"\n")
            if i >= 0:
                start = pos + i + 1
                break
            pos += len(window)
        if start is None:
            return
    buf = bytes(read_range(ctx, key, start, end - start, etag))
    base = start
    at = 0
    while base + at < end:
        nl = buf.find(b"\n", at)
        while nl < 0 and base + len(buf) < size:
            more = read_range(ctx, key, base + len(buf), LINE_WINDOW, etag)
            buf = buf[at:] + bytes(more)
            base += at
            at = 0
            nl = buf.find(b"\n", at)
        if nl < 0:
            yield buf[at:]
            return
        yield buf[at:nl]
        at = nl + 1
