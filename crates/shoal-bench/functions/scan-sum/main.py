"""The fan-in of the ranged scan: the total of the children's sums; fails
when a child failed (so that the scan cannot pass on a partial sum). Also
gathers the children's timings: the first start, the last end, the time
spent reading and summing, and its own start and end (`time.time()`)."""

import time


def handler(event, ctx):
    t_start = time.time()
    total = 0.0
    n = 0
    read_s = np_s = 0.0
    first, last = float("inf"), 0.0
    for r in ctx.results(event["job"]):
        if r["status"] != "succeeded":
            raise RuntimeError("child %d %s: %s" % (r["index"], r["status"], r["error"]))
        out = r["output"]
        total += out["sum"]
        read_s += out["read_s"]
        np_s += out["t1"] - out["t0"] - out["read_s"]
        first, last = min(first, out["t0"]), max(last, out["t1"])
        n += 1
    return {"sum": total, "children": n, "read_s": read_s, "np_s": np_s,
            "first_start": first, "last_end": last, "fanin_start": t_start,
            "fanin_end": time.time()}
