"""Paints single pixels of a u4 board from a function: `batches` batches of
`batch` `set u4 #N v` ops through `ctx.blob_apply`, each all or nothing and
durable before it returns. The ops are built before the clock starts, so
the time is that of the host calls. Returns how many ops were applied and
the seconds the calls took."""

import random
import time


def handler(event, ctx):
    key, batch, batches = event["key"], event["batch"], event["batches"]
    pixels = event["pixels"]
    rng = random.Random(event.get("seed", 0))
    work = [
        [{"op": "set", "type": "u4", "offset": "#%d" % rng.randrange(pixels), "value": rng.randrange(16)}
         for _ in range(batch)]
        for _ in range(batches)
    ]
    t0 = time.perf_counter()
    version = None
    for ops in work:
        version = ctx.blob_apply(key, ops)["version"]
    return {"ops": batch * batches, "s": time.perf_counter() - t0, "version": version}
