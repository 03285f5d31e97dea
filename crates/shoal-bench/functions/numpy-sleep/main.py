"""Imports numpy at load time (in the template), then sleeps in the handler so
that concurrent calls overlap and the pool has to grow."""

import time

import numpy as np

_DATA = np.arange(100_000, dtype=np.int64)


def handler(event, ctx):
    time.sleep(float(event.get("sleep_s", 0.3)))
    return {"sum": int(_DATA.sum()), "numpy": np.__version__}
