#!/usr/bin/env python3
"""The seed's vendor pipeline on Shoal: fetch every data item of every
warrior of every troop from a strict vendor API, never faster than it allows,
and store the data in the category `vp-data`.

    python3 pipeline.py setup --rate 18        # limiter, queue, category, functions
    python3 pipeline.py start --vendor URL     # prints the job id
    python3 pipeline.py wait JOB --vendor URL  # until done; prints a summary
    python3 pipeline.py run --vendor URL       # setup + start + wait

The node is `SHOAL_URL` (default http://127.0.0.1:7700) with the token from
`SHOAL_TOKEN` or `.shoal/admin.token`. Needs the Python client:
`pip install ./python` from the repository root.

How it holds together (see README.md): every function that calls the vendor
takes a token from the shared limiter `vendor-api` right before it starts;
troops and warriors fan out with `ctx.map`; each warrior queues its data
items on `vp-items`, where `vp-fetch` retries failures with backoff and
dead-letters the items that keep failing.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import shoal
except ImportError:  # not installed: use the client from this source tree
    sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
    import shoal
FUNCTIONS = ["fetch", "warrior", "troop", "report", "start"]
QUEUE = "vp-items"
CATEGORY = "vp-data"


def setup(c, rate, burst):
    c.put_limiter("vendor-api", rate, burst)
    c.put_queue(QUEUE, max_attempts=5, retry_delay="200ms", visibility_timeout="30s")
    try:
        c.create_category(CATEGORY)
    except shoal.ShoalError as e:
        if e.code != "category_exists":
            raise
    common = os.path.join(HERE, "functions", "common", "vendor_http.py")
    for name in FUNCTIONS:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(HERE, "functions", name)
            for f in os.listdir(src):
                shutil.copy(os.path.join(src, f), tmp)
            shutil.copy(common, tmp)
            c.deploy(tmp)


def start(c, vendor):
    # Asynchronous, so that the vendor's transient failures are retried
    # (`retries` in vp-start's shoal.toml) as they are everywhere else.
    inv = c.wait(c.invoke_async("vp-start", {"vendor": vendor}), timeout=120)
    if inv["status"] != "succeeded":
        raise SystemExit("vp-start %s: %s" % (inv["status"], inv.get("error")))
    return inv["output"]["job"]


def vendor_json(vendor, path):
    with urllib.request.urlopen(vendor + path, timeout=10) as r:
        return json.load(r)


def wait(c, job_id, vendor, timeout):
    deadline = time.monotonic() + timeout
    job = c.wait_job(job_id, timeout)
    # Every item is queued once the job has finished; wait for the queue.
    while True:
        depth = c.queue(QUEUE)["depth"]
        if depth["waiting"] == 0 and depth["in_flight"] == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("queue %s still has %s" % (QUEUE, depth))
        time.sleep(0.1)
    stored = {doc_id for doc_id, _ in c.scan(CATEGORY)}
    dead = sorted("%s/%s" % (d["body"]["warrior"], d["body"]["group"]) for d in c.dead_letters(QUEUE))
    items = vendor_json(vendor, "/_items")
    broken = vendor_json(vendor, "/_broken")
    stats = vendor_json(vendor, "/_stats")
    report = job.get("then_invocation")
    return {
        "job": job_id,
        "status": job["status"],
        "troops": job["counts"],
        "report": c.invocation(report)["output"] if report else None,
        "items": len(items),
        "stored": len(stored),
        "dead_lettered": dead,
        "missing": sorted(set(items) - stored - set(dead)),
        "broken": broken,
        "vendor": {k: stats[k] for k in ("requests", "ok", "too_many", "transient", "permanent", "peak_accepted_1s", "limit")},
        "fetched_twice": sorted(i for i, n in stats["fetched"].items() if n > 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--rate", type=float, default=18.0, help="calls per second the pipeline may make")
    s.add_argument("--burst", type=int, default=1)
    s = sub.add_parser("start")
    s.add_argument("--vendor", required=True)
    s = sub.add_parser("wait")
    s.add_argument("job")
    s.add_argument("--vendor", required=True)
    s.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("run")
    s.add_argument("--vendor", required=True)
    s.add_argument("--rate", type=float, default=18.0)
    s.add_argument("--burst", type=int, default=1)
    s.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    c = shoal.Client()
    if args.cmd in ("setup", "run"):
        setup(c, args.rate, args.burst)
    if args.cmd == "setup":
        print("Set up: limiter vendor-api at %g/s, queue %s, category %s, %d functions." % (args.rate, QUEUE, CATEGORY, len(FUNCTIONS)))
        return
    if args.cmd == "start":
        print(start(c, args.vendor))
        return
    job = args.job if args.cmd == "wait" else start(c, args.vendor)
    summary = wait(c, job, args.vendor, args.timeout)
    print(json.dumps(summary, indent=2))
    ok = (
        summary["status"] == "finished"
        and not summary["missing"]
        and summary["vendor"]["too_many"] == 0
        and summary["dead_lettered"] == summary["broken"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
