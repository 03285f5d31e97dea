"""The fan-in: the wall-clock time it started, and the job's child count."""

import time


def handler(event, ctx):
    return {"t": time.time(), "job": event["job"], "count": event["count"]}
