"""Reading a query's streamed answer (NDJSON, or SSE when following progress)."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ._http import Answer
from .errors import QueryError, ShoalError

ProgressCallback = Callable[[Dict[str, Any]], None]


class QueryStream:
    """A running query: iterate it for the mapped values, as they arrive.

    Modules without ``reduce`` yield one value per document (``None`` results
    of ``map`` are left out), in document order: shard 0 first, then shard 1,
    ...; within a shard in id order. Modules with ``reduce`` yield nothing and
    leave the reduced value in :attr:`result`.

    Once the iteration has ended, :attr:`stats` holds the query's summary
    (the ``done`` object: ``docs``, ``reduced``, ``result``, ``values``,
    ``errors``, ``failures``, ``cached_shards``, ``shards``, ``duration_ms``).
    A failure of the query raises :class:`~shoal.QueryError` from the
    iteration.

    Values are read from the network as they are iterated, so a result far
    larger than memory can be processed. Stopping early (``close()``, leaving
    a ``with`` block, dropping the stream) closes the connection, which ends
    the query on the node.
    """

    def __init__(self, answer: Answer, sse: bool, on_progress: Optional[ProgressCallback]):
        self._answer = answer
        self._sse = sse
        self._on_progress = on_progress
        self._events = self._read_events()
        self._finished = False
        self.stats: Optional[Dict[str, Any]] = None
        """The ``done`` summary, once the stream has ended (else ``None``)."""

    @property
    def result(self) -> Any:
        """The reduced value (``None`` without ``reduce``, when no document
        gave a value, or before the stream has ended)."""
        return (self.stats or {}).get("result")

    @property
    def reduced(self) -> bool:
        """True when the module defines ``reduce`` (known once the stream ended)."""
        return bool((self.stats or {}).get("reduced"))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        for kind, payload in self._events:
            if kind == "value":
                return payload
            if kind == "progress":
                if self._on_progress is not None:
                    self._on_progress(payload)
                continue
            if kind == "done":
                self.stats = payload
                self._end()
                raise StopIteration
            if kind == "error":
                self._end()
                raise QueryError(payload if isinstance(payload, dict) else {"message": str(payload)}, self._answer.status)
        self._end()
        raise ShoalError(None, "bad_answer", "the query's answer ended before its final `done` or `error` line")

    def _end(self) -> None:
        self._finished = True
        # Reads the rest of the stream (nothing after the final line), so the
        # connection can serve the next call.
        for _ in self._events:
            pass

    def close(self) -> None:
        """Stops reading; an unfinished query's connection is closed."""
        self._finished = True
        self._events.close()
        self._answer.close()  # also when iteration never started

    def __enter__(self) -> "QueryStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def collect(self) -> Tuple[Any, Dict[str, Any]]:
        """Reads the whole stream: ``(result, stats)`` where ``result`` is the
        reduced value for modules with ``reduce``, else the list of values."""
        values = list(self)
        stats = self.stats or {}
        return (stats.get("result") if stats.get("reduced") else values), stats

    def _read_events(self) -> Iterator[Tuple[str, Any]]:
        lines = self._answer.lines()
        try:
            if self._sse:
                yield from _sse_events(lines)
            else:
                yield from _ndjson_events(lines)
        finally:
            lines.close()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ShoalError(None, "bad_answer", f"unreadable line in the query's answer: {raw[:200]!r}") from None


def _ndjson_events(lines: Iterator[bytes]) -> Iterator[Tuple[str, Any]]:
    for raw in lines:
        if not raw.strip():
            continue
        obj = _decode(raw)
        if not isinstance(obj, dict) or len(obj) != 1:
            raise ShoalError(None, "bad_answer", f"unexpected line in the query's answer: {raw[:200]!r}")
        ((kind, payload),) = obj.items()
        yield kind, payload


def _sse_events(lines: Iterator[bytes]) -> Iterator[Tuple[str, Any]]:
    event = "message"
    data: list = []
    for raw in lines:
        if not raw:
            if data:
                yield event, _decode(b"\n".join(data))
            event, data = "message", []
            continue
        if raw.startswith(b":"):
            continue  # a comment (keep-alive)
        field, _, value = raw.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            event = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value)
    if data:
        yield event, _decode(b"\n".join(data))
