"""A result that is not JSON: bytes (an image, a file, a page) with a
content type, a status, headers and cookies.

A handler returns one to answer a synchronous invoke with exactly these
bytes::

    from shoal import Response          # or ctx.Response, without the package

    def handler(event, ctx):
        png = render(event)
        return Response(png, content_type="image/png", headers={"cache-control": "max-age=60"})

``POST /v1/functions/NAME/invoke`` (and a function's ``[[route]]``) then
answers with the body as it is, the status, the content type, the headers
and one ``Set-Cookie`` header per cookie (``cookies=[cookie("sid", v)]``),
and ``Shoal-Result: response``.
Everywhere else a result is JSON (asynchronous invocations, job results,
``GET /v1/invocations/ID``), and a ``Response`` is the object::

    {"$response": {"status": 200, "content_type": "image/png",
                   "headers": {"cache-control": "max-age=60"},
                   "body_base64": "iVBORw0KGgo..."}}

with ``"cookies": [...]`` added when it sets cookies.

(:meth:`Response.to_json` and :meth:`Response.from_json` convert). The
client's :meth:`shoal.Client.invoke` returns a ``Response`` for such an
answer.

This file is also the node's: it is embedded in the Python runtime like
``context.py``, and inside a worker ``shoal.Response`` is the runtime's own
class. Standard library only.
"""

from __future__ import annotations

import base64
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

__all__ = ["Response", "cookie"]

#: The key of the JSON object a ``Response`` is everywhere but the HTTP answer.
RESPONSE_KEY = "$response"
MAX_HEADERS = 64
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS_TOTAL = 64 * 1024
MAX_COOKIES = 64

