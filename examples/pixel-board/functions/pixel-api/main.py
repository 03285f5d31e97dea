"""pixel-api: logging in and placing pixels on the board (routes
``POST /api/login``, ``GET /api/me``, ``POST /api/pixel``).

A placement is checked (signed cookie → 401, body → 400), then the user's
cooldown is one key-value write with ``nx`` and a ttl (refused → 429 with
the seconds left), then the pixel is ONE durable step: the bitfield
operation on the board's blob and the channel message that tells every page,
at one offset. The cooldown's length is the KV value
``pixel-board/cooldown_s``, read on every request: change it with
``shoal kv set pixel-board/cooldown_s 30`` and the next placement uses it.
"""

import json
import os
import time

import pixel


def handler(event, ctx):
    route = (event.get("method"), event.get("route"))
    if route == ("POST", "/api/login"):
        return login(event, ctx)
    if route == ("GET", "/api/me"):
        return me(event, ctx)
    if route == ("POST", "/api/pixel"):
        return place(event, ctx)
    return answer(ctx, 404, {"error": {"code": "not_found", "message": "no such route"}})


def login(event, ctx):
    body = event.get("body")
    try:
        name = pixel.check_name(body.get("name") if isinstance(body, dict) else None)
    except pixel.Invalid as e:
        return answer(ctx, 400, {"error": {"code": "invalid_input", "message": str(e)}})
    cookie = pixel.set_cookie(pixel.sign(name, key()))
    return answer(ctx, 200, {"name": name}, cookies=[cookie])


def me(event, ctx):
    name = user(event)
    cooldown = pixel.cooldown_seconds(ctx.kv.get(pixel.COOLDOWN_SETTING))
    wait = 0.0
    if name is not None:
        entry = ctx.kv.entry(cooldown_key(name))
        if entry is not None:
            wait = pixel.seconds_left(entry.get("expires_at_ms"), now_ms())
    return {"name": name, "cooldown_s": cooldown, "wait_s": wait}


def place(event, ctx):
    name = user(event)
    if name is None:
        return answer(ctx, 401, {"error": {"code": "unauthorized", "message": "log in to place pixels"}})
    try:
        x, y, c = pixel.check_placement(event.get("body"))
    except pixel.Invalid as e:
        return answer(ctx, 400, {"error": {"code": "invalid_input", "message": str(e)}})
    cooldown = pixel.cooldown_seconds(ctx.kv.get(pixel.COOLDOWN_SETTING))
    if cooldown > 0 and ctx.kv.set(cooldown_key(name), True, ttl=cooldown, nx=True) is None:
        entry = ctx.kv.entry(cooldown_key(name))
        left = pixel.seconds_left(entry and entry.get("expires_at_ms"), now_ms())
        body = {"error": {"code": "cooldown", "message": "wait %.1f s" % left}, "retry_after_s": left}
        return answer(ctx, 429, body, headers={"retry-after": str(max(1, int(-(-left // 1))))})
    published = publish(ctx, x, y, c)
    return {"x": x, "y": y, "c": c, "epoch": published["epoch"], "offset": published["offset"],
            "cooldown_s": cooldown}


def publish(ctx, x, y, c):
    """The pixel set and announced in one step; the board's blob is made on
    the first placement ever (``blob_create`` keeps one that exists)."""
    message = {"x": x, "y": y, "c": c}
    ops = [pixel.set_op(x, y, c)]
    try:
        return ctx.publish(pixel.CHANNEL, message, blob=pixel.BOARD_KEY, ops=ops)
    except ctx.HostError as e:
        if e.code != "blob_not_found":
            raise
    ctx.blob_create(pixel.BOARD_KEY, pixel.BOARD_BYTES, if_absent=True)
    return ctx.publish(pixel.CHANNEL, message, blob=pixel.BOARD_KEY, ops=ops)


def user(event):
    return pixel.verify((event.get("cookies") or {}).get(pixel.COOKIE), key())


def cooldown_key(name):
    return "pixel-board/cooldown/" + name


def key():
    return os.environ.get("PIXEL_BOARD_KEY", "")


def answer(ctx, status, body, headers=None, cookies=None):
    extra = {"cookies": cookies} if cookies else {}
    return ctx.Response(json.dumps(body), "application/json", status=status,
                        headers=dict(headers or {}, **{"cache-control": "no-store"}), **extra)


def now_ms():
    return int(time.time() * 1000)
