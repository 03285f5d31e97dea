"""Baseline (b) of the query benchmarks: Ray on this machine (a local
instance with 2 CPUs), the documents held by 2 actors, each its half. The
driver reads the file and sends each actor its half of the lines; the actors
parse them in parallel and keep the Python objects. A query asks both actors
for their partial result and reduces the two.

    python ray_baseline.py --data docs.ndjson [--limit N] --tasks JSON

Then one line per query on stdin, one answer per line on stdout (see
`common.serve`). Run with the interpreter of the venv `scripts/bench`
installs Ray into.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# Ray's worker processes inherit the environment: let them import `common`.
os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import common  # noqa: E402

ACTORS = 2


def main():
    args = common.parse_args(__doc__)
    t = common.now()
    import ray

    # Loopback only: the local instance must not listen on other addresses.
    # SHOAL_BENCH_RAY_TMP keeps its session files in the bench's directory.
    options = {}
    if os.environ.get("SHOAL_BENCH_RAY_TMP"):
        options["_temp_dir"] = os.environ["SHOAL_BENCH_RAY_TMP"]
    ray.init(
        num_cpus=ACTORS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _node_ip_address="127.0.0.1",
        **options,
    )

    @ray.remote(num_cpus=1)
    class Holder:
        def __init__(self, tasks):
            self.tasks = tasks
            self.mods = {name: common.load_module(name, t["dir"]) for name, t in tasks.items()}
            self.docs = []

        def load(self, chunk):
            self.docs = common.parse(chunk.split("\n")) if chunk else []
            return len(self.docs)

        def run(self, name):
            return common.partial(self.mods[name], self.tasks[name]["mode"], self.docs)

    actors = [Holder.remote(args.tasks) for _ in range(ACTORS)]
    ray.get([a.load.remote("") for a in actors])
    start_s = common.now() - t
    common.log("ray.init and %d actors: %.2f s" % (ACTORS, start_s))

    started = common.now()
    lines = common.read_lines(args.data, args.limit)
    read_s = common.now() - started
    t = common.now()
    n = len(lines)
    size = (n + ACTORS - 1) // ACTORS
    chunks = ["\n".join(lines[i * size : (i + 1) * size]) for i in range(ACTORS)]
    del lines
    counts = ray.get([a.load.remote(c) for a, c in zip(actors, chunks)])
    del chunks
    if sum(counts) != n:
        raise SystemExit("the actors hold %r documents, not %d" % (counts, n))
    parse_s = common.now() - t
    load = {
        "start_s": start_s,
        "read_s": read_s,
        "parse_s": parse_s,
        "distribute_s": 0.0,
        "total_s": common.now() - started,
    }
    common.log("loaded %d documents: read %.2f s, send + parse %.2f s" % (n, read_s, parse_s))
    mods = {name: common.load_module(name, t["dir"]) for name, t in args.tasks.items()}

    def run_once(name):
        parts = ray.get([a.run.remote(name) for a in actors])
        return common.combine(mods[name], parts)

    common.serve("ray", n, load, {"actors": ACTORS, "ray": ray.__version__}, run_once)
    ray.shutdown()


if __name__ == "__main__":
    main()
