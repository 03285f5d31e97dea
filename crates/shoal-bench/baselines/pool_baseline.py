"""Baseline (a) of the query benchmarks: `multiprocessing.Pool` with 2
processes, forked after the parent has loaded the documents, so that each
already holds the documents as Python objects. Worker k always processes
half k: each query's two tasks meet at a barrier, so they run at the same
time on the two workers, never one after the other on the same worker. The
parent reduces the two partial results.

    python3 pool_baseline.py --data docs.ndjson [--limit N] --tasks JSON

Then one line per query on stdin, one answer per line on stdout (see
`common.serve`).
"""

import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PROCESSES = 2
# Set before the fork: every worker inherits them.
HALVES = []
MODS = {}
BARRIER = None
# This worker's index (0 or 1), set by _init.
WORKER = None


def _init(counter):
    global WORKER
    with counter.get_lock():
        WORKER = counter.value
        counter.value += 1


def _ready(_):
    BARRIER.wait(timeout=60)
    return WORKER


def _work(args):
    name, mode = args
    BARRIER.wait(timeout=60)
    return common.partial(MODS[name], mode, HALVES[WORKER])


def main():
    global BARRIER
    args = common.parse_args(__doc__)
    started = common.now()
    lines = common.read_lines(args.data, args.limit)
    read_s = common.now() - started
    t = common.now()
    docs = common.parse(lines)
    del lines
    parse_s = common.now() - t
    n = len(docs)
    common.log("loaded %d documents: read %.2f s, parse %.2f s" % (n, read_s, parse_s))
    for name, task in args.tasks.items():
        MODS[name] = common.load_module(name, task["dir"])
    t = common.now()
    size = (n + PROCESSES - 1) // PROCESSES
    HALVES.extend(docs[i * size : (i + 1) * size] for i in range(PROCESSES))
    del docs
    ctx = multiprocessing.get_context("fork")
    BARRIER = ctx.Barrier(PROCESSES)
    pool = ctx.Pool(PROCESSES, initializer=_init, initargs=(ctx.Value("i", 0),))
    workers = sorted(pool.map(_ready, range(PROCESSES), chunksize=1))
    if workers != list(range(PROCESSES)):
        raise SystemExit("the pool's workers are %r" % workers)
    distribute_s = common.now() - t
    load = {
        "read_s": read_s,
        "parse_s": parse_s,
        "distribute_s": distribute_s,
        "total_s": common.now() - started,
    }

    def run_once(name):
        jobs = [(name, args.tasks[name]["mode"])] * PROCESSES
        parts = pool.map(_work, jobs, chunksize=1)
        return common.combine(MODS[name], parts)

    common.serve("pool", n, load, {"processes": PROCESSES}, run_once)
    pool.close()
    pool.join()


if __name__ == "__main__":
    main()
