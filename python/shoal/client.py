"""The Shoal client: functions, invocations, categories of documents, queries."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

from . import __version__
from ._http import Answer, Transport, dumps
from .archive import PathLike, pack_dir
from .errors import FunctionError, ShoalError
from .query import ProgressCallback, QueryStream
from .response import Response

DEFAULT_URL = "http://127.0.0.1:7700"
NDJSON = "application/x-ndjson"
JSON = "application/json"

#: Invocation statuses after which nothing changes any more.
FINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})


# Headers of an invoke answer that are the node's, not the function's.
_NODE_HEADERS = frozenset(("content-type", "content-length", "date", "connection", "keep-alive", "transfer-encoding"))


def _response_of(answer: Answer) -> Response:
    """The ``Response`` a function returned, from the node's answer."""
    headers = {}
    cookies = []
    for name, value in answer.resp.getheaders():
        lower = name.lower()
        if lower == "set-cookie":
            cookies.append(value)
        elif lower not in _NODE_HEADERS and not lower.startswith("shoal-"):
            headers[lower] = value
    content_type = answer.header("Content-Type") or "application/octet-stream"
    return Response._answered(answer.read(), content_type, answer.status, headers, cookies)


def _seg(s: Union[str, int]) -> str:
    """Percent-encodes one path segment."""
    return quote(str(s), safe="")


def _pieces(f: Any, size: int = 256 << 10) -> Iterator[bytes]:
    """A binary file's bytes in pieces of at most ``size`` (a text file is refused)."""
    while True:
        piece = f.read(size)
        if not piece:
            return
        if isinstance(piece, str):
            raise TypeError("the file is open in text mode; open it with 'rb'")
        yield piece


def _range_header(start: Optional[int], end: Optional[int]) -> Optional[Dict[str, str]]:
    """The ``Range`` header of ``data[start:end]`` (see ``Client.get_blob``)."""
    if start is None and end is None:
        return None
    if end is None:
        start = int(start)  # type: ignore[arg-type]
        return {"Range": f"bytes={start}-" if start >= 0 else f"bytes=-{-start}"}
    start = 0 if start is None else int(start)
    end = int(end)
    if start < 0 or end <= start:
        raise ValueError(f"the range [{start}:{end}] is empty or negative; give 0 <= start < end")
    return {"Range": f"bytes={start}-{end - 1}"}


