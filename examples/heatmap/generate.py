#!/usr/bin/env python3
"""Writes a heatmap dataset: N points as fixed-size records, sorted by tile.

    python3 generate.py --points 1000000 --tiles 32 --out points.bin

writes two files:

- ``points.bin``: N records of 12 bytes, ``(x, y, value)`` as little-endian
  float32, over the square domain ``[x0, x1) × [y0, y1)``. The domain is cut
  into a grid of T×T tiles; all the points of tile ``(tx, ty)`` are
  contiguous, tiles in row-major order (``tile = ty * T + tx``), so the points
  of any rectangle are a few runs of bytes: one per row of tiles it crosses.
- ``points.index.json``: the tile index: the domain, the grid, and for every
  tile its first record and its number of records::

      {"format": "xyv-f32le", "record_bytes": 12, "points": N,
       "domain": [x0, y0, x1, y1], "tiles": T,
       "tile_first": [...], "tile_count": [...]}

A point's tile is ``floor((x - x0) * T / (x1 - x0))`` (and the same in y)
computed in float64 from the stored float32 value, clipped to ``T - 1``. The
``heatmap`` function turns a region into tiles with the same expression, so
the tiles it picks hold every point inside the region (the expression is
monotone in ``x``: no rounding can move a point to a tile it did not pick).

The points are a mixture of Gaussian clusters over a uniform background;
``value`` is log-normal. ``--seed`` makes the file reproducible.
"""

import argparse
import json
import os

import numpy as np

RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("value", "<f4")])
assert RECORD.itemsize == 12


def tile_of(coord, lo, hi, tiles):
    """The tile (0..tiles-1) of float64 coordinates along one axis."""
    t = np.floor((coord - lo) * tiles / (hi - lo))
    return np.clip(t, 0, tiles - 1).astype(np.int64)


def make_points(n, domain, rng):
    x0, y0, x1, y1 = domain
    span = np.array([x1 - x0, y1 - y0])
    base = np.array([x0, y0])
    n_clusters = 12
    centers = base + rng.random((n_clusters, 2)) * span
    spread = rng.uniform(0.01, 0.08, n_clusters)[:, None] * span
    weights = rng.dirichlet(np.ones(n_clusters))
    n_background = n // 5
    per_cluster = rng.multinomial(n - n_background, weights)
    parts = [base + rng.random((n_background, 2)) * span]
    for c in range(n_clusters):
        parts.append(centers[c] + rng.standard_normal((per_cluster[c], 2)) * spread[c])
    xy = np.concatenate(parts)
    # Fold points outside the domain back in (keeps the clusters' shape).
    xy = base + np.mod(xy - base, span)
    return xy, rng.lognormal(0.0, 0.75, n)


def generate(n, tiles, domain, seed):
    """The records (sorted by tile) and the index, as numpy array and dict."""
    rng = np.random.default_rng(seed)
    xy, value = make_points(n, domain, rng)
    x0, y0, x1, y1 = domain
    records = np.empty(n, dtype=RECORD)
    records["x"] = xy[:, 0]
    records["y"] = xy[:, 1]
    records["value"] = value
    # float32 rounding may land a point on the domain's (exclusive) upper edge.
    below_x1 = np.nextafter(np.float32(x1), np.float32(-np.inf))
    below_y1 = np.nextafter(np.float32(y1), np.float32(-np.inf))
    records["x"] = np.clip(records["x"], np.float32(x0), below_x1)
    records["y"] = np.clip(records["y"], np.float32(y0), below_y1)
    # Tiles from the stored (float32) values, as the heatmap function computes them.
    tx = tile_of(records["x"].astype(np.float64), x0, x1, tiles)
    ty = tile_of(records["y"].astype(np.float64), y0, y1, tiles)
    tile = ty * tiles + tx
    order = np.argsort(tile, kind="stable")
    records = records[order]
    counts = np.bincount(tile, minlength=tiles * tiles)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = {
        "format": "xyv-f32le",
        "record_bytes": RECORD.itemsize,
        "points": int(n),
        "domain": [float(v) for v in domain],
        "tiles": int(tiles),
        "tile_first": [int(v) for v in first],
        "tile_count": [int(v) for v in counts],
    }
    return records, index


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1_000_000, help="number of points (default 1000000)")
    p.add_argument("--tiles", type=int, default=32, help="tiles per side (default 32)")
    p.add_argument("--domain", type=float, nargs=4, default=[0.0, 0.0, 1024.0, 1024.0],
                   metavar=("X0", "Y0", "X1", "Y1"), help="the square [X0, X1) x [Y0, Y1)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--out", default="points.bin",
                   help="the records file; the index goes beside it as NAME.index.json")
    a = p.parse_args()
    x0, y0, x1, y1 = a.domain
    if not (x1 > x0 and y1 > y0):
        p.error("the domain needs X0 < X1 and Y0 < Y1")
    if a.points < 1 or a.tiles < 1:
        p.error("--points and --tiles must be at least 1")
    records, index = generate(a.points, a.tiles, a.domain, a.seed)
    records.tofile(a.out)
    stem = a.out[:-4] if a.out.endswith(".bin") else a.out
    index_path = stem + ".index.json"
    with open(index_path, "w") as f:
        json.dump(index, f, separators=(",", ":"))
    print("wrote %s (%d points, %d bytes) and %s (%d×%d tiles)" % (
        a.out, a.points, os.path.getsize(a.out), index_path, a.tiles, a.tiles))


if __name__ == "__main__":
    main()
