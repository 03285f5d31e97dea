"""The ranged scan: `ctx.map_ranges` over blob `key` in `chunk_bytes`
ranges of 16-byte records, then waits for the fan-in and answers its
result, with its own start (`t0`, `time.time()`), the seconds
`map_ranges` took to return (the job and its children written) and the
time the wait returned (`t_waited`)."""

import time


def handler(event, ctx):
    t0 = time.time()
    job = ctx.map_ranges(event["key"], event["part"], records=16,
                         chunk_bytes=event["chunk_bytes"], then=event["then"])
    t1 = time.time()
    out = job.wait(timeout=event.get("timeout", 240))
    out["t0"] = t0
    out["map_s"] = t1 - t0
    out["t_waited"] = time.time()
    return out
