"""What a function's handler receives: ``handler(event, ctx)``.

``ctx`` is a :class:`Context`: who this invocation is, how much time it has
left, and *host calls*, which call back into the node while the handler
runs (start invocations, fan out jobs, send messages, read and write
documents). A refused or failed call raises :class:`HostError`.

Import them for type hints and tests; a function needs no import at all
(``ctx.HostError`` is the same class)::

    from shoal import Context, HostError

    def handler(event: dict, ctx: Context) -> dict:
        try:
            ctx.send("orders", event)
        except HostError as e:
            return {"queued": False, "why": e.code}
        return {"queued": True}

    # A test: host calls go to a function of (op, args).
    calls = []
    ctx = Context(host=lambda op, args: calls.append((op, args)) or {"id": "m-1"})
    assert handler({"n": 1}, ctx) == {"queued": True}
    assert calls == [("send", {"queue": "orders", "body": {"n": 1},
                               "delay_ms": None, "dedup_id": None})]

This file is also the one the node's Python runtime uses: it is embedded in
the node and copied into every worker, so the API here is the API handlers
get, whether or not this package is installed next to the function. Inside
a worker, ``shoal.Context`` and ``shoal.HostError`` are the runtime's own
classes, so ``isinstance(ctx, Context)`` and ``except HostError`` hold.

Standard library only, and cheap to import: nothing is imported for the
type hints at run time.
"""

from __future__ import annotations

import sys
import time

from .response import Response, cookie

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import timedelta
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

    #: Where a test context's host calls go: ``host(op, args)`` returns the
    #: answer (any JSON value) or raises :class:`HostError`.
    HostFunction = Callable[[str, Any], Any]
    from .blobs import Blob, Job
    #: A document to write: ``(id, doc)`` (``id`` None: the node makes one),
    #: or the document alone.
    DocItem = Union[Tuple[Optional[str], Any], Any]

__all__ = ["Context", "HostError"]


class HostError(Exception):
    """A host call (``ctx.call``, ``ctx.spawn``, ``ctx.map``, ``ctx.send``,
    ...) was refused or failed.

    ``code`` is a short machine-readable string, ``message`` says what
    happened. Codes the runtime itself uses:

    - ``no_host``: host calls are not available where this code runs;
    - ``too_large``: the arguments are more JSON than the limit (the result
      size limit, 6 MiB by default);
    - ``invocation_ended``: the call came from a context whose invocation has
      already returned (a context kept for later, or a leftover thread);
    - ``unavailable``: the worker can no longer make calls (a forked process,
      or an earlier call was interrupted while reading its reply);
    - ``bad_answer``: the node's answer was not valid JSON;
    - ``unknown_op``: ``ctx.call`` named an operation the node does not have;
    - ``invalid_input``: the arguments do not fit the operation.

    Every other code is the node's answer (for example
    ``function_not_found`` or ``queue_not_found``). The class is also
    ``ctx.HostError``, so a handler catches it without importing anything::

        try:
            ctx.send("orders", order)
        except ctx.HostError as e:
            print("not queued:", e.code, e.message)
    """

    # Tracebacks and reprs name it where users import it from.
    __module__ = "shoal"

    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message)


