"""A pixel placement for the live phase of shoal-bench: the body
``{"p": pixel, "c": colour, "t": send time in microseconds, "m": mode}``
becomes one ``set u4 #p c`` on the board's blob and one message
``{"x", "y", "c", "t", "m"}`` on the channel, in one atomic, durable step.
Called through its route (the event is the request; the placement is its
JSON body) or through the invoke API (the event is the placement)."""

CHANNEL = "bench-live"
BOARD = "bench-live-board"
WIDTH = 1000


def handler(event, ctx):
    body = event["body"] if "route" in event else event
    p, c = body["p"], body["c"]
    message = {"x": p % WIDTH, "y": p // WIDTH, "c": c, "t": body["t"], "m": body["m"]}
    op = {"op": "set", "type": "u4", "offset": "#%d" % p, "value": c}
    done = ctx.publish(CHANNEL, message, blob=BOARD, ops=[op])
    return {"offset": done["offset"]}
