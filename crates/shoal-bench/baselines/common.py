"""What the Python baselines of `shoal-bench` share: reading the documents,
loading a bench function's module from its directory, and applying its
map/map_batch + reduce the way a Python programmer would (C-level iteration
with `map`, `filter` and `functools.reduce`).

The baselines print one JSON object on the last line of stdout; progress
goes to stderr.
"""

import argparse
import functools
import gc
import importlib.util
import itertools
import json
import operator
import os
import platform
import sys
import time

# `None` values are dropped, as Shoal drops them.
_NOT_NONE = functools.partial(operator.is_not, None)


def now():
    return time.perf_counter()


def log(*parts):
    print("[%s]" % os.path.basename(sys.argv[0]), *parts, file=sys.stderr, flush=True)


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="NDJSON file of documents")
    p.add_argument("--limit", type=int, default=0, help="use only the first N documents (0: all)")
    p.add_argument(
        "--tasks",
        required=True,
        help='JSON list of {"name", "dir", "mode": "map"|"batch", "warmup", "reps"}',
    )
    args = p.parse_args()
    args.tasks = json.loads(args.tasks)
    for t in args.tasks:
        if t["mode"] not in ("map", "batch"):
            raise SystemExit("unknown mode %r" % t["mode"])
    return args


def read_lines(path, limit):
    """The file's lines (text, without newlines), the first `limit` if set."""
    with open(path, encoding="utf-8") as f:
        if limit:
            return [line.rstrip("\n") for line in itertools.islice(f, limit)]
        raw = f.read()
    lines = raw.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def parse(lines):
    """Decodes the lines as a careful programmer would for a bulk load: with
    the cyclic garbage collector paused (it would otherwise scan the growing
    heap again and again, doubling the time), then frozen, so the documents
    are never scanned again (and forked children do not copy their pages
    for it)."""
    gc.disable()
    try:
        docs = list(map(json.loads, lines))
    finally:
        gc.freeze()
        gc.enable()
    return docs


def load_module(name, directory):
    """Imports `directory/main.py` (a bench function) under a unique name."""
    mod_name = "bench_fn_" + name.replace("-", "_")
    spec = importlib.util.spec_from_file_location(mod_name, os.path.join(directory, "main.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reduce_values(mod, values):
    it = filter(_NOT_NONE, values)
    first = next(it, None)
    if first is None:
        return None
    return functools.reduce(mod.reduce, it, first)


def partial(mod, mode, docs):
    """One process's share of a query: map (or map_batch) over `docs`, then
    reduce. `None` when no document gave a value."""
    values = map(mod.map, docs) if mode == "map" else mod.map_batch(docs)
    return _reduce_values(mod, values)


def combine(mod, partials):
    """Reduces the processes' partial results."""
    return _reduce_values(mod, partials)


def run_tasks(tasks, mods, run_once):
    """Runs each task `warmup` times unmeasured, then `reps` measured times.
    `run_once(task)` returns the combined result."""
    out = {}
    for t in tasks:
        first_s = None
        results = []
        for i in range(t.get("warmup", 0)):
            started = now()
            results.append(run_once(t))
            if i == 0:
                first_s = now() - started
        times = []
        for _ in range(t["reps"]):
            started = now()
            results.append(run_once(t))
            times.append(now() - started)
        if any(r != results[0] for r in results):
            raise SystemExit("task %s gave different results: %r" % (t["name"], results))
        log("%s (%s): %s s" % (t["name"], t["mode"], ", ".join("%.3f" % x for x in times)))
        out[t["name"]] = {
            "mode": t["mode"],
            "first_s": first_s,
            "times_s": times,
            "result": results[0] if results else None,
        }
    return out


def report(system, docs, load, tasks, extra=None):
    body = {
        "system": system,
        "python": platform.python_version(),
        "docs": docs,
        "load": load,
        "tasks": tasks,
    }
    body.update(extra or {})
    print(json.dumps(body), flush=True)