class Context:
    """The second argument of a handler.

    Attributes: ``invocation_id``, ``function_name``, ``version``,
    ``attempt`` (1-based), ``memory_limit_mb``. Methods:
    ``remaining_time_ms()``, and the host calls ``call``, ``spawn``, ``map``,
    ``job``, ``job_results``, ``results``, ``send``, ``put_docs``, ``put``,
    ``get``, which raise ``ctx.HostError``.

    The node makes the contexts handlers get. Made by hand (for tests), a
    context sends its host calls to ``host(op, args)``, which returns the
    node's answer as a decoded JSON value or raises :class:`HostError`;
    without ``host``, every call raises ``HostError("no_host")``.
    """

    __slots__ = ("invocation_id", "function_name", "version", "attempt", "memory_limit_mb", "_deadline", "_host")
    __module__ = "shoal"

    #: The exception host calls raise (the same class as ``shoal.HostError``).
    HostError = HostError
    #: A binary result to return (the same class as ``shoal.Response``):
    #: ``return ctx.Response(png, content_type="image/png")``.
    Response = Response
    #: A ``Set-Cookie`` value for ``Response(..., cookies=[...])`` (the same
    #: function as ``shoal.cookie``): ``ctx.cookie("sid", token, max_age=3600)``.
    cookie = staticmethod(cookie)

    invocation_id: str
    function_name: str
    version: int
    attempt: int
    memory_limit_mb: int

    def __init__(
        self,
        *,
        invocation_id: str = "test-invocation",
        function_name: str = "test",
        version: int = 1,
        attempt: int = 1,
        memory_limit_mb: int = 256,
        timeout_ms: int = 30_000,
        host: Optional[HostFunction] = None,
    ) -> None:
        self._deadline = time.monotonic() + timeout_ms / 1000.0
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.version = version
        self.attempt = attempt
        self.memory_limit_mb = memory_limit_mb
        self._host = host

    def remaining_time_ms(self) -> int:
        """Milliseconds left until the invocation times out."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def call(self, op: str, args: Any = None) -> Any:
        """Calls the node: runs the host operation ``op`` with ``args`` (any
        JSON-serializable value) and returns the node's answer, decoded from
        JSON. The operations are ``spawn``, ``send``, ``map``, ``job``,
        ``job_results``, ``put_docs``, ``get_doc``, ``kv_get``, ``kv_set``,
        ``kv_incr``, ``kv_delete``, ``kv_list``, ``publish`` and ``channel_position``; the methods of the
        same names build their arguments.

        Blocks until the node answers; the invocation's timeout keeps running
        meanwhile. Threads of the handler may call at the same time; each
        gets its own answer. Calls end with the invocation: a context kept
        for later, or a thread still calling after the handler returned, gets
        ``HostError("invocation_ended")``.

        Raises ``ctx.HostError`` (``.code``, ``.message``) when the node
        refuses or fails the call, ``TypeError`` or ``ValueError`` when
        ``args`` cannot be encoded as JSON (NaN and infinities included).
        """
        host = self._host
        if host is None:
            raise HostError("no_host", "host calls are not available here (%r was called)" % (op,))
        return host(op, args)

    def spawn(self, function: str, event: Any = None) -> Dict[str, Any]:
        """Starts an asynchronous invocation of ``function`` (a name) with
        ``event``, without waiting for it; returns the node's answer
        ``{"id": <the new invocation's id>}``. Host operation ``"spawn"``,
        args ``{"function", "event"}``."""
        return self.call("spawn", {"function": function, "event": event})

    def map(self, function: str, events: Iterable[Any], then: Optional[str] = None) -> str:
        """Fans out: one asynchronous invocation of ``function`` per event in
        ``events`` (any iterable; up to 200,000 small events, within the size
        limit of ``call``'s arguments), as one job. When every child has
        finished (succeeded, failed after its retries, or cancelled), the node
        invokes ``then`` (a function name), if given, once, with the event
        ``{"job": <id>, "count": <n>}``; it reads the children's results with
        ``ctx.results(job)``. Returns the job's id.

        Called from a child of another job, the first ``map`` hands this
        invocation's place in that job to the new one: the outer job counts
        it finished only when the new job (and its ``then``) has, so an outer
        fan-in waits for the whole tree. Host operation ``"map"``, args
        ``{"function", "events", "then"}``, answer ``{"job"}``."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        return self.call("map", {"function": function, "events": events, "then": then})["job"]

    def job(self, job: str) -> Dict[str, Any]:
        """A job's progress: a dict with ``status`` (``running``,
        ``cancelling``, ``finished``, ``cancelled``), ``total``, ``pending``,
        ``succeeded``, ``failed``, ``cancelled``. Host operation ``"job"``."""
        return self.call("job", {"job": job})

    def job_results(self, job: str, offset: int = 0, limit: int = 1000) -> List[Dict[str, Any]]:
        """One page of a job's results in child order from index ``offset``
        (at most ``limit``, up to 1000): dicts with ``index``, ``invocation``,
        ``status``, ``output`` (the child's result) and ``error`` (``type``,
        ``exception``, ``message``) for failed children. Children not finished
        yet are skipped. Host operation ``"job_results"``."""
        return self.call("job_results", {"job": job, "offset": offset, "limit": limit})["results"]

    def results(self, job: str, page: int = 1000) -> Iterator[Dict[str, Any]]:
        """Every finished child's result of ``job``, in child order (see
        ``job_results``), fetched a page at a time."""
        offset = 0
        while True:
            batch = self.job_results(job, offset, page)
            for r in batch:
                yield r
            if len(batch) < page:
                return
            offset = batch[-1]["index"] + 1

    def put_docs(self, category: str, docs: Iterable[DocItem]) -> List[str]:
        """Writes documents into ``category``, atomically and durably before
        it returns: ``docs`` is a list of ``(id, doc)`` pairs (``id`` None:
        the node makes one) or of documents. Writing an id again replaces it.
        Returns the ids. Host operation ``"put_docs"``, args ``{"category",
        "docs": [{"id", "doc"}]}``."""
        items = []
        for d in docs:
            if isinstance(d, tuple) and len(d) == 2:
                items.append({"id": d[0], "doc": d[1]})
            else:
                items.append({"id": None, "doc": d})
        return self.call("put_docs", {"category": category, "docs": items})["ids"]

    def put(self, category: str, id: Optional[str], doc: Any) -> str:
        """Writes one document (see ``put_docs``); returns its id."""
        return self.put_docs(category, [(id, doc)])[0]

    def get(self, category: str, id: str) -> Any:
        """The document ``id`` of ``category``, or None when there is none.
        Host operation ``"get_doc"``."""
        return self.call("get_doc", {"category": category, "id": id})["doc"]

    def send(
        self,
        queue: str,
        body: Any,
        delay: Union[int, float, timedelta, None] = None,
        dedup_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Sends a message with ``body`` (any JSON value) to ``queue``;
        returns the node's answer ``{"id": <the message's id>}``.

        ``delay`` postpones delivery: seconds (int or float) or a
        ``datetime.timedelta``; it goes to the node in milliseconds.
        ``dedup_id`` makes sending the same message twice send it once. Host
        operation ``"send"``, args ``{"queue", "body", "delay_ms",
        "dedup_id"}`` (absent options are ``null``)."""
        delay_ms = None
        if delay is not None:
            seconds = delay.total_seconds() if hasattr(delay, "total_seconds") else delay
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError("delay must be seconds (int or float) or a timedelta, not %r" % (delay,))
            if not seconds >= 0:
                raise ValueError("delay must be at least 0 seconds, not %r" % (delay,))
            delay_ms = int(round(seconds * 1000))
        return self.call("send", {"queue": queue, "body": body, "delay_ms": delay_ms, "dedup_id": dedup_id})

    # ---- the key-value store (docs/kv.md) ----

    @property
    def kv(self) -> "KeyValue":
        """The node's key-value store: ``ctx.kv.get``, ``.entry``, ``.set``,
        ``.incr``, ``.delete``, ``.list`` (the ``kv_*`` methods)."""
        return KeyValue(self)

    def kv_get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is absent or
        expired. Host operation ``"kv_get"``, args ``{"key"}``."""
        entry = self.kv_entry(key)
        return default if entry is None else entry["value"]

    def kv_entry(self, key: str) -> Optional[Dict[str, Any]]:
        """The entry of ``key`` (``{"expires_at_ms", "key", "updated_at_ms",
        "value", "version"}``), or None when it is absent or expired."""
        return self.call("kv_get", {"key": key})["entry"]

    def kv_set(
        self,
        key: str,
        value: Any,
        ttl: Union[int, float, timedelta, None] = None,
        nx: bool = False,
        xx: bool = False,
        version: Optional[int] = None,
    ) -> Optional[Dict[str, Any]]:
        """Stores ``value`` (any JSON value) under ``key``; returns the new
        entry, or None when the condition did not hold (nothing written).

        ``ttl``: seconds (int or float) or a ``timedelta`` after which the
        key vanishes (1 ms to 10 years); without it the key never expires.
        At most one condition: ``nx`` (only if absent), ``xx`` (only if
        present), ``version`` (only if at that version: compare-and-set).
        A cooldown is ``if ctx.kv.set(key, True, ttl=60, nx=True): ...``.
        Host operation ``"kv_set"``, args ``{"key", "value", "ttl_ms",
        "nx", "xx", "version"}``; answer ``{"entry", "written"}``."""
        ttl_ms = None
        if ttl is not None:
            seconds = ttl.total_seconds() if hasattr(ttl, "total_seconds") else ttl
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError("ttl must be seconds (int or float) or a timedelta, not %r" % (ttl,))
            ttl_ms = int(round(seconds * 1000))
        args = {"key": key, "value": value, "ttl_ms": ttl_ms, "nx": bool(nx), "xx": bool(xx), "version": version}
        answer = self.call("kv_set", args)
        return answer["entry"] if answer["written"] else None

    def kv_incr(self, key: str, by: int = 1) -> int:
        """Adds ``by`` to the integer value of ``key`` (absent counts as 0)
        and returns the new value; a value that is not an integer raises
        HostError ``not_an_integer``. Host operation ``"kv_incr"``."""
        return self.call("kv_incr", {"key": key, "by": by})["entry"]["value"]

    def kv_delete(self, key: str, version: Optional[int] = None) -> bool:
        """Deletes ``key`` (only at ``version`` when given); False when it
        was absent or at another version. Host operation ``"kv_delete"``."""
        return self.call("kv_delete", {"key": key, "version": version})["deleted"]

    def kv_list(self, prefix: str = "", limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """The entries whose key starts with ``prefix``, in key order (at
        most ``limit``), a page at a time. Host operation ``"kv_list"``,
        args ``{"prefix", "cursor", "limit"}``; answer ``{"entries",
        "next"}``."""
        left = limit
        cursor = None
        while left is None or left > 0:
            page = self.call("kv_list", {"prefix": prefix, "cursor": cursor, "limit": min(left or 1000, 1000)})
            for e in page["entries"]:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield e
            cursor = page["next"]
            if cursor is None:
                return

    # ---- blobs and byte ranges (docs/blobs.md) ----

    def blob(self, key: str) -> "Blob":
        """Blob ``key`` as it is now: ``.size``, ``.etag``, ``.read(offset,
        length)``, ``.open()`` (a read-only file), ``.bitfield(ops)`` and
        ``.write_at(offset, data)`` (fixed-size blobs). Reads come straight
        from the node's disk where it has the bytes in files. Raises
        ``HostError("blob_not_found")``."""
        from .blobs import Blob

        info = self.blob_open(key, 0, 0)["blob"]
        if info is None:
            raise HostError("blob_not_found", "blob `%s` not found" % key)
        return Blob(self, info)

    def blob_open(self, key: str, offset: int = 0, length: Optional[int] = None) -> Dict[str, Any]:
        """A blob's metadata and the files on this node holding ``length``
        bytes from ``offset``. Host operation ``"blob_open"``, args
        ``{"key", "offset", "length"}``, answer ``{"blob", "pieces"}``
        (``blob`` None when absent; ``pieces`` ``[{"length", "offset",
        "path"}]``, or None when the bytes are not in files here)."""
        return self.call("blob_open", {"key": key, "offset": offset, "length": length})

    def blob_read(self, key: str, offset: int, length: int, etag: Optional[str] = None) -> bytes:
        """Up to ``length`` (at most 4 MiB) bytes of a blob through the
        node, of the content ``etag`` when given (else ``HostError
        ("blob_changed")``). Host operation ``"blob_read"``, answer
        ``{"data", "etag"}`` (``data`` base64)."""
        import base64

        answer = self.call("blob_read", {"key": key, "offset": offset, "length": length, "etag": etag})
        return base64.b64decode(answer["data"])

    def blob_apply(self, key: str, ops: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Applies bit and byte operations to a fixed-size blob, all or
        nothing (see ``Blob.bitfield``). Host operation ``"blob_apply"``,
        answer ``{"etag", "results", "version"}``."""
        return self.call("blob_apply", {"key": key, "ops": list(ops)})

    def publish(
        self,
        channel: str,
        data: Any,
        blob: Optional[str] = None,
        ops: Optional[List[Dict[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """Publishes ``data`` (any JSON value) on ``channel``; every
        subscriber gets it, in order, with its offset. With ``blob`` and
        ``ops`` (the operations of ``Blob.bitfield``), the operations are
        applied to that fixed-size blob in the same atomic, durable step:
        both happen or neither, and messages of concurrent publishes on one
        blob are in the order their operations were applied. Host operation
        ``"publish"``, answer ``{"epoch", "offset"}`` plus ``"results"``
        (one per op) with ops."""
        if (blob is None) != (ops is None):
            raise ValueError("pass blob and ops together, or neither")
        args: Dict[str, Any] = {"channel": channel, "data": data}
        if blob is not None:
            args["blob"] = blob
            args["ops"] = list(ops or [])
        return self.call("publish", args)

    def channel_position(self, channel: str) -> Dict[str, Any]:
        """The epoch and offset of the last message on ``channel`` (offset
        0 when none). Read it before a snapshot (a blob, a KV value) that
        publishes keep up to date: the snapshot then holds every message up
        to that offset, and a client applies only later ones. Host
        operation ``"channel_position"``, answer ``{"epoch", "offset"}``."""
        return self.call("channel_position", {"channel": channel})

    def blob_create(self, key: str, size: int, if_absent: bool = False) -> Dict[str, Any]:
        """Creates a zero-filled fixed-size blob of ``size`` bytes (with
        ``if_absent``, keeps one that exists) and returns its metadata.
        Host operation ``"blob_create"``, answer ``{"blob", "created"}``."""
        return self.call("blob_create", {"key": key, "size": size, "if_absent": if_absent})["blob"]

    def blob_put(self, key: str, data: bytes, content_type: Optional[str] = None) -> Dict[str, Any]:
        """Stores ``data`` (within the size limit of a host call) as blob
        ``key``, replacing it whole; returns its metadata. Host operation
        ``"blob_put"``, args ``{"key", "data", "content_type"}`` (``data``
        base64), answer ``{"blob"}``."""
        import base64

        encoded = base64.b64encode(bytes(data)).decode("ascii")
        return self.call("blob_put", {"key": key, "data": encoded, "content_type": content_type})["blob"]

    def map_ranges(
        self,
        key: str,
        function: str,
        chunk_bytes: int = 8 << 20,
        records: Union[int, str] = "lines",
        then: Optional[str] = None,
        max_in_flight: Optional[int] = None,
        args: Any = None,
        windows: Optional[List[Tuple[int, int]]] = None,
    ) -> "Job":
        """Fans out over blob ``key``: one child of ``function`` per range
        of about ``chunk_bytes``, aligned to ``records`` (a record size in
        bytes, or ``"lines"``), so every record is read by exactly one
        child. A child's event is ``{"key", "offset", "length", "records",
        "size", "etag", "index", "args"}``; it reads its records with
        ``ctx.range_records(event)`` (or ``ctx.range_bytes(event)``). At
        most ``max_in_flight`` children run at once. ``then`` runs once
        after every child, like ``map``'s. Returns the job's id (a ``str``)
        with ``.wait(timeout)``, which returns ``then``'s result. With
        ``windows`` (``[(offset, length), ...]``), only those parts of the
        blob are cut into ranges, each on its own (for fixed-size records
        each must start and end on a record edge). Host operation
        ``"map_ranges"``, answer ``{"children", "job"}``."""
        from .blobs import Job

        answer = self.call("map_ranges", {
            "key": key, "function": function, "chunk_bytes": chunk_bytes, "records": records,
            "then": then, "max_in_flight": max_in_flight, "args": args,
            "windows": None if windows is None else [[int(o), int(n)] for o, n in windows],
        })
        return Job(answer["job"], self)

    def job_wait(self, job: str, timeout: Union[int, float, None] = None) -> Any:
        """Waits until ``job`` and its fan-in have finished (at most
        ``timeout`` seconds) and returns the fan-in's result (None without
        one). Raises ``HostError("job_failed")`` when the fan-in failed,
        ``HostError("timeout")``. Host operation ``"job_wait"``, args
        ``{"job", "timeout_ms"}``, answer ``{"error", "job", "output",
        "status"}``."""
        timeout_ms = None if timeout is None else int(timeout * 1000)
        answer = self.call("job_wait", {"job": str(job), "timeout_ms": timeout_ms})
        if answer["status"] in ("succeeded", "finished"):
            return answer["output"]
        error = answer.get("error") or {}
        raise HostError("job_failed", "job %s ended %s: %s" % (job, answer["status"], error.get("message", "")))

    def range_bytes(self, event: Dict[str, Any]):
        """The bytes of a ``map_ranges`` child's range (bytes-like)."""
        from .blobs import range_bytes

        return range_bytes(self, event)

    def range_records(self, event: Dict[str, Any]) -> Iterator[bytes]:
        """The records a ``map_ranges`` child owns, each read once: its
        fixed-size records, or the lines starting in its range (without
        their newline)."""
        from .blobs import range_records

        return range_records(self, event)

    def __repr__(self) -> str:
        return "Context(invocation_id=%r, function_name=%r, version=%r, attempt=%r)" % (
            self.invocation_id,
            self.function_name,
            self.version,
            self.attempt,
        )


class KeyValue:
    """``ctx.kv``: the key-value store, as methods named after the ``kv_*``
    methods of :class:`Context`."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, key: str, default: Any = None) -> Any:
        return self._ctx.kv_get(key, default)

    def entry(self, key: str) -> Optional[Dict[str, Any]]:
        return self._ctx.kv_entry(key)

    def set(self, key: str, value: Any, ttl: Union[int, float, timedelta, None] = None,
            nx: bool = False, xx: bool = False, version: Optional[int] = None) -> Optional[Dict[str, Any]]:
        return self._ctx.kv_set(key, value, ttl=ttl, nx=nx, xx=xx, version=version)

    def incr(self, key: str, by: int = 1) -> int:
        return self._ctx.kv_incr(key, by)

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        return self._ctx.kv_delete(key, version)

    def list(self, prefix: str = "", limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        return self._ctx.kv_list(prefix, limit)


if not TYPE_CHECKING and __name__ != "_shoal_runner.context":
    # Imported as `shoal.context` inside a Shoal worker: the runtime's copy
    # of this file made `ctx` and raises its errors. Hand out its classes,
    # so that `isinstance(ctx, Context)` and `except HostError` hold.
    _runtime = sys.modules.get("_shoal_runner.context")
    if _runtime is not None:
        Context = _runtime.Context  # noqa: F811
        HostError = _runtime.HostError  # noqa: F811
