"""What the Python baselines of `shoal-bench` share: reading the documents,
loading a bench function's module from its directory, applying its
map/map_batch + reduce the way a Python programmer would (C-level iteration
with `map`, `filter` and `functools.reduce`), and the line protocol with the
bench (`serve`). Progress goes to stderr.
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
        help='JSON list of {"name", "dir", "mode": "map"|"batch"}: the functions to load',
    )
    args = p.parse_args()
    args.tasks = {t["name"]: t for t in json.loads(args.tasks)}
    for t in args.tasks.values():
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


def serve(system, docs, load, extra, run_once):
    """Announces that the documents are loaded, then runs the tasks the bench
    asks for, one JSON line each on stdin (`{"task": NAME}`), answering each
    with one JSON line (`{"seconds", "result"}`), until stdin closes. The
    bench interleaves these runs with Shoal's queries, so that all systems
    see the same background load."""
    ready = {"system": system, "python": platform.python_version(), "docs": docs, "load": load}
    ready.update(extra)
    _send({"ready": ready})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        if request.get("quit"):
            break
        try:
            started = now()
            result = run_once(request["task"])
            _send({"seconds": now() - started, "result": result})
        except Exception as e:  # reported to the bench, which fails the phase
            _send({"error": "%s: %s" % (type(e).__name__, e)})


def _send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
