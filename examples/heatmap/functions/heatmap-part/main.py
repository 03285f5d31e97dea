"""heatmap-part: one subtask of a heatmap request — one byte range of records.

Its event is a ``map_ranges`` child's: ``{"key", "offset", "length",
"records", "size", "etag", "index", "args"}``, with ``args`` = ``{"region",
"width", "height", "weight", "kill_part"}`` from ``heatmap``. It reads its
range straight from the node's disk (``ctx.range_bytes``), keeps the points
inside the region and bins them into a ``height × width`` grid (row 0 at
the top, see ``heatmap``'s docs): points per pixel (``weight = "count"``,
uint32) or the sum of their values (``"value"``, float64). The grid goes
back compressed (zlib, base64): a child's result is JSON of bounded size.
"""

import base64
import os
import signal
import zlib

import numpy as np

RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("value", "<f4")])


def handler(event, ctx):
    args = event["args"]
    if args.get("kill_part") == event["index"] and ctx.attempt == 1:
        # The failure drill: this worker dies mid-request, as a worker of
        # seed 004 did (out of memory, a crash). The node retries the
        # subtask on another worker; the request still adds up.
        os.kill(os.getpid(), signal.SIGKILL)
    data = ctx.range_bytes(event)
    records = np.frombuffer(data, dtype=RECORD)
    grid, points = bin_points(records, args["region"], args["width"], args["height"], args["weight"])
    return {"grid": encode(grid), "points": points, "bytes_read": len(data)}


def bin_points(records, region, width, height, weight):
    """The ``height × width`` grid of the records inside ``region``, and
    how many they are."""
    x0, y0, x1, y1 = region
    x = records["x"].astype(np.float64)
    y = records["y"].astype(np.float64)
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    x, y = x[keep], y[keep]
    col = np.clip(np.floor((x - x0) * width / (x1 - x0)), 0, width - 1).astype(np.int64)
    row = np.clip(np.floor((y - y0) * height / (y1 - y0)), 0, height - 1).astype(np.int64)
    cell = (height - 1 - row) * width + col
    if weight == "count":
        grid = np.bincount(cell, minlength=width * height).astype("<u4")
    else:
        values = records["value"][keep].astype(np.float64)
        grid = np.bincount(cell, weights=values, minlength=width * height).astype("<f8")
    return grid.reshape(height, width), int(keep.sum())


def encode(grid):
    """A grid as JSON: dtype, shape and its bytes, zlib'd and base64'd."""
    grid = np.ascontiguousarray(grid)
    return {"dtype": grid.dtype.str, "shape": list(grid.shape),
            "zlib_base64": base64.b64encode(zlib.compress(grid.tobytes(), 1)).decode("ascii")}
