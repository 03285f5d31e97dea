"""A `map_ranges` child of the ranged scan: the sum of the `v` column of its
whole 16-byte records (`<i8` id, `<f8` value), read straight from the
node's disk with `ctx.range_bytes`. Also says when it started and ended
(`time.time()`) and how long the read took, for the bench's breakdown."""

import time

import numpy as np

RECORD = np.dtype([("id", "<i8"), ("v", "<f8")])


def handler(event, ctx):
    t0 = time.time()
    data = ctx.range_bytes(event)
    t1 = time.time()
    total = float(np.frombuffer(data, dtype=RECORD)["v"].sum())
    return {"sum": total, "t0": t0, "read_s": t1 - t0, "t1": time.time()}