def _default_token() -> Optional[str]:
    token = os.environ.get("SHOAL_TOKEN")
    if token:
        return token.strip()
    try:
        with open(os.path.join(".shoal", "admin.token"), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


class Client:
    """A connection to one Shoal node.

    ``url`` defaults to the ``SHOAL_URL`` environment variable, else
    ``http://127.0.0.1:7700``; ``host:port`` without a scheme means
    ``http://host:port``. ``token`` (the bearer secret) defaults to
    ``SHOAL_TOKEN``, else the admin token file ``./.shoal/admin.token`` a
    node started in the current directory writes. ``timeout`` (seconds)
    bounds every single network operation (connect, each read); ``None``
    waits as long as it takes, which long queries may need.

    Connections are kept alive and reused between calls. A client may be
    shared by threads: each call takes its own connection from a small pool.
    Every failure raises :class:`~shoal.ShoalError` (or its subclasses
    :class:`~shoal.FunctionError` and :class:`~shoal.QueryError`).
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: Optional[float] = None):
        url = url or os.environ.get("SHOAL_URL") or DEFAULT_URL
        # As the CLI: `host:port` and `localhost:7700` mean http://.
        if "://" not in url:
            url = f"http://{url}"
        if token is None:
            token = _default_token()
        self._http = Transport(url, token, timeout, f"shoal-python/{__version__}")

    @property
    def url(self) -> str:
        """The node's base URL."""
        return self._http.url

    def close(self) -> None:
        """Closes the kept-alive connections (a later call opens new ones)."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ plumbing

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: Optional[str] = None,
        accept: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Answer:
        answer = self._http.open(method, path, body, content_type, accept, headers)
        if not answer.ok:
            raise answer.error()
        return answer

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else dumps(body)
        return self._open(method, path, data, JSON if data is not None else None).json()

    # ------------------------------------------------------------------ node

    def health(self) -> Dict[str, Any]:
        """The node's health: ``{"status": "ok", "version": ...}`` (needs no token)."""
        return self._json("GET", "/healthz")

    def nodes(self) -> List[Dict[str, Any]]:
        """Every node sharing the node's store, the one answering first
        (``"this": True``): ``id``, ``address``, ``version``,
        ``started_at_ms``, ``last_seen_ms``, ``running``, ``workers``,
        ``load`` and ``state`` (``"alive"``, or ``"lost"`` once it has missed
        three heartbeats). Needs a reader token."""
        return self._json("GET", "/v1/nodes")["nodes"]

    # ------------------------------------------------------------------ functions

    def deploy(self, directory: PathLike, dry_run: bool = False) -> Dict[str, Any]:
        """Deploys the function in ``directory`` (``shoal.toml`` and code) as a
        new version; returns the version's description (the FunctionView:
        ``name``, ``version``, ``handler``, ``timeout_ms``, ``memory_mb``,
        ``concurrency``, ``retries``, ``code_sha256``, ...).

        Hidden files, ``__pycache__`` and ``venv`` are not uploaded. A bad
        manifest, or code that does not load in a real worker, raises
        ShoalError ``invalid_function`` (with the traceback; the live version
        keeps serving); a failed pip install of ``requirements.txt`` raises
        ``deploy_failed``. The same code as the live version changes nothing
        (``"unchanged": true``). ``dry_run=True`` only checks the code.
        """
        archive = pack_dir(directory)
        path = "/v1/functions?dry_run=true" if dry_run else "/v1/functions"
        return self._open("POST", path, archive, "application/x-tar").json()

    def versions(self, name: str) -> Dict[str, Any]:
        """A function's versions: ``{"name", "live", "aliases": {alias:
        version}, "versions": [...]}`` (oldest first; each with
        ``deployed_at_ms``, ``code_sha256`` and who deployed it)."""
        return self._json("GET", f"/v1/functions/{_seg(name)}/versions")

    def rollback(self, name: str, version: Optional[int] = None) -> Dict[str, Any]:
        """Makes ``version`` (default: the one before the live one) live at
        once; returns its description."""
        body = {} if version is None else {"version": version}
        return self._json("POST", f"/v1/functions/{_seg(name)}/rollback", body)

    def set_alias(self, name: str, alias: str, version: int) -> Dict[str, Any]:
        """Points ``name@alias`` at ``version`` (moving the alias if it
        exists); ``invoke("name@alias", ...)`` then runs it."""
        path = f"/v1/functions/{_seg(name)}/aliases/{_seg(alias)}"
        return self._json("PUT", path, {"version": version})

    def remove_alias(self, name: str, alias: str) -> None:
        """Removes an alias."""
        self._json("DELETE", f"/v1/functions/{_seg(name)}/aliases/{_seg(alias)}")

    def functions(self) -> List[Dict[str, Any]]:
        """The live version of every deployed function."""
        return self._json("GET", "/v1/functions")["functions"]

    def function(self, name: str) -> Dict[str, Any]:
        """The live version of one function (ShoalError ``function_not_found``)."""
        return self._json("GET", f"/v1/functions/{_seg(name)}")

    def remove_function(self, name: str) -> None:
        """Removes a function with all its versions; its queued asynchronous
        invocations fail with ``load_failed``."""
        self._json("DELETE", f"/v1/functions/{_seg(name)}")

    # ------------------------------------------------------------------ invocations

    def invoke(self, name: str, event: Any = None) -> Any:
        """Calls a function and waits for it; returns its return value.

        ``event`` is any JSON-serializable value (``None`` sends an empty
        body, which the function receives as ``{}``). When the function
        fails, raises :class:`~shoal.FunctionError` with its ``type``,
        ``exception``, ``message``, ``traceback`` and ``invocation_id``.
        A function that returned a :class:`~shoal.Response` gives a
        ``Response``: its ``body`` (bytes), ``content_type``, ``status``
        (whatever it is, 404 included) and ``headers`` (its own, in
        lowercase, without the node's ``date``, ``content-length`` and
        ``shoal-*``).
        """
        body = b"" if event is None else dumps(event)
        answer = self._http.open("POST", f"/v1/functions/{_seg(name)}/invoke", body, JSON)
        if answer.header("Shoal-Result") == "response":
            return _response_of(answer)
        if not answer.ok:
            raise answer.error()
        failed = answer.header("Shoal-Function-Error")
        value = answer.json()
        if failed is not None:
            error = value.get("error") if isinstance(value, dict) else None
            if not isinstance(error, dict):
                error = {"type": failed, "message": str(value)}
            raise FunctionError(value.get("invocation_id") or answer.header("Shoal-Invocation-Id"), error)
        return value

    def invoke_async(self, name: str, event: Any = None) -> str:
        """Queues an invocation (run with retries, durable across restarts);
        returns its id once it is durably queued. See :meth:`wait`."""
        body = b"" if event is None else dumps(event)
        return self._open("POST", f"/v1/functions/{_seg(name)}/invoke?mode=async", body, JSON).json()["id"]

    def invocation(self, id: str) -> Dict[str, Any]:
        """An invocation's record: ``status`` (``queued``, ``running``,
        ``succeeded``, ``failed``, ``timed_out``), ``output`` or ``error``,
        ``attempts``, timings and ``billed_gb_seconds``."""
        return self._json("GET", f"/v1/invocations/{_seg(id)}")

    def logs(self, id: str) -> str:
        """What an invocation printed (stdout and stderr)."""
        return self._json("GET", f"/v1/invocations/{_seg(id)}/logs")["logs"]

    def invocations(
        self,
        function: Optional[str] = None,
        status: Optional[str] = None,
        mode: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Dict[str, Any]:
        """A page of invocations, newest first: ``{"invocations": [...],
        "next"?}``, each a summary (id, function, version, mode, status,
        times, and the error's type and message when it failed). Filters
        combine; ``since``/``until`` take ``"1h"``, ``"7d"``, an RFC 3339
        time or epoch milliseconds. Pass a page's ``next`` as ``cursor`` for
        the page after it."""
        given = (
            ("function", function),
            ("status", status),
            ("mode", mode),
            ("since", since),
            ("until", until),
            ("limit", limit),
            ("cursor", cursor),
        )
        params = {k: str(v) for k, v in given if v is not None}
        path = "/v1/invocations" + (f"?{urlencode(params)}" if params else "")
        return self._json("GET", path)

    def wait(self, id: str, timeout: float = 60.0) -> Dict[str, Any]:
        """Polls an invocation until it is final (succeeded, failed or
        timed_out) and returns its record; raises ``TimeoutError`` when it is
        not final after ``timeout`` seconds. A failure does not raise: check
        the record's ``status`` and ``error``."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            record = self.invocation(id)
            if record.get("status") in FINAL_STATUSES:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"invocation {id} is still {record.get('status')} after {timeout} s")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------------ tokens

    def create_token(
        self,
        role: str,
        name: Optional[str] = None,
        channels: Optional[List[str]] = None,
        user: Optional[str] = None,
        scopes: Optional[List[str]] = None,
    ) -> Dict[str, Any]:
        """Creates an API token (admin only): ``role`` is ``reader``,
        ``invoker``, ``developer`` or ``admin``. ``user`` makes it that
        user's token (its role at most the user's). ``scopes`` (e.g.
        ``["function:resize-*", "channel:subscribe:board.*"]``) limit it to
        the resources they name; ``channels`` (``["subscribe:board.*"]``) is
        the older form of channel scopes. The answer's ``token`` is the
        secret, shown only this once."""
        body: Dict[str, Any] = {"role": role}
        if name is not None:
            body["name"] = name
        if channels:
            body["channels"] = list(channels)
        if user is not None:
            body["user"] = user
        if scopes:
            body["scopes"] = list(scopes)
        return self._json("POST", "/v1/tokens", body)

    # ------------------------------------------------------------------ users

    def create_user(self, name: str, role: str) -> Dict[str, Any]:
        """Adds a user with a role, the most any of its tokens may have
        (admin only)."""
        return self._json("POST", "/v1/users", {"name": name, "role": role})

    def users(self) -> List[Dict[str, Any]]:
        """Every user with its tokens (admin only)."""
        return self._json("GET", "/v1/users")["users"]

    def user(self, name: str) -> Dict[str, Any]:
        """A user with its tokens (admin only)."""
        return self._json("GET", f"/v1/users/{_seg(name)}")

    def set_user_role(self, name: str, role: str) -> Dict[str, Any]:
        """Changes a user's role; its tokens act with at most the new one."""
        return self._json("PATCH", f"/v1/users/{_seg(name)}", {"role": role})

    def delete_user(self, name: str) -> Dict[str, Any]:
        """Removes a user and revokes its tokens; answers
        ``{"deleted": true, "revoked_tokens": [...]}``."""
        return self._json("DELETE", f"/v1/users/{_seg(name)}")

    def tokens(self) -> List[Dict[str, Any]]:
        """Every token, without secrets (admin only)."""
        return self._json("GET", "/v1/tokens")["tokens"]

    def revoke_token(self, id: str) -> None:
        """Revokes a token (admin only)."""
        self._json("DELETE", f"/v1/tokens/{_seg(id)}")

    # ------------------------------------------------------------------ channels

    def configure_channel(self, name: str, **settings: Any) -> Dict[str, Any]:
        """Changes a channel's settings (admin): ``public``, ``history_len``,
        ``history_age_s``, ``coalesce_ms``; those not given keep their
        values. Returns the channel (settings, ``epoch``, ``offset``,
        ``presence``)."""
        return self._json("PUT", f"/v1/channels/{_seg(name)}", settings)

    def channel(self, name: str) -> Dict[str, Any]:
        """A channel's settings, position (``epoch``, ``offset``) and presence."""
        return self._json("GET", f"/v1/channels/{_seg(name)}")

    def publish(self, channel: str, data: Any) -> Dict[str, Any]:
        """Publishes ``data`` (any JSON value; ``bytes`` are sent as a binary
        message) on ``channel``. Returns ``{"epoch", "offset"}``."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            answer = self._open(
                "POST", f"/v1/channels/{_seg(channel)}/messages", bytes(data), "application/octet-stream"
            )
            return answer.json()
        return self._json("POST", f"/v1/channels/{_seg(channel)}/messages", data)

    def subscribe(self, channel: str, since: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Follows a channel's events, resuming after ``since`` (an event's
        ``id``, ``"EPOCH:OFFSET"``; or a bare offset, ``"0"`` for the whole
        history). Yields ``{"event", "id", "data"}``: ``event`` is
        ``"ready"``, ``"message"``, ``"binary"`` or ``"reset"``; ``data`` is
        the decoded JSON (bytes for ``"binary"``). After a ``"reset"``,
        reload your state: the messages between are not in the history.
        Close the generator to stop; the client's timeout should exceed 15 s
        (the node's keep-alive interval)."""
        path = f"/v1/channels/{_seg(channel)}/events"
        if since is not None:
            path += "?" + urlencode({"since": since})
        answer = self._open("GET", path, accept="text/event-stream")
        event: Dict[str, Any] = {}
        data: List[str] = []
        for raw in answer.lines():
            line = raw.decode("utf-8")
            if not line:
                if data:
                    kind = event.get("event", "message")
                    text = "\n".join(data)
                    value = base64.b64decode(text) if kind == "binary" else json.loads(text)
                    yield {"event": kind, "id": event.get("id"), "data": value}
                event, data = {}, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field in ("event", "id"):
                event[field] = value

    # ------------------------------------------------------------------ categories

    def create_category(self, name: str, shards: Optional[int] = None) -> Dict[str, Any]:
        """Creates a category split into ``shards`` shards (the node's default
        when ``None``); returns its description. Raises ShoalError
        ``category_exists`` (409) when it exists. Writing to a missing
        category creates it with the default shard level, so this is only
        needed to choose the level."""
        body: Dict[str, Any] = {"name": name}
        if shards is not None:
            body["shards"] = shards
        return self._json("POST", "/v1/categories", body)

    def categories(self) -> List[Dict[str, Any]]:
        """Every category with its statistics, sorted by name."""
        return self._json("GET", "/v1/categories")["categories"]

    def category(self, name: str) -> Dict[str, Any]:
        """One category: ``name``, ``shards``, ``docs``, ``bytes``,
        ``created_at_ms`` and ``shard_stats`` (``shard``, ``slot``, ``docs``,
        ``bytes`` per shard). ShoalError ``category_not_found`` if missing."""
        return self._json("GET", f"/v1/categories/{_seg(name)}")

    def delete_category(self, name: str, force: bool = False) -> None:
        """Deletes a category. One that holds documents only with
        ``force=True`` (ShoalError ``force_required`` otherwise, and nothing
        is deleted)."""
        query = "?force=true" if force else ""
        self._json("DELETE", f"/v1/categories/{_seg(name)}{query}")

    # ------------------------------------------------------------------ documents

    def write(
        self,
        category: str,
        docs: Iterable[Any],
        batch_size: int = 10000,
        *,
        batch_bytes: int = 32 << 20,
        return_ids: bool = True,
    ) -> Union[List[str], int]:
        """Writes documents to a category (created with the default shard
        level if missing) and returns their ids in order.

        ``docs`` is any iterable of JSON-serializable values, including a
        generator: it is consumed lazily and sent as NDJSON in batches of at
        most ``batch_size`` documents and about ``batch_bytes`` bytes, so any
        number of documents can be written in bounded memory. A document that
        is an object with an ``"id"`` (string or integer) is stored under
        that id, replacing an earlier one; other documents get a generated id.

        Atomicity: **each batch is atomic** (all of its documents are stored,
        or none), but a call is atomic only when all its documents fit in one
        batch. If a batch fails, the batches before it stay written and
        ShoalError is raised (e.g. ``invalid_input``,
        ``document_too_large``); use explicit ids to make a retry idempotent.

        With ``return_ids=False`` the node does not send the ids back and the
        number of documents written is returned instead.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if isinstance(docs, (str, bytes, dict)):
            raise TypeError("docs must be an iterable of documents; wrap a single document in a list")
        path = f"/v1/categories/{_seg(category)}/docs"
        if not return_ids:
            path += "?return_ids=false"
        ids: List[str] = []
        written = 0
        lines: List[bytes] = []
        size = 0

        def flush() -> None:
            nonlocal written, size
            if not lines:
                return
            answer = self._open("POST", path, b"".join(lines), NDJSON).json()
            written += int(answer.get("written", 0))
            if return_ids:
                ids.extend(str(i) for i in answer.get("ids", []))
            lines.clear()
            size = 0

        for doc in docs:
            line = dumps(doc) + b"\n"
            if lines and (len(lines) >= batch_size or size + len(line) > batch_bytes):
                flush()
            lines.append(line)
            size += len(line)
        flush()
        return ids if return_ids else written

    def get(self, category: str, id: Union[str, int]) -> Any:
        """One document (ShoalError ``document_not_found`` or ``category_not_found``)."""
        return self._json("GET", f"/v1/categories/{_seg(category)}/docs/{_seg(id)}")

    def put(self, category: str, id: Union[str, int], doc: Any) -> str:
        """Stores ``doc`` under ``id``, replacing the document there if any
        (creating the category if missing); returns the id."""
        answer = self._json("PUT", f"/v1/categories/{_seg(category)}/docs/{_seg(id)}", doc)
        got = answer.get("ids") or [id]
        return str(got[0])

    def delete(self, category: str, id: Union[str, int]) -> None:
        """Deletes one document (ShoalError ``document_not_found`` when it is not there)."""
        self._json("DELETE", f"/v1/categories/{_seg(category)}/docs/{_seg(id)}")

    def scan(self, category: str, page_size: int = 1000) -> Iterator[Tuple[str, Any]]:
        """Every document of a category as ``(id, doc)`` pairs, fetched page by
        page (shard by shard, in id order within a shard). Documents written
        during a scan may or may not be seen; none is seen twice."""
        cursor: Optional[str] = None
        base = f"/v1/categories/{_seg(category)}/docs"
        while True:
            params: Dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = self._json("GET", f"{base}?{urlencode(params)}")
            for entry in page["docs"]:
                yield entry["id"], entry["doc"]
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    # ------------------------------------------------------------------ queries

    def query_iter(
        self,
        category: str,
        function: str,
        skip_errors: bool = False,
        *,
        on_progress: Optional[ProgressCallback] = None,
    ) -> QueryStream:
        """Starts a query and returns a :class:`~shoal.QueryStream` that yields
        the mapped values as they arrive, without holding them all.

        The node runs the function's ``map`` (or ``map_batch``) over every
        document, next to the data, all shards in parallel; a module with
        ``reduce`` is reduced on the node and the stream yields nothing (see
        ``stream.result``). After the iteration, ``stream.stats`` holds the
        summary. ``on_progress`` is called with ``{"docs_done",
        "docs_total", "shards"}`` as the query advances (the answer is then
        streamed as server-sent events).

        Errors known before the query starts (missing category or function)
        raise ShoalError here; a failure while it runs raises
        :class:`~shoal.QueryError` from the iteration.
        """
        body = dumps({"function": function, "skip_errors": bool(skip_errors)})
        sse = on_progress is not None
        accept = "text/event-stream" if sse else NDJSON
        answer = self._open("POST", f"/v1/categories/{_seg(category)}/query", body, JSON, accept)
        ctype = (answer.header("Content-Type") or "").lower()
        return QueryStream(answer, sse and ctype.startswith("text/event-stream"), on_progress)

    def query(
        self,
        category: str,
        function: str,
        skip_errors: bool = False,
        *,
        with_stats: bool = False,
        on_progress: Optional[ProgressCallback] = None,
    ) -> Any:
        """Maps a deployed function over every document of a category, in
        parallel over its shards, and combines the results.

        Returns the reduced value when the function's module defines
        ``reduce`` (``None`` when no document gave a value), else the list of
        mapped values in document order (``None`` results of ``map`` are
        left out). With ``with_stats=True`` returns ``(result, stats)`` where
        ``stats`` is the query's summary (``docs``, ``reduced``, ``values``,
        ``errors``, ``failures``, ``cached_shards``, ``shards``,
        ``duration_ms``).

        A document whose ``map`` raises fails the query with
        :class:`~shoal.QueryError` (``doc_id``, ``error``); with
        ``skip_errors=True`` such documents are counted in ``stats["errors"]``
        and the first ones listed in ``stats["failures"]`` instead.
        """
        with self.query_iter(category, function, skip_errors, on_progress=on_progress) as stream:
            result, stats = stream.collect()
        return (result, stats) if with_stats else result


    # ------------------------------------------------------------------ queues

    def put_queue(self, name: str, **settings: Any) -> Dict[str, Any]:
        """Creates a queue or changes its settings: ``max_attempts``,
        ``visibility_timeout``, ``retry_delay``, ``dedup_window`` (durations
        like ``"30s"``). Returns the QueueView (depth, counters, subscriber)."""
        return self._json("PUT", f"/v1/queues/{_seg(name)}", settings)

    def queue(self, name: str) -> Dict[str, Any]:
        return self._json("GET", f"/v1/queues/{_seg(name)}")

    def send(self, queue: str, *bodies: Any, delay: Optional[str] = None) -> List[str]:
        """Sends messages (any JSON values); returns their ids."""
        messages = [{"body": b, "delay": delay} for b in bodies]
        return self._json("POST", f"/v1/queues/{_seg(queue)}/messages", {"messages": messages})["ids"]

    def dead_letters(self, queue: str, limit: int = 1000) -> List[Dict[str, Any]]:
        """The queue's dead letters (first ``limit``), each with its body and error."""
        return self._json("GET", f"/v1/queues/{_seg(queue)}/dead-letters?limit={int(limit)}")["dead_letters"]

    def put_limiter(self, name: str, per_second: float, burst: int = 1) -> Dict[str, Any]:
        """Creates or changes a shared rate limiter (takes effect at once)."""
        return self._json("PUT", f"/v1/limiters/{_seg(name)}", {"per_second": per_second, "burst": burst})

    # ------------------------------------------------------------------ key-value store

    def kv_get(self, key: str) -> Dict[str, Any]:
        """A key's entry: ``{"key", "value", "version", "updated_at_ms"}``
        and ``"expires_at_ms"`` when it expires. An absent (or expired) key
        raises ShoalError ``key_not_found``."""
        return self._json("GET", f"/v1/kv/{_seg(key)}")

    def kv_set(
        self,
        key: str,
        value: Any,
        ttl: Union[str, float, None] = None,
        nx: bool = False,
        xx: bool = False,
        version: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Stores ``value`` (any JSON value) under ``key``; returns the entry.

        ``ttl``: a duration (``"30s"``, ``"500ms"``, or seconds as a number)
        after which the key vanishes; without it the key never expires.
        At most one condition: ``nx`` (only if absent), ``xx`` (only if
        present), ``version`` (only if at that version: compare-and-set).
        A condition that fails raises ShoalError ``key_conflict`` (status
        409), whose message names the current version."""
        query = []
        if ttl is not None:
            query.append(("ttl", ttl if isinstance(ttl, str) else f"{int(round(float(ttl) * 1000))}ms"))
        if nx:
            query.append(("nx", "true"))
        if xx:
            query.append(("xx", "true"))
        if version is not None:
            query.append(("version", str(int(version))))
        path = f"/v1/kv/{_seg(key)}"
        if query:
            path += "?" + urlencode(query)
        return self._open("PUT", path, dumps(value), JSON).json()

    def kv_incr(self, key: str, by: int = 1) -> Dict[str, Any]:
        """Adds ``by`` to the key's integer value (an absent key counts as
        0); returns the entry. A value that is not an integer raises
        ShoalError ``not_an_integer``."""
        return self._json("POST", f"/v1/kv/{_seg(key)}/incr?by={int(by)}")

    def kv_delete(self, key: str, version: Optional[int] = None) -> None:
        """Deletes a key (only at ``version`` when given: another version
        raises ``key_conflict``); an absent key raises ``key_not_found``."""
        path = f"/v1/kv/{_seg(key)}"
        if version is not None:
            path += f"?version={int(version)}"
        self._open("DELETE", path)

    def kv_list(self, prefix: str = "", limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Entries whose key starts with ``prefix``, in key order (at most
        ``limit``), fetched a page at a time."""
        left = limit
        cursor: Optional[str] = None
        while left is None or left > 0:
            query = [("prefix", prefix), ("limit", str(min(left or 1000, 1000)))]
            if cursor is not None:
                query.append(("cursor", cursor))
            page = self._json("GET", "/v1/kv?" + urlencode(query))
            for e in page["entries"]:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield e
            cursor = page.get("next")
            if cursor is None:
                return

    # ------------------------------------------------------------------ blobs

    def put_blob(self, key: str, data: Any, content_type: Optional[str] = None) -> Dict[str, Any]:
        """Uploads a blob, replacing any blob under ``key``; returns its
        metadata (``key``, ``size``, ``sha256``, ``etag``, ``version``...).

        ``data`` is ``bytes``, a path (``str`` or ``os.PathLike``), a binary
        file object, or an iterable of ``bytes``: files and iterables are
        streamed (sent chunked as they are read, never held whole), so any
        size uploads in constant memory. The node stores the blob once all
        of it has arrived, or not at all."""
        path = f"/v1/blobs/{_seg(key)}"
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._open("PUT", path, bytes(data), content_type).json()
        if isinstance(data, (str, os.PathLike)):
            with open(data, "rb") as f:
                return self._open("PUT", path, _pieces(f), content_type).json()
        if hasattr(data, "read"):
            return self._open("PUT", path, _pieces(data), content_type).json()
        if isinstance(data, Iterable):
            return self._open("PUT", path, (bytes(p) for p in data if p), content_type).json()
        raise TypeError(f"data must be bytes, a path, a binary file or an iterable of bytes, not {type(data).__name__}")

    def get_blob(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        """A blob's bytes, or those of ``data[start:end]`` (``end``
        excluded, as in slicing); a negative ``start`` without ``end`` is
        the last ``-start`` bytes. Only the range travels. A ``start`` at
        or past the end raises ShoalError ``range_not_satisfiable`` (416);
        a missing blob ``blob_not_found``."""
        answer = self._open("GET", f"/v1/blobs/{_seg(key)}", headers=_range_header(start, end))
        return answer.read()

    def download_blob(self, key: str, path: PathLike, start: Optional[int] = None, end: Optional[int] = None) -> int:
        """Streams a blob (or ``data[start:end]``, see ``get_blob``) into the
        file at ``path`` and returns the number of bytes written. The file
        is written beside as ``path.part`` and renamed into place once
        complete, so a failed download leaves ``path`` as it was."""
        answer = self._open("GET", f"/v1/blobs/{_seg(key)}", headers=_range_header(start, end))
        target = os.fspath(path)
        part = target + ".part"
        written = 0
        try:
            with open(part, "wb") as f:
                for piece in answer.pieces():
                    f.write(piece)
                    written += len(piece)
                f.flush()
                os.fsync(f.fileno())
            expected = answer.header("Content-Length")
            if expected is not None and int(expected) != written:
                raise ShoalError(None, "unreachable", f"the download ended after {written} of {expected} bytes")
            os.replace(part, target)
        except BaseException:
            answer.close()
            try:
                os.unlink(part)
            except OSError:
                pass
            raise
        return written

    def blob_meta(self, key: str) -> Dict[str, Any]:
        """A blob's metadata: ``key``, ``size``, ``etag``, ``version``,
        ``fixed_size``, ``created_at_ms``, and ``sha256``/``content_type``
        when it has them. A missing blob raises ShoalError
        ``blob_not_found``."""
        page = self._json("GET", "/v1/blobs?" + urlencode([("prefix", key), ("limit", "1")]))
        for b in page["blobs"]:
            if b["key"] == key:
                return b
        raise ShoalError(404, "blob_not_found", f"blob `{key}` not found")

    def list_blobs(self, prefix: str = "", limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Blobs whose key starts with ``prefix``, in key order (at most
        ``limit``), each as ``blob_meta`` gives it, fetched a page at a
        time."""
        left = limit
        cursor: Optional[str] = None
        while left is None or left > 0:
            query = [("prefix", prefix), ("limit", str(min(left or 1000, 1000)))]
            if cursor is not None:
                query.append(("cursor", cursor))
            page = self._json("GET", "/v1/blobs?" + urlencode(query))
            for b in page["blobs"]:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield b
            cursor = page.get("next")
            if cursor is None:
                return

    def delete_blob(self, key: str) -> None:
        """Deletes a blob; a missing one raises ShoalError ``blob_not_found``."""
        self._open("DELETE", f"/v1/blobs/{_seg(key)}").read()

    def create_fixed_blob(self, key: str, size: int, if_absent: bool = False) -> Dict[str, Any]:
        """Creates a zero-filled blob of ``size`` bytes (1 B to 256 MiB) that
        ``bitfield`` can change, replacing any blob under ``key``; with
        ``if_absent``, an existing blob is kept and ShoalError
        ``precondition_failed`` (412) is raised."""
        headers = {"If-None-Match": "*"} if if_absent else None
        path = f"/v1/blobs/{_seg(key)}?fixed_size={int(size)}"
        return self._open("PUT", path, b"", headers=headers).json()

    def bitfield(self, key: str, ops: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
        """Applies a batch of operations to a fixed-size blob, all or
        nothing, like Redis ``BITFIELD``; returns ``{"results", "version",
        "etag"}`` with one result per operation (``get``: the value,
        ``set``: the old value, ``incrby``: the new value, ``None`` for
        ``write_at`` and an ``overflow: "fail"`` that stopped).

        Operations are the API's dicts: ``{"op": "set", "type": "u4",
        "offset": "#12", "value": 7, "overflow": "sat"}`` (``"#N"`` is the
        N-th field of the type's width, a number a bit offset), ``{"op":
        "incrby", ..., "by": -1}``, ``{"op": "get", ...}``; for
        ``write_at``, ``{"op": "write_at", "offset": BYTE_OFFSET, "data":
        b"..."}`` (``data`` bytes are sent as ``data_base64``). An invalid
        operation raises ShoalError ``invalid_input`` and changes nothing."""
        wire = []
        for op in ops:
            op = dict(op)
            data = op.pop("data", None)
            if data is not None:
                op["data_base64"] = base64.b64encode(bytes(data)).decode("ascii")
            wire.append(op)
        return self._json("POST", f"/v1/blobs/{_seg(key)}/bitfield", {"ops": wire})

    # ------------------------------------------------------------------ jobs

    def start_job(self, function: str, events: List[Any], then: Optional[str] = None) -> str:
        """Starts a job: one asynchronous invocation of ``function`` per event,
        then ``then`` once all have finished. Returns the job id."""
        return self._json("POST", "/v1/jobs", {"function": function, "events": list(events), "then": then})["job"]

    def job(self, id: str) -> Dict[str, Any]:
        """A job: ``status``, ``counts``, ``progress``, ``failures``, ``jobs`` (the tree below)."""
        return self._json("GET", f"/v1/jobs/{_seg(id)}")

    def job_results(self, id: str) -> Iterator[Dict[str, Any]]:
        """Every finished child's result, in child order, a page at a time."""
        offset = 0
        while True:
            page = self._json("GET", f"/v1/jobs/{_seg(id)}/results?offset={offset}&limit=1000")
            yield from page["results"]
            if page.get("next") is None:
                return
            offset = page["next"]

    def cancel_job(self, id: str) -> Dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{_seg(id)}/cancel")

    def wait_job(self, id: str, timeout: float = 600.0) -> Dict[str, Any]:
        """Polls a job until it is ``finished`` or ``cancelled``; returns it."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            job = self.job(id)
            if job["status"] in ("finished", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {id} still {job['status']} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


__all__ = ["Client", "DEFAULT_URL", "FINAL_STATUSES"]
