"""Fans out `n` children with a fan-in, and says when it started and how long
the `ctx.map` call took (wall-clock seconds, `time.time()`, comparable with
the fan-in's own start time on the same machine)."""

import time


def handler(event, ctx):
    t0 = time.time()
    events = [{"i": i} for i in range(event["n"])]
    t_built = time.time()
    job = ctx.map(event["child"], events, then=event["then"])
    t1 = time.time()
    return {"t0": t0, "t_built": t_built, "t1": t1, "job": job}
