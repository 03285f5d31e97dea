"""heatmap-reduce: the fan-in of a heatmap request's subtasks.

Runs once, after every ``heatmap-part`` child of the job has finished
(event ``{"job", "count"}``), and sums their grids. It reads the results a
few at a time (``ctx.results(job, page=...)``) and keeps only the running
sum, so its memory is one grid whatever the number of subtasks: seed 004's
back end named the intermediate results of many requests in memory as its
weakest spot. A failed subtask (after its retries) fails the request
rather than answering a map with a hole in it. Its result goes back to
``heatmap``'s ``.wait()``: ``{"grid", "points", "bytes_read", "subtasks"}``.
"""

import base64
import zlib

import numpy as np

#: Children's results fetched per host call (each holds a grid).
PAGE = 16


def handler(event, ctx):
    total = None
    points = bytes_read = subtasks = 0
    for r in ctx.results(event["job"], page=PAGE):
        if r["status"] != "succeeded":
            raise RuntimeError("subtask %s %s: %s" % (r["index"], r["status"], r.get("error")))
        out = r["output"]
        grid = decode(out["grid"])
        if total is None:
            # Counts add up in uint64, values in float64.
            total = grid.astype("<u8" if grid.dtype.kind == "u" else "<f8")
        else:
            total += grid
        points += out["points"]
        bytes_read += out["bytes_read"]
        subtasks += 1
    if subtasks != event["count"]:
        raise RuntimeError("%d of %d subtasks have results" % (subtasks, event["count"]))
    return {"grid": encode(total), "points": points, "bytes_read": bytes_read, "subtasks": subtasks}


def decode(enc):
    raw = zlib.decompress(base64.b64decode(enc["zlib_base64"]))
    return np.frombuffer(raw, dtype=np.dtype(enc["dtype"])).reshape(enc["shape"])


def encode(grid):
    """A grid as JSON: dtype, shape and its bytes, zlib'd and base64'd."""
    grid = np.ascontiguousarray(grid)
    return {"dtype": grid.dtype.str, "shape": list(grid.shape),
            "zlib_base64": base64.b64encode(zlib.compress(grid.tobytes(), 1)).decode("ascii")}
