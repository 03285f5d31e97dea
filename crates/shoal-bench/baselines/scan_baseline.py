"""Baselines of the ranged scan (issue 12): the sum of the float column of a
file of 16-byte records (`<i8` id, `<f8` value), computed by

- `limit`: two processes (a `multiprocessing` pool of 2, forked once, numpy
  imported), each `numpy.memmap`-ing half of the file and summing it: the
  machine's limit;
- `dask`: `dask.array.from_array` over a `numpy.memmap` of the file's value
  column, in chunks of `--chunk-bytes` of records, summed with the threaded
  scheduler and 2 workers (Dask's default for arrays);
- `ray`: a local Ray instance with 2 CPUs, one task per `--chunk-bytes`
  block that `numpy.memmap`s its block and sums it.

    python scan_baseline.py --system limit|dask|ray --file F --chunk-bytes N \
        --warm N --cold M [--ray-tmp DIR]

Setup (pool, `ray.init`) is not timed. One warm-up pass, then `--warm`
timed passes, then `--cold` passes each after the file was dropped from the
page cache (`posix_fadvise(DONTNEED)`). One JSON line per pass on stdout:
`{"system", "cache": "warm"|"cold", "s", "sum"}`, and first a line
`{"system", "setup_s", "versions"}`.
"""

import argparse
import json
import os
import sys
import time

RECORD = 16


def dtype():
    import numpy as np

    return np.dtype([("id", "<i8"), ("v", "<f8")])


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sum_part(args):
    """The sum of `n` records from record `start` (one process's half)."""
    import numpy as np

    path, start, n = args
    mm = np.memmap(path, dtype=dtype(), mode="r", offset=start * RECORD, shape=(n,))
    total = float(mm["v"].sum())
    del mm
    return total


def limit(path, records, _chunk):
    import multiprocessing

    import numpy as np

    pool = multiprocessing.get_context("fork").Pool(2)
    half = records // 2
    parts = [(path, 0, half), (path, half, records - half)]

    def run():
        return sum(pool.map(sum_part, parts, chunksize=1))

    return run, {"numpy": np.__version__}, pool.terminate


def dask_system(path, records, chunk):
    import dask
    import dask.array as da
    import numpy as np

    per_chunk = chunk // RECORD

    def run():
        mm = np.memmap(path, dtype=dtype(), mode="r", shape=(records,))
        arr = da.from_array(mm["v"], chunks=per_chunk, name=False)
        total = float(arr.sum().compute(scheduler="threads", num_workers=2))
        del arr, mm
        return total

    return run, {"dask": dask.__version__, "numpy": np.__version__}, lambda: None


def ray_system(path, records, chunk, tmp):
    import numpy as np
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = {"_temp_dir": tmp} if tmp else {}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=100 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        **options,
    )
    remote_part = ray.remote(num_cpus=1)(lambda args: sum_part(args))
    per_chunk = chunk // RECORD
    blocks = [(path, s, min(per_chunk, records - s)) for s in range(0, records, per_chunk)]

    def run():
        return sum(ray.get([remote_part.remote(b) for b in blocks]))

    return run, {"ray": ray.__version__, "numpy": np.__version__}, ray.shutdown


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", required=True, choices=["limit", "dask", "ray"])
    p.add_argument("--file", required=True)
    p.add_argument("--chunk-bytes", type=int, default=64 << 20)
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--cold", type=int, default=2)
    p.add_argument("--ray-tmp")
    a = p.parse_args()
    records = os.path.getsize(a.file) // RECORD
    t = time.perf_counter()
    if a.system == "limit":
        run, versions, close = limit(a.file, records, a.chunk_bytes)
    elif a.system == "dask":
        run, versions, close = dask_system(a.file, records, a.chunk_bytes)
    else:
        run, versions, close = ray_system(a.file, records, a.chunk_bytes, a.ray_tmp)
    versions["python"] = sys.version.split()[0]
    run()  # warm-up pass: workers started, the file in the page cache
    setup_s = time.perf_counter() - t
    print(json.dumps({"system": a.system, "setup_s": setup_s, "versions": versions}), flush=True)
    for cache, n in (("warm", a.warm), ("cold", a.cold)):
        for _ in range(n):
            if cache == "cold":
                drop_cache(a.file)
            t = time.perf_counter()
            total = run()
            s = time.perf_counter() - t
            print(json.dumps({"system": a.system, "cache": cache, "s": s, "sum": total}), flush=True)
    close()


if __name__ == "__main__":
    main()
