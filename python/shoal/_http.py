"""HTTP plumbing: a small pool of keep-alive connections (http.client).

A connection goes back to the pool only once its answer has been read to the
end; an answer abandoned half-way (a query stream the caller stopped
iterating) closes its connection instead, so the next call never reads the
rest of someone else's answer.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from .errors import ShoalError

_MAX_IDLE = 8

# Errors that mean "this kept-alive connection was closed by the node while it
# sat idle": a request on a *reused* connection failing like this was never
# read by the node and is sent again once on a fresh connection.
_STALE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class Transport:
    """Sends requests to one node over pooled keep-alive connections."""

    def __init__(self, url: str, token: Optional[str], timeout: Optional[float], user_agent: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r} (expected e.g. http://127.0.0.1:7700)")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        if token:
            token = token.strip()
            if any(c in token for c in "\r\n"):
                raise ValueError("the token contains a line break")
            self._headers["Authorization"] = f"Bearer {token}"
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # -- connections --

    def _new(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout)

    def _take(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def idle_connections(self) -> int:
        """How many kept-alive connections wait in the pool (for tests)."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- requests --

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: Optional[str] = None,
        accept: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> "Answer":
        """Sends a request and returns the answer with its body unread.

        ``body`` may also be an iterable of bytes (sent chunked, as it is
        consumed); such a request is sent on a new connection, since it
        could not be sent again on a kept-alive one the node had closed."""
        extra = headers
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        if extra:
            headers.update(extra)
        if body is None and method in ("POST", "PUT"):
            body = b""
        replayable = body is None or isinstance(body, (bytes, bytearray, memoryview))
        target = self._prefix + path
        while True:
            conn, reused = self._take() if replayable else (self._new(), False)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            except _STALE as e:
                conn.close()
                if reused:
                    continue  # an idle connection the node had closed
                raise self._unreachable(e) from None
            except socket.timeout:
                conn.close()
                raise self._timed_out() from None
            except OSError as e:
                conn.close()
                raise self._unreachable(e) from None
            except http.client.HTTPException as e:
                conn.close()
                raise ShoalError(None, "bad_answer", f"unreadable answer from {self.url}: {e!r}") from None
            return Answer(self, conn, resp)

    def _timed_out(self) -> ShoalError:
        return ShoalError(None, "timeout", f"no answer from {self.url} within {self._timeout} s (the client's timeout)")

    def _unreachable(self, e: BaseException) -> ShoalError:
        return ShoalError(
            None,
            "unreachable",
            f"cannot reach the node at {self.url} ({e.__class__.__name__}: {e}); "
            "is `shoal serve` running, and is the URL (SHOAL_URL) right?",
        )


class Answer:
    """One HTTP answer. Read it fully (``read``/``lines``/``json``) or ``close`` it."""

    def __init__(self, transport: Transport, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._transport = transport
        self._conn: Optional[http.client.HTTPConnection] = conn
        self.resp = resp
        self.status = resp.status

    def header(self, name: str) -> Optional[str]:
        return self.resp.getheader(name)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def _finish(self) -> None:
        """The body was read to the end: the connection may serve again."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.resp.will_close:
            conn.close()
        else:
            self._transport.release(conn)

    def close(self) -> None:
        """Drops the answer; an unread rest closes the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self.resp.isclosed():
                if self.resp.will_close:
                    conn.close()
                else:
                    self._transport.release(conn)
            else:
                conn.close()

    def read(self) -> bytes:
        try:
            data = self.resp.read()
        except socket.timeout:
            self.close()
            raise self._transport._timed_out() from None
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ShoalError(None, "unreachable", f"the connection broke while reading the answer: {e!r}") from None
        self._finish()
        return data

    def json(self) -> Any:
        data = self.read()
        try:
            return json.loads(data)
        except ValueError:
            raise ShoalError(self.status, "bad_answer", f"the node answered something that is not JSON: {data[:200]!r}") from None

    def lines(self) -> Iterator[bytes]:
        """The body's lines without line ends, streamed. Closing the
        generator early closes the connection."""
        done = False
        try:
            while True:
                try:
                    line = self.resp.readline()
                except socket.timeout:
                    raise self._transport._timed_out() from None
                except (OSError, http.client.HTTPException) as e:
                    raise ShoalError(None, "unreachable", f"the connection broke while streaming the answer: {e!r}") from None
                if not line:
                    done = True
                    break
                yield line.rstrip(b"\r\n")
        finally:
            if done:
                self._finish()
            else:
                self.close()

    def pieces(self, size: int = 256 << 10) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes, streamed. Closing
        the generator early closes the connection."""
        done = False
        try:
            while True:
                try:
                    piece = self.resp.read(size)
                except socket.timeout:
                    raise self._transport._timed_out() from None
                except (OSError, http.client.HTTPException) as e:
                    raise ShoalError(None, "unreachable", f"the connection broke while reading the answer: {e!r}") from None
                if not piece:
                    done = True
                    break
                yield piece
        finally:
            if done:
                self._finish()
            else:
                self.close()

    def error(self) -> ShoalError:
        """Reads an error answer ``{"error": {"code", "message"}}`` into a ShoalError."""
        data = self.read()
        try:
            detail = json.loads(data)["error"]
            return ShoalError(self.status, str(detail["code"]), str(detail.get("message", "")))
        except (ValueError, KeyError, TypeError):
            code = "route_not_found" if self.status == 404 else "internal"
            text = data[:200].decode("utf-8", "replace")
            return ShoalError(self.status, code, f"HTTP {self.status}: {text}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 (NaN and infinities are refused: JSON has none)."""
    return _ENCODER.encode(value).encode("utf-8")


def error_from_json(status: int, obj: Dict[str, Any]) -> ShoalError:
    detail = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(detail, dict) and "code" in detail:
        return ShoalError(status, str(detail["code"]), str(detail.get("message", "")))
    return ShoalError(status, "internal", f"HTTP {status}: {str(obj)[:200]}")
