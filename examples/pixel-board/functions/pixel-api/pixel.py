"""The pure rules of the pixel board, kept apart from the handlers so they
are unit-tested without a node (``examples/pixel-board/tests``).

The board is 1000 × 1000 pixels of 16 colours, 4 bits a pixel: pixel
``(x, y)`` is the ``u4`` field ``#(y*1000+x)`` of the fixed-size blob
``pixel-board/board`` (500,000 bytes; bit 0 is the high bit of byte 0, so
an even pixel is the high nibble of its byte).

Identity is a signed cookie: ``pixel_user=NAME.SIG``, SIG the HMAC-SHA256 of
the name under the node's secret ``PIXEL_BOARD_KEY``, base64url without
padding. Nothing is stored per user except the cooldown key.
"""

import base64
import hashlib
import hmac
import math
import re

WIDTH = 1000
HEIGHT = 1000
COLOURS = 16
BOARD_KEY = "pixel-board/board"
BOARD_BYTES = WIDTH * HEIGHT // 2
CHANNEL = "board"
COOLDOWN_SETTING = "pixel-board/cooldown_s"
DEFAULT_COOLDOWN_S = 5
COOKIE = "pixel_user"
COOKIE_MAX_AGE_S = 30 * 24 * 3600

_NAME = re.compile(r"[A-Za-z0-9_-]{1,24}")


class Invalid(ValueError):
    """A request that breaks a rule; its message is shown to the user."""


def check_name(name):
    """The name a user logs in with: 1 to 24 of ``A-Z a-z 0-9 _ -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Invalid("a name is 1 to 24 letters, digits, '_' or '-'")
    return name


def sign(name, key):
    """The cookie value for ``name``: ``NAME.SIG``."""
    mac = hmac.new(_key_bytes(key), b"pixel_user:" + name.encode("ascii"), hashlib.sha256).digest()
    return name + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(value, key):
    """The name a cookie value was signed for, or None when it is missing,
    malformed or signed with another key."""
    if not isinstance(value, str) or "." not in value:
        return None
    name, _, _sig = value.rpartition(".")
    try:
        check_name(name)
    except Invalid:
        return None
    return name if hmac.compare_digest(sign(name, key), value) else None


def set_cookie(value, max_age=COOKIE_MAX_AGE_S):
    """The ``Set-Cookie`` line of the identity cookie: the page never reads
    it (HttpOnly); ``SameSite=Lax`` keeps other sites from placing pixels
    in its name."""
    return "%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % (COOKIE, value, max_age)


def check_placement(body):
    """``(x, y, c)`` from a ``POST /api/pixel`` body ``{"x", "y", "c"}``:
    integers (not booleans) with 0 ≤ x < 1000, 0 ≤ y < 1000, 0 ≤ c < 16."""
    if not isinstance(body, dict):
        raise Invalid('the body is a JSON object {"x", "y", "c"}')
    out = []
    for field, bound in (("x", WIDTH), ("y", HEIGHT), ("c", COLOURS)):
        v = body.get(field)
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid("%s must be an integer" % field)
        if not 0 <= v < bound:
            raise Invalid("%s must be 0 to %d, not %d" % (field, bound - 1, v))
        out.append(v)
    extra = sorted(set(body) - {"x", "y", "c"})
    if extra:
        raise Invalid("unknown field %s" % extra[0])
    return tuple(out)


def cooldown_seconds(setting):
    """The cooldown from the KV setting: a number of seconds ≥ 0 (0: none);
    the default when it is absent or not a sensible number, so a typo in
    the setting never stops the board."""
    if isinstance(setting, bool) or not isinstance(setting, (int, float)):
        return DEFAULT_COOLDOWN_S
    if not math.isfinite(setting) or setting < 0 or setting > 24 * 3600:
        return DEFAULT_COOLDOWN_S
    return setting


def seconds_left(expires_at_ms, now_ms):
    """Seconds until a cooldown ends, rounded up to 0.1 s (never negative)."""
    if expires_at_ms is None:
        return 0.0
    return max(0.0, math.ceil((expires_at_ms - now_ms) / 100.0) / 10.0)


def set_op(x, y, c):
    """The one bitfield operation of a placement."""
    return {"op": "set", "type": "u4", "offset": "#%d" % (y * WIDTH + x), "value": c}


def _key_bytes(key):
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not key:
        raise RuntimeError("the secret PIXEL_BOARD_KEY is empty")
    return key