# Hop-by-hop headers and the framing the node sets; content-type is the
# `content_type` argument.
_FORBIDDEN = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    )
)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_text_type(content_type: str) -> bool:
    """Types whose str bodies get ``; charset=utf-8``."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return (
        mime.startswith("text/")
        or mime in ("application/xml", "application/javascript", "application/x-javascript")
        or mime.endswith("+xml")
    )


def _check_value(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > MAX_HEADER_BYTES:
        raise ValueError(f"{what} is {len(value)} bytes; at most {MAX_HEADER_BYTES} are allowed")
    for c in value:
        if not (c == "\t" or " " <= c <= "~"):
            raise ValueError(f"{what} holds {c!r}; only visible ASCII, spaces and tabs are allowed")
    return value


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a header name must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_HEADER_BYTES or not all(c in _TOKEN for c in name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    lower = name.lower()
    if lower == "content-type":
        raise ValueError("set the content type with content_type=, not as a header")
    if lower in _FORBIDDEN:
        raise ValueError(f"a response may not set the header {lower!r} (the node sets the framing of its answers)")
    if lower.startswith("shoal-"):
        raise ValueError(f"a response may not set the header {lower!r}: shoal-* headers are the node's")
    return lower


def _check_cookie(value: Any) -> str:
    """A ``Set-Cookie`` value: ``NAME=VALUE`` and attributes after ``;``."""
    _check_value("a cookie", value)
    pair = value.split(";", 1)[0]
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    if not name or not all(c in _TOKEN for c in name):
        raise ValueError(f"{value!r} is not a Set-Cookie value (NAME=VALUE, then attributes after ';'); shoal.cookie() builds one")
    return value


# The characters a cookie's value may hold as it is (RFC 6265's cookie-octet).
_COOKIE_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('",;\\')


def cookie(
    name: str,
    value: str,
    max_age: Optional[int] = None,
    path: Optional[str] = "/",
    http_only: bool = True,
    secure: bool = False,
    same_site: Optional[str] = "Lax",
) -> str:
    """One ``Set-Cookie`` value, for ``Response(..., cookies=[...])``.

    ``value`` must be cookie characters (visible ASCII but ``"``, ``,``,
    ``;`` and ``\\``): encode anything else yourself (base64url, hex).
    ``max_age`` in seconds (0 deletes the cookie; ``None``: a session
    cookie); ``same_site``: ``"Strict"``, ``"Lax"``, ``"None"`` (which
    needs ``secure=True``) or ``None`` to leave it out.
    """
    if not isinstance(name, str) or not name or not all(c in _TOKEN for c in name):
        raise ValueError(f"{name!r} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)")
    if not isinstance(value, str):
        raise TypeError(f"a cookie's value must be a str, not {type(value).__name__}")
    bad = next((c for c in value if c not in _COOKIE_OCTETS), None)
    if bad is not None:
        raise ValueError(f"a cookie's value may not hold {bad!r}; encode it first (base64url or hex)")
    parts = [f"{name}={value}"]
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"max_age must be a number of seconds (0 or more), not {max_age!r}")
        parts.append(f"Max-Age={max_age}")
    if path is not None:
        _check_value("the cookie's path", path)
        if ";" in path:
            raise ValueError("the cookie's path may not hold ';'")
        parts.append(f"Path={path}")
    if http_only:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    if same_site is not None:
        if same_site not in ("Strict", "Lax", "None"):
            raise ValueError(f"same_site must be 'Strict', 'Lax', 'None' or None, not {same_site!r}")
        if same_site == "None" and not secure:
            raise ValueError("same_site='None' needs secure=True (browsers refuse it otherwise)")
        parts.append(f"SameSite={same_site}")
    return "; ".join(parts)


class Response:
    """Bytes with a content type, a status and headers, answered as they are.

    ``body``: bytes (or bytearray/memoryview), or a str, which is encoded as
    UTF-8 and gets ``; charset=utf-8`` added to a text content type
    (``text/*``, XML, JavaScript) that names no charset. ``content_type``
    defaults to ``application/octet-stream`` for bytes and ``text/plain;
    charset=utf-8`` for a str. ``status``: 200 to 599 (204, 205 and 304
    carry no body). ``headers``: names to str values; names are kept in
    lowercase; hop-by-hop headers, ``content-length``, ``content-type``
    and ``shoal-*`` are refused. ``cookies``: ``Set-Cookie`` values, each
    answered as its own header (:func:`cookie` builds one). A bad argument
    raises ``ValueError`` or ``TypeError`` here, where it was made.

    The body counts against the node's result size limit (6 MiB by
    default) as JSON results do.
    """

    __slots__ = ("body", "content_type", "status", "headers", "cookies")

    def __init__(
        self,
        body: Union[bytes, bytearray, memoryview, str],
        content_type: Optional[str] = None,
        status: int = 200,
        headers: Optional[Mapping[str, str]] = None,
        cookies: Optional[Iterable[str]] = None,
    ) -> None:
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError(f"the content type must be a str, not {type(content_type).__name__}")
        if isinstance(body, str):
            data = body.encode("utf-8")
            if content_type is None:
                content_type = "text/plain; charset=utf-8"
            elif _is_text_type(content_type) and "charset=" not in content_type.lower():
                content_type = content_type + "; charset=utf-8"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            if content_type is None:
                content_type = "application/octet-stream"
        else:
            raise TypeError(f"a Response's body must be bytes or str, not {type(body).__name__}")
        _check_value("the content type", content_type)
        if not content_type:
            raise ValueError("the content type is empty")
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"a Response's status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 599:
            raise ValueError(f"a Response's status must be between 200 and 599, not {status}")
        if status in (204, 205, 304) and data:
            raise ValueError(f"a Response with status {status} cannot have a body")
        checked: Dict[str, str] = {}
        total = 0
        for name, value in (headers or {}).items():
            lower = _check_name(name)
            if lower in checked:
                raise ValueError(f"the header {lower!r} is given twice")
            checked[lower] = _check_value(f"the header {lower!r}", value)
            total += len(lower) + len(value)
        if len(checked) > MAX_HEADERS:
            raise ValueError(f"a Response may set at most {MAX_HEADERS} headers, not {len(checked)}")
        if isinstance(cookies, str):
            raise TypeError("cookies must be a list of Set-Cookie values, not one str")
        cookie_list = [_check_cookie(c) for c in (cookies or ())]
        if len(cookie_list) > MAX_COOKIES:
            raise ValueError(f"a Response may set at most {MAX_COOKIES} cookies, not {len(cookie_list)}")
        total += sum(len("set-cookie") + len(c) for c in cookie_list)
        if total > MAX_HEADERS_TOTAL:
            raise ValueError(f"the headers take {total} bytes; at most {MAX_HEADERS_TOTAL} are allowed")
        self.body: bytes = data
        self.content_type: str = content_type
        self.status: int = status
        self.headers: Dict[str, str] = checked
        self.cookies: List[str] = cookie_list

    @classmethod
    def _answered(
        cls, body: bytes, content_type: str, status: int, headers: Dict[str, str], cookies: Optional[List[str]] = None
    ) -> "Response":
        """A ``Response`` as a node answered it (the client's side): taken as
        it came, unchecked (the node checked it; a proxy may add more)."""
        r = cls.__new__(cls)
        r.body, r.content_type, r.status, r.headers = body, content_type, status, headers
        r.cookies = list(cookies or [])
        return r

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def to_json(self) -> Dict[str, Any]:
        """The JSON form: ``{"$response": {"status", "content_type",
        "headers", "body_base64"}}``, and ``"cookies"`` when it sets any."""
        inner: Dict[str, Any] = {
            "status": self.status,
            "content_type": self.content_type,
            "headers": dict(self.headers),
            "body_base64": base64.b64encode(self.body).decode("ascii"),
        }
        if self.cookies:
            inner["cookies"] = list(self.cookies)
        return {RESPONSE_KEY: inner}

    @classmethod
    def from_json(cls, value: Any) -> "Response":
        """A ``Response`` from its JSON form (a job child's result, an
        invocation's ``output``); ``ValueError`` if ``value`` is not one."""
        if not is_response_json(value):
            raise ValueError("not the JSON form of a Response (an object of the single key '$response')")
        inner = value[RESPONSE_KEY]
        if not isinstance(inner, dict):
            raise ValueError("the '$response' member is not an object")
        try:
            body = base64.b64decode(inner["body_base64"], validate=True)
            return cls(body, inner["content_type"], inner["status"], inner.get("headers") or {}, inner.get("cookies") or [])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"a malformed Response: {e}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.body, self.content_type, self.status, self.headers, self.cookies) == (
            other.body,
            other.content_type,
            other.status,
            other.headers,
            other.cookies,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        cookies = f", cookies={self.cookies!r}" if self.cookies else ""
        return f"Response(<{len(self.body)} bytes>, content_type={self.content_type!r}, status={self.status}, headers={self.headers!r}{cookies})"


def is_response_json(value: Any) -> bool:
    """True for the JSON form of a ``Response``: a dict of the single key
    ``$response``."""
    return isinstance(value, dict) and len(value) == 1 and RESPONSE_KEY in value


if not TYPE_CHECKING and __name__ != "_shoal_runner.response":
    # Imported as `shoal.response` inside a Shoal worker: the runtime
    # recognizes its own class; hand it out.
    _runtime = sys.modules.get("_shoal_runner.response")
    if _runtime is not None:
        Response = _runtime.Response  # noqa: F811
        is_response_json = _runtime.is_response_json  # noqa: F811
        cookie = getattr(_runtime, "cookie", cookie)  # noqa: F811
