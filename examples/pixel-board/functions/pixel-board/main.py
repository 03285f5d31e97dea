"""pixel-board: the board as a snapshot (routes ``GET /api/board`` and
``GET /api/checksum``).

``GET /api/board`` answers the 500,000 bytes of the blob
``pixel-board/board`` with the header ``x-board-offset: EPOCH:OFFSET``: the
position of the channel ``board`` read BEFORE the blob, so the bytes hold
every placement up to that offset (maybe a few later ones too, which the
page applies again harmlessly: a placement sets a pixel, it does not add).
The page then follows ``/v1/channels/board/events?since=EPOCH:OFFSET``.

``GET /api/checksum`` is the CRC-32 (zlib's) of the same bytes as 8 hex
digits, the checksum the page computes over its own copy
(``window.boardChecksum()``).
"""

import zlib

BOARD_KEY = "pixel-board/board"
BOARD_BYTES = 1000 * 1000 // 2
CHANNEL = "board"


def handler(event, ctx):
    route = (event.get("method"), event.get("route"))
    if route == ("GET", "/api/board"):
        position, data = snapshot(ctx)
        headers = {"x-board-offset": "%s:%d" % (position["epoch"], position["offset"]),
                   "cache-control": "no-store"}
        return ctx.Response(data, "application/octet-stream", headers=headers)
    if route == ("GET", "/api/checksum"):
        position, data = snapshot(ctx)
        return {"crc32": checksum(data), "epoch": position["epoch"], "offset": position["offset"],
                "bytes": len(data)}
    return ctx.Response('{"error": {"code": "not_found", "message": "no such route"}}',
                        "application/json", status=404)


def snapshot(ctx):
    """The channel's position, then the board's bytes (in that order)."""
    position = ctx.channel_position(CHANNEL)
    try:
        blob = ctx.blob(BOARD_KEY)
    except ctx.HostError as e:
        if e.code != "blob_not_found":
            raise
        ctx.blob_create(BOARD_KEY, BOARD_BYTES, if_absent=True)
        blob = ctx.blob(BOARD_KEY)
    return position, bytes(blob.read())


def checksum(data):
    return "%08x" % (zlib.crc32(data) & 0xFFFFFFFF)
